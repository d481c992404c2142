"""Fixtures for the training runtime: a clean contract environment, MLflow on SQLite, S3 on moto.

MLflow's SQLite schema migration takes seconds, so one database serves the whole session and
every test works in its own experiment (with its artifact location under the test's tmp dir).
The moto server is started once per session on a free loopback port and killed at the end;
each test gets its own bucket.
"""

from __future__ import annotations

import itertools
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mlplane.training import context as ctxmod

CONTRACT_VARS = [
    name
    for name in vars(ctxmod)
    if name.startswith("ENV_") and isinstance(getattr(ctxmod, name), str)
]
_counter = itertools.count()


@pytest.fixture(autouse=True)
def clean_env(monkeypatch, tmp_path):
    """No contract variable leaks in from the shell; relative paths land in tmp_path."""
    for attr in CONTRACT_VARS:
        monkeypatch.delenv(getattr(ctxmod, attr), raising=False)
    monkeypatch.delenv("MLFLOW_EXPERIMENT_ID", raising=False)
    monkeypatch.delenv("MLFLOW_EXPERIMENT_NAME", raising=False)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.chdir(tmp_path)
    # The runtime points MLflow's process-wide tracking URI at the run's server (a training
    # process is its own); run in-process here, the next test module must not inherit it.
    from mlflow.tracking._model_registry import utils as registry_utils
    from mlflow.tracking._tracking_service import utils as tracking_utils

    monkeypatch.setattr(tracking_utils, "_tracking_uri", tracking_utils._tracking_uri)
    # ``log_model`` activates the run's experiment (process-wide too): a later
    # ``start_run(run_id=...)`` of another experiment in this process would be refused.
    from mlflow.tracking import fluent

    monkeypatch.setattr(fluent, "_active_experiment_id", fluent._active_experiment_id)
    monkeypatch.setattr(registry_utils, "_registry_uri", registry_utils._registry_uri)
    for name in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI"):  # set_tracking_uri exports them
        if name in os.environ:
            monkeypatch.setenv(name, os.environ[name])
        else:  # delenv of an absent variable records nothing to undo: set it, then delete
            monkeypatch.setenv(name, "")
            monkeypatch.delenv(name)


@pytest.fixture(scope="session")
def mlflow_uri(tmp_path_factory) -> str:
    """A migrated SQLite tracking store shared by the session."""
    from mlflow import MlflowClient

    db = tmp_path_factory.mktemp("mlflow") / "mlflow.db"
    uri = f"sqlite:///{db}"
    MlflowClient(uri).search_experiments()  # runs the schema migrations once
    return uri


@pytest.fixture
def experiment(mlflow_uri, tmp_path) -> str:
    """A fresh experiment (name) whose artifacts go under this test's tmp dir."""
    from mlflow import MlflowClient

    name = f"exp-{os.getpid()}-{next(_counter)}-{tmp_path.name}"
    MlflowClient(mlflow_uri).create_experiment(name, artifact_location=str(tmp_path / "artifacts"))
    return name


@pytest.fixture
def operator_run(mlflow_uri, experiment) -> str:
    """The run the operator creates before attempt 1 (its id goes in MLFLOW_RUN_ID)."""
    from mlflow import MlflowClient

    client = MlflowClient(mlflow_uri)
    exp = client.get_experiment_by_name(experiment)
    return client.create_run(exp.experiment_id, run_name="ns--job").info.run_id


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_for_port(port: int, proc: subprocess.Popen, deadline_s: float = 60.0) -> None:
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise RuntimeError(f"moto_server exited with {proc.returncode}")
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise RuntimeError(f"moto_server did not listen on 127.0.0.1:{port}")


@pytest.fixture(scope="session")
def moto_endpoint(tmp_path_factory):
    """``http://127.0.0.1:<port>`` of a moto S3 server started for the session."""
    exe = Path(sys.executable).parent / "moto_server"
    port = _free_port()
    log = tmp_path_factory.mktemp("moto") / "moto.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [str(exe), "-H", "127.0.0.1", "-p", str(port)], stdout=out, stderr=subprocess.STDOUT
        )
    try:
        _wait_for_port(port, proc)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture
def s3_bucket(moto_endpoint, monkeypatch) -> str:
    """A fresh bucket on moto; boto3 and pyarrow reach it through AWS_ENDPOINT_URL."""
    import boto3

    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    name = f"ckpt-{os.getpid()}-{next(_counter)}"
    boto3.client("s3").create_bucket(Bucket=name)
    return name
