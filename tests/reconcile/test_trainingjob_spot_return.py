"""Return to spot (spec.preemption.returnToSpot) in the pure core: each decision on its own.

A SpotWithFallback job with a budget of one preemption falls back to on-demand at attempt 2;
the tests then drive the rounds that decide (or not) to return, wait for a checkpoint newer
than the decision, end attempt 2 and start attempt 3 on spot from it.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import yaml

from mlplane.crds.validate import InvalidResource, parse
from mlplane.monitoring import spot
from mlplane.operator.config import OperatorConfig
from mlplane.operator.reconcile import spot_return
from mlplane.operator.reconcile.trainingjob import (
    Observed,
    ObservedAttempt,
    ObservedDisruption,
    ObservedRun,
    Plan,
    reconcile,
)

T0 = datetime(2026, 12, 1, 8, 0, tzinfo=UTC)
UID = "uid-return"
CONFIG = OperatorConfig()
POOL = spot.pool_key("nvidia-l4", None)
MIN = timedelta(minutes=30)


def body(return_to_spot: dict[str, Any] | None = None) -> dict[str, Any]:
    preemption: dict[str, Any] = {"maxPreemptions": 1}
    if return_to_spot is not None:
        preemption["returnToSpot"] = return_to_spot
    return {
        "apiVersion": "mlplane.dev/v1alpha1", "kind": "TrainingJob",
        "metadata": {"name": "churn", "namespace": "ml", "uid": UID, "generation": 1},
        "spec": {
            "entrypoint": "python train.py",
            "workers": [{"name": "gpu", "replicas": 2, "capacity": "SpotWithFallback",
                         "resources": {"gpu": 1}, "accelerator": "nvidia-l4"}],
            "checkpoint": {"uri": "s3://ckpt/churn"},
            "preemption": preemption,
        },
    }  # fmt: skip


def stamp(at: timedelta) -> str:
    return (T0 + at).strftime("%Y-%m-%dT%H:%M:%SZ")


def run(step: int | None = None, at: timedelta | None = None) -> ObservedRun:
    if step is None:
        return ObservedRun("run-1")
    return ObservedRun("run-1", checkpoint_uri=f"s3://ckpt/churn/{UID}/step-{step}",
                       checkpoint_step=step, checkpoint_time=stamp(at or timedelta(0)))  # fmt: skip


def attempt(n: int, capacity: str, job_status: str = "RUNNING", **kw: Any) -> ObservedAttempt:
    return ObservedAttempt(number=n, capacity=capacity, job_status=job_status, **kw)  # type: ignore[arg-type]


class Job:
    def __init__(self, body: dict[str, Any]) -> None:
        self.body = body

    def step(self, observed: Observed, at: timedelta) -> Plan:
        plan = reconcile(parse(self.body), observed, T0 + at, CONFIG, uid=UID)
        self.body["status"] = plan.status
        return plan

    @property
    def status(self) -> dict[str, Any]:
        return self.body["status"]

    def condition(self, type_: str) -> dict[str, Any]:
        return next((c for c in self.status["conditions"] if c["type"] == type_), {})


def fallen_back(spec: dict[str, Any] | None = None) -> Job:
    """Attempt 1 on spot is reclaimed at +10 min: attempt 2 runs on on-demand from +11 min."""
    job = Job(body(spec))
    job.step(Observed(run=run()), at=timedelta(0))
    job.step(Observed(attempts=(attempt(1, "Spot"),), run=run()), at=timedelta(minutes=1))
    reclaim = ObservedDisruption(1, "SpotNodeDeleted", node="n1", time=stamp(timedelta(minutes=10)))
    job.step(Observed(attempts=(attempt(1, "Spot"),), disruptions=(reclaim,), run=run(5)),
             at=timedelta(minutes=10))  # fmt: skip
    plan = job.step(Observed(attempts=(attempt(1, "Spot", "FAILED"),), run=run(5)),
                    at=timedelta(minutes=11))  # fmt: skip
    assert [o["metadata"]["labels"]["mlplane.dev/capacity"] for o in plan.create] == ["OnDemand"]
    assert job.status["currentAttempt"]["capacity"] == "OnDemand"
    return job


def on_demand(step: int, at: timedelta, history: spot.ReclaimHistory | None = None,
              job_status: str = "RUNNING") -> Observed:  # fmt: skip
    return Observed(attempts=(attempt(1, "Spot", "FAILED"), attempt(2, "OnDemand", job_status)),
                    run=run(step, at), reclaim_history=history or {})  # fmt: skip


def test_off_keeps_todays_behaviour_on_demand_for_the_rest_of_the_job():
    job = fallen_back()
    for hours in (1, 5, 24):
        at = timedelta(hours=hours)
        plan = job.step(on_demand(100 * hours, at), at=at)
        assert plan.create == [] and plan.stop is None
    assert job.status["currentAttempt"] == {**job.status["currentAttempt"], "number": 2,
                                            "capacity": "OnDemand"}  # fmt: skip
    assert "spotReturn" not in job.status and "returnsToSpot" not in job.status
    assert job.condition("SpotReturn") == {}


def test_not_before_min_on_demand():
    job = fallen_back({"minOnDemand": "30m"})
    at = timedelta(minutes=11) + MIN - timedelta(seconds=1)
    plan = job.step(on_demand(40, at), at=at)
    assert plan.create == [] and plan.stop is None
    assert "decidedAt" not in job.status["spotReturn"]
    condition = job.condition("SpotReturn")
    assert (condition["status"], condition["reason"]) == ("False", "MinOnDemandNotReached")
    assert stamp(timedelta(minutes=41)) in condition["message"]
    assert job.status["spotReturn"]["notBefore"] == stamp(timedelta(minutes=41))
    assert job.status["spotReturn"]["onDemandSince"] == stamp(timedelta(minutes=11))


def test_a_recent_reclaim_in_the_pool_holds_the_return():
    job = fallen_back({"minOnDemand": "30m"})
    # another job of the operator lost a node of the same pool at +35 min
    when = (T0 + timedelta(minutes=35)).timestamp()
    other = spot.record({}, POOL, "other/1", spot.Exposure(3600.0, 1, when))
    at = timedelta(minutes=50)
    plan = job.step(on_demand(50, at, other), at=at)
    assert plan.stop is None and "decidedAt" not in job.status["spotReturn"]
    condition = job.condition("SpotReturn")
    assert condition["reason"] == "SpotReclaimedRecently"
    assert f"pool {POOL}" in condition["message"]
    assert job.status["spotReturn"]["notBefore"] == stamp(timedelta(minutes=65))
    at = timedelta(minutes=66)
    job.step(on_demand(60, at, other), at=at)
    assert job.status["spotReturn"]["decidedAt"] == stamp(at)


def test_due_decides_then_waits_for_a_checkpoint_newer_than_the_decision():
    job = fallen_back({"minOnDemand": "30m"})
    at = timedelta(minutes=45)
    plan = job.step(on_demand(40, at - timedelta(minutes=2)), at=at)
    assert plan.stop is None and plan.create == []
    state = job.status["spotReturn"]
    assert state["decidedAt"] == stamp(at)
    assert state["checkpointAtDecision"] == f"s3://ckpt/churn/{UID}/step-40"
    assert job.condition("SpotReturn")["reason"] == "WaitingForCheckpoint"
    assert "ReturningToSpot" in [e.reason for e in plan.events]
    # the same checkpoint, rounds later: still waiting, nothing ended
    for minutes in (46, 50):
        plan = job.step(on_demand(40, at - timedelta(minutes=2)), at=timedelta(minutes=minutes))
        assert plan.stop is None and plan.create == [] and plan.events == []
    assert job.status["currentAttempt"]["number"] == 2


def test_a_newer_checkpoint_ends_the_on_demand_attempt_then_starts_spot_from_it():
    job = fallen_back({"minOnDemand": "30m"})
    job.step(on_demand(40, timedelta(minutes=43)), at=timedelta(minutes=45))
    before = {k: job.status[k] for k in ("preemptions", "failures", "attempts")}
    plan = job.step(on_demand(41, timedelta(minutes=47)), at=timedelta(minutes=47))
    assert plan.stop == "churn-a2" and plan.create == []
    assert job.status["spotReturn"]["endingAttempt"] == 2
    assert job.condition("SpotReturn")["reason"] == "EndingOnDemandAttempt"
    assert job.status["phase"] == "Retrying"
    assert job.condition("Running")["reason"] == "ReturningToSpot"
    # the stop is asked again while the attempt still runs (idempotent), nothing created
    plan = job.step(on_demand(41, timedelta(minutes=47)), at=timedelta(minutes=47, seconds=5))
    assert plan.stop == "churn-a2" and plan.create == []
    # the Ray job was stopped (locally: STOPPED; on Kubernetes the RayJob is gone)
    plan = job.step(on_demand(41, timedelta(minutes=47), job_status="STOPPED"),
                    at=timedelta(minutes=47, seconds=10))  # fmt: skip
    (created,) = plan.create
    assert created["metadata"]["name"] == "churn-a3"
    assert created["metadata"]["labels"]["mlplane.dev/capacity"] == "Spot"
    assert "'SPOT'" in str(created["spec"]["rayClusterSpec"]["workerGroupSpecs"])
    assert plan.stop is None
    st = job.status
    assert st["currentAttempt"]["capacity"] == "Spot" and st["currentAttempt"]["number"] == 3
    assert "afterPreemption" not in st["currentAttempt"]  # a planned move: no waste counted
    assert st["returnsToSpot"] == 1
    assert {k: st[k] for k in ("preemptions", "failures")} == {
        k: before[k] for k in ("preemptions", "failures")
    }
    assert st["lastCheckpoint"]["uri"].endswith("step-41")
    assert st["spotReturn"]["lastReturnAttempt"] == 3
    assert "decidedAt" not in st["spotReturn"] and "onDemandSince" not in st["spotReturn"]
    condition = job.condition("SpotReturn")
    assert (condition["status"], condition["reason"]) == ("True", "ReturnedToSpot")
    assert "ReturnedToSpot" in [e.reason for e in plan.events]
    # the move's on-demand time is counted as on-demand hours up to the attempt's end
    assert st["cost"]["onDemandGpuHours"] == pytest.approx(2 * (36 + 1 / 6) / 60, abs=1e-3)
    # later rounds follow attempt 3: nothing else is created or stopped
    later = Observed(attempts=(attempt(2, "OnDemand", "STOPPED"), attempt(3, "Spot")),
                     run=run(41, timedelta(minutes=47)))  # fmt: skip
    plan = job.step(later, at=timedelta(minutes=48))
    assert plan.create == [] and plan.stop is None and job.status["phase"] == "Running"


def test_a_stop_whose_status_write_was_lost_still_starts_spot_exactly_once():
    """Kill between the stop (RayJob deleted) and the status write: the next round, from the
    status before the stop, sees the attempt gone and starts attempt 3 on spot, once."""
    job = fallen_back({"minOnDemand": "30m"})
    job.step(on_demand(40, timedelta(minutes=43)), at=timedelta(minutes=45))
    saved = dict(job.status)
    plan = job.step(on_demand(41, timedelta(minutes=47)), at=timedelta(minutes=47))
    assert plan.stop == "churn-a2"
    job.body["status"] = saved  # the write was lost; the RayJob is deleted anyway
    gone = Observed(attempts=(attempt(1, "Spot", "FAILED"),), run=run(41, timedelta(minutes=47)))
    plan = job.step(gone, at=timedelta(minutes=48))
    assert [o["metadata"]["name"] for o in plan.create] == ["churn-a3"]
    again = job.step(gone, at=timedelta(minutes=48, seconds=5))
    assert [o["metadata"]["name"] for o in again.create] == ["churn-a3"]  # same name: no-op
    assert job.status["returnsToSpot"] == 1 and job.status["attempts"] == 3


def test_an_attempt_that_succeeds_while_waiting_just_succeeds():
    job = fallen_back({"minOnDemand": "30m"})
    job.step(on_demand(40, timedelta(minutes=43)), at=timedelta(minutes=45))
    plan = job.step(on_demand(41, timedelta(minutes=47), job_status="SUCCEEDED"),
                    at=timedelta(minutes=47))  # fmt: skip
    assert plan.create == [] and plan.stop is None
    assert job.status["phase"] in ("Registering", "Succeeded")
    assert "returnsToSpot" not in job.status


def test_reclaimed_soon_after_a_return_falls_back_and_doubles_min_on_demand():
    job = fallen_back({"minOnDemand": "30m"})
    job.step(on_demand(40, timedelta(minutes=43)), at=timedelta(minutes=45))
    job.step(on_demand(41, timedelta(minutes=47)), at=timedelta(minutes=47))
    job.step(on_demand(41, timedelta(minutes=47), job_status="STOPPED"), at=timedelta(minutes=48))
    assert job.status["currentAttempt"]["capacity"] == "Spot"
    # spot takes a node again 20 min after the return (< 4 x 30 min): the normal fallback
    spot3 = (attempt(2, "OnDemand", "STOPPED"), attempt(3, "Spot"))
    job.step(Observed(attempts=spot3, run=run(41)), at=timedelta(minutes=50))
    reclaim = ObservedDisruption(3, "SpotNodeDeleted", node="n7", time=stamp(timedelta(minutes=68)))
    job.step(Observed(attempts=spot3, disruptions=(reclaim,), run=run(45)),
             at=timedelta(minutes=68))  # fmt: skip
    ended = (attempt(2, "OnDemand", "STOPPED"), attempt(3, "Spot", "FAILED"))
    plan = job.step(Observed(attempts=ended, run=run(45)), at=timedelta(minutes=69))
    assert [o["metadata"]["labels"]["mlplane.dev/capacity"] for o in plan.create] == ["OnDemand"]
    assert "FallbackToOnDemand" in [e.reason for e in plan.events]
    state = job.status["spotReturn"]
    assert state["backoff"] == 1 and state["onDemandSince"] == stamp(timedelta(minutes=69))
    assert job.status["preemptions"] == 2 and job.status["phase"] != "Failed"
    # 30 min later is no longer enough: 60 min now
    od4 = (attempt(3, "Spot", "FAILED"), attempt(4, "OnDemand"))
    at = timedelta(minutes=69 + 45)
    job.step(Observed(attempts=od4, run=run(50, at)), at=at)
    assert job.condition("SpotReturn")["reason"] == "MinOnDemandNotReached"
    assert "doubled 1x" in job.condition("SpotReturn")["message"]
    assert job.status["spotReturn"]["notBefore"] == stamp(timedelta(minutes=69 + 60))


def test_backoff_resets_after_a_return_that_lasted():
    job = parse(body({"minOnDemand": "30m"}))
    returned = stamp(timedelta(0))
    state = {"backoff": 2, "lastReturnTime": returned}
    # effective 2h; flapping within 4 x 2h = 8h
    assert spot_return.backoff_after_fallback(job, state, T0 + timedelta(hours=7)) == 3  # type: ignore[arg-type]
    assert spot_return.backoff_after_fallback(job, state, T0 + timedelta(hours=9)) == 0  # type: ignore[arg-type]
    assert spot_return.backoff_after_fallback(job, {}, T0) == 0  # type: ignore[arg-type]
    assert spot_return.min_on_demand(job, 40) == timedelta(days=7)  # type: ignore[arg-type]


def test_newer_checkpoint_is_by_uri_not_by_clock():
    state = {"decidedAt": stamp(timedelta(0)), "checkpointAtDecision": "s3://c/step-4"}
    # a clock-skewed time on the same checkpoint does not pass for a new one
    assert not spot_return.newer_checkpoint(
        state, {"uri": "s3://c/step-4", "time": "2099-01-01T00:00:00Z"}
    )
    assert spot_return.newer_checkpoint(state, {"uri": "s3://c/step-5"})
    assert spot_return.newer_checkpoint({"decidedAt": "x"}, {"uri": "s3://c/step-1"})
    assert not spot_return.newer_checkpoint({}, {"uri": "s3://c/step-5"})


def test_return_to_spot_needs_a_fallback_group_and_a_duration():
    spec = body({"minOnDemand": "30m"})
    spec["spec"]["workers"][0]["capacity"] = "Spot"
    with pytest.raises(InvalidResource, match=r"preemption\.returnToSpot needs a worker group"):
        parse(spec)
    with pytest.raises(InvalidResource, match="out of range"):
        parse(body({"minOnDemand": "1s"}))
    with pytest.raises(InvalidResource, match="minOnDemand"):
        parse(body({}))


def test_the_spot_attempt_resumes_from_the_jobs_own_folder():
    job = fallen_back({"minOnDemand": "10s"})
    job.step(on_demand(40, timedelta(minutes=43)), at=timedelta(minutes=45))
    job.step(on_demand(41, timedelta(minutes=47)), at=timedelta(minutes=47))
    plan = job.step(on_demand(41, timedelta(minutes=47), job_status="STOPPED"),
                    at=timedelta(minutes=48))  # fmt: skip
    (created,) = plan.create
    assert created["metadata"]["labels"]["mlplane.dev/capacity"] == "Spot"
    env = yaml.safe_load(created["spec"]["runtimeEnvYAML"])["env_vars"]
    assert env["MLPLANE_ATTEMPT"] == "3"
    assert env["MLPLANE_CHECKPOINT_URI"] == f"s3://ckpt/churn/{UID}"
