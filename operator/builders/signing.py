"""The request-id signing key of a ModelDeployment: a Secret the operator owns, and its rotation.

The serving app signs every request id with an HMAC key and verifies the id again when
feedback arrives (``mlplane.serving.request_id``). The key must be the same on every replica,
survive a replaced Ray cluster (KubeRay's NewCluster upgrade) and be readable by nobody who can
merely reach the cluster. So it is a Kubernetes Secret per ModelDeployment:

- name ``<modeldeployment>-request-signing`` (:func:`secret_name`), controlled by the
  ModelDeployment (ownerReference: deleted with it), created by the operator *before* the
  RayService, with a random ``current`` key made once and never regenerated while the Secret
  exists (a restart or a retry reads it back);
- a Secret of that name controlled by anything else is never adopted (:func:`ownership`): the
  deployment waits with the condition ``Ready=False``, reason ``SigningSecretConflict``;
- mounted read-only into every Ray container of the RayService at :data:`MOUNT_PATH` (files
  ``current``, and during and after a rotation ``next`` and ``previous``), whose path the app
  gets in ``args.signing_keys``;
- **rotation**, in two steps, because the kubelet updates a mounted Secret in each pod at its
  own time (its sync period plus cache TTL, about a minute or two): the user sets the
  annotation :data:`ROTATE_ANNOTATION` on the ModelDeployment to a new value (a timestamp,
  say). When that value differs from the one recorded on the Secret (:data:`ROTATED_FOR`), the
  operator *stages* a new random key as ``next`` and records the value and the time
  (:data:`STAGED_AT`): every replica accepts ``next`` as soon as it sees it, but nobody signs
  with it yet. After :data:`SETTLE_SECONDS` (every pod has it by then), the operator
  *promotes* it: ``previous`` <- ``current``, ``current`` <- ``next``. So an id signed by a pod
  that already has the new key never reaches a pod that does not know it, and ids issued
  before the rotation stay valid until the rotation after it. Each step is one patch
  (``resourceVersion``-checked) and is decided from the Secret alone: the same value never
  rotates twice, a retried round or a restarted operator finds the step recorded.

The local platform keeps the same files in a folder under its state dir and uses the same
decision (:func:`next_keys`). Pure: the caller passes the random key in.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any, Final

from mlplane.operator.builders import labels as lbl

#: Where the Secret is mounted in the Ray containers (what ``args.signing_keys`` names).
MOUNT_PATH: Final = "/etc/mlplane/request-signing"
VOLUME: Final = "request-signing"
SECRET_SUFFIX: Final = "-request-signing"
#: Keys of the Secret (files of the mounted directory).
CURRENT: Final = "current"
PREVIOUS: Final = "previous"
#: A staged key: accepted, not yet signed with.
NEXT: Final = "next"
#: On the ModelDeployment, set by the user: a new value asks for one rotation.
ROTATE_ANNOTATION: Final = "mlplane.dev/rotate-signing-key"
#: On the Secret, set by the operator: the rotation request it has carried out last.
ROTATED_FOR: Final = "mlplane.dev/signing-key-rotated-for"
#: On the Secret, set by the operator while a key is staged: when (RFC 3339, UTC).
STAGED_AT: Final = "mlplane.dev/signing-key-staged-at"
#: How long a staged key is only accepted before it signs: the kubelet's sync period (1 min)
#: plus its Secret cache TTL (1 min) by default, so every pod has it before any signs with it.
SETTLE_SECONDS: Final = 150.0
#: Secret names are DNS subdomains: at most 253 characters.
_MAX_NAME = 253


def secret_name(modeldeployment: str) -> str:
    """The signing Secret of a ModelDeployment: ``<name>-request-signing``."""
    name = f"{modeldeployment}{SECRET_SUFFIX}"
    if len(name) > _MAX_NAME:
        raise ValueError(f"Secret name {name!r} is longer than {_MAX_NAME} characters")
    return name


@dataclass(frozen=True)
class SigningKeys:
    """What the Secret holds (keys as text) and where its rotation stands."""

    current: str
    previous: str | None = None
    #: Staged by a rotation: accepted for verification, promoted to ``current`` later.
    next: str | None = None
    #: The rotation request last acted on (staged or promoted).
    rotated_for: str | None = None
    #: When ``next`` was staged (RFC 3339, UTC); None when nothing is staged.
    staged_at: str | None = None


def _iso(when: datetime) -> str:
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _parse_iso(text: str | None) -> datetime | None:
    try:
        return datetime.strptime(text or "", "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    except ValueError:
        return None


def rotate_request(md_annotations: Mapping[str, str] | None) -> str | None:
    """The rotation the user asks for (the annotation's value), None when there is none."""
    value = (md_annotations or {}).get(ROTATE_ANNOTATION)
    return (str(value).strip() or None) if value is not None else None


def next_keys(
    existing: SigningKeys | None,
    request: str | None,
    fresh_key: str,
    now: datetime,
    settle_s: float = SETTLE_SECONDS,
) -> SigningKeys | None:
    """The keys to write now, or None: nothing to do (the idempotent core of both platforms).

    - nothing yet (or no readable ``current``): ``fresh_key`` as ``current``; a pending request
      counts as carried out (the key is new anyway);
    - a key staged for ``settle_s`` seconds (or with an unreadable time): promote it
      (``previous`` <- ``current``, ``current`` <- ``next``);
    - a key staged more recently: None (wait; a new request waits for the promotion);
    - a ``request`` different from the recorded one: stage ``fresh_key`` as ``next``;
    - otherwise None: a key is never regenerated while it exists.
    """
    if existing is None or not existing.current:
        return SigningKeys(fresh_key, rotated_for=request)
    if existing.next is not None:
        staged = _parse_iso(existing.staged_at)
        if staged is not None and (now - staged).total_seconds() < settle_s:
            return None
        return SigningKeys(existing.next, existing.current, None, existing.rotated_for, None)
    if request is not None and request != existing.rotated_for:
        return replace(existing, next=fresh_key, rotated_for=request, staged_at=_iso(now))
    return None


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode("ascii")


def _data(keys: SigningKeys) -> dict[str, str]:
    data = {CURRENT: _b64(keys.current)}
    for name, value in ((PREVIOUS, keys.previous), (NEXT, keys.next)):
        if value is not None:
            data[name] = _b64(value)
    return data


def _annotations(keys: SigningKeys) -> dict[str, str]:
    pairs = ((ROTATED_FOR, keys.rotated_for), (STAGED_AT, keys.staged_at))
    return {name: value for name, value in pairs if value is not None}


def build_secret(
    modeldeployment: str, namespace: str, owner_uid: str, keys: SigningKeys
) -> dict[str, Any]:
    """The Secret to create, controlled by the ModelDeployment ``owner_uid``."""
    metadata: dict[str, Any] = {
        "name": secret_name(modeldeployment),
        "namespace": namespace,
        "labels": lbl.modeldeployment_labels(modeldeployment),
        "ownerReferences": [lbl.owner_reference("ModelDeployment", modeldeployment, owner_uid)],
    }
    if _annotations(keys):
        metadata["annotations"] = _annotations(keys)
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": metadata,
        "type": "Opaque",
        "data": _data(keys),
    }


def secret_patch(secret: Mapping[str, Any], keys: SigningKeys) -> dict[str, Any]:
    """Merge patch writing ``keys`` into the stored Secret (``resourceVersion`` included, so
    a concurrent write answers 409 instead of being overwritten)."""
    meta = secret.get("metadata") or {}
    data: dict[str, Any] = {PREVIOUS: None, NEXT: None, **_data(keys)}
    metadata: dict[str, Any] = {
        "annotations": {ROTATED_FOR: keys.rotated_for, STAGED_AT: keys.staged_at}
    }
    if meta.get("resourceVersion"):
        metadata["resourceVersion"] = meta["resourceVersion"]
    return {"metadata": metadata, "data": data}


def secret_keys(secret: Mapping[str, Any]) -> SigningKeys | None:
    """The keys a stored Secret holds (None when it has no readable ``current``)."""
    data = secret.get("data") or {}
    annotations = (secret.get("metadata") or {}).get("annotations") or {}

    def text(key: str) -> str | None:
        raw = data.get(key)
        if not raw:
            return None
        try:
            return base64.b64decode(raw, validate=True).decode().strip() or None
        except (binascii.Error, UnicodeDecodeError):
            return None

    current = text(CURRENT)
    if current is None:
        return None
    return SigningKeys(
        current,
        text(PREVIOUS),
        text(NEXT),
        annotations.get(ROTATED_FOR),
        annotations.get(STAGED_AT),
    )


def ownership(secret: Mapping[str, Any], owner_uid: str) -> str | None:
    """Why the stored Secret is not this ModelDeployment's (None: it is).

    Only a Secret whose controller is this ModelDeployment (its uid) is used: a Secret of
    that name made by someone else, or left by an earlier ModelDeployment of the same name,
    is never read nor written.
    """
    meta = secret.get("metadata") or {}
    controller = next((r for r in meta.get("ownerReferences") or () if r.get("controller")), None)
    if controller is not None and controller.get("uid") == owner_uid:
        return None
    who = (
        f"is controlled by {controller.get('kind')} {controller.get('name')} "
        f"(uid {controller.get('uid')})"
        if controller is not None
        else "was not made by mlplane for this ModelDeployment"
    )
    return (
        f"Secret {meta.get('name')} (the request-id signing key) {who}: it is not adopted and "
        "nothing is deployed until it is deleted or the ModelDeployment renamed"
    )


def mount_signing_keys(pod_template: dict[str, Any], modeldeployment: str) -> dict[str, Any]:
    """``pod_template`` with the signing Secret mounted read-only at :data:`MOUNT_PATH` in
    every container.

    Mode 0444: the files belong to root (no ``fsGroup`` is assumed) and Ray runs as a non-root
    user, the container's only one; the Secret leaves the pod through no other path.
    """
    spec = pod_template["spec"]
    spec.setdefault("volumes", []).append(
        {
            "name": VOLUME,
            "secret": {"secretName": secret_name(modeldeployment), "defaultMode": 0o444},
        }
    )
    for container in spec["containers"]:
        container.setdefault("volumeMounts", []).append(
            {"name": VOLUME, "mountPath": MOUNT_PATH, "readOnly": True}
        )
    return pod_template
