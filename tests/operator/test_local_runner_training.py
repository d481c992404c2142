"""The local runner's TrainingJob steps without Ray: the Jobs API is an in-memory stand-in with
Ray's rules (a submission id is taken once, for good); MLflow is real (SQLite).

Issue 12, defect 6 on the local platform: a TrainingJob deleted and applied again must get its
own Ray jobs, never its predecessor's (finished) one and its result.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from mlflow.tracking import MlflowClient

from mlplane.operator.platforms.base import ChildOwnedByOther
from mlplane.operator.platforms.local import LocalPlatform
from mlplane.operator.runner import Runner, local_config

NOW = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)


@dataclass
class Info:
    status: str
    metadata: dict[str, str]
    message: str = ""
    start_time: int | None = 1_764_763_200_000
    end_time: int | None = None


@dataclass
class FakeJobs:
    """Ray's JobSubmissionClient as the platform uses it."""

    jobs: dict[str, Info] = field(default_factory=dict)
    envs: dict[str, dict[str, str]] = field(default_factory=dict)

    def submit_job(self, *, entrypoint: str, submission_id: str, runtime_env: Any,
                   metadata: dict[str, str]) -> str:  # fmt: skip
        if submission_id in self.jobs:
            raise RuntimeError(f"Job with submission_id {submission_id} already exists.")
        self.jobs[submission_id] = Info("RUNNING", dict(metadata))
        self.envs[submission_id] = dict((runtime_env or {}).get("env_vars") or {})
        return submission_id

    def get_job_info(self, submission_id: str) -> Info:
        if submission_id not in self.jobs:
            raise RuntimeError(f"Job {submission_id} does not exist")
        return self.jobs[submission_id]

    def stop_job(self, submission_id: str) -> bool:
        self.jobs[submission_id].status = "STOPPED"
        return True


@pytest.fixture
def jobs(monkeypatch: pytest.MonkeyPatch) -> FakeJobs:
    fake = FakeJobs()
    monkeypatch.setattr(LocalPlatform, "_jobs", lambda self: fake)
    monkeypatch.setattr(LocalPlatform, "dead_nodes", lambda self: [])  # no spot nodes here
    return fake


def trainingjob(tracking_uri: str) -> dict[str, Any]:
    return {
        "apiVersion": "mlplane.dev/v1alpha1", "kind": "TrainingJob",
        "metadata": {"name": "churn", "namespace": "ml"},
        "spec": {"entrypoint": "python train.py",
                 "workers": [{"name": "w", "replicas": 1, "capacity": "OnDemand"}],
                 "mlflow": {"registeredModel": "churn", "trackingUri": tracking_uri}},
    }  # fmt: skip


def test_a_trainingjob_applied_again_gets_its_own_ray_job(tmp_path: Path, jobs: FakeJobs):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    runner = Runner(tmp_path / "state")
    # This test's own MLflow, not the platform's: the registry policy must allow it.
    config = replace(local_config(runner.platform), allowed_tracking_uris=(uri,))
    runner.store.apply(trainingjob(uri))
    first = runner.store.get("TrainingJob", "ml", "churn")
    runner.trainingjob(first, NOW, config)
    assert len(jobs.jobs) == 1
    (old_id,) = jobs.jobs
    jobs.jobs[old_id].status = "SUCCEEDED"  # it trained, and is over

    runner.store.delete("TrainingJob", "ml", "churn")
    runner.store.apply(trainingjob(uri))  # applied again: a new uid
    again = runner.store.get("TrainingJob", "ml", "churn")
    assert again["metadata"]["uid"] != first["metadata"]["uid"]
    for _ in range(3):
        runner.trainingjob(runner.store.get("TrainingJob", "ml", "churn"), NOW, config)
    status = runner.store.get("TrainingJob", "ml", "churn")["status"]
    assert len(jobs.jobs) == 2  # its own attempt 1, beside the old one
    new_id = next(i for i in jobs.jobs if i != old_id)
    assert jobs.jobs[new_id].metadata["mlplane.dev/owner-uid"] == again["metadata"]["uid"]
    assert status["phase"] == "Running"  # its own attempt 1, not the old one's result
    assert MlflowClient(uri).search_model_versions("name = 'churn'") == []


def test_submit_never_takes_a_ray_job_of_another_owner(tmp_path: Path, jobs: FakeJobs):
    platform = LocalPlatform(tmp_path)
    rayjob = {"apiVersion": "ray.io/v1", "kind": "RayJob",
              "metadata": {"name": "churn-a1", "namespace": "ml", "ownerReferences": [
                  {"kind": "TrainingJob", "name": "churn", "uid": "uid-a", "controller": True}]},
              "spec": {"entrypoint": "python train.py"}}  # fmt: skip
    assert platform.submit(rayjob) is True
    assert platform.submit(rayjob) is False  # a retry: the same owner's job, not a second one
    (job_id,) = jobs.jobs
    jobs.jobs[job_id].metadata["mlplane.dev/owner-uid"] = "someone-else"
    with pytest.raises(ChildOwnedByOther):
        platform.submit(rayjob)
    assert platform.job("ml", "churn-a1", "uid-b") is None
    assert platform.job("ml", "churn-a1", "uid-a")["ownerUid"] == "someone-else"


def test_a_refused_tracking_uri_is_not_contacted_by_the_local_runner(
    tmp_path: Path, jobs: FakeJobs
):
    """The local runner applies the registry policy as the Kopf handler does."""
    evil = tmp_path / "elsewhere.db"
    runner = Runner(tmp_path / "state")
    runner.store.apply(trainingjob(f"sqlite:///{evil}"))
    body = runner.store.get("TrainingJob", "ml", "churn")
    runner.trainingjob(body, NOW, local_config(runner.platform))
    status = runner.store.get("TrainingJob", "ml", "churn")["status"]
    admitted = next(c for c in status["conditions"] if c["type"] == "Admitted")
    assert (admitted["status"], admitted["reason"]) == ("False", "TrackingUriNotAllowed")
    assert jobs.jobs == {}
    assert not evil.exists()


def test_the_local_runner_comes_back_when_the_core_asks(tmp_path: Path, jobs: FakeJobs):
    """``Plan.requeue_after`` reaches the runner's loop (issue 16: neither platform acted on
    it): a held job asks to be looked at again in 30 s, and the pass says so."""
    runner = Runner(tmp_path / "state")
    runner.store.apply(trainingjob(f"sqlite:///{tmp_path / 'elsewhere.db'}"))  # refused URI
    assert runner.pass_once(NOW) == 30.0
    runner.store.delete("TrainingJob", "ml", "churn")
    assert runner.pass_once(NOW) is None  # nothing asked: the loop's own interval


def spot_job(tracking_uri: str) -> dict[str, Any]:
    return {
        "apiVersion": "mlplane.dev/v1alpha1", "kind": "TrainingJob",
        "metadata": {"name": "spotty", "namespace": "ml"},
        "spec": {"entrypoint": "python train.py",
                 "workers": [{"name": "w", "replicas": 2, "capacity": "Spot",
                              "resources": {"gpu": 1}, "accelerator": "nvidia-l4"}],
                 "checkpoint": {"interval": "Auto"},
                 "preemption": {"maxPreemptions": 5},
                 "mlflow": {"trackingUri": tracking_uri}},
    }  # fmt: skip


def test_reclaim_history_survives_a_runner_restart_in_the_state_dir(
    tmp_path: Path, jobs: FakeJobs, monkeypatch: pytest.MonkeyPatch
):
    """Auto interval on the local platform: M comes from the runner's own history, kept in
    ``<state-dir>/reclaim-history.json``; a reclaim seen by one runner is known to the next."""
    from datetime import timedelta

    from mlplane.monitoring import spot

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    state = tmp_path / "state"
    pool = spot.pool_key("nvidia-l4", None)
    # An earlier life of the operator saw 20 node-hours and 10 reclaims in this pool.
    (state).mkdir(parents=True)
    earlier = spot.record({}, pool, "old-job/1", spot.Exposure(20 * 3600.0, 10))
    (state / "reclaim-history.json").write_text(
        __import__("json").dumps(spot.dump_history(earlier))
    )
    runner = Runner(state)
    config = replace(local_config(runner.platform), allowed_tracking_uris=(uri,))
    runner.store.apply(spot_job(uri))
    for _ in range(2):
        runner.trainingjob(runner.store.get("TrainingJob", "ml", "spotty"), NOW, config)
    (submission,) = jobs.envs
    expected_m = spot.node_mtbr(earlier, pool) / 2
    env = jobs.envs[submission]
    assert env["MLPLANE_CHECKPOINT_INTERVAL"] == "Auto"
    assert float(env["MLPLANE_RECLAIM_MTBR_SECONDS"]) == pytest.approx(expected_m, abs=1e-3)
    status = runner.store.get("TrainingJob", "ml", "spotty")["status"]
    assert status["checkpoint"]["meanTimeBetweenReclaimsSeconds"] == pytest.approx(
        expected_m, abs=0.1
    )
    uid = runner.store.get("TrainingJob", "ml", "spotty")["metadata"]["uid"]

    # Running for 30 minutes, then a spot node dies: counted, and written to the history.
    runner.trainingjob(runner.store.get("TrainingJob", "ml", "spotty"), NOW, config)
    died = NOW + timedelta(minutes=30)
    monkeypatch.setattr(LocalPlatform, "dead_nodes", lambda self: [
        {"node_id": "f" * 32, "end_time_ms": int(died.timestamp() * 1000)}])  # fmt: skip
    later = NOW + timedelta(minutes=31)
    runner.trainingjob(runner.store.get("TrainingJob", "ml", "spotty"), later, config)
    status = runner.store.get("TrainingJob", "ml", "spotty")["status"]
    assert status["preemptions"] == 1
    assert status["cost"]["lostGpuHours"] > 0

    restarted = Runner(state)  # a new process reads the file
    history = restarted.reclaims.history()
    assert history[pool].recent[f"{uid}/1"] == spot.Exposure(2 * 31 * 60.0, 1, died.timestamp())
    assert history[pool].total().reclaims == 11
    assert spot.node_mtbr(history, pool) < spot.node_mtbr(earlier, pool)


def test_the_local_runner_returns_to_spot_by_stopping_the_on_demand_ray_job(
    tmp_path: Path, jobs: FakeJobs, monkeypatch: pytest.MonkeyPatch
):
    """returnToSpot on the local platform: the same core decides; the runner carries out its
    stop (the Jobs API's stop_job) and submits the spot attempt only once that job stopped."""
    from datetime import timedelta

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    runner = Runner(tmp_path / "state")
    config = replace(local_config(runner.platform), allowed_tracking_uris=(uri,))
    body = spot_job(uri)
    body["spec"]["workers"][0]["capacity"] = "SpotWithFallback"
    body["spec"]["preemption"] = {"maxPreemptions": 1, "returnToSpot": {"minOnDemand": "10s"}}
    runner.store.apply(body)

    def step(at: timedelta) -> dict[str, Any]:
        runner.trainingjob(runner.store.get("TrainingJob", "ml", "spotty"), NOW + at, config)
        return runner.store.get("TrainingJob", "ml", "spotty")["status"]

    def ray_job(attempt: int) -> str:
        return next(i for i in jobs.jobs if i.startswith(f"ml-spotty-a{attempt}-"))

    def checkpoint(step_: int) -> None:
        client = MlflowClient(uri)
        run_id = runner.store.get("TrainingJob", "ml", "spotty")["status"]["mlflow"]["runId"]
        client.set_tag(run_id, "mlplane.checkpoint.uri", f"{tmp_path}/ckpt/step-{step_}")
        client.set_tag(run_id, "mlplane.checkpoint.step", str(step_))

    step(timedelta(0))
    step(timedelta(seconds=30))
    died = NOW + timedelta(minutes=1)
    monkeypatch.setattr(LocalPlatform, "dead_nodes", lambda self: [
        {"node_id": "f" * 32, "end_time_ms": int(died.timestamp() * 1000)}])  # fmt: skip
    assert step(timedelta(minutes=1, seconds=5))["preemptions"] == 1
    jobs.jobs[ray_job(1)].status = "FAILED"
    status = step(timedelta(minutes=2))
    assert status["currentAttempt"]["capacity"] == "OnDemand"
    checkpoint(10)
    status = step(timedelta(minutes=3))
    assert status["spotReturn"]["decidedAt"]
    assert jobs.jobs[ray_job(2)].status == "RUNNING"
    checkpoint(20)
    status = step(timedelta(minutes=4))
    assert jobs.jobs[ray_job(2)].status == "STOPPED"  # the runner carried out the stop
    assert not any(i.startswith("ml-spotty-a3-") for i in jobs.jobs)  # not before it stopped
    status = step(timedelta(minutes=4, seconds=5))
    assert jobs.jobs[ray_job(3)].status == "RUNNING"
    assert jobs.envs[ray_job(3)]["MLPLANE_ATTEMPT"] == "3"
    assert (status["returnsToSpot"], status["preemptions"], status["failures"]) == (1, 1, 0)
    assert status["currentAttempt"]["capacity"] == "Spot"
    step(timedelta(minutes=5))
    assert len(jobs.jobs) == 3


def test_the_local_runner_delivers_an_announced_reclaim_through_the_checkpoint_folder(
    tmp_path: Path, jobs: FakeJobs
):
    """`mlplane local reclaim --notice` records the notice in the state dir; the runner reads
    it as the operator reads a node taint and writes the notice object where the attempt's
    runtime reads it (the same core and channel as on Kubernetes)."""
    from datetime import timedelta

    from mlplane.monitoring.notice import NOTICE_FILE, parse_notice
    from mlplane.training.checkpoints import open_store

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    runner = Runner(tmp_path / "state")
    config = replace(local_config(runner.platform), allowed_tracking_uris=(uri,))
    runner.store.apply(spot_job(uri))

    def step(at: timedelta) -> dict[str, Any]:
        runner.trainingjob(runner.store.get("TrainingJob", "ml", "spotty"), NOW + at, config)
        return runner.store.get("TrainingJob", "ml", "spotty")["status"]

    step(timedelta(0))
    status = step(timedelta(seconds=4))
    assert status["phase"] == "Running" and "lastNotice" not in status  # no notice: as before
    folder = status["checkpointUri"]
    assert open_store(folder).read_side(NOTICE_FILE) is None
    # An old notice (before the attempt started) reaches nobody; a new one reaches it.
    runner.platform.announce_reclaim("a" * 32, 20, now=NOW - timedelta(minutes=5))
    assert "lastNotice" not in step(timedelta(seconds=6))
    runner.platform.announce_reclaim("b" * 32, 20, now=NOW + timedelta(seconds=7))
    status = step(timedelta(seconds=8))
    notice = parse_notice(open_store(folder).read_side(NOTICE_FILE) or b"")
    assert notice is not None
    assert (notice.attempt, notice.node, notice.signal) == (
        1,
        "b" * 16,
        "mlplane.dev/local-reclaim-notice",
    )
    assert notice.deadline == "2026-12-03T12:00:27Z"  # the announced 20 s
    assert status["lastNotice"]["deliveredTime"] == "2026-12-03T12:00:08Z"
