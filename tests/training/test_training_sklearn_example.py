"""The scikit-learn example end to end, in-process: MLflow on SQLite, checkpoints on moto S3."""

from __future__ import annotations

import json

import mlflow
import numpy as np
import pytest
from mlflow import MlflowClient

from mlplane.monitoring.profile import PROFILE_ARTIFACT_PATH, Profile
from mlplane.training import TrainingContext, TrainingSession, open_store
from mlplane.training.checkpoints import step_dir
from mlplane.training.examples import sklearn_tabular as ex

ARGS = ["--rows", "300", "--batch-size", "32", "--checkpoint-every", "5", "--no-ray"]


@pytest.fixture
def job_env(monkeypatch, mlflow_uri, operator_run, s3_bucket):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_uri)
    monkeypatch.setenv("MLFLOW_RUN_ID", operator_run)
    monkeypatch.setenv("MLPLANE_TRAININGJOB", "ns/churn")
    monkeypatch.setenv("MLPLANE_CHECKPOINT_URI", f"s3://{s3_bucket}/checkpoints/ns/churn")
    monkeypatch.setenv("MLPLANE_CHECKPOINT_KEEP", "2")
    monkeypatch.setenv("MLPLANE_ATTEMPT", "1")
    return f"s3://{s3_bucket}/checkpoints/ns/churn"


def test_two_attempts_log_model_profile_and_progress(
    job_env, monkeypatch, mlflow_uri, operator_run
):
    assert ex.main(["--steps", "12", *ARGS]) == 0
    client = MlflowClient(mlflow_uri)
    run = client.get_run(operator_run)
    assert run.info.status == "FINISHED"
    tags = run.data.tags
    assert tags["mlplane.attempt"] == "1"
    assert tags["mlplane.checkpoint.step"] == "12"
    assert tags["mlplane.checkpoint.uri"] == f"{job_env}/{step_dir(12)}"
    assert tags["mlplane.checkpoint.time"].endswith("Z")
    assert [c.step for c in open_store(job_env).checkpoints()] == [10, 12]
    assert run.data.params["steps"] == "12" and run.data.params["example"] == "sklearn_tabular"
    assert [m.step for m in client.get_metric_history(operator_run, "val_accuracy")] == list(
        range(1, 13)
    )

    # The model resolves through runs:/<id>/model, with a signature on the feature columns.
    model = mlflow.pyfunc.load_model(f"runs:/{operator_run}/model")
    assert model.metadata.get_input_schema().input_names() == ex.FEATURES
    frame, _ = ex.make_data(20, seed=99)
    assert set(np.unique(model.predict(frame[ex.FEATURES]))) <= {0, 1}
    assert any(a.path == "model/MLmodel" for a in client.list_artifacts(operator_run, "model"))
    assert client.search_model_versions(f"run_id = '{operator_run}'") == []  # never registers

    # The reference profile sits beside it, over the training features only.
    text = mlflow.artifacts.load_text(f"runs:/{operator_run}/{PROFILE_ARTIFACT_PATH}")
    profile = Profile.from_json(text)
    assert profile.names == ex.FEATURES
    assert profile.rows == 300 - int(300 * 0.2)
    assert profile["plan"].kind == "categorical" and profile["age"].kind == "numeric"
    assert json.loads(text)["metadata"]["run_id"] == operator_run

    # Attempt 2 (more steps) resumes the same run from the newest checkpoint.
    monkeypatch.setenv("MLPLANE_ATTEMPT", "2")
    assert ex.main(["--steps", "20", *ARGS]) == 0
    run = client.get_run(operator_run)
    assert run.info.status == "FINISHED"
    assert run.data.tags["mlplane.attempt"] == "2"
    assert run.data.tags["mlplane.resumed_from_step"] == "12"
    assert run.data.tags["mlplane.checkpoint.step"] == "20"
    steps = [m.step for m in client.get_metric_history(operator_run, "val_accuracy")]
    assert steps == list(range(1, 21))  # nothing repeated: 12 was checkpointed
    assert run.data.metrics["final_val_roc_auc"] > 0.7


def test_resumed_training_equals_uninterrupted_training(tmp_path):
    config = ex.Config(steps=15, checkpoint_every=4, rows=300, batch_size=32)

    def session(name: str, attempt: int) -> TrainingSession:
        ctx = TrainingContext(attempt=attempt, checkpoint_uri=str(tmp_path / name))
        return TrainingSession.start(ctx, mlflow=False)

    straight = ex.train(session("a", 1), config)
    ex.train(session("b", 1), ex.Config(**{**config.__dict__, "steps": 10}))
    # Attempt 1 was cut after step 10; its last complete checkpoint is step 10 (final step).
    resumed = ex.train(session("b", 2), config)
    a, b = straight.named_steps["clf"], resumed.named_steps["clf"]
    np.testing.assert_array_equal(a.coef_, b.coef_)
    np.testing.assert_array_equal(a.intercept_, b.intercept_)


def test_hand_run_without_contract_creates_its_own_run(monkeypatch, mlflow_uri, experiment):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_uri)
    monkeypatch.setenv("MLPLANE_MLFLOW_EXPERIMENT", experiment)
    assert ex.main(["--steps", "3", "--rows", "100", "--no-ray"]) == 0
    client = MlflowClient(mlflow_uri)
    exp = client.get_experiment_by_name(experiment)
    [run] = client.search_runs([exp.experiment_id])
    assert run.info.status == "FINISHED"
    assert "mlplane.checkpoint.step" not in run.data.tags  # no checkpoint URI: no checkpoints
    assert run.data.tags["mlplane.step"] == "3"


def test_the_example_follows_the_jobs_checkpoint_interval_when_it_sets_one(tmp_path):
    """With spec.checkpoint.interval the loop checkpoints by time (checkpoint_due), not every K."""
    config = ex.Config(steps=12, checkpoint_every=4, rows=300, batch_size=32)
    ctx = TrainingContext(checkpoint_uri=str(tmp_path / "ck"), checkpoint_keep=100,
                          checkpoint_interval="10m", checkpoint_interval_seconds=600.0)  # fmt: skip
    session = TrainingSession.start(ctx, mlflow=False)
    clock = iter(range(0, 10_000, 100))  # each look at the clock: 100 s later
    session.clock = lambda: float(next(clock))
    ex.train(session, config)
    # step 1 starts the count at 0 s; step 7 sees 600 s; the write takes one tick (100 s);
    # steps 8-11 are within 600 s of it; step 12 is the last
    assert [c.step for c in session.store.checkpoints()] == [7, 12]
    assert session.write_seconds == 100.0
