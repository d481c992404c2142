"""Node selection per convention, and preemption evidence read from Nodes and Pods."""

from __future__ import annotations

import pytest
from builder_strategies import configs, trainingjobs
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mlplane.crds.common import Toleration
from mlplane.crds.validate import parse
from mlplane.operator.builders import (
    PlacementConflict,
    build_rayjob,
    is_disrupted_pod,
    is_spot_node,
    node_evidence,
    pod_disruption,
)
from mlplane.operator.builders.placement import CONVENTIONS, head_placement, place

#: Labels real nodes carry, per convention.
NODES = {
    "eks": {
        "spot": {"eks.amazonaws.com/capacityType": "SPOT"},
        "on-demand": {"eks.amazonaws.com/capacityType": "ON_DEMAND"},
    },
    "karpenter": {
        "spot": {"karpenter.sh/capacity-type": "spot"},
        "on-demand": {"karpenter.sh/capacity-type": "on-demand"},
    },
    "gke": {
        "spot": {"cloud.google.com/gke-spot": "true"},
        "on-demand": {},
    },
}
GKE_SPOT_TAINT = {"key": "cloud.google.com/gke-spot", "value": "true", "effect": "NoSchedule"}
GPU_TAINT = {"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}
MLPLANE_SPOT_TAINT = {"key": "mlplane.dev/spot", "value": "true", "effect": "NoSchedule"}


@pytest.mark.parametrize("convention", ["eks", "karpenter", "gke"])
def test_head_only_on_on_demand(convention):
    head = head_placement(convention)
    assert head.admits(NODES[convention]["on-demand"])
    assert not head.admits(NODES[convention]["spot"])
    assert not head.tolerates(GKE_SPOT_TAINT)
    assert not head.tolerates(MLPLANE_SPOT_TAINT)
    assert not head.tolerates(GPU_TAINT)


def test_gke_on_demand_excludes_spot_and_preemptible_without_needing_a_label():
    head = head_placement("gke")
    assert head.admits({})
    assert head.admits({"cloud.google.com/gke-spot": "false"})
    assert not head.admits({"cloud.google.com/gke-preemptible": "true"})
    fields = head.pod_spec_fields()
    assert "nodeSelector" not in fields
    terms = fields["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert terms["nodeSelectorTerms"] == [
        {
            "matchExpressions": [
                {"key": "cloud.google.com/gke-spot", "operator": "NotIn", "values": ["true"]},
                {
                    "key": "cloud.google.com/gke-preemptible",
                    "operator": "NotIn",
                    "values": ["true"],
                },
            ]
        }
    ]


@pytest.mark.parametrize("convention", ["eks", "karpenter", "gke"])
def test_spot_workers_only_on_spot_and_tolerate_spot_taints(convention):
    workers = place(convention, "Spot")
    assert workers.admits(NODES[convention]["spot"])
    assert not workers.admits(NODES[convention]["on-demand"])
    assert workers.tolerates(MLPLANE_SPOT_TAINT)
    assert workers.tolerates(GKE_SPOT_TAINT) == (convention == "gke")


@pytest.mark.parametrize("convention", ["eks", "karpenter", "gke"])
def test_prefer_spot_allows_both_and_prefers_spot(convention):
    workers = place(convention, "PreferSpot")
    assert workers.admits(NODES[convention]["spot"])
    assert workers.admits(NODES[convention]["on-demand"])
    assert workers.tolerates(MLPLANE_SPOT_TAINT)
    preferred = workers.pod_spec_fields()["affinity"]["nodeAffinity"][
        "preferredDuringSchedulingIgnoredDuringExecution"
    ]
    conv = CONVENTIONS[convention]
    assert preferred == [
        {
            "weight": 100,
            "preference": {
                "matchExpressions": [
                    {"key": conv.capacity_key, "operator": "In", "values": [conv.spot_value]}
                ]
            },
        }
    ]


@pytest.mark.parametrize(
    ("convention", "label"),
    [
        ("eks", "mlplane.dev/accelerator"),
        ("karpenter", "mlplane.dev/accelerator"),
        ("gke", "cloud.google.com/gke-accelerator"),
    ],
)
def test_gpu_pods_select_accelerator_and_tolerate_gpu_taint(convention, label):
    workers = place(convention, "OnDemand", accelerator="nvidia-l4", gpus=2)
    on_demand = NODES[convention]["on-demand"]
    assert workers.node_selector[label] == "nvidia-l4"
    assert workers.admits({**on_demand, label: "nvidia-l4"})
    assert not workers.admits({**on_demand, label: "nvidia-a100-80gb"})
    assert workers.tolerates(GPU_TAINT)
    assert not place(convention, "OnDemand").tolerates(GPU_TAINT)


def test_user_selector_and_tolerations_are_merged_once():
    user_toleration = Toleration(key="dedicated", operator="Equal", value="ml", effect="NoSchedule")
    duplicate = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
    placement = place(
        "eks",
        "Spot",
        gpus=1,
        node_selector={"team": "ml", "eks.amazonaws.com/capacityType": "SPOT"},
        tolerations=[user_toleration, duplicate],
    )
    assert placement.node_selector == {"team": "ml", "eks.amazonaws.com/capacityType": "SPOT"}
    assert placement.pod_spec_fields()["tolerations"] == [
        {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"},
        {"key": "mlplane.dev/spot", "operator": "Exists", "effect": "NoSchedule"},
        {"key": "dedicated", "operator": "Equal", "value": "ml", "effect": "NoSchedule"},
    ]


@pytest.mark.parametrize(
    ("convention", "selector"),
    [
        ("eks", {"eks.amazonaws.com/capacityType": "SPOT"}),
        ("karpenter", {"karpenter.sh/capacity-type": "spot"}),
        ("gke", {"cloud.google.com/gke-spot": "true"}),
        ("gke", {"cloud.google.com/gke-preemptible": "true"}),
    ],
)
def test_user_selector_cannot_send_the_head_to_spot(convention, selector):
    with pytest.raises(PlacementConflict, match="contradicts"):
        head_placement(convention, node_selector=selector)


def test_user_selector_cannot_contradict_the_accelerator():
    with pytest.raises(PlacementConflict, match="accelerator nvidia-l4"):
        place(
            "gke",
            "Spot",
            accelerator="nvidia-l4",
            gpus=1,
            node_selector={"cloud.google.com/gke-accelerator": "nvidia-tesla-t4"},
        )


def test_unknown_convention_is_an_error():
    with pytest.raises(ValueError, match="unknown capacity-label convention 'aks'"):
        place("aks", "Spot")


# --- the RayJob as a whole ------------------------------------------------------------------------


def _groups(rayjob):
    cluster = rayjob["spec"]["rayClusterSpec"]
    return cluster["headGroupSpec"], {w["groupName"]: w for w in cluster["workerGroupSpecs"]}


def _admits(template, labels):
    """Whether a pod template's hard placement admits a node with these labels."""
    spec = template["spec"]
    if any(labels.get(k) != v for k, v in spec.get("nodeSelector", {}).items()):
        return False
    required = (
        spec.get("affinity", {})
        .get("nodeAffinity", {})
        .get("requiredDuringSchedulingIgnoredDuringExecution")
    )
    if not required:
        return True
    from mlplane.operator.builders.placement import Requirement

    return any(
        all(
            Requirement(e["key"], e["operator"], tuple(e.get("values", ()))).matches(labels)
            for e in term["matchExpressions"]
        )
        for term in required["nodeSelectorTerms"]
    )


@settings(
    max_examples=80, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow]
)
@given(body=trainingjobs(), config=configs(), capacity=st.sampled_from(["OnDemand", "Spot"]))
def test_rayjob_placement_follows_the_attempts_capacity(body, config, capacity):
    tj = parse(body)
    rayjob = build_rayjob(tj, 2, capacity, config, run_id=None, owner_uid="u")
    head, workers = _groups(rayjob)
    nodes = NODES[config.capacity_labels]
    user = tj.spec.node_selector or {}
    spot_node, on_demand_node = {**nodes["spot"], **user}, {**nodes["on-demand"], **user}
    # The head: never on spot, whatever the attempt.
    assert _admits(head["template"], on_demand_node)
    assert not _admits(head["template"], spot_node)
    for group in tj.spec.workers:
        template = workers[group.name]["template"]
        if group.accelerator:
            label = CONVENTIONS[config.capacity_labels].accelerator_key
            spot_node[label] = on_demand_node[label] = group.accelerator
        on_spot = group.capacity == "Spot" or (
            group.capacity == "SpotWithFallback" and capacity == "Spot"
        )
        assert _admits(template, spot_node) == on_spot, group
        assert _admits(template, on_demand_node) == (not on_spot), group
        gpu_toleration = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
        users = [t.model_dump(by_alias=True, exclude_none=True) for t in tj.spec.tolerations or ()]
        tolerations = template["spec"].get("tolerations", [])
        assert (gpu_toleration in tolerations) == (
            group.resources.gpu > 0 or gpu_toleration in users
        )
        assert all(t in tolerations for t in users)


# --- preemption evidence ----------------------------------------------------------------------


def _node(labels=None, taints=None, unschedulable=False):
    spec = {"taints": taints} if taints else {}
    if unschedulable:
        spec["unschedulable"] = True
    return {"metadata": {"name": "n1", "labels": labels or {}}, "spec": spec}


@pytest.mark.parametrize(
    "labels",
    [
        {"eks.amazonaws.com/capacityType": "SPOT"},
        {"karpenter.sh/capacity-type": "spot"},
        {"cloud.google.com/gke-spot": "true"},
        {"cloud.google.com/gke-preemptible": "true"},
        {"kubernetes.azure.com/scalesetpriority": "spot"},
    ],
)
def test_spot_nodes_under_every_convention(labels):
    assert is_spot_node(_node(labels))
    assert node_evidence(_node(labels)).spot_label == "=".join(next(iter(labels.items())))


@pytest.mark.parametrize(
    "labels",
    [
        {},
        {"eks.amazonaws.com/capacityType": "ON_DEMAND"},
        {"karpenter.sh/capacity-type": "on-demand"},
        {"cloud.google.com/gke-spot": "false"},
        {"spot": "true"},
    ],
)
def test_on_demand_nodes_are_not_spot(labels):
    assert not is_spot_node(_node(labels))


def _taint(key, effect, value=None):
    return {"key": key, "effect": effect, **({"value": value} if value else {})}


@pytest.mark.parametrize(
    ("taint", "terminating"),
    [
        (_taint("karpenter.sh/disrupted", "NoSchedule"), True),
        (_taint("karpenter.sh/disruption", "NoSchedule", "disrupting"), True),
        (_taint("aws-node-termination-handler/spot-itn", "NoExecute", "x"), True),
        (_taint("aws-node-termination-handler/rebalance-recommendation", "NoSchedule"), True),
        (_taint("cloud.google.com/impending-node-termination", "NoSchedule"), True),
        (_taint("ToBeDeletedByClusterAutoscaler", "NoSchedule", "1700000000"), True),
        (_taint("node.kubernetes.io/out-of-service", "NoExecute"), True),
        (_taint("node.kubernetes.io/unreachable", "NoExecute"), True),
        (_taint("node.kubernetes.io/not-ready", "NoSchedule"), True),
        (_taint("node.kubernetes.io/unschedulable", "NoSchedule"), False),
    ],
)
def test_disruption_taints(taint, terminating):
    evidence = node_evidence(_node({"karpenter.sh/capacity-type": "spot"}, [taint]))
    assert evidence.draining
    assert evidence.terminating == terminating
    assert evidence.taints == (f"{taint['key']}:{taint['effect']}",)


def test_ordinary_taints_and_healthy_nodes_are_no_evidence():
    evidence = node_evidence(_node({}, [GPU_TAINT, GKE_SPOT_TAINT, MLPLANE_SPOT_TAINT]))
    assert evidence == type(evidence)(name="n1", spot=False, spot_label=None, taints=())
    assert not evidence.draining
    assert not node_evidence({}).draining


def test_cordoned_node_without_taint_yet_is_draining():
    evidence = node_evidence(_node(unschedulable=True))
    assert evidence.draining and not evidence.terminating


SHUTDOWN_MESSAGE = "Pod was terminated in response to imminent node shutdown."


def _pod(conditions=(), reason=None, message=None):
    status = {"conditions": list(conditions)}
    if reason:
        status["reason"] = reason
    if message:
        status["message"] = message
    return {"metadata": {"name": "w-1"}, "spec": {"nodeName": "n1"}, "status": status}


@pytest.mark.parametrize(
    "reason",
    [
        "PreemptionByScheduler",
        "DeletionByTaintManager",
        "EvictionByEvictionAPI",
        "DeletionByPodGC",
        "TerminationByKubelet",
    ],
)
def test_pod_disruption_target(reason):
    condition = {
        "type": "DisruptionTarget",
        "status": "True",
        "reason": reason,
        "message": "node is shutting down",
        "lastTransitionTime": "2026-11-29T10:00:00Z",
    }
    found = pod_disruption(_pod([{"type": "Ready", "status": "False"}, condition]))
    assert found is not None
    assert (found.pod, found.node, found.reason, found.time) == (
        "w-1",
        "n1",
        reason,
        "2026-11-29T10:00:00Z",
    )


@pytest.mark.parametrize(
    ("pod", "disrupted"),
    [
        (_pod([{"type": "DisruptionTarget", "status": "False", "reason": "x"}]), False),
        (_pod([{"type": "Ready", "status": "False", "reason": "PodFailed"}]), False),
        (_pod(reason="Error", message="exit code 1"), False),
        (_pod(reason="OOMKilled"), False),
        (_pod(reason="Evicted", message="The node was low on resource: memory."), True),
        (_pod(reason="Terminated", message=SHUTDOWN_MESSAGE), True),
        (_pod(reason="Terminated", message="container exited"), False),
        (_pod(reason="NodeShutdown"), True),
        ({}, False),
    ],
)
def test_pod_disruption_from_status(pod, disrupted):
    assert is_disrupted_pod(pod) == disrupted
