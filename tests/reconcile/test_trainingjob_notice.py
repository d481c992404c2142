"""Checkpoint on a reclaim notice in the pure core: the attempt is told once, the delivery and
the checkpoint it answers with are recorded, and without a notice nothing changes."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

from mlplane.crds import TrainingJobStatus
from mlplane.crds.validate import parse
from mlplane.monitoring.notice import NOTICE_FILE
from mlplane.operator import conditions
from mlplane.operator.config import OperatorConfig
from mlplane.operator.reconcile.notice import ObservedNotice
from mlplane.operator.reconcile.trainingjob import (
    Observed,
    ObservedAttempt,
    ObservedRun,
    Plan,
    reconcile,
)

T0 = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
UID = "uid-notice"
CONFIG = OperatorConfig()
CKPT = f"s3://ckpt/churn/{UID}"


def body() -> dict[str, Any]:
    return {
        "apiVersion": "mlplane.dev/v1alpha1", "kind": "TrainingJob",
        "metadata": {"name": "churn", "namespace": "ml", "uid": UID, "generation": 1},
        "spec": {
            "entrypoint": "python train.py",
            "workers": [{"name": "cpu", "replicas": 2, "capacity": "Spot"}],
            "checkpoint": {"uri": "s3://ckpt/churn"},
            "preemption": {"maxPreemptions": 5},
        },
    }  # fmt: skip


class Job:
    def __init__(self) -> None:
        self.body = body()

    def step(self, observed: Observed, at: float = 0.0) -> Plan:
        plan = reconcile(parse(self.body), observed, T0 + timedelta(seconds=at), CONFIG, uid=UID)
        TrainingJobStatus.model_validate(plan.status)  # the CRD's status model accepts it
        self.body["status"] = plan.status
        return plan

    @property
    def status(self) -> dict[str, Any]:
        return self.body["status"]


RUN = ObservedRun(run_id="r1")
RUNNING = ObservedAttempt(number=1, capacity="Spot", job_status="RUNNING")
ITN = ObservedNotice(1, "aws-node-termination-handler/spot-itn", node="n1",
                     time="2026-12-01T12:00:00Z", window_seconds=120.0)  # fmt: skip


def started() -> Job:
    job = Job()
    job.step(Observed(run=RUN))
    job.step(Observed(attempts=(RUNNING,), run=RUN), at=5)
    assert job.status["phase"] == "Running"
    return job


def reasons(plan: Plan) -> list[str]:
    return [e.reason for e in plan.events]


def test_a_notice_asks_for_the_delivery_to_the_attempts_checkpoint_folder():
    job = started()
    plan = job.step(Observed(attempts=(RUNNING,), run=RUN, notices=(ITN,)), at=10)
    assert plan.notice is not None
    assert plan.notice.uri == CKPT and plan.notice.id == "attempt-1-notice-1"
    assert plan.notice.document["attempt"] == 1
    assert plan.notice.document["deadline"] == "2026-12-01T12:02:00Z"  # the AWS window
    notice = job.status["lastNotice"]
    assert (notice["signal"], notice["node"], notice["deadline"]) == (
        "aws-node-termination-handler/spot-itn",
        "n1",
        "2026-12-01T12:02:00Z",
    )
    assert "deliveredTime" not in notice
    assert "ReclaimNotice" in reasons(plan)
    assert NOTICE_FILE == "_mlplane_notice.json"


def test_once_delivered_it_is_not_written_again_and_the_condition_waits_for_the_checkpoint():
    job = started()
    seen = Observed(attempts=(RUNNING,), run=RUN, notices=(ITN,))
    first = job.step(seen, at=10)
    assert first.notice is not None
    plan = job.step(replace(seen, notice_delivered=first.notice.id), at=10)
    assert plan.notice is None
    assert job.status["lastNotice"]["deliveredTime"] == "2026-12-01T12:00:10Z"
    cond = conditions.find(job.status["conditions"], "ReclaimNotice")
    assert (cond["status"], cond["reason"]) == ("Unknown", "CheckpointRequested")
    # The taint stays on the node: no second notice, no second write.
    again = job.step(seen, at=15)
    assert again.notice is None and "ReclaimNotice" not in reasons(again)
    assert job.status["lastNotice"]["sequence"] == 1
    assert job.status["reclaimNotices"] == 1


def test_the_checkpoint_answering_it_is_recorded():
    job = started()
    seen = Observed(attempts=(RUNNING,), run=RUN, notices=(ITN,))
    first = job.step(seen, at=10)
    job.step(replace(seen, notice_delivered=first.notice.id), at=10)
    run = replace(RUN, notice_id="attempt-1-notice-1", checkpoint_uri=f"{CKPT}/step-7",
                  checkpoint_step=7, notice_checkpoint_uri=f"{CKPT}/step-7",
                  notice_checkpoint_step=7)  # fmt: skip
    plan = job.step(replace(seen, run=run), at=14)
    notice = job.status["lastNotice"]
    assert notice["checkpoint"] == {"uri": f"{CKPT}/step-7", "step": 7}
    cond = conditions.find(job.status["conditions"], "ReclaimNotice")
    assert (cond["status"], cond["reason"]) == ("True", "CheckpointTaken")
    assert "NoticeCheckpointTaken" in reasons(plan)
    assert (job.status["reclaimNotices"], job.status["noticeCheckpoints"]) == (1, 1)
    # Another node of the attempt gets a notice later: a new one, asked again.
    other = replace(ITN, node="n2", time="2026-12-01T12:05:00Z")
    plan = job.step(replace(seen, run=run, notices=(ITN, other)), at=300)
    assert plan.notice is not None and plan.notice.id == "attempt-1-notice-2"


def test_a_failed_write_is_said_and_tried_again_next_round():
    job = started()
    seen = Observed(attempts=(RUNNING,), run=RUN, notices=(ITN,))
    job.step(seen, at=10)
    plan = job.step(replace(seen, notice_error="AccessDenied"), at=10)
    cond = conditions.find(job.status["conditions"], "ReclaimNotice")
    assert (cond["status"], cond["reason"]) == ("False", "NoticeNotDelivered")
    assert "AccessDenied" in cond["message"] and "NoticeNotDelivered" in reasons(plan)
    assert job.step(seen, at=15).notice is not None


def test_a_notice_of_another_attempt_is_not_delivered():
    job = started()
    plan = job.step(Observed(attempts=(RUNNING,), run=RUN, notices=(replace(ITN, attempt=7),)),
                    at=10)  # fmt: skip
    assert plan.notice is None and "lastNotice" not in job.status


def test_a_notice_for_an_attempt_not_running_yet_waits():
    job = Job()
    job.step(Observed(run=RUN))
    starting = ObservedAttempt(number=1, capacity="Spot", deployment_status="Initializing")
    plan = job.step(Observed(attempts=(starting,), run=RUN, notices=(ITN,)), at=5)
    assert plan.notice is None
    cond = conditions.find(job.status["conditions"], "ReclaimNotice")
    assert cond["reason"] == "WaitingForRunningAttempt"
    assert job.step(Observed(attempts=(RUNNING,), run=RUN, notices=(ITN,)), at=8).notice


def test_an_attempt_that_ended_before_its_notice_checkpoint_says_so():
    job = started()
    job.step(Observed(attempts=(RUNNING,), run=RUN, notices=(ITN,)), at=10)
    failed = replace(RUNNING, job_status="FAILED", end_time="2026-12-01T12:02:00Z")
    from mlplane.operator.reconcile.trainingjob import ObservedDisruption

    lost = ObservedDisruption(1, "SpotNodeDeleted", node="n1", time="2026-12-01T12:01:59Z")
    job.step(Observed(attempts=(failed,), disruptions=(lost,), run=RUN, notices=(ITN,)), at=125)
    assert job.status["currentAttempt"]["number"] == 2
    cond = conditions.find(job.status["conditions"], "ReclaimNotice")
    assert (cond["status"], cond["reason"]) == ("False", "CheckpointMissed")


def test_without_a_notice_nothing_is_delivered_or_recorded():
    job = started()
    plan = job.step(Observed(attempts=(RUNNING,), run=RUN), at=10)
    assert plan.notice is None and plan.create == [] and plan.events == []
    assert "lastNotice" not in job.status and "reclaimNotices" not in job.status
    assert conditions.find(job.status["conditions"], "ReclaimNotice") is None


def test_an_attempt_that_succeeds_before_answering_needs_no_checkpoint():
    job = started()
    job.step(Observed(attempts=(RUNNING,), run=RUN, notices=(ITN,)), at=10)
    done = replace(RUNNING, job_status="SUCCEEDED", end_time="2026-12-01T12:00:20Z")
    plan = job.step(Observed(attempts=(done,), run=RUN, notices=(ITN,)), at=20)
    assert plan.notice is None and job.status["phase"] == "Succeeded"
    cond = conditions.find(job.status["conditions"], "ReclaimNotice")
    assert (cond["status"], cond["reason"]) == ("False", "AttemptEnded")
