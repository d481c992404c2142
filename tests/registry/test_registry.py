"""The operator's MLflow I/O against a real MLflow (SQLite store, no server needed)."""

from __future__ import annotations

import os

import mlflow
import pytest
from sklearn.linear_model import LogisticRegression

from mlplane.operator.reconcile.trainingjob import Registration
from mlplane.operator.registry import (
    TAG_CHECKPOINT_STEP,
    TAG_CHECKPOINT_URI,
    Registry,
    RegistryError,
    RegistryUnavailable,
)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """One SQLite store for the module: creating its schema takes seconds."""
    uri = f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    yield uri
    mlflow.set_tracking_uri(None)


@pytest.fixture
def registry(store):
    return Registry(store)


@pytest.fixture
def uid(request):
    """A TrainingJob uid (and model name) of this test only, in the shared store."""
    return request.node.name.replace("_", "-")[:40]


def log_model(run_id: str) -> None:
    with mlflow.start_run(run_id=run_id):
        model = LogisticRegression().fit([[0.0], [1.0], [2.0], [3.0]], [0, 0, 1, 1])
        mlflow.sklearn.log_model(model, name="model", pip_requirements=["scikit-learn"])


def test_ensure_run_is_idempotent_by_uid(registry, uid):
    first = registry.ensure_run("ml/churn", uid, "ml/churn")
    again = Registry(registry.tracking_uri).ensure_run("ml/churn", uid, "ml/churn")
    other = registry.ensure_run("ml/churn", uid + "-other", "ml/churn")
    assert first == again
    assert other != first


def test_observe_run_reads_checkpoint_tags(registry, uid):
    run_id = registry.ensure_run("exp", uid, "ml/churn")
    assert registry.observe_run("missing", "churn", experiment="exp") is None
    registry.client.set_tag(run_id, TAG_CHECKPOINT_URI, "s3://b/ckpt/step-20")
    registry.client.set_tag(run_id, TAG_CHECKPOINT_STEP, "20")
    seen = registry.observe_run(uid, "churn", experiment="exp")
    assert seen.run_id == run_id
    assert seen.checkpoint_uri == "s3://b/ckpt/step-20"
    assert seen.checkpoint_step == 20
    assert seen.registered_version is None


def test_register_once_and_set_alias(registry, uid):
    run_id = registry.ensure_run("exp", uid, "ml/churn")
    log_model(run_id)
    reg = Registration(run_id, uid, "candidate", f"runs:/{run_id}/model", uid)
    version = registry.register(reg)
    assert registry.register(reg) == version  # a retry registers nothing new
    assert len(registry.client.search_model_versions(f"name = '{uid}'")) == 1
    seen = registry.observe_run(uid, uid, experiment="exp", alias="candidate")
    assert (seen.registered_version, seen.alias_version) == (version, version)
    resolved = registry.resolve(uid, alias="candidate")
    assert resolved.version == int(version)
    assert resolved.run_id == run_id


def test_resolve_unknown_alias_is_a_registry_error(registry, uid):
    run_id = registry.ensure_run("exp", uid, "ml/churn")
    log_model(run_id)
    registry.register(Registration(run_id, uid, None, f"runs:/{run_id}/model", uid))
    with pytest.raises(RegistryError, match="alias 'nope'"):
        registry.resolve(uid, alias="nope")
    with pytest.raises(RegistryError):
        registry.resolve(uid, version=99)
    registry.set_alias(uid, "champion", 1)
    assert registry.resolve(uid, alias="champion").version == 1


def test_unreachable_mlflow_is_retryable():
    registry = Registry("http://127.0.0.1:9")  # discard port: nothing listens
    with pytest.raises(RegistryUnavailable):
        registry.ensure_run("exp", "uid", "ml/x")


@pytest.mark.parametrize(
    ("code", "refused"),
    [("PERMISSION_DENIED", True), ("UNAUTHENTICATED", True), ("RESOURCE_DOES_NOT_EXIST", True),
     ("INVALID_PARAMETER_VALUE", True), ("TEMPORARILY_UNAVAILABLE", False),
     ("INTERNAL_ERROR", False), ("REQUEST_LIMIT_EXCEEDED", False)],
)  # fmt: skip
def test_permanent_answers_are_refusals_the_rest_outages(code, refused):
    """401/403 will not heal by retrying soon: they stall the job with MLflow's message."""
    from mlflow.exceptions import MlflowException
    from mlflow.protos import databricks_pb2

    from mlplane.operator.registry import _classify

    exc = MlflowException("no", error_code=getattr(databricks_pb2, code))
    assert isinstance(_classify(exc, "x"), RegistryError if refused else RegistryUnavailable)


def test_register_leaves_mlflows_process_uris_as_they_were(registry, uid, monkeypatch):
    """A registration pinned MLflow's default URIs for the whole process (and its children
    through MLFLOW_*_URI), so later clients without explicit URIs read another store."""
    from mlflow.tracking._model_registry import utils as registry_utils
    from mlflow.tracking._tracking_service import utils as tracking_utils

    run_id = registry.ensure_run("exp", uid, "ml/churn")
    log_model(run_id)
    monkeypatch.setattr(tracking_utils, "_tracking_uri", None)
    monkeypatch.setattr(registry_utils, "_registry_uri", None)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("MLFLOW_REGISTRY_URI", "sqlite:///elsewhere.db")
    registry.register(Registration(run_id, uid, "champion", f"runs:/{run_id}/model", uid))
    assert (tracking_utils._tracking_uri, registry_utils._registry_uri) == (None, None)
    assert "MLFLOW_TRACKING_URI" not in os.environ
    assert os.environ["MLFLOW_REGISTRY_URI"] == "sqlite:///elsewhere.db"
