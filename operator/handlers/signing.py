"""The ModelDeployment's request-id signing Secret on Kubernetes: made before the RayService,
rotated on request (see :mod:`mlplane.operator.builders.signing` for the what and why).

Sequencing only: read the Secret, let :func:`~mlplane.operator.builders.signing.next_keys`
decide, write. Every write is idempotent by name and ``resourceVersion``: a create answered 409
(a previous round, or someone else, made it) or a patch answered 409 (it changed under us)
reads it again and decides again, at most :data:`ROUNDS` times.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Mapping
from datetime import datetime

from mlplane.operator.builders import signing
from mlplane.operator.conditions import Event
from mlplane.operator.platforms.kuberay import KubeRayPlatform
from mlplane.operator.platforms.serving_client import deployment_admin_token
from mlplane.operator.reconcile.signing import written_event

log = logging.getLogger(__name__)

ROUNDS = 3


def _status(exc: Exception) -> int | None:
    from kubernetes.client.exceptions import ApiException

    return exc.status if isinstance(exc, ApiException) else None


def fresh_key() -> str:
    """A new random key: 256 bits, as 64 hex characters (printable in ``kubectl get -o yaml``)."""
    return secrets.token_hex(32)


def ensure_signing_secret(
    platform: KubeRayPlatform,
    namespace: str,
    md_name: str,
    uid: str,
    md_annotations: Mapping[str, str] | None,
    now: datetime,
    settle_seconds: float = signing.SETTLE_SECONDS,
) -> tuple[str | None, list[Event]]:
    """Make sure the Secret exists, is this ModelDeployment's and carries out a pending rotation.

    ``settle_seconds``: how long a staged key is only accepted before it signs
    (``MLPLANE_SIGNING_KEY_SETTLE``; raise it where the kubelet's ``syncFrequency`` or Secret
    cache TTL is longer than the defaults).

    Returns ``(conflict, events)``: ``conflict`` is the message when a Secret of that name is
    not this ModelDeployment's (nothing is written then; the caller deploys nothing). Raises
    the API's errors other than 409, and ``RuntimeError`` after :data:`ROUNDS` conflicts.
    """
    name = signing.secret_name(md_name)
    request = signing.rotate_request(md_annotations)
    for _ in range(ROUNDS):
        existing = platform.get_secret(namespace, name)
        keys = None
        if existing is not None:
            conflict = signing.ownership(existing, uid)
            if conflict is not None:
                return conflict, []
            keys = signing.secret_keys(existing)
        wanted = signing.next_keys(keys, request, fresh_key(), now, settle_seconds)
        if wanted is None:
            return None, []
        try:
            if existing is None:
                if not platform.create_secret(
                    signing.build_secret(md_name, namespace, uid, wanted)
                ):
                    continue  # made meanwhile: read it and decide again
                log.info("created Secret %s/%s (request-id signing key)", namespace, name)
                return None, []
            platform.patch_secret(namespace, name, signing.secret_patch(existing, wanted))
        except Exception as exc:
            if _status(exc) not in (404, 409):
                raise
            continue
        return None, [_written_event(name, keys, wanted, settle_seconds)]
    raise RuntimeError(f"Secret {namespace}/{name} changed under the operator {ROUNDS} times")


def _written_event(
    name: str, before: signing.SigningKeys | None, after: signing.SigningKeys, settle: float
) -> Event:
    """What a write to an existing Secret did, for the ModelDeployment's events."""
    return written_event(f"Secret {name}", before, after, settle)


def admin_token(
    platform: KubeRayPlatform, namespace: str, md_name: str, md_uid: str | None
) -> str | None:
    """The token of the serving app's admin routes (``/admin/v1/stats``, ``/admin/v1/drift``),
    derived from the ModelDeployment's signing Secret; None when there is none yet, it is not
    this ModelDeployment's (never read: :func:`~mlplane.operator.builders.signing.ownership`)
    or it cannot be read now (the read then answers 401, reported as Unavailable)."""
    try:
        secret = platform.get_secret(namespace, signing.secret_name(md_name))
    except Exception as exc:  # the API unavailable: the caller reports the read as failed
        log.warning("signing Secret of %s/%s not read: %r", namespace, md_name, exc)
        return None
    if secret is None or md_uid is None or signing.ownership(secret, md_uid) is not None:
        return None
    keys = signing.secret_keys(secret)
    return deployment_admin_token(keys.current if keys else None, namespace, md_name)
