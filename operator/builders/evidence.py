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
from datetime import datetime, timedelta
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


# --- notices: capacity about to go (before the loss) ------------------------------------------

#: Taint keys that announce a node's end *before* it goes, with the notice window in seconds
#: (how long the provider gives between the signal and the loss; None: no fixed window).
#: AWS gives a spot instance two minutes, GKE a spot/preemptible VM 30 s. Karpenter's taint
#: covers spot interruption (two minutes on AWS) as well as consolidation, drift and expiry,
#: which wait for the pods' grace period: no fixed window.
NOTICE_TAINTS: Mapping[str, float | None] = {
    "aws-node-termination-handler/spot-itn": 120.0,
    "cloud.google.com/impending-node-termination": 30.0,
    "karpenter.sh/disrupted": None,
    "karpenter.sh/disruption": None,
}
#: Any other AWS Node Termination Handler taint (rebalance recommendation, scheduled
#: maintenance, ASG lifecycle termination) is a notice with no fixed window.
NOTICE_TAINT_PREFIXES: tuple[str, ...] = ("aws-node-termination-handler/",)
#: The signal name of a pod's ``DisruptionTarget`` condition.
POD_NOTICE = "DisruptionTarget"


@dataclass(frozen=True)
class Notice:
    """Capacity announced to go: the running work has until ``deadline`` (when known).

    ``time`` is when the signal was raised, when the object says (a taint's ``timeAdded``, the
    condition's ``lastTransitionTime``); ``deadline`` is ``time`` plus the signal's window, or a
    pod's ``deletionTimestamp``. Either may be None: the caller then counts from when it saw it.
    """

    signal: str
    node: str | None
    pod: str | None = None
    time: str | None = None
    window_seconds: float | None = None
    deadline: str | None = None


def _plus(stamp: str | None, seconds: float | None) -> str | None:
    if stamp is None or seconds is None:
        return None
    try:
        moment = datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    except ValueError:
        return None
    return (moment + timedelta(seconds=seconds)).strftime("%Y-%m-%dT%H:%M:%SZ")


def notice_window(key: str) -> float | None:
    """The notice window of a notice taint key (None: no fixed window, or not a notice)."""
    return NOTICE_TAINTS.get(key)


def is_notice_taint(key: str) -> bool:
    """Whether a taint key announces the node's end before it goes."""
    return key in NOTICE_TAINTS or key.startswith(NOTICE_TAINT_PREFIXES)


def node_notice(node: Mapping[str, Any]) -> Notice | None:
    """The first notice taint of a Node (in node order), or None.

    Spot or not: a node being disrupted by Karpenter or drained by the termination handler
    ends the work on it either way, and a checkpoint first is worth it on any capacity.
    """
    name = str((node.get("metadata") or {}).get("name", "")) or None
    for taint in (node.get("spec") or {}).get("taints") or ():
        key = str(taint.get("key", ""))
        if is_notice_taint(key):
            window = notice_window(key)
            added = taint.get("timeAdded")
            return Notice(signal=key, node=name, time=added, window_seconds=window,
                          deadline=_plus(added, window))  # fmt: skip
    return None


def pod_notice(pod: Mapping[str, Any]) -> Notice | None:
    """A pod's ``DisruptionTarget=True`` condition as a notice, or None.

    The condition is set before the pod is deleted (eviction, preemption, taint manager, node
    shutdown); a pod already deleting gives its ``deletionTimestamp`` as the deadline.
    """
    meta = pod.get("metadata") or {}
    status = pod.get("status") or {}
    for condition in status.get("conditions") or ():
        if condition.get("type") == "DisruptionTarget" and condition.get("status") == "True":
            return Notice(
                signal=POD_NOTICE,
                node=(pod.get("spec") or {}).get("nodeName"),
                pod=str(meta.get("name", "")) or None,
                time=condition.get("lastTransitionTime"),
                deadline=meta.get("deletionTimestamp"),
            )
    return None
