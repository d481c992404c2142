"""The operator's disruption ledger, fed pod and node watch events as dicts (issue 12, defect 4).

One spot reclaim must count as one preemption of the attempt that is running on the node: not
one per pod that ever ran there, not one per pod of the attempt on that node.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from mlplane.crds.validate import parse
from mlplane.operator.config import OperatorConfig
from mlplane.operator.handlers.trainingjob import DisruptionLedger
from mlplane.operator.reconcile.trainingjob import (
    Observed,
    ObservedAttempt,
    ObservedRun,
    reconcile,
)

NS, JOB = "ml", "churn"
SPOT = {"karpenter.sh/capacity-type": "spot"}


def pod(name: str, attempt: int, node: str | None = "spot-n", phase: str = "Running",
        **status: Any) -> dict[str, Any]:  # fmt: skip
    return {
        "metadata": {"name": name, "namespace": NS,
                     "labels": {"mlplane.dev/trainingjob": JOB,
                                "mlplane.dev/attempt": str(attempt)}},
        "spec": {"nodeName": node} if node else {},
        "status": {"phase": phase, **status},
    }  # fmt: skip


def node(name: str = "spot-n", *, reclaimed: bool = False) -> dict[str, Any]:
    taints = [{"key": "karpenter.sh/disrupted", "effect": "NoSchedule"}] if reclaimed else []
    return {"metadata": {"name": name, "labels": dict(SPOT)}, "spec": {"taints": taints}}


def disruption_target(reason: str = "DeletionByTaintManager") -> dict[str, Any]:
    return {"conditions": [{"type": "DisruptionTarget", "status": "True", "reason": reason,
                            "lastTransitionTime": "2026-12-01T10:00:00Z"}]}  # fmt: skip


def test_one_reclaim_counts_once_for_the_current_attempt_not_for_earlier_ones():
    ledger = DisruptionLedger()
    ledger.node(node())
    # attempts 1..3 ran on the node and are over: finished, or deleted by KubeRay
    ledger.pod(pod("churn-a1-w", 1))
    ledger.pod(pod("churn-a1-w", 1, phase="Failed"))
    ledger.pod(pod("churn-a2-w", 2))
    ledger.pod(pod("churn-a2-w", 2), deleted=True)
    ledger.pod(pod("churn-a3-w", 3))
    ledger.pod(pod("churn-a3-w", 3, phase="Succeeded"))
    ledger.pod(pod("churn-a4-w", 4))  # attempt 4 runs there now
    ledger.node(node(reclaimed=True))
    seen = ledger.take(NS, JOB)
    assert [(d.attempt, d.node) for d in seen] == [(4, "spot-n")]


def test_several_pods_of_one_attempt_on_a_reclaimed_node_are_one_preemption():
    ledger = DisruptionLedger()
    for i in range(3):
        ledger.pod(pod(f"churn-a2-w{i}", 2))
    ledger.node(node(reclaimed=True))
    # the taint manager then marks each pod: the same event, seen again per pod
    for i in range(3):
        ledger.pod(pod(f"churn-a2-w{i}", 2, **disruption_target()))
    seen = ledger.take(NS, JOB)
    assert len({d.key() for d in seen}) == 1
    status = _count(seen, current=2)
    assert status["preemptions"] == 1
    assert len(status["disruptions"]) == 1


def test_pods_on_two_reclaimed_nodes_are_two_preemptions():
    ledger = DisruptionLedger()
    ledger.pod(pod("churn-a1-w0", 1, node="spot-a"))
    ledger.pod(pod("churn-a1-w1", 1, node="spot-b"))
    ledger.node(node("spot-a", reclaimed=True))
    ledger.node(node("spot-b"), deleted=True)
    assert _count(ledger.take(NS, JOB), current=1)["preemptions"] == 2


def test_a_pod_disrupted_without_a_node_counts_by_pod():
    ledger = DisruptionLedger()
    ledger.pod(pod("churn-a1-w0", 1, node=None, **disruption_target("PreemptionByScheduler")))
    ledger.pod(pod("churn-a1-w1", 1, node=None, **disruption_target("PreemptionByScheduler")))
    assert _count(ledger.take(NS, JOB), current=1)["preemptions"] == 2


def test_a_pod_scheduled_on_a_node_already_going_away_counts_once():
    ledger = DisruptionLedger()
    ledger.node(node(reclaimed=True))
    ledger.pod(pod("churn-a1-w0", 1))
    ledger.pod(pod("churn-a1-w1", 1))
    assert [(d.attempt, d.node) for d in ledger.take(NS, JOB)] == [(1, "spot-n")]


def test_a_node_that_recovers_disrupts_nothing_placed_later():
    ledger = DisruptionLedger()
    ledger.node(node(reclaimed=True))
    ledger.node(node())  # taint removed: e.g. a NotReady blip, not a reclaim
    ledger.pod(pod("churn-a1-w0", 1))
    assert ledger.take(NS, JOB) == ()


def test_evidence_recorded_in_status_is_forgotten_and_a_deleted_job_leaves_nothing():
    ledger = DisruptionLedger()
    ledger.pod(pod("churn-a1-w0", 1))
    ledger.node(node(reclaimed=True))
    status = _count(ledger.take(NS, JOB), current=1)
    ledger.forget(NS, JOB, status["disruptions"])
    assert ledger.take(NS, JOB) == ()
    ledger.pod(pod("churn-a1-w1", 1, node="spot-x", **disruption_target()))
    ledger.drop(NS, JOB)  # the TrainingJob was deleted: a new one of that name starts clean
    assert ledger.take(NS, JOB) == ()


def _count(seen: tuple[Any, ...], *, current: int) -> dict[str, Any]:
    """What the pure core makes of the evidence while attempt ``current`` runs."""
    body = {
        "apiVersion": "mlplane.dev/v1alpha1", "kind": "TrainingJob",
        "metadata": {"name": JOB, "namespace": NS, "uid": "u1", "generation": 1},
        "spec": {"entrypoint": "python train.py",
                 "workers": [{"name": "w", "replicas": 3, "capacity": "Spot"}],
                 "checkpoint": {"uri": "s3://ckpt/churn"},
                 "preemption": {"maxPreemptions": 3}},
        "status": {"attempts": current, "preemptions": 0, "failures": 0, "disruptions": [],
                   "currentAttempt": {"number": current, "rayJob": f"churn-a{current}",
                                      "capacity": "Spot", "startTime": "2026-12-01T09:00:00Z"}},
    }  # fmt: skip
    observed = Observed((ObservedAttempt(current, "Spot", "RUNNING"),), seen, ObservedRun("r1"))
    plan = reconcile(parse(body), observed, datetime(2026, 12, 1, 10, 5, tzinfo=UTC),
                     OperatorConfig(), uid="u1")  # fmt: skip
    return plan.status
