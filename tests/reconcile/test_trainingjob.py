"""The TrainingJob reconcile core: attempts, budgets, fallback, registration, idempotence."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from mlplane.crds.validate import parse
from mlplane.operator.config import OperatorConfig
from mlplane.operator.reconcile.trainingjob import (
    Observed,
    ObservedAttempt,
    ObservedDisruption,
    ObservedRun,
    Plan,
    reconcile,
)

T0 = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)
#: Failed spot attempts are judged at once here; the wait for late preemption evidence
#: (``preemption_evidence_grace``) has its own tests below, with the default.
CONFIG = OperatorConfig(preemption_evidence_grace=0)
UID = "0b7c-uid"
RUN = ObservedRun(run_id="run123")


def trainingjob(capacity: str = "SpotWithFallback", **spec: Any) -> dict[str, Any]:
    body = {
        "apiVersion": "mlplane.dev/v1alpha1", "kind": "TrainingJob",
        "metadata": {"name": "churn", "namespace": "ml", "uid": UID, "generation": 1},
        "spec": {
            "entrypoint": "python train.py",
            "workers": [{"name": "gpu", "replicas": 2, "capacity": capacity,
                         "resources": {"gpu": 1}, "accelerator": "nvidia-a10g"}],
            "checkpoint": {"uri": "s3://ckpt/churn"},
            "preemption": {"maxPreemptions": 2},
            "backoffLimit": 1,
            "mlflow": {"registeredModel": "churn", "alias": "candidate"},
            **spec,
        },
    }  # fmt: skip
    return body


class Job:
    """Drives reconcile like a handler would: status carried over between calls."""

    def __init__(self, body: dict[str, Any], config: OperatorConfig = CONFIG) -> None:
        self.body = body
        self.now = T0
        self.plans: list[Plan] = []
        self.config = config

    def step(self, observed: Observed, minutes: float = 1) -> Plan:
        self.now += timedelta(minutes=minutes)
        plan = reconcile(parse(self.body), observed, self.now, self.config, uid=UID)
        self.body["status"] = plan.status
        self.plans.append(plan)
        return plan

    @property
    def status(self) -> dict[str, Any]:
        return self.body["status"]

    def condition(self, type_: str) -> dict[str, Any] | None:
        return next((c for c in self.status.get("conditions", []) if c["type"] == type_), None)


def attempt(n: int, capacity: str = "Spot", job: str | None = "RUNNING", **kw: Any):
    return ObservedAttempt(number=n, capacity=capacity, job_status=job, **kw)  # type: ignore[arg-type]


def test_first_reconcile_asks_for_the_run_and_creates_nothing():
    job = Job(trainingjob())
    plan = job.step(Observed())
    assert plan.ensure_run
    assert plan.create == []
    assert job.status["phase"] == "Pending"


def test_attempt_one_goes_to_spot_with_the_run_id():
    job = Job(trainingjob())
    plan = job.step(Observed(run=RUN))
    (rayjob,) = plan.create
    assert rayjob["metadata"]["name"] == "churn-a1"
    assert job.status["currentAttempt"]["capacity"] == "Spot"
    assert job.status["attempts"] == 1
    assert "run123" in rayjob["spec"]["runtimeEnvYAML"]
    assert [e.reason for e in plan.events] == ["AttemptCreated"]


def test_on_demand_only_jobs_start_on_demand():
    job = Job(trainingjob(capacity="OnDemand"))
    job.step(Observed(run=RUN))
    assert job.status["currentAttempt"]["capacity"] == "OnDemand"


def test_reconcile_is_idempotent_while_nothing_changes():
    job = Job(trainingjob())
    job.step(Observed(run=RUN))
    running = Observed(attempts=(attempt(1),), run=RUN)
    first = job.step(running)
    status = dict(job.status)
    again = job.step(running, minutes=5)
    assert again.create == [] and first.create == []
    assert job.status == status  # nothing to write: the handler patches nothing
    assert again.events == []


def test_missing_recorded_attempt_is_recreated_with_the_same_name():
    job = Job(trainingjob())
    job.step(Observed(run=RUN))
    plan = job.step(Observed(run=RUN))  # the create did not land (e.g. a restart in between)
    assert [o["metadata"]["name"] for o in plan.create] == ["churn-a1"]
    assert job.status["attempts"] == 1


def test_success_registers_then_succeeds():
    job = Job(trainingjob())
    job.step(Observed(run=RUN))
    done = Observed(attempts=(attempt(1, job="SUCCEEDED", end_time="2026-11-29T12:30:00Z"),),
                    run=RUN)  # fmt: skip
    plan = job.step(done)
    assert job.status["phase"] == "Registering"
    assert plan.register is not None
    assert plan.register.source == "runs:/run123/model"
    assert plan.register.alias == "candidate"
    registered = Observed(attempts=done.attempts,
                          run=ObservedRun("run123", registered_version="4",
                                          alias_version="4"))  # fmt: skip
    plan = job.step(registered)
    assert plan.register is None
    assert job.status["phase"] == "Succeeded"
    assert job.status["mlflow"] == {"runId": "run123", "modelVersion": "4",
                                    "modelUri": "models:/churn/4"}  # fmt: skip
    assert job.status["completionTime"] == "2026-11-29T12:30:00Z"
    assert job.condition("Succeeded")["status"] == "True"
    assert {e.reason for e in plan.events} == {"ModelRegistered", "Succeeded"}
    assert plan.requeue_after is None
    assert job.step(registered).events == []  # terminal: nothing more happens


def test_two_preemptions_then_success_resume_on_spot():
    job = Job(trainingjob())
    job.step(Observed(run=RUN))
    for n in (1, 2):
        lost = ObservedDisruption(attempt=n, reason="DisruptionTarget", pod=f"churn-a{n}-w1",
                                  node="spot-1", time="2026-11-29T12:10:00Z")  # fmt: skip
        failed = attempt(n, job="FAILED", end_time="2026-11-29T12:11:00Z")
        plan = job.step(Observed(attempts=(failed,), disruptions=(lost,), run=RUN))
        assert [o["metadata"]["name"] for o in plan.create] == [f"churn-a{n + 1}"]
    assert job.status["preemptions"] == 2
    assert job.status["failures"] == 0  # a preemption never spends the code-failure budget
    # budget spent (2 of 2): SpotWithFallback moves the third attempt to on-demand
    assert job.status["currentAttempt"]["capacity"] == "OnDemand"
    assert job.status["phase"] == "Retrying"
    assert job.condition("Preempted")["status"] == "True"
    reasons = [e.reason for p in job.plans for e in p.events]
    assert reasons.count("Preempted") == 2
    assert "FallbackToOnDemand" in reasons


def test_fallback_rayjob_has_workers_on_on_demand():
    job = Job(trainingjob(preemption={"maxPreemptions": 0}))
    job.step(Observed(run=RUN))
    lost = ObservedDisruption(1, "SpotInterruption", node="spot-1")
    plan = job.step(Observed(attempts=(attempt(1, job="FAILED"),), disruptions=(lost,), run=RUN))
    (rayjob,) = plan.create
    text = str(rayjob["spec"]["rayClusterSpec"]["workerGroupSpecs"])
    assert "ON_DEMAND" in text
    assert "'SPOT'" not in text


def test_pure_spot_fails_when_the_budget_is_spent():
    job = Job(trainingjob(capacity="Spot", preemption={"maxPreemptions": 1}))
    job.step(Observed(run=RUN))
    lost = ObservedDisruption(1, "DisruptionTarget", pod="p1")
    plan = job.step(Observed(attempts=(attempt(1, job="FAILED"),), disruptions=(lost,), run=RUN))
    assert plan.create == []
    assert job.status["phase"] == "Failed"
    assert job.condition("Succeeded")["reason"] == "PreemptionBudgetExhausted"
    assert plan.requeue_after is None


def test_code_failures_spend_backoff_limit_not_preemptions():
    job = Job(trainingjob(backoffLimit=1))
    job.step(Observed(run=RUN))
    plan = job.step(Observed(attempts=(attempt(1, job="FAILED", message="ZeroDivisionError"),),
                             run=RUN))  # fmt: skip
    assert [o["metadata"]["name"] for o in plan.create] == ["churn-a2"]
    assert job.status["currentAttempt"]["capacity"] == "Spot"  # code failure: stay on spot
    plan = job.step(Observed(attempts=(attempt(2, job="FAILED", message="ZeroDivisionError"),),
                             run=RUN))  # fmt: skip
    assert plan.create == []
    assert job.status["failures"] == 2
    assert job.status["preemptions"] == 0
    assert job.status["phase"] == "Failed"
    condition = job.condition("Succeeded")
    assert condition["reason"] == "BackoffLimitExceeded"
    assert "ZeroDivisionError" in condition["message"]


def test_worker_preemption_inside_a_running_attempt_is_counted_once():
    job = Job(trainingjob())
    job.step(Observed(run=RUN))
    lost = ObservedDisruption(1, "DisruptionTarget", pod="churn-a1-w1", node="spot-1")
    running = Observed(attempts=(attempt(1),), disruptions=(lost,), run=RUN)
    job.step(running)
    job.step(running)  # seen again (a restart, a re-list): not counted twice
    assert job.status["preemptions"] == 1
    assert job.status["phase"] == "Running"
    assert job.status["disruptions"] == [{
        "attempt": 1, "reason": "DisruptionTarget", "pod": "churn-a1-w1", "node": "spot-1",
        "time": job.status["disruptions"][0]["time"],
    }]  # fmt: skip


def test_old_disruption_does_not_turn_a_later_code_failure_into_a_preemption():
    job = Job(trainingjob(backoffLimit=3))
    job.step(Observed(run=RUN))
    lost = ObservedDisruption(1, "DisruptionTarget", pod="w1", time="2026-11-29T12:05:00Z")
    job.step(Observed(attempts=(attempt(1),), disruptions=(lost,), run=RUN))
    failed = attempt(1, job="FAILED", end_time="2026-11-29T14:00:00Z", message="OOM")
    job.step(Observed(attempts=(failed,), disruptions=(lost,), run=RUN))
    assert job.status["failures"] == 1
    assert job.status["preemptions"] == 1


def test_deadline_exceeded_is_a_failure_of_the_attempt():
    job = Job(trainingjob(backoffLimit=0))
    job.step(Observed(run=RUN))
    over = ObservedAttempt(1, "Spot", job_status="RUNNING", deployment_status="Failed",
                           reason="DeadlineExceeded")  # fmt: skip
    job.step(Observed(attempts=(over,), run=RUN))
    assert job.status["phase"] == "Failed"
    assert "DeadlineExceeded" in job.condition("Succeeded")["message"]


def test_mlflow_unreachable_is_reported_and_nothing_created():
    job = Job(trainingjob())
    plan = job.step(Observed(registry_error="connection refused to http://mlflow:5000"))
    assert plan.create == []
    assert not plan.ensure_run
    cond = job.condition("RegistryAvailable")
    assert cond["status"] == "False"
    assert cond["reason"] == "MLflowUnreachable"
    job.step(Observed(run=RUN))
    assert job.condition("RegistryAvailable")["status"] == "True"


def test_checkpoint_progress_reaches_status():
    job = Job(trainingjob())
    job.step(Observed(run=RUN))
    run = ObservedRun("run123", checkpoint_uri="s3://ckpt/churn/step-40", checkpoint_step=40,
                      checkpoint_time="2026-11-29T12:20:00Z")  # fmt: skip
    job.step(Observed(attempts=(attempt(1),), run=run))
    assert job.status["lastCheckpoint"] == {"uri": "s3://ckpt/churn/step-40", "step": 40,
                                            "time": "2026-11-29T12:20:00Z"}  # fmt: skip


def test_suspend_is_passed_to_the_attempt():
    body = trainingjob(suspend=True)
    job = Job(body)
    plan = job.step(Observed(run=RUN))
    assert plan.create[0]["spec"]["suspend"] is True
    assert job.status["phase"] == "Suspended"
    body["spec"]["suspend"] = False
    plan = job.step(Observed(attempts=(ObservedAttempt(1, "Spot", deployment_status="Suspended"),),
                             run=RUN))  # fmt: skip
    assert plan.suspend == ("churn-a1", False)


def test_observed_generation_follows_the_spec():
    body = trainingjob()
    job = Job(body)
    job.step(Observed(run=RUN))
    body["metadata"]["generation"] = 2
    job.step(Observed(attempts=(attempt(1),), run=RUN))
    assert job.status["observedGeneration"] == 2
    assert all(c["observedGeneration"] == 2 for c in job.status["conditions"]
               if c["type"] == "Running")  # fmt: skip


@pytest.mark.parametrize("status", ["PENDING", None])
def test_pending_attempt_is_not_running(status):
    job = Job(trainingjob())
    job.step(Observed(run=RUN))
    job.step(Observed(attempts=(attempt(1, job=status, deployment_status="Initializing"),),
                      run=RUN))  # fmt: skip
    assert job.status["phase"] == "Pending"
    assert job.condition("Running")["status"] == "False"


def test_observed_attempt_reads_rayjob_labels_and_status():
    job = Job(trainingjob())
    rayjob = job.step(Observed(run=RUN)).create[0]
    rayjob["status"] = {"jobStatus": "FAILED", "jobDeploymentStatus": "Failed",
                        "reason": "AppFailed", "message": "boom"}  # fmt: skip
    seen = ObservedAttempt.from_rayjob(rayjob)
    assert (seen.number, seen.capacity, seen.failed) == (1, "Spot", True)


# --- Kueue (issue 12, defect 5): with queueName, Kueue alone unsuspends -----------------------


def test_queued_attempt_is_never_unsuspended_by_the_operator():
    job = Job(trainingjob(queueName="gpu-queue"))
    plan = job.step(Observed(run=RUN))
    assert plan.create[0]["spec"]["suspend"] is True  # created suspended, for Kueue
    waiting = Observed(attempts=(attempt(1, job=None, deployment_status="Suspended"),), run=RUN)
    plan = job.step(waiting)
    assert plan.suspend is None  # Kueue admits by clearing suspend; never the operator
    assert job.status["phase"] == "Pending"
    running = job.condition("Running")
    assert (running["status"], running["reason"]) == ("False", "WaitingForKueue")
    assert "gpu-queue" in running["message"]
    assert job.step(waiting, minutes=10).suspend is None
    plan = job.step(Observed(attempts=(attempt(1),), run=RUN))  # Kueue admitted it
    assert plan.suspend is None
    assert job.status["phase"] == "Running"


def test_queued_job_held_by_spec_suspend_is_not_queued_until_released():
    body = trainingjob(queueName="gpu-queue", suspend=True)
    job = Job(body)
    plan = job.step(Observed(run=RUN))
    # Kueue unsuspends whatever it admits: holding means not entering the queue at all.
    assert plan.create == []
    assert plan.suspend is None
    assert job.status["phase"] == "Suspended"
    held = job.condition("Running")
    assert (held["status"], held["reason"]) == ("False", "Suspended")
    assert "queued in Kueue" in held["message"]
    assert job.step(Observed(run=RUN)).create == []
    body["spec"]["suspend"] = False
    plan = job.step(Observed(run=RUN))
    assert [o["metadata"]["name"] for o in plan.create] == ["churn-a1"]
    assert plan.create[0]["spec"]["suspend"] is True


def test_spec_suspend_after_kueue_admission_is_reported_not_fought():
    body = trainingjob(queueName="gpu-queue")
    job = Job(body)
    job.step(Observed(run=RUN))
    job.step(Observed(attempts=(attempt(1),), run=RUN))
    body["spec"]["suspend"] = True
    plan = job.step(Observed(attempts=(attempt(1),), run=RUN))
    assert plan.suspend is None  # Kueue would unsuspend an admitted RayJob at once
    assert job.status["phase"] == "Running"
    running = job.condition("Running")
    assert running["reason"] == "SuspendIgnoredUnderKueue"
    assert "Workload" in running["message"]
    assert [e.reason for e in plan.events] == ["SuspendIgnoredUnderKueue"]
    assert job.step(Observed(attempts=(attempt(1),), run=RUN)).events == []


# --- one reclaim, one preemption (issue 12, defect 4) -----------------------------------------


def test_one_node_of_one_attempt_is_one_preemption_whatever_shows_it():
    job = Job(trainingjob(preemption={"maxPreemptions": 3}))
    job.step(Observed(run=RUN))
    job.step(Observed(attempts=(attempt(1),), run=RUN))
    seen = (
        ObservedDisruption(1, "NodeTerminating:karpenter.sh/disrupted", pod="w0", node="spot-1"),
        ObservedDisruption(1, "NodeTerminating:karpenter.sh/disrupted", pod="w1", node="spot-1"),
        ObservedDisruption(1, "DeletionByTaintManager", pod="w2", node="spot-1"),
    )
    job.step(Observed(attempts=(attempt(1),), disruptions=seen, run=RUN))
    assert job.status["preemptions"] == 1
    assert len(job.status["disruptions"]) == 1
    other = ObservedDisruption(1, "DeletionByTaintManager", pod="w3", node="spot-2")
    job.step(Observed(attempts=(attempt(1),), disruptions=(*seen, other), run=RUN))
    assert job.status["preemptions"] == 2


def test_evidence_of_an_attempt_other_than_the_current_one_is_not_counted():
    job = Job(trainingjob(backoffLimit=3, preemption={"maxPreemptions": 3}))
    job.step(Observed(run=RUN))
    job.step(Observed(attempts=(attempt(1, job="FAILED", message="OOM"),), run=RUN))
    assert job.status["currentAttempt"]["number"] == 2
    late = ObservedDisruption(1, "SpotNodeDeleted", pod="churn-a1-w0", node="spot-1")
    job.step(Observed(attempts=(attempt(2),), disruptions=(late,), run=RUN))
    assert (job.status["failures"], job.status["preemptions"]) == (1, 0)
    assert job.status["disruptions"] == []


# --- a failed spot attempt waits for late preemption evidence (issue 17) ----------------------

GRACE = OperatorConfig()  # the default: 15 s


def test_failed_spot_attempt_waits_for_evidence_then_counts_a_late_preemption():
    """The RayJob's failure seen before the pod/node evidence of the reclaim: no verdict during
    the grace, a condition saying why; the evidence then makes it a preemption."""
    job = Job(trainingjob(backoffLimit=0), GRACE)
    job.step(Observed(run=RUN))
    failed = attempt(1, job="FAILED", message="worker died")
    plan = job.step(Observed(attempts=(failed,), run=RUN))
    assert plan.create == [] and job.status["failures"] == 0
    assert job.status["phase"] == "Retrying"
    assert job.status["retryAfter"] == "2026-11-29T12:02:15Z"
    waiting = job.condition("Running")
    assert (waiting["status"], waiting["reason"]) == ("False", "AwaitingPreemptionEvidence")
    assert "backoffLimit" in waiting["message"] and "2026-11-29T12:02:15Z" in waiting["message"]
    assert plan.requeue_after == 15.0
    late = ObservedDisruption(1, "SpotNodeDeleted", pod="churn-a1-w0", node="spot-1")
    plan = job.step(Observed(attempts=(failed,), disruptions=(late,), run=RUN), minutes=0.1)
    assert [o["metadata"]["name"] for o in plan.create] == ["churn-a2"]
    assert (job.status["failures"], job.status["preemptions"]) == (0, 1)
    assert "retryAfter" not in job.status
    assert job.status["currentAttempt"]["capacity"] == "Spot"


def test_failed_spot_attempt_without_evidence_is_a_failure_after_the_grace():
    job = Job(trainingjob(backoffLimit=1), GRACE)
    job.step(Observed(run=RUN))
    failed = attempt(1, job="FAILED", message="ZeroDivisionError")
    job.step(Observed(attempts=(failed,), run=RUN))
    plan = job.step(Observed(attempts=(failed,), run=RUN), minutes=0.1)  # 6 s: still waiting
    assert plan.create == [] and job.status["failures"] == 0
    plan = job.step(Observed(attempts=(failed,), run=RUN), minutes=0.25)  # 21 s: judged
    assert [o["metadata"]["name"] for o in plan.create] == ["churn-a2"]
    assert (job.status["failures"], job.status["preemptions"]) == (1, 0)
    assert "retryAfter" not in job.status
    assert [e.reason for e in plan.events].count("AttemptFailed") == 1


def test_failure_seen_long_after_it_ended_is_judged_at_once():
    """An operator that was down while the attempt failed: the evidence had its time."""
    job = Job(trainingjob(backoffLimit=1), GRACE)
    job.step(Observed(run=RUN))
    failed = attempt(1, job="FAILED", message="OOM", end_time="2026-11-29T11:00:00Z")
    plan = job.step(Observed(attempts=(failed,), run=RUN))
    assert [o["metadata"]["name"] for o in plan.create] == ["churn-a2"]
    assert job.status["failures"] == 1


def test_on_demand_failure_is_judged_at_once():
    job = Job(trainingjob(backoffLimit=1), GRACE)
    job.step(Observed(run=RUN))
    plan = job.step(Observed(attempts=(attempt(1, "OnDemand", job="FAILED"),), run=RUN))
    assert [o["metadata"]["name"] for o in plan.create] == ["churn-a2"]
    assert job.status["failures"] == 1


# --- a Ray job of another owner is never adopted (issue 12, defect 6) -------------------------


def test_an_earlier_incarnations_attempt_is_waited_for_not_adopted():
    job = Job(trainingjob())
    theirs = attempt(1, job="SUCCEEDED", end_time="2026-11-29T11:00:00Z", owner_uid="old-uid")
    plan = job.step(Observed(attempts=(theirs,), run=RUN))
    assert plan.create == [] and plan.register is None
    assert job.status["phase"] == "Pending"
    assert "currentAttempt" not in job.status
    waiting = job.condition("Running")
    assert (waiting["status"], waiting["reason"]) == ("False", "RayJobOwnedByOther")
    assert "ml/churn-a1" in waiting["message"] and "old-uid" in waiting["message"]
    assert [e.reason for e in plan.events] == ["RayJobOwnedByOther"]
    plan = job.step(Observed(attempts=(theirs,), run=RUN), minutes=5)
    assert (plan.create, plan.register, plan.events) == ([], None, [])
    plan = job.step(Observed(run=RUN))  # the garbage collector removed it
    assert [o["metadata"]["name"] for o in plan.create] == ["churn-a1"]
    assert plan.create[0]["metadata"]["ownerReferences"][0]["uid"] == UID
    mine = attempt(1, job="SUCCEEDED", owner_uid=UID)
    plan = job.step(Observed(attempts=(mine,), run=RUN))
    assert plan.register is not None  # its own result, registered


def test_a_recorded_attempt_taken_by_another_owner_is_not_followed():
    job = Job(trainingjob())
    job.step(Observed(run=RUN))
    theirs = attempt(1, job="FAILED", owner_uid="")  # nothing controls it
    plan = job.step(Observed(attempts=(theirs,), run=RUN))
    assert plan.create == []
    assert (job.status["failures"], job.status["attempts"]) == (0, 1)
    assert job.condition("Running")["reason"] == "RayJobOwnedByOther"


def test_observed_attempt_reads_its_controller():
    job = Job(trainingjob())
    rayjob = job.step(Observed(run=RUN)).create[0]
    assert ObservedAttempt.from_rayjob(rayjob).owned_by(UID)
    rayjob["metadata"]["ownerReferences"][0]["uid"] = "someone-else"
    assert not ObservedAttempt.from_rayjob(rayjob).owned_by(UID)
    del rayjob["metadata"]["ownerReferences"]
    assert not ObservedAttempt.from_rayjob(rayjob).owned_by(UID)


def test_autoscaling_bounds_under_a_queue_are_reported_as_ignored():
    group = {"name": "gpu", "replicas": 2, "minReplicas": 1, "maxReplicas": 4,
             "capacity": "SpotWithFallback", "resources": {"gpu": 1}}  # fmt: skip
    job = Job(trainingjob(queueName="gpu-queue", workers=[group]))
    plan = job.step(Observed(run=RUN))
    (warning,) = [e for e in plan.events if e.reason == "AutoscalingIgnoredUnderKueue"]
    assert warning.type == "Warning"
    assert "spec.workers[0]" in warning.message and "exactly replicas (2)" in warning.message
    workers = plan.create[0]["spec"]["rayClusterSpec"]["workerGroupSpecs"]
    assert (workers[0]["minReplicas"], workers[0]["maxReplicas"]) == (2, 2)
    unqueued = Job(trainingjob(workers=[group]))
    assert "AutoscalingIgnoredUnderKueue" not in [
        e.reason for e in unqueued.step(Observed(run=RUN)).events
    ]
