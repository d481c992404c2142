"""Pieces shared by the RayJob and RayService builders: Ray containers and pod templates."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from mlplane.operator.builders.placement import GPU_RESOURCE, Placement

#: The Ray version of mlplane's images (``rayVersion`` tells KubeRay which features to use).
RAY_VERSION = "2.60.0"
HEAD_CONTAINER = "ray-head"
#: Ray's Prometheus endpoint on every node and Serve's HTTP port, declared under KubeRay's own
#: port names so that scrape configs (the chart's PodMonitors) select them by name.
METRICS_PORT_NAME, METRICS_PORT = "metrics", 8080
SERVE_PORT_NAME, SERVE_PORT = "serve", 8000
WORKER_CONTAINER = "ray-worker"
#: Largest value of an int32 field in KubeRay's API.
INT32_MAX = 2**31 - 1
#: Ray's images run as user ``ray``: uid 1000, primary group ``users`` (gid 100).
RAY_UID = 1000
RAY_GID = 100


def container_security_context() -> dict[str, Any]:
    """The restricted Pod Security profile, for every container mlplane puts in a Ray pod.

    Ray needs nothing the restricted profile forbids: it runs as the image's user ``ray``
    (never root), binds only ports above 1024, and its object store uses ``/dev/shm`` or
    ``/tmp``, both writable without privileges. What is lost: the dashboard's py-spy stack
    traces and CPU flame graphs of *other* processes (they need ``SYS_PTRACE``, dropped here).
    The root filesystem stays writable (Ray writes its session folder, logs and runtime
    environments under ``/tmp/ray`` and ``~``); the restricted profile does not require it.
    """
    return {
        "runAsNonRoot": True,
        "runAsUser": RAY_UID,
        "allowPrivilegeEscalation": False,
        "privileged": False,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def pod_security_context() -> dict[str, Any]:
    """Pod-wide: non-root, Ray's uid/gid, RuntimeDefault seccomp.

    Pod-wide settings also cover containers KubeRay adds itself. It gives its autoscaler
    sidecar the context of ``autoscalerOptions.securityContext`` (set by the builders); the
    ``SidecarMode`` job submitter it adds to a RayJob's head pod gets no container
    securityContext of its own in KubeRay 1.7 (only image and resources), so under an
    *enforced* restricted profile that head pod would be refused for its
    ``allowPrivilegeEscalation`` and capabilities: enforce ``baseline`` (and warn/audit
    ``restricted``) in training namespaces until KubeRay sets them.
    """
    return {
        "runAsNonRoot": True,
        "runAsUser": RAY_UID,
        "runAsGroup": RAY_GID,
        "fsGroup": RAY_GID,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def quantity(value: int | str) -> str:
    """A quantity as a string, the form ``kubectl get -o yaml`` shows."""
    return str(value)


def ray_container(
    name: str,
    image: str,
    *,
    cpu: int | str,
    memory: int | str,
    gpus: int = 0,
    serve_port: bool = False,
) -> dict[str, Any]:
    """The Ray container of a pod, with requests equal to limits.

    Equal requests and limits give the pod Guaranteed QoS (the last to be evicted under node
    pressure) and make KubeRay tell Ray exactly the CPUs, memory and GPUs the pod owns
    (KubeRay derives ``num-cpus``/``memory``/``num-gpus`` from the limits). Every container
    declares Ray's metrics port, and ``serve_port`` adds Serve's (a serving cluster's head).
    """
    resources = {"cpu": quantity(cpu), "memory": quantity(memory)}
    if gpus > 0:
        resources[GPU_RESOURCE] = str(gpus)
    return {
        "name": name,
        "image": image,
        "resources": {"requests": dict(resources), "limits": dict(resources)},
        "securityContext": container_security_context(),
        "ports": [
            {"name": METRICS_PORT_NAME, "containerPort": METRICS_PORT, "protocol": "TCP"},
            *(
                [{"name": SERVE_PORT_NAME, "containerPort": SERVE_PORT, "protocol": "TCP"}]
                if serve_port
                else []
            ),
        ],
    }


def pod_template(
    labels: Mapping[str, str],
    container: dict[str, Any],
    placement: Placement,
    service_account: str | None = None,
) -> dict[str, Any]:
    """A pod template with one Ray container, its labels, its placement and identity.

    ``service_account`` is how Ray pods get cloud credentials without static keys (IRSA or
    Pod Identity bind a role to it); without one they run as the namespace's default. The pod
    runs under :func:`pod_security_context`.
    """
    spec: dict[str, Any] = {
        "containers": [container],
        "securityContext": pod_security_context(),
        **placement.pod_spec_fields(),
    }
    if service_account:
        spec["serviceAccountName"] = service_account
    return {"metadata": {"labels": dict(labels)}, "spec": spec}


def int32(value: int, field: str) -> int:
    """``value``, checked to fit KubeRay's int32 fields."""
    if not 0 <= value <= INT32_MAX:
        raise ValueError(f"{field} must be between 0 and {INT32_MAX} (got {value})")
    return value


#: The in-tree autoscaler sidecar KubeRay adds to the head pod: restricted, and bounded.
AUTOSCALER_RESOURCES = {"cpu": "500m", "memory": "512Mi"}


def autoscaler_options() -> dict[str, Any]:
    """``autoscalerOptions`` of a cluster with ``enableInTreeAutoscaling``.

    KubeRay builds the autoscaler container itself; without these it would run with no
    securityContext and no limits in an otherwise restricted head pod.
    """
    return {
        "resources": {
            "requests": dict(AUTOSCALER_RESOURCES),
            "limits": dict(AUTOSCALER_RESOURCES),
        },
        "securityContext": container_security_context(),
    }
