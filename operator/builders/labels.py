"""Names, labels and owner references of the objects mlplane creates.

Children carry labels chosen here and nothing else. The parent's labels are never copied: GitOps
tools mark what they manage with a tracking label (Argo CD's ``app.kubernetes.io/instance``),
and a child carrying it would look like an unmanaged, out-of-sync resource of the application
(or be pruned by it). KubeRay copies a RayJob's/RayService's labels onto the RayCluster it
creates, so the same discipline protects the grandchildren too.

Names are deterministic (``<name>-a<attempt>``, ``<name>``): a restarted operator or a retried
handler computes the same name, and the API server's name uniqueness is what prevents a duplicate.
"""

from __future__ import annotations

import re
from typing import Any, Final

from mlplane.crds import API_VERSION

MANAGED_BY: Final = "app.kubernetes.io/managed-by"
MANAGED_BY_VALUE: Final = "mlplane"
TRAININGJOB: Final = "mlplane.dev/trainingjob"
MODELDEPLOYMENT: Final = "mlplane.dev/modeldeployment"
ATTEMPT: Final = "mlplane.dev/attempt"
#: On a retraining TrainingJob a drifting ModelDeployment created: which retrain of that
#: deployment it is (1, 2, ...), beside :data:`MODELDEPLOYMENT` naming the deployment. Read back
#: after a restart, so the next retrain's number never reuses one already taken.
RETRAIN: Final = "mlplane.dev/retrain"
#: ``OnDemand`` or ``Spot``: where an attempt's spot-capable workers run (read back by the
#: operator after a restart, so it never has to remember it).
CAPACITY: Final = "mlplane.dev/capacity"
#: Kueue admits RayJobs labelled with their LocalQueue.
KUEUE_QUEUE: Final = "kueue.x-k8s.io/queue-name"
#: Set by KubeRay on every pod of a Ray cluster (``head`` or ``worker``).
RAY_NODE_TYPE: Final = "ray.io/node-type"

#: KubeRay's limits (``MaxRayJobNameLength``/``MaxRayServiceNameLength`` in KubeRay 1.7): the
#: RayCluster it creates appends a suffix and must stay within 53 characters.
MAX_RAYJOB_NAME: Final = 47
MAX_RAYSERVICE_NAME: Final = 47
#: KubeRay validates RayJob/RayService names as DNS-1035 labels (they must start with a letter).
DNS_1035: Final = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")


def _check_name(name: str, kind: str, limit: int) -> str:
    if len(name) > limit or not DNS_1035.match(name):
        raise ValueError(
            f"{kind} name {name!r} is not valid for KubeRay: it must be a DNS-1035 label "
            f"(lowercase letters, digits and '-', starting with a letter) of at most {limit} "
            "characters"
        )
    return name


def rayjob_name(trainingjob: str, attempt: int) -> str:
    """The RayJob of one attempt: ``<trainingjob>-a<attempt>``."""
    if attempt < 1:
        raise ValueError(f"attempts are numbered from 1 (got {attempt})")
    return _check_name(f"{trainingjob}-a{attempt}", "RayJob", MAX_RAYJOB_NAME)


def rayservice_name(modeldeployment: str) -> str:
    """The RayService of a ModelDeployment: the same name (one per deployment, stable)."""
    return _check_name(modeldeployment, "RayService", MAX_RAYSERVICE_NAME)


def trainingjob_labels(name: str, attempt: int, capacity: str) -> dict[str, str]:
    """Labels of an attempt's RayJob and of its pods."""
    return {
        MANAGED_BY: MANAGED_BY_VALUE,
        TRAININGJOB: name,
        ATTEMPT: str(attempt),
        CAPACITY: capacity,
    }


def trainingjob_selector(name: str, attempt: int | None = None) -> str:
    """Label selector of the RayJobs (and pods) of a TrainingJob, or of one of its attempts."""
    selector = f"{MANAGED_BY}={MANAGED_BY_VALUE},{TRAININGJOB}={name}"
    return selector if attempt is None else f"{selector},{ATTEMPT}={attempt}"


def modeldeployment_labels(name: str) -> dict[str, str]:
    """Labels of a ModelDeployment's RayService and of its pods."""
    return {MANAGED_BY: MANAGED_BY_VALUE, MODELDEPLOYMENT: name}


def serving_pod_selector(name: str) -> str:
    """Selector of the pods that hold Serve replicas, for ``status.selector`` (scale subresource).

    Only workers: the head runs no model replica.
    """
    return f"{MANAGED_BY}={MANAGED_BY_VALUE},{MODELDEPLOYMENT}={name},{RAY_NODE_TYPE}=worker"


def retrain_labels(modeldeployment: str, number: int) -> dict[str, str]:
    """Labels of the ``number``-th retraining TrainingJob of a ModelDeployment."""
    return {MANAGED_BY: MANAGED_BY_VALUE, MODELDEPLOYMENT: modeldeployment, RETRAIN: str(number)}


def retrain_selector(modeldeployment: str) -> str:
    """Label selector of every retraining TrainingJob a ModelDeployment created."""
    return f"{MANAGED_BY}={MANAGED_BY_VALUE},{MODELDEPLOYMENT}={modeldeployment},{RETRAIN}"


def owner_reference(kind: str, name: str, uid: str) -> dict[str, Any]:
    """The controller reference from a child to its mlplane parent.

    ``blockOwnerDeletion`` makes a foreground deletion of the parent wait for the child, and
    deleting the parent (any propagation) lets the garbage collector remove the child.
    """
    if not uid:
        raise ValueError(f"the owner {kind}/{name} has no uid: it must come from the API server")
    return {
        "apiVersion": API_VERSION,
        "kind": kind,
        "name": name,
        "uid": uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }
