"""Spot Ray worker pods get the grace (and the preStop wait) a notice checkpoint needs."""

from __future__ import annotations

from typing import Any

import pytest
from kuberay_crds import assert_valid

from mlplane.crds.validate import parse
from mlplane.monitoring.notice import NOTICE_PENDING_FILE
from mlplane.operator.builders import build_rayjob
from mlplane.operator.config import OperatorConfig


def body(capacity: str = "SpotWithFallback", grace: int | None = None) -> dict[str, Any]:
    preemption: dict[str, Any] = {"maxPreemptions": 2}
    if grace is not None:
        preemption["terminationGraceSeconds"] = grace
    return {
        "apiVersion": "mlplane.dev/v1alpha1", "kind": "TrainingJob",
        "metadata": {"name": "churn", "namespace": "ml"},
        "spec": {
            "entrypoint": "python train.py",
            "workers": [
                {"name": "spot", "replicas": 2, "capacity": capacity},
                {"name": "steady", "replicas": 1, "capacity": "OnDemand"},
            ],
            "checkpoint": {"uri": "s3://ckpt/churn"},
            "preemption": preemption,
        },
    }  # fmt: skip


def pods(rayjob: dict[str, Any]) -> dict[str, dict[str, Any]]:
    groups = rayjob["spec"]["rayClusterSpec"]["workerGroupSpecs"]
    return {g["groupName"]: g["template"]["spec"] for g in groups}


@pytest.mark.parametrize(("labels", "grace"), [("eks", 120), ("karpenter", 120), ("gke", 30)])
def test_spot_workers_get_the_notice_window_as_grace(labels, grace):
    rayjob = build_rayjob(parse(body()), 1, "Spot", OperatorConfig(capacity_labels=labels),
                          run_id=None, owner_uid="u1")  # fmt: skip
    assert_valid(rayjob)
    spot, steady = pods(rayjob)["spot"], pods(rayjob)["steady"]
    assert spot["terminationGracePeriodSeconds"] == grace
    (container,) = spot["containers"]
    script = container["lifecycle"]["preStop"]["exec"]["command"][-1]
    assert NOTICE_PENDING_FILE in script and f"-lt {grace - 5}" in script
    head = rayjob["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]
    for other in (steady, head):  # on-demand pods: no wait added to their deletion
        assert "terminationGracePeriodSeconds" not in other
        assert all("lifecycle" not in c for c in other["containers"])


def test_the_spec_sets_the_grace():
    rayjob = build_rayjob(parse(body(grace=300)), 1, "Spot", OperatorConfig(), run_id=None,
                          owner_uid="u1")  # fmt: skip
    assert_valid(rayjob)
    assert pods(rayjob)["spot"]["terminationGracePeriodSeconds"] == 300


def test_fallen_back_workers_on_on_demand_get_no_grace():
    rayjob = build_rayjob(parse(body()), 3, "OnDemand", OperatorConfig(), run_id=None,
                          owner_uid="u1")  # fmt: skip
    assert all("terminationGracePeriodSeconds" not in p for p in pods(rayjob).values())


def test_the_grace_is_bounded_by_the_schema():
    from mlplane.crds.validate import check

    for bad in (5, 4000):
        problems = check(body(grace=bad))
        assert any("terminationGraceSeconds" in str(p) for p in problems), problems
