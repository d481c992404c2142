"""Reclaim notices (before the loss): each signal read from the Node or Pod that carries it."""

from __future__ import annotations

from typing import Any

import pytest

from mlplane.operator.builders.evidence import Notice, node_notice, pod_notice


def node(*taints: dict[str, Any], name: str = "n1") -> dict[str, Any]:
    return {"metadata": {"name": name, "labels": {"karpenter.sh/capacity-type": "spot"}},
            "spec": {"taints": list(taints)}}  # fmt: skip


@pytest.mark.parametrize(
    ("key", "window", "deadline"),
    [
        ("aws-node-termination-handler/spot-itn", 120.0, "2026-01-01T10:02:00Z"),
        ("aws-node-termination-handler/rebalance-recommendation", None, None),
        ("aws-node-termination-handler/scheduled-maintenance", None, None),
        ("karpenter.sh/disrupted", None, None),
        ("karpenter.sh/disruption", None, None),
        ("cloud.google.com/impending-node-termination", 30.0, "2026-01-01T10:00:30Z"),
    ],
)
def test_each_notice_taint_is_a_notice_with_its_window(key, window, deadline):
    taint = {"key": key, "effect": "NoSchedule", "timeAdded": "2026-01-01T10:00:00Z"}
    found = node_notice(node({"key": "dedicated", "effect": "NoSchedule"}, taint))
    assert found == Notice(signal=key, node="n1", time="2026-01-01T10:00:00Z",
                           window_seconds=window, deadline=deadline)  # fmt: skip


def test_a_notice_taint_without_time_has_no_deadline_but_keeps_its_window():
    found = node_notice(node({"key": "cloud.google.com/impending-node-termination"}))
    assert found is not None
    assert (found.window_seconds, found.time, found.deadline) == (30.0, None, None)


@pytest.mark.parametrize(
    "key",
    [
        "node.kubernetes.io/unschedulable",  # a cordon: no end announced
        "node.kubernetes.io/not-ready",  # the loss itself, not a notice
        "node.kubernetes.io/unreachable",
        "ToBeDeletedByClusterAutoscaler",
        "nvidia.com/gpu",
    ],
)
def test_other_taints_are_no_notice(key):
    assert node_notice(node({"key": key, "effect": "NoSchedule"})) is None


def test_a_node_without_taints_is_no_notice():
    assert node_notice({"metadata": {"name": "n"}, "spec": {}}) is None
    assert node_notice({}) is None


def test_pod_disruption_target_is_a_notice_with_its_deletion_deadline():
    pod = {
        "metadata": {"name": "w-1", "deletionTimestamp": "2026-01-01T10:00:30Z"},
        "spec": {"nodeName": "n1"},
        "status": {"conditions": [
            {"type": "Ready", "status": "True"},
            {"type": "DisruptionTarget", "status": "True", "reason": "EvictionByEvictionAPI",
             "lastTransitionTime": "2026-01-01T10:00:00Z"},
        ]},
    }  # fmt: skip
    assert pod_notice(pod) == Notice(signal="DisruptionTarget", node="n1", pod="w-1",
                                     time="2026-01-01T10:00:00Z",
                                     deadline="2026-01-01T10:00:30Z")  # fmt: skip


def test_pod_without_a_true_disruption_target_is_no_notice():
    false = {"status": {"conditions": [{"type": "DisruptionTarget", "status": "False"}]}}
    assert pod_notice(false) is None
    assert pod_notice({"status": {"reason": "Evicted"}}) is None  # after the fact: no notice
    assert pod_notice({}) is None
