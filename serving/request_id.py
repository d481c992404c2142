"""Signed request ids: the variant that served a request travels inside its id.

``POST /v1/feedback {requestId, outcome}`` must credit the outcome to the variant (and A/B
test, model version) that served the request, even when the router replica that served it has
since restarted, the weights have changed, or another replica receives the feedback. Rather than
a shared store mapping ids to variants, the id *carries* that information, signed with an HMAC:

    <payload>.<tag>     payload = base64url(JSON [1, variant, version, deployment, abtest,
                                                  issued_at_ms, nonce])
                        tag     = base64url(HMAC-SHA256(key, payload)[:16])

so any router replica holding the key can verify an id and read its attribution with no I/O,
and nobody without the key can mint ids (forged or edited ids fail verification: 128-bit tag,
compared in constant time). The nonce (96 random bits) makes every id unique; it is what the
feedback ledger deduplicates on.

The key: ``MLPLANE_FEEDBACK_KEY`` from the environment (on Kubernetes: a Secret mounted into the
Ray pods; every replica must see the same value). Without it, :mod:`mlplane.serving.app`
generates a random key once per application and keeps it in the Ray cluster's internal KV so
every router replica and later redeploys of the app share it. Trade-off: ids then stop verifying
when the Ray cluster is replaced (KubeRay's NewCluster upgrade, ``mlplane local down``), so
feedback for requests served before that is rejected as unknown; set the variable where
feedback must survive cluster replacement. Rotating the key has the same effect.

The payload is readable by the client (base64, not encrypted): it reveals the variant name and
model version, which the response shows anyway (``x-mlplane-variant``).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import os
import secrets
from dataclasses import dataclass

__all__ = [
    "KEY_ENV",
    "InvalidRequestId",
    "RequestIdSigner",
    "RequestInfo",
    "generate_key",
    "key_from_env",
]

KEY_ENV = "MLPLANE_FEEDBACK_KEY"
_FORMAT = 1
_TAG_BYTES = 16
_NONCE_BYTES = 12
#: Longest id accepted for verification (a few hundred bytes in practice): bounds the work an
#: attacker can cause per feedback call.
MAX_ID_LENGTH = 1024


class InvalidRequestId(ValueError):
    """The id was not issued by this deployment with this key (malformed, forged or foreign)."""


@dataclass(frozen=True)
class RequestInfo:
    """What a request id says about the request it names."""

    variant: str
    version: int
    deployment: str
    abtest: str | None
    issued_at: float
    nonce: str


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def generate_key() -> bytes:
    """A fresh random 256-bit key."""
    return secrets.token_bytes(32)


def key_from_env(environ: dict[str, str] | None = None) -> bytes | None:
    """The key from ``MLPLANE_FEEDBACK_KEY`` (UTF-8 bytes), or None when unset or empty."""
    value = (os.environ if environ is None else environ).get(KEY_ENV, "")
    return value.encode() if value else None


class RequestIdSigner:
    """Issues and verifies request ids of one deployment (``"<namespace>/<name>"``)."""

    def __init__(self, key: bytes, deployment: str) -> None:
        if len(key) < 16:
            raise ValueError(f"{KEY_ENV} must be at least 16 bytes long")
        self._key = key
        self.deployment = deployment

    def _tag(self, payload: str) -> str:
        mac = hmac.new(self._key, payload.encode("ascii"), hashlib.sha256).digest()
        return _b64(mac[:_TAG_BYTES])

    def issue(self, variant: str, version: int, abtest: str | None, now: float) -> str:
        """A new id for a request served now by ``variant`` (model ``version``)."""
        body = [
            _FORMAT,
            variant,
            int(version),
            self.deployment,
            abtest,
            round(now * 1000),
            secrets.token_hex(_NONCE_BYTES),
        ]
        payload = _b64(json.dumps(body, separators=(",", ":")).encode())
        return f"{payload}.{self._tag(payload)}"

    def verify(self, request_id: str) -> RequestInfo:
        """The request's attribution; raises :class:`InvalidRequestId` for anything else."""
        if not isinstance(request_id, str) or not 0 < len(request_id) <= MAX_ID_LENGTH:
            raise InvalidRequestId("not a request id issued by this deployment")
        payload, sep, tag = request_id.partition(".")
        if not sep or not payload.isascii() or not tag.isascii():
            raise InvalidRequestId("not a request id issued by this deployment")
        if not hmac.compare_digest(self._tag(payload), tag):
            raise InvalidRequestId("unknown request id (bad signature)")
        try:
            body = json.loads(_unb64(payload))
            fmt, variant, version, deployment, abtest, issued_ms, nonce = body
        except (ValueError, TypeError, binascii.Error) as exc:  # signed but unreadable: a bug
            raise InvalidRequestId(f"unreadable request id: {exc}") from None
        if fmt != _FORMAT:
            raise InvalidRequestId(f"request id format {fmt} is not supported")
        if deployment != self.deployment:
            raise InvalidRequestId(f"request id belongs to deployment {deployment!r}")
        return RequestInfo(
            variant=str(variant),
            version=int(version),
            deployment=str(deployment),
            abtest=None if abtest is None else str(abtest),
            issued_at=issued_ms / 1000,
            nonce=str(nonce),
        )
