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
  ``current`` and ``previous``), whose path the app gets in ``args.signing_keys``;
- **rotation**: the user sets the annotation :data:`ROTATE_ANNOTATION` on the ModelDeployment to
  a new value (a timestamp, say). When that value differs from the one recorded on the Secret
  (:data:`ROTATED_FOR`), the operator writes ``previous`` <- ``current`` and a new random
  ``current``, and records the value, in one patch: the same value never rotates twice, a
  retried round finds it recorded. Serving signs with ``current`` and accepts both, and
  Kubernetes updates the mounted files in place (the kubelet's sync, up to about a minute):
  ids issued before the rotation stay valid until the rotation after it.

The local platform keeps the same two files in a folder under its state dir and uses the same
decision (:func:`next_keys`). Pure: the caller passes the random key in.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from mlplane.operator.builders import labels as lbl

#: Where the Secret is mounted in the Ray containers (what ``args.signing_keys`` names).
MOUNT_PATH: Final = "/etc/mlplane/request-signing"
VOLUME: Final = "request-signing"
SECRET_SUFFIX: Final = "-request-signing"
#: Keys of the Secret (files of the mounted directory).
CURRENT: Final = "current"
PREVIOUS: Final = "previous"
#: On the ModelDeployment, set by the user: a new value asks for one rotation.
ROTATE_ANNOTATION: Final = "mlplane.dev/rotate-signing-key"
#: On the Secret, set by the operator: the rotation request it has carried out last.
ROTATED_FOR: Final = "mlplane.dev/signing-key-rotated-for"
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
    """What the Secret holds (keys as text) and the rotation request last carried out."""

    current: str
    previous: str | None = None
    rotated_for: str | None = None


def rotate_request(md_annotations: Mapping[str, str] | None) -> str | None:
    """The rotation the user asks for (the annotation's value), None when there is none."""
    value = (md_annotations or {}).get(ROTATE_ANNOTATION)
    return (str(value).strip() or None) if value is not None else None


def next_keys(
    existing: SigningKeys | None, request: str | None, fresh_key: str
) -> SigningKeys | None:
    """The keys to write now, or None: nothing to do (the idempotent core of both platforms).

    - nothing yet (or no readable ``current``): ``fresh_key`` as ``current``; a pending request
      counts as carried out (the key is new anyway);
    - a ``request`` different from the recorded one: ``previous`` <- ``current``, ``current`` <-
      ``fresh_key``, the request recorded;
    - otherwise None: a key is never regenerated while it exists.
    """
    if existing is None or not existing.current:
        return SigningKeys(fresh_key, None, request)
    if request is not None and request != existing.rotated_for:
        return SigningKeys(fresh_key, existing.current, request)
    return None


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode("ascii")


def _data(keys: SigningKeys) -> dict[str, str]:
    data = {CURRENT: _b64(keys.current)}
    if keys.previous is not None:
        data[PREVIOUS] = _b64(keys.previous)
    return data


def _annotations(keys: SigningKeys) -> dict[str, str]:
    return {ROTATED_FOR: keys.rotated_for} if keys.rotated_for is not None else {}


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
    if keys.rotated_for is not None:
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
    data: dict[str, Any] = _data(keys)
    if keys.previous is None:
        data[PREVIOUS] = None
    metadata: dict[str, Any] = {"annotations": {ROTATED_FOR: keys.rotated_for}}
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
    return SigningKeys(current, text(PREVIOUS), annotations.get(ROTATED_FOR))


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
