"""Pieces shared by the RayJob and RayService builders: Ray containers and pod templates."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from mlplane.operator.builders.placement import GPU_RESOURCE, Placement

#: The Ray version of mlplane's images (``rayVersion`` tells KubeRay which features to use).
RAY_VERSION = "2.60.0"
HEAD_CONTAINER = "ray-head"
WORKER_CONTAINER = "ray-worker"
#: Largest value of an int32 field in KubeRay's API.
INT32_MAX = 2**31 - 1


def quantity(value: int | str) -> str:
    """A quantity as a string, the form ``kubectl get -o yaml`` shows."""
    return str(value)


def ray_container(
    name: str, image: str, *, cpu: int | str, memory: int | str, gpus: int = 0
) -> dict[str, Any]:
    """The Ray container of a pod, with requests equal to limits.

    Equal requests and limits give the pod Guaranteed QoS (the last to be evicted under node
    pressure) and make KubeRay tell Ray exactly the CPUs, memory and GPUs the pod owns
    (KubeRay derives ``num-cpus``/``memory``/``num-gpus`` from the limits).
    """
    resources = {"cpu": quantity(cpu), "memory": quantity(memory)}
    if gpus > 0:
        resources[GPU_RESOURCE] = str(gpus)
    return {
        "name": name,
        "image": image,
        "resources": {"requests": dict(resources), "limits": dict(resources)},
    }


def pod_template(
    labels: Mapping[str, str],
    container: dict[str, Any],
    placement: Placement,
    service_account: str | None = None,
) -> dict[str, Any]:
    """A pod template with one Ray container, its labels, its placement and identity.

    ``service_account`` is how Ray pods get cloud credentials without static keys (IRSA or
    Pod Identity bind a role to it); without one they run as the namespace's default.
    """
    spec: dict[str, Any] = {"containers": [container], **placement.pod_spec_fields()}
    if service_account:
        spec["serviceAccountName"] = service_account
    return {"metadata": {"labels": dict(labels)}, "spec": spec}


def int32(value: int, field: str) -> int:
    """``value``, checked to fit KubeRay's int32 fields."""
    if not 0 <= value <= INT32_MAX:
        raise ValueError(f"{field} must be between 0 and {INT32_MAX} (got {value})")
    return value
