"""A TrainingJob's MLflow rounds against a real MLflow (SQLite): the pure core, the registry
port and ``trainingjob_rounds`` as both platforms run them, with Ray's side given as data.

Issue #12, part A: one run however many experiments MLflow holds (defect 2); the alias set
on the next round after its call failed once (defect 1); MLflow's refusals written to status
(defect 7).
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import Any

import mlflow
import pytest
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import TEMPORARILY_UNAVAILABLE
from mlflow.tracking import MlflowClient
from sklearn.linear_model import LogisticRegression

from mlplane.crds.validate import parse
from mlplane.operator.config import OperatorConfig
from mlplane.operator.reconcile.trainingjob import Observed, ObservedAttempt, Plan
from mlplane.operator.registry import (
    TAG_UID,
    Registry,
    observe_trainingjob,
    trainingjob_rounds,
)

T0 = datetime(2026, 12, 3, 9, 0, tzinfo=UTC)
CONFIG = OperatorConfig()


def trainingjob(name: str, uid: str, **mlflow_spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "mlplane.dev/v1alpha1", "kind": "TrainingJob",
        "metadata": {"name": name, "namespace": "ml", "uid": uid, "generation": 1},
        "spec": {"entrypoint": "python train.py",
                 "mlflow": {"registeredModel": name, "alias": "champion", **mlflow_spec}},
    }  # fmt: skip


class Driver:
    """Plays one platform: the attempts' Ray job states are set by the test, MLflow is real."""

    def __init__(self, registry: Registry, body: dict[str, Any]) -> None:
        self.registry = registry
        self.body = body
        self.uid = body["metadata"]["uid"]
        self.job_status: str | None = None
        self.now = T0
        self.plans: list[Plan] = []

    def observe(self, tj: Any) -> Observed:
        current = tj.status.current_attempt if tj.status else None
        attempts = ()
        if current is not None and self.job_status:
            attempts = (ObservedAttempt(current.number, "OnDemand", self.job_status),)
        look = observe_trainingjob(self.registry, tj, self.uid)
        return Observed(attempts, (), look.run, look.unavailable, look.refused)

    def act(self, _: Any, plan: Plan) -> None:
        self.plans.append(plan)

    def round(self) -> dict[str, Any]:
        """One timer tick or runner pass: the status is what the platform would write."""
        self.now += timedelta(seconds=5)
        _, plan, _ = trainingjob_rounds(parse(self.body), self.uid, self.now, CONFIG,
                                        self.registry, observe=self.observe,
                                        act=self.act)  # fmt: skip
        self.body["status"] = plan.status
        return plan.status

    def condition(self, type_: str) -> dict[str, Any]:
        return next(c for c in self.body["status"]["conditions"] if c["type"] == type_)

    def events(self) -> list[str]:
        return [e.reason for p in self.plans for e in p.events]


def log_model(uri: str, run_id: str) -> None:
    mlflow.set_tracking_uri(uri)
    with mlflow.start_run(run_id=run_id):
        model = LogisticRegression().fit([[0.0], [1.0], [2.0], [3.0]], [0, 0, 1, 1])
        mlflow.sklearn.log_model(model, name="model", pip_requirements=["scikit-learn"])


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    uri = f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"
    MlflowClient(uri).search_experiments()  # the schema, once
    yield uri
    mlflow.set_tracking_uri(None)


def runs_of(client: MlflowClient, uid: str) -> list[Any]:
    """Every run tagged with ``uid``, in every experiment (all pages)."""
    ids, token = [], None
    while True:
        page = client.search_experiments(max_results=500, page_token=token)
        ids += [e.experiment_id for e in page]
        token = page.token
        if not token:
            break
    runs = []
    for i in range(0, len(ids), 100):
        runs += client.search_runs(ids[i : i + 100], f"tags.`{TAG_UID}` = '{uid}'")
    return runs


# --- defect 2 ------------------------------------------------------------------------------------


def test_one_run_when_the_jobs_experiment_is_older_than_a_thousand_others(tmp_path):
    uri = f"sqlite:///{tmp_path / 'many.db'}"
    client = MlflowClient(uri)
    client.create_experiment("ml/old")  # the job's experiment, the oldest of all
    started = time.monotonic()
    for i in range(1000):
        client.create_experiment(f"newer-{i:04d}")
    assert time.monotonic() - started < 60  # measured here: ~3 s
    assert len(client.search_experiments(max_results=50_000)) >= 1001
    driver = Driver(Registry(uri), trainingjob("old", "uid-old"))
    for _ in range(10):
        driver.round()
    runs = runs_of(client, "uid-old")
    assert len(runs) == 1
    assert driver.body["status"]["mlflow"]["runId"] == runs[0].info.run_id
    assert driver.body["status"]["attempts"] == 1  # attempt 1, on the one run (the same name
    assert {o["metadata"]["name"] for p in driver.plans for o in p.create} == {"old-a1"}  # again)


def test_a_run_id_of_another_job_is_not_trusted(store):
    registry = Registry(store)
    other = registry.ensure_run("ml/other", "uid-other", "ml/other")
    mine = registry.ensure_run("ml/mine", "uid-mine", "ml/mine")
    seen = registry.observe_run("uid-mine", None, experiment="ml/mine", run_id=other)
    assert seen is not None and seen.run_id == mine
    again = registry.ensure_run("ml/mine", "uid-mine", "ml/mine", run_id="0" * 32)  # unknown id
    assert again == mine
    # the run remembered in status is found even when the experiment was renamed since
    assert registry.observe_run("uid-mine", None, experiment="ml/renamed", run_id=mine)


# --- defect 1 ------------------------------------------------------------------------------------


def test_alias_call_failing_once_is_set_on_the_next_round(store, monkeypatch):
    registry = Registry(store)
    driver = Driver(registry, trainingjob("aliased", "uid-aliased"))
    driver.round()  # the run, attempt 1
    run_id = driver.body["status"]["mlflow"]["runId"]
    log_model(store, run_id)
    driver.job_status = "SUCCEEDED"
    real = registry.client.set_registered_model_alias
    calls = []

    def flaky(*args: Any, **kwargs: Any) -> None:
        calls.append(args)
        if len(calls) == 1:
            raise MlflowException("Service Unavailable", error_code=TEMPORARILY_UNAVAILABLE)
        real(*args, **kwargs)

    monkeypatch.setattr(registry.client, "set_registered_model_alias", flaky)
    status = driver.round()  # registered; the alias call answered 503
    client = MlflowClient(store, registry_uri=store)
    assert [str(v.version) for v in client.search_model_versions("name = 'aliased'")] == ["1"]
    with pytest.raises(MlflowException):
        client.get_model_version_by_alias("aliased", "champion")
    assert status["phase"] == "Registering"
    assert driver.condition("RegistryAvailable")["status"] == "False"
    assert "Succeeded" not in driver.events()
    status = driver.round()  # the next round sees the alias missing and sets it
    assert len(calls) == 2
    assert str(client.get_model_version_by_alias("aliased", "champion").version) == "1"
    assert status["phase"] == "Succeeded"
    assert driver.condition("Registered")["message"] == "aliased version 1 with alias champion"
    assert driver.condition("RegistryAvailable")["status"] == "True"
    assert len(client.search_model_versions("name = 'aliased'")) == 1


# --- defect 7 ------------------------------------------------------------------------------------


def test_a_run_without_a_model_stalls_registration_with_the_reason(store):
    driver = Driver(Registry(store), trainingjob("nomodel", "uid-nomodel"))
    driver.round()
    driver.job_status = "SUCCEEDED"  # ... but the training code logged no model
    status = driver.round()
    assert status["phase"] == "Stalled"
    cond = driver.condition("Registered")
    assert (cond["status"], cond["reason"]) == ("False", "RegistrationRefused")
    assert "has no model logged at artifact path 'model'" in cond["message"]
    assert driver.condition("Stalled")["status"] == "True"
    assert driver.events().count("MLflowRefused") == 1
    driver.round()
    assert driver.events().count("MLflowRefused") == 1  # asked again, told again: no new event
    log_model(store, status["mlflow"]["runId"])  # fixed (by hand): the next round goes on
    status = driver.round()
    assert status["phase"] == "Succeeded"
    assert driver.condition("Stalled")["status"] == "False"


def test_a_deleted_experiment_stalls_run_creation(store):
    client = MlflowClient(store)
    client.delete_experiment(client.create_experiment("ml/deleted"))
    driver = Driver(Registry(store), trainingjob("deleted", "uid-del", experiment="ml/deleted"))
    status = driver.round()
    assert status["phase"] == "Stalled"
    message = driver.condition("Stalled")["message"]
    assert "must be in the 'active' state" in message
    assert not [p for p in driver.plans if p.create]  # nothing starts without the run
    client.restore_experiment(client.get_experiment_by_name("ml/deleted").experiment_id)
    status = driver.round()
    assert status["phase"] == "Pending"
    assert status["attempts"] == 1
    assert driver.condition("Stalled")["status"] == "False"


def test_unreachable_mlflow_writes_a_condition():
    driver = Driver(Registry("http://127.0.0.1:9"), trainingjob("down", "uid-down"))
    status = driver.round()
    assert status["phase"] == "Pending"
    cond = driver.condition("RegistryAvailable")
    assert (cond["status"], cond["reason"]) == ("False", "MLflowUnreachable")
