"""The TrainingJob core's MLflow side (issue #12, part A): the alias before ``Succeeded``,
outages that spend no budget, refusals that stall with a condition instead of hanging."""

from __future__ import annotations

from datetime import timedelta

from test_trainingjob import RUN, Job, attempt, trainingjob

from mlplane.operator.reconcile.trainingjob import (
    OUTAGE_MARKER,
    Observed,
    ObservedAttempt,
    ObservedRun,
)

DONE = attempt(1, job="SUCCEEDED", end_time="2026-11-29T12:30:00Z")

#: What Ray puts in a failed job's message (``job_supervisor.py``), here with the runtime's
#: marker as the driver's last line, as ``mlplane.training.failure`` prints it.
RAY_MESSAGE = (
    "Job entrypoint command failed with exit code 75, last available logs (truncated to "
    "20,000 chars):\nTraceback (most recent call last):\n  ...\nMlflowException: API request "
    "to http://mlflow:5000/api/2.0/mlflow/runs/get failed\n"
    f"{OUTAGE_MARKER}: MLflow at http://mlflow:5000 could not be reached (MlflowException)\n"
)


def registered(version: str | None, alias: str | None) -> Observed:
    return Observed(attempts=(DONE,), run=ObservedRun("run123", registered_version=version,
                                                      alias_version=alias))  # fmt: skip


# --- defect 1: registered without its alias ----------------------------------------------------


def test_registered_version_without_its_alias_is_not_success():
    job = Job(trainingjob())
    job.step(Observed(run=RUN))
    job.step(Observed(attempts=(DONE,), run=RUN))  # registration planned
    assert job.condition("Registered")["reason"] == "Registering"
    # the version landed, the alias call failed (an MLflow 503): MLflow holds no alias
    plan = job.step(registered("4", None))
    assert job.status["phase"] == "Registering"
    assert plan.register is not None and plan.register.alias == "candidate"
    cond = job.condition("Registered")
    assert (cond["status"], cond["reason"]) == ("False", "AliasPending")
    assert "version 4 is registered; alias candidate is not set" in cond["message"]
    assert job.status["mlflow"]["modelVersion"] == "4"
    assert job.condition("Succeeded")["status"] == "Unknown"
    assert "Succeeded" not in [e.reason for e in plan.events]


def test_alias_pointing_at_another_version_is_moved_before_success():
    job = Job(trainingjob())
    job.step(Observed(run=RUN))
    plan = job.step(registered("4", "3"))  # someone else's version holds the alias
    assert plan.register is not None
    assert "points at version 3" in job.condition("Registered")["message"]
    plan = job.step(registered("4", "4"))
    assert plan.register is None
    assert job.status["phase"] == "Succeeded"
    cond = job.condition("Registered")
    assert (cond["status"], cond["reason"]) == ("True", "VersionRegistered")
    assert cond["message"] == "churn version 4 with alias candidate"
    assert (
        "registered churn version 4 with alias candidate" in job.condition("Succeeded")["message"]
    )


def test_without_an_alias_the_version_is_enough():
    body = trainingjob()
    body["spec"]["mlflow"] = {"registeredModel": "churn"}
    job = Job(body)
    job.step(Observed(run=RUN))
    plan = job.step(registered("2", None))
    assert plan.register is None
    assert job.status["phase"] == "Succeeded"
    assert job.condition("Registered")["message"] == "churn version 2"


# --- defect 7: outages spend no budget; refusals stall with a condition --------------------------


def test_attempt_lost_to_an_outage_spends_no_backoff_limit_and_backs_off():
    job = Job(trainingjob(backoffLimit=0))
    job.step(Observed(run=RUN))
    lost = attempt(1, job="FAILED", end_time="2026-11-29T12:05:00Z", message=RAY_MESSAGE)
    plan = job.step(Observed(attempts=(lost,), run=RUN))  # now 12:02: the backoff runs
    assert plan.create == []
    assert job.status["failures"] == 0  # backoffLimit 0 and still not Failed
    assert job.status["infrastructureFailures"] == 1
    assert job.status["phase"] == "Retrying"
    assert job.status["retryAfter"] == "2026-11-29T12:05:30Z"  # 30 s after the attempt ended
    cond = job.condition("InfrastructureAvailable")
    assert (cond["status"], cond["reason"]) == ("False", "AttemptLostToOutage")
    assert "MLflow at http://mlflow:5000 could not be reached" in cond["message"]
    assert "attempt 2 starts at 2026-11-29T12:05:30Z" in cond["message"]
    assert job.condition("Running")["reason"] == "WaitingForInfrastructure"
    assert [e.reason for e in plan.events] == ["AttemptLostToOutage"]
    again = job.step(Observed(attempts=(lost,), run=RUN), minutes=1)  # 12:03: still waiting
    assert again.create == [] and again.events == []
    assert job.status["infrastructureFailures"] == 1  # seen again, counted once
    plan = job.step(Observed(attempts=(lost,), run=RUN), minutes=3)  # 12:06: past retryAfter
    assert [o["metadata"]["name"] for o in plan.create] == ["churn-a2"]
    assert "retryAfter" not in job.status
    assert (job.status["failures"], job.status["preemptions"]) == (0, 0)
    # the second outage waits twice as long; a running attempt says the outage is over
    lost2 = attempt(2, job="FAILED", end_time="2026-11-29T12:10:00Z", message=RAY_MESSAGE)
    job.step(Observed(attempts=(lost2,), run=RUN))
    assert job.status["retryAfter"] == "2026-11-29T12:11:00Z"
    job.step(Observed(attempts=(lost2,), run=RUN), minutes=10)
    job.step(Observed(attempts=(attempt(3),), run=RUN))
    assert job.status["phase"] == "Running"
    assert job.condition("InfrastructureAvailable")["status"] == "True"
    assert job.status["infrastructureFailures"] == 2


def test_outage_backoff_is_capped():
    job = Job(trainingjob())
    job.step(Observed(run=RUN))
    job.body["status"]["infrastructureFailures"] = 9
    lost = attempt(1, job="FAILED", end_time="2026-11-29T12:00:00Z", message=RAY_MESSAGE)
    job.step(Observed(attempts=(lost,), run=RUN))
    assert job.status["retryAfter"] == "2026-11-29T12:10:00Z"


def test_a_code_failure_still_spends_backoff_limit():
    job = Job(trainingjob(backoffLimit=0))
    job.step(Observed(run=RUN))
    message = "Job entrypoint command failed with exit code 1, last available logs:\nKeyError: 'x'"
    job.step(Observed(attempts=(attempt(1, job="FAILED", message=message),), run=RUN))
    assert job.status["phase"] == "Failed"
    assert job.condition("Succeeded")["reason"] == "BackoffLimitExceeded"
    assert "infrastructureFailures" not in job.status


def test_outage_is_read_from_the_last_marker_line():
    assert ObservedAttempt(1, "Spot", "FAILED", message=RAY_MESSAGE).outage == (
        "MLflow at http://mlflow:5000 could not be reached (MlflowException)"
    )
    assert ObservedAttempt(1, "Spot", "FAILED", message="exit code 1").outage is None
    assert ObservedAttempt(1, "Spot", "FAILED").outage is None


def test_refused_run_creation_stalls_with_a_condition_then_recovers():
    job = Job(trainingjob())
    refused = "MLflow at http://mlflow:5000: The experiment 7 must be in the 'active' state"
    plan = job.step(Observed(registry_refused=refused))
    assert job.status["phase"] == "Stalled"
    assert not plan.ensure_run and plan.create == []
    cond = job.condition("Stalled")
    assert (cond["status"], cond["reason"]) == ("True", "MLflowRefused")
    assert refused in cond["message"] and "asks again every round" in cond["message"]
    assert [e.reason for e in plan.events] == ["MLflowRefused"]
    # the next pass asks again (status unchanged while MLflow keeps refusing, no new event)
    status = dict(job.status)
    assert job.step(Observed()).ensure_run
    assert job.status["phase"] == "Stalled"  # asking again changes nothing until it lands
    assert job.step(Observed(registry_refused=refused)).events == []
    assert job.status == status
    plan = job.step(Observed(run=RUN))  # accepted: the run exists, attempt 1 starts
    assert [o["metadata"]["name"] for o in plan.create] == ["churn-a1"]
    assert job.status["phase"] == "Pending"
    assert job.condition("Stalled")["status"] == "False"
    assert "MLflowAccepted" in [e.reason for e in plan.events]


def test_refused_registration_is_explained_and_retried():
    job = Job(trainingjob())
    job.step(Observed(run=RUN))
    job.step(Observed(attempts=(DONE,), run=RUN))  # registration planned, then refused:
    refusal = "registering churn: PERMISSION_DENIED: no MANAGE permission on churn"
    job.step(Observed(attempts=(DONE,), run=RUN, registry_refused=refusal))
    assert job.status["phase"] == "Stalled"
    cond = job.condition("Registered")
    assert (cond["status"], cond["reason"]) == ("False", "RegistrationRefused")
    assert refusal in cond["message"]
    assert job.condition("Succeeded")["status"] == "Unknown"
    plan = job.step(Observed(attempts=(DONE,), run=RUN))  # asked again next round
    assert plan.register is not None
    job.step(registered("1", "1"))
    assert job.status["phase"] == "Succeeded"
    assert job.condition("Stalled")["status"] == "False"


def test_unreachable_mlflow_during_registration_keeps_the_phase():
    job = Job(trainingjob())
    job.step(Observed(run=RUN))
    job.step(Observed(attempts=(DONE,), run=RUN))
    plan = job.step(Observed(attempts=(DONE,), run=RUN, registry_error="registering churn: 503"))
    assert plan.register is None
    assert job.status["phase"] == "Registering"
    cond = job.condition("RegistryAvailable")
    assert (cond["status"], cond["reason"]) == ("False", "MLflowUnreachable")
    assert "registering churn: 503" in cond["message"]
    assert job.status["failures"] == 0


def test_outage_marker_is_the_runtimes():
    from mlplane.training.failure import OUTAGE_MARKER as RUNTIME_MARKER

    assert RUNTIME_MARKER == OUTAGE_MARKER


def test_retry_after_is_kept_while_waiting():
    """A restart in the middle of the backoff finds the time in status, not in memory."""
    job = Job(trainingjob())
    job.step(Observed(run=RUN))
    lost = attempt(1, job="FAILED", end_time="2026-11-29T12:02:00Z", message=RAY_MESSAGE)
    job.step(Observed(attempts=(lost,), run=RUN))
    first = job.status["retryAfter"]
    job.now += timedelta(seconds=10)
    job.step(Observed(attempts=(lost,), run=RUN), minutes=0)
    assert job.status["retryAfter"] == first
