"""Who may read the serving app's admin endpoints: the operator, not the app's clients.

The app's HTTP port is its public face (``/v1/predict``, ``/v1/feedback``, ``/healthz``): the
clients the NetworkPolicy admits reach all of it. What only the operator and Prometheus need
(``/v1/stats``, ``/v1/models``, ``/v1/drift``, ``/metrics``: A/B counts and outcomes, drift,
which versions load) answers only under :data:`ADMIN_PREFIX` and only with
``Authorization: Bearer <token>``; on the public paths it is a 404.

Why a route prefix with a token and not a second port: Ray Serve's proxy listens on one HTTP
port per cluster, and a server of our own in a replica would live on whichever pod Serve puts
it on, with no Service in front for the operator. A token needs nothing new on the network.

Which token: the **admin token** is derived from the deployment's request-signing key,
``hex(HMAC-SHA256(key, "mlplane-admin-v1\\0" + "<namespace>/<name>"))``. That key is already
a per-deployment secret both platforms provision, mount into every replica and rotate
(``mlplane.operator.builders.signing``), that the operator reads and clients cannot (the
feedback threat model rests on it). Deriving the token needs no new Secret or mount, a token
seen on the wire reveals nothing about the key (HMAC), and a rotation keeps the operator's
reads working: replicas accept the token of ``current``, ``next`` and ``previous``.

Prometheus cannot hold one token per deployment, so ``/admin/metrics`` also accepts the
installation's **scrape token** when the app is given its SHA-256 (``args.scrape_token_sha256``:
the serve config is readable by whoever reads the RayService, a hash of a 256-bit token is safe
there). Only ``/admin/metrics``: the scrape token reads no A/B counts as JSON and no drift.

Pure (standard library only): the operator derives the same token with :func:`admin_token`.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from mlplane.serving.request_id import RequestIdSigner

__all__ = [
    "ADMIN_PATHS",
    "ADMIN_PREFIX",
    "METRICS_PATH",
    "AdminAuth",
    "admin_auth",
    "admin_path",
    "admin_token",
    "bearer",
    "scrape_token_sha256",
]

#: Admin endpoints answer under this prefix only (``/admin/v1/stats``, ``/admin/metrics``).
ADMIN_PREFIX = "/admin"
#: The endpoints that moved there (path after the prefix); on the public paths they are 404s.
ADMIN_PATHS = ("/v1/stats", "/v1/models", "/v1/drift", "/metrics")
METRICS_PATH = "/metrics"
_CONTEXT = b"mlplane-admin-v1\x00"


def admin_path(path: str) -> str:
    """The admin URL path of an admin endpoint: ``/v1/stats`` -> ``/admin/v1/stats``."""
    if path not in ADMIN_PATHS:
        raise ValueError(f"{path} is not an admin endpoint ({', '.join(ADMIN_PATHS)})")
    return ADMIN_PREFIX + path


def admin_token(key: bytes, deployment: str) -> str:
    """The admin token of ``deployment`` (``"<namespace>/<name>"``) under signing ``key``."""
    mac = hmac.new(key, _CONTEXT + deployment.encode("utf-8"), hashlib.sha256)
    return mac.hexdigest()


def scrape_token_sha256(token: str) -> str:
    """What the app is given for the scrape token: its SHA-256, hex."""
    return hashlib.sha256(token.strip().encode("utf-8")).hexdigest()


def bearer(headers: Mapping[str, str]) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header (lower-case names), else None."""
    scheme, _, given = (headers.get("authorization") or "").strip().partition(" ")
    if scheme.lower() != "bearer" or not given.strip():
        return None
    return given.strip()


@dataclass(frozen=True)
class AdminAuth:
    """The admin decision of one app.

    ``keys()`` returns the signing keys accepted now (current, next, previous) and, with
    ``force=True``, rereads them (a rotation this replica has not seen yet).
    """

    deployment: str
    keys: Callable[..., tuple[bytes, ...]]
    scrape_sha256: str | None = None

    def _matches(self, given: str, keys: tuple[bytes, ...]) -> bool:
        # Every candidate compared in constant time, no early exit on a match.
        results = [
            hmac.compare_digest(
                given.encode("utf-8", "replace"), admin_token(k, self.deployment).encode()
            )
            for k in keys
        ]
        return any(results)

    def allows(self, token: str | None, *, metrics: bool = False) -> bool:
        """Whether ``token`` opens the admin endpoints (``metrics``: ``/admin/metrics``)."""
        if not token:
            return False
        if metrics and self.scrape_sha256 is not None:
            digest = hashlib.sha256(token.encode("utf-8", "replace")).hexdigest()
            if hmac.compare_digest(digest, self.scrape_sha256):
                return True
        keys = self.keys()
        if self._matches(token, keys):
            return True
        fresh = self.keys(force=True)
        return fresh != keys and self._matches(token, fresh)


def admin_auth(
    deployment: str, signer: RequestIdSigner, scrape_sha256: str | None = None
) -> AdminAuth:
    """The admin check of a router replica: tokens derived from the keys ``signer`` follows
    (its key files: a rotation needs no restart) and the scrape token's hash, if any."""

    def keys(*, force: bool = False) -> tuple[bytes, ...]:
        return signer.keys(force=force).verifying()

    return AdminAuth(deployment, keys, scrape_sha256)
