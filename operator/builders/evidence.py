"""Preemption evidence: what a Node or a Pod says about capacity being taken away.

The operator decides whether a failed attempt was *preempted* (own budget) or failed for code
reasons (``backoffLimit``) from what it saw of the attempt's pods and their nodes. These pure
functions read that evidence from Node and Pod objects (dicts, as the API returns them).

Spot capacity, under any convention (not only the one the operator is configured with, so a
mixed or migrated cluster is still read right):

- EKS managed node groups: ``eks.amazonaws.com/capacityType=SPOT``
- Karpenter: ``karpenter.sh/capacity-type=spot``
- GKE: ``cloud.google.com/gke-spot=true``; preemptible VMs:
  ``cloud.google.com/gke-preemptible=true``
- AKS: ``kubernetes.azure.com/scalesetpriority=spot``

Taints that mean "this node is being taken away or emptied" (:data:`DISRUPTION_TAINTS`):

- ``karpenter.sh/disrupted`` (Karpenter v1) and ``karpenter.sh/disruption`` (v0.3x): Karpenter is
  disrupting the node: spot interruption, consolidation, drift, expiry;
- ``aws-node-termination-handler/*`` (prefix): the AWS Node Termination Handler is draining the
  node for a spot interruption notice, a rebalance recommendation, scheduled maintenance or an
  ASG termination;
- ``cloud.google.com/impending-node-termination``: GKE is shutting the node down (spot and
  preemptible reclaim, graceful node shutdown);
- ``ToBeDeletedByClusterAutoscaler``: the cluster autoscaler is removing the node;
- ``node.kubernetes.io/out-of-service``: the node was declared shut down (non-graceful shutdown);
- ``node.kubernetes.io/unreachable`` and ``node.kubernetes.io/not-ready``: the node controller
  lost the node, which is how a reclaimed spot VM looks before its Node object is deleted;
- ``node.kubernetes.io/unschedulable``: the node is cordoned, the first step of every drain.
  On its own a cordon evicts nothing, so a pod that failed on a cordoned node was most likely
  drained; it is reported as *draining* (:attr:`NodeEvidence.draining`) rather than *terminating*.

Pods: the ``DisruptionTarget`` condition with status ``True`` (Kubernetes ≥ 1.26) says the pod is
about to be deleted by a disruption, with reason ``PreemptionByScheduler``,
``DeletionByTaintManager``, ``EvictionByEvictionAPI``, ``DeletionByPodGC`` or
``TerminationByKubelet``. Pods that predate that condition say it with ``status.reason``:
``Evicted``, or ``Terminated``/``Shutdown``/``NodeShutdown`` from the kubelet's graceful node
shutdown.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

#: (label, value) pairs that mark spot (or preemptible) capacity.
SPOT_LABELS: tuple[tuple[str, str], ...] = (
    ("eks.amazonaws.com/capacityType", "SPOT"),
    ("karpenter.sh/capacity-type", "spot"),
    ("cloud.google.com/gke-spot", "true"),
    ("cloud.google.com/gke-preemptible", "true"),
    ("kubernetes.azure.com/scalesetpriority", "spot"),
)
#: Taint keys meaning the node is going away.
TERMINATION_TAINTS: frozenset[str] = frozenset(
    {
        "karpenter.sh/disrupted",
        "karpenter.sh/disruption",
        "cloud.google.com/impending-node-termination",
        "ToBeDeletedByClusterAutoscaler",
        "node.kubernetes.io/out-of-service",
        "node.kubernetes.io/unreachable",
        "node.kubernetes.io/not-ready",
    }
)
TERMINATION_TAINT_PREFIXES: tuple[str, ...] = ("aws-node-termination-handler/",)
#: Taint keys meaning the node is being emptied (cordoned) but not necessarily going away.
DRAIN_TAINTS: frozenset[str] = frozenset({"node.kubernetes.io/unschedulable"})
DISRUPTION_TAINTS: frozenset[str] = TERMINATION_TAINTS | DRAIN_TAINTS

#: Kubelet/eviction reasons in ``pod.status.reason`` of pods that predate ``DisruptionTarget``.
_POD_DISRUPTION_REASONS = frozenset({"Evicted", "Terminated", "Shutdown", "NodeShutdown"})


def _labels(obj: Mapping[str, Any]) -> Mapping[str, str]:
    return (obj.get("metadata") or {}).get("labels") or {}


def spot_label(node: Mapping[str, Any]) -> str | None:
    """``key=value`` of the label that marks this node as spot capacity, or ``None``."""
    labels = _labels(node)
    for key, value in SPOT_LABELS:
        if str(labels.get(key, "")).lower() == value.lower():
            return f"{key}={labels[key]}"
    return None


def is_spot_node(node: Mapping[str, Any]) -> bool:
    """Whether the node is spot (or preemptible) capacity under any known convention."""
    return spot_label(node) is not None


def _is_termination_key(key: str) -> bool:
    return key in TERMINATION_TAINTS or key.startswith(TERMINATION_TAINT_PREFIXES)


def disruption_taints(node: Mapping[str, Any]) -> list[str]:
    """The node's taints that mean termination or draining, as ``key:effect``, in node order."""
    out = []
    for taint in (node.get("spec") or {}).get("taints") or ():
        key = taint.get("key", "")
        if _is_termination_key(key) or key in DRAIN_TAINTS:
            effect = taint.get("effect")
            out.append(f"{key}:{effect}" if effect else key)
    return out


@dataclass(frozen=True)
class NodeEvidence:
    """What a node says about capacity loss."""

    name: str
    spot: bool
    #: ``key=value`` of the label that marks it spot.
    spot_label: str | None
    #: Disruption taints found, as ``key:effect``.
    taints: tuple[str, ...]

    @property
    def terminating(self) -> bool:
        """The node is being taken away (a taint other than a plain cordon)."""
        return any(_is_termination_key(t.split(":", 1)[0]) for t in self.taints)

    @property
    def draining(self) -> bool:
        """The node is cordoned or being taken away: pods on it are being evicted."""
        return bool(self.taints)


def node_evidence(node: Mapping[str, Any]) -> NodeEvidence:
    """Spot label and disruption taints of one Node object.

    ``spec.unschedulable: true`` counts as the cordon taint even if the node controller has not
    added the taint yet.
    """
    taints = disruption_taints(node)
    spec = node.get("spec") or {}
    if spec.get("unschedulable") and not any(
        t.startswith("node.kubernetes.io/unschedulable") for t in taints
    ):
        taints.append("node.kubernetes.io/unschedulable:NoSchedule")
    label = spot_label(node)
    return NodeEvidence(
        name=str((node.get("metadata") or {}).get("name", "")),
        spot=label is not None,
        spot_label=label,
        taints=tuple(taints),
    )


@dataclass(frozen=True)
class PodDisruption:
    """A pod that was (or is about to be) removed by a disruption, not by its own failure."""

    pod: str
    node: str | None
    reason: str
    message: str
    #: When the condition became True, if the pod says.
    time: str | None = None


def pod_disruption(pod: Mapping[str, Any]) -> PodDisruption | None:
    """The disruption of a pod, from ``DisruptionTarget=True`` or a kubelet/eviction reason."""
    name = str((pod.get("metadata") or {}).get("name", ""))
    node = (pod.get("spec") or {}).get("nodeName")
    status = pod.get("status") or {}
    for condition in status.get("conditions") or ():
        if condition.get("type") == "DisruptionTarget" and condition.get("status") == "True":
            return PodDisruption(
                pod=name,
                node=node,
                reason=str(condition.get("reason") or "DisruptionTarget"),
                message=str(condition.get("message") or ""),
                time=condition.get("lastTransitionTime"),
            )
    reason = status.get("reason")
    if reason in _POD_DISRUPTION_REASONS:
        message = str(status.get("message") or "")
        # "Terminated" is also what the kubelet says for other reasons: only node shutdown counts.
        if reason != "Terminated" or "shutdown" in message.lower():
            return PodDisruption(pod=name, node=node, reason=str(reason), message=message)
    return None


def is_disrupted_pod(pod: Mapping[str, Any]) -> bool:
    """Whether the pod carries disruption evidence (see :func:`pod_disruption`)."""
    return pod_disruption(pod) is not None
