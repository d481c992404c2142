"""MLflow run resumed by id, progress tags, resume across attempts (MLflow on SQLite)."""

from __future__ import annotations

import logging
import pickle
import socket

import pytest
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from mlplane.training import TrainingContext, TrainingSession, open_run, open_store
from mlplane.training.checkpoints import step_dir
from mlplane.training.mlflow_run import RunReporter


def ctx_for(mlflow_uri, **kw) -> TrainingContext:
    return TrainingContext(tracking_uri=mlflow_uri, **kw)


def test_operator_run_is_resumed_by_id(mlflow_uri, operator_run):
    client = MlflowClient(mlflow_uri)
    client.set_terminated(operator_run, status="FAILED")  # attempt 1 died
    ctx = ctx_for(mlflow_uri, run_id=operator_run, attempt=2, trainingjob="ns/job",
                  trainingjob_uid="u-1")  # fmt: skip
    reporter = open_run(ctx)
    assert reporter.run_id == operator_run
    run = client.get_run(operator_run)
    assert run.info.status == "RUNNING"
    assert run.data.tags["mlplane.attempt"] == "2"
    assert run.data.tags["mlplane.trainingjob"] == "ns/job"
    assert run.data.tags["mlplane.trainingjob.uid"] == "u-1"


def test_missing_operator_run_fails_loudly(mlflow_uri, experiment):
    with pytest.raises(MlflowException):
        open_run(ctx_for(mlflow_uri, run_id="0" * 32))


def test_hand_run_creates_a_run_in_the_experiment(mlflow_uri, experiment):
    reporter = open_run(ctx_for(mlflow_uri, experiment=experiment))
    run = MlflowClient(mlflow_uri).get_run(reporter.run_id)
    exp = MlflowClient(mlflow_uri).get_experiment_by_name(experiment)
    assert run.info.experiment_id == exp.experiment_id
    assert run.info.run_name == "mlplane-local"
    assert run.data.tags["mlplane.attempt"] == "1"


def test_hand_run_creates_a_missing_experiment(mlflow_uri, tmp_path):
    name = f"fresh-{tmp_path.name}"
    reporter = open_run(ctx_for(mlflow_uri, experiment=name))
    client = MlflowClient(mlflow_uri)
    assert client.get_run(reporter.run_id).info.experiment_id == (
        client.get_experiment_by_name(name).experiment_id
    )


def test_params_of_a_later_attempt_keep_the_first_values(mlflow_uri, operator_run, caplog):
    reporter = RunReporter(operator_run, mlflow_uri)
    reporter.log_params({"lr": 0.1, "steps": 10})
    with caplog.at_level(logging.WARNING):
        reporter.log_params({"lr": 0.1, "steps": 20, "new": "x"})
    params = MlflowClient(mlflow_uri).get_run(operator_run).data.params
    assert params == {"lr": "0.1", "steps": "10", "new": "x"}
    assert "differs" in caplog.text


def test_report_logs_metrics_at_the_step(mlflow_uri, operator_run):
    session = TrainingSession(ctx_for(mlflow_uri), RunReporter(operator_run, mlflow_uri), None)
    session.report(3, {"loss": 0.5, "acc": 1, "flag": True, "nan": float("nan"), "text": "x"})
    session.report(4, {"loss": 0.25})
    client = MlflowClient(mlflow_uri)
    history = client.get_metric_history(operator_run, "loss")
    assert [(m.step, m.value) for m in history] == [(3, 0.5), (4, 0.25)]
    run = client.get_run(operator_run)
    assert set(run.data.metrics) == {"loss", "acc"}
    assert run.data.tags["mlplane.step"] == "4"


def test_checkpoint_tags_follow_the_complete_checkpoint(mlflow_uri, operator_run, tmp_path):
    ctx = ctx_for(mlflow_uri, run_id=operator_run, checkpoint_uri=str(tmp_path / "ck"),
                  checkpoint_keep=2)  # fmt: skip
    session = TrainingSession.start(ctx)
    for step in (10, 20, 30):
        info = session.checkpoint(step, {"m": str(step).encode()})
    tags = MlflowClient(mlflow_uri).get_run(operator_run).data.tags
    assert tags["mlplane.checkpoint.uri"] == str(tmp_path / "ck" / step_dir(30)) == info.uri
    assert tags["mlplane.checkpoint.step"] == "30"
    assert tags["mlplane.checkpoint.time"] == info.time
    assert [c.step for c in session.store.checkpoints()] == [20, 30]


def test_next_attempt_resumes_from_the_newest_checkpoint(mlflow_uri, operator_run, tmp_path):
    uri = str(tmp_path / "ck")
    first = TrainingSession.start(ctx_for(mlflow_uri, run_id=operator_run, checkpoint_uri=uri))
    assert first.restore() is None
    first.checkpoint(10, {"state": b"ten"})
    first.checkpoint(20, {"state": b"twenty"})
    first.store._put(f"{step_dir(30)}/state", b"preempted mid-write")

    second = TrainingSession.start(
        ctx_for(mlflow_uri, run_id=operator_run, checkpoint_uri=uri, attempt=2)
    )
    restored = second.restore()
    assert restored is not None
    assert (restored.step, dict(restored.files)) == (20, {"state": b"twenty"})
    assert restored.info.attempt == 1
    client = MlflowClient(mlflow_uri)
    run = client.get_run(operator_run)
    assert run.data.tags["mlplane.resumed_from_step"] == "20"
    assert run.data.tags["mlplane.attempt"] == "2"
    history = client.get_metric_history(operator_run, "mlplane.resumed_from_step")
    assert [m.value for m in history] == [20.0]


def test_session_without_checkpoint_uri_neither_saves_nor_restores(mlflow_uri, operator_run):
    session = TrainingSession.start(ctx_for(mlflow_uri, run_id=operator_run))
    assert session.store is None
    assert session.restore() is None
    assert session.checkpoint(1, {"m": b"x"}) is None


def test_due_every_k_and_at_the_end():
    due = [s for s in range(1, 26) if TrainingSession.due(s, 10, last_step=25)]
    assert due == [10, 20, 25]
    assert [s for s in range(1, 5) if TrainingSession.due(s, 0, last_step=4)] == [4]


def test_session_and_reporter_pickle(mlflow_uri, operator_run, tmp_path):
    session = TrainingSession.start(
        ctx_for(mlflow_uri, run_id=operator_run, checkpoint_uri=str(tmp_path / "ck"))
    )
    clone = pickle.loads(pickle.dumps(session))
    assert clone.run_id == operator_run and clone.store.uri == session.store.uri


def test_progress_is_best_effort_when_mlflow_is_down(monkeypatch, tmp_path, caplog):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed again: nothing listens there
    down = f"http://127.0.0.1:{port}"
    ctx = TrainingContext(tracking_uri=down, checkpoint_uri=str(tmp_path / "ck"))
    session = TrainingSession(ctx, RunReporter("r" * 32, down), open_store(ctx.checkpoint_uri))
    with caplog.at_level(logging.WARNING):
        session.report(1, {"loss": 1.0})
        info = session.checkpoint(1, {"m": b"x"})
    assert info is not None and session.store.latest().step == 1  # training state still saved
    assert "MLflow progress update" in caplog.text
