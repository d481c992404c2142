"""The local runner's TrainingJob rounds with a real MLflow (SQLite) and Ray's side as data
(issue #12, part A): what MLflow refuses and attempts lost to outages reach the status, as on
Kubernetes (the e2e tests run Ray for real)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from mlflow.tracking import MlflowClient

from mlplane.operator.config import OperatorConfig
from mlplane.operator.platforms.local import LocalPlatform, Ports
from mlplane.operator.runner import Runner

NOW = datetime(2026, 12, 3, 9, 0, tzinfo=UTC)
#: Ray's message for a failed driver whose last line is the runtime's outage marker.
OUTAGE = (
    "Job entrypoint command failed with exit code 75, last available logs (truncated to "
    "20,000 chars):\nmlplane.failure=infrastructure: MLflow failed or could not be reached "
    "(MlflowException: API request to http://127.0.0.1:5000/api/2.0/mlflow/runs/get failed)\n"
)


class FakeRay:
    """The Ray Jobs API as the runner sees it: submitted jobs, states set by the test."""

    def __init__(self) -> None:
        self.submitted: list[str] = []
        self.jobs: dict[str, dict[str, Any]] = {}

    def submit(self, rayjob: dict[str, Any]) -> bool:
        name = rayjob["metadata"]["name"]
        if name in self.submitted:
            return False
        self.submitted.append(name)
        return True

    def job(self, namespace: str, name: str, owner_uid: str) -> dict[str, Any] | None:
        return self.jobs.get(name)

    def dead_nodes(self) -> list[dict[str, Any]]:
        return []


@pytest.fixture
def mlflow_uri(tmp_path: Path) -> str:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    MlflowClient(uri).search_experiments()
    return uri


@pytest.fixture
def runner(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Runner, FakeRay]:
    runner = Runner(tmp_path / "state")
    runner.platform = LocalPlatform(tmp_path / "state", Ports())
    ray = FakeRay()
    for name in ("submit", "job", "dead_nodes"):
        monkeypatch.setattr(runner.platform, name, getattr(ray, name))
    return runner, ray


def apply(runner: Runner, mlflow_uri: str, name: str, **mlflow_spec: Any) -> None:
    runner.store.apply({
        "apiVersion": "mlplane.dev/v1alpha1", "kind": "TrainingJob",
        "metadata": {"name": name, "namespace": "ml"},
        "spec": {"entrypoint": "python train.py", "backoffLimit": 0,
                 "mlflow": {"trackingUri": mlflow_uri, "registeredModel": name,
                            **mlflow_spec}},
    })  # fmt: skip


def one_pass(runner: Runner, name: str, now: datetime) -> dict[str, Any]:
    body = runner.store.get("TrainingJob", "ml", name)
    # The spec names its own MLflow: the registry policy must allow it (closed by default).
    allowed = (body["spec"]["mlflow"]["trackingUri"],)
    config = OperatorConfig(mlflow_tracking_uri="http://unused:1", allowed_tracking_uris=allowed)
    runner.trainingjob(body, now, config)
    return runner.store.get("TrainingJob", "ml", name).get("status") or {}


def condition(status: dict[str, Any], type_: str) -> dict[str, Any]:
    return next(c for c in status["conditions"] if c["type"] == type_)


def test_refused_run_creation_is_written_to_status(runner, mlflow_uri):
    runner, ray = runner
    client = MlflowClient(mlflow_uri)
    client.delete_experiment(client.create_experiment("ml/archived"))
    apply(runner, mlflow_uri, "churn", experiment="ml/archived")
    status = one_pass(runner, "churn", NOW)
    assert status["phase"] == "Stalled"
    stalled = condition(status, "Stalled")
    assert (stalled["status"], stalled["reason"]) == ("True", "MLflowRefused")
    assert "must be in the 'active' state" in stalled["message"]
    assert ray.submitted == []
    events = runner.store.events("TrainingJob", "ml", "churn")
    assert [e["reason"] for e in events] == ["MLflowRefused"]
    client.restore_experiment(client.get_experiment_by_name("ml/archived").experiment_id)
    status = one_pass(runner, "churn", NOW + timedelta(seconds=2))
    assert ray.submitted == ["churn-a1"]
    assert condition(status, "Stalled")["status"] == "False"
    assert status["phase"] == "Pending"


def test_attempt_lost_to_an_outage_spends_no_backoff_limit(runner, mlflow_uri):
    runner, ray = runner
    apply(runner, mlflow_uri, "lost")
    one_pass(runner, "lost", NOW)
    assert ray.submitted == ["lost-a1"]
    ray.jobs["lost-a1"] = {"jobStatus": "FAILED", "jobDeploymentStatus": "Failed",
                           "message": OUTAGE, "startTime": "2026-12-03T09:00:01Z",
                           "endTime": "2026-12-03T09:00:20Z", "ownerUid": None}  # fmt: skip
    status = one_pass(runner, "lost", NOW + timedelta(seconds=30))
    assert (status["failures"], status["infrastructureFailures"]) == (0, 1)
    assert status["phase"] == "Retrying"
    assert status["retryAfter"] == "2026-12-03T09:00:50Z"
    assert condition(status, "InfrastructureAvailable")["reason"] == "AttemptLostToOutage"
    assert ray.submitted == ["lost-a1"]  # waiting out the backoff
    status = one_pass(runner, "lost", NOW + timedelta(seconds=60))
    assert ray.submitted == ["lost-a1", "lost-a2"]
    assert (status["failures"], status["infrastructureFailures"], status["attempts"]) == (0, 1, 2)
