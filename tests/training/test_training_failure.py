"""An attempt that dies of an MLflow or S3 outage says so (issue #12, defect 7, runtime side).

Real failures, not hand-made exceptions where it matters: an MLflow server that is not there,
an S3 server (moto) that goes away between two checkpoints, and the example entrypoint run as
a process the way Ray runs it. The operator reads the marker line from the Ray job message.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from botocore.exceptions import ClientError, EndpointConnectionError

from mlplane.training.checkpoints import S3CheckpointStore
from mlplane.training.context import TrainingContext
from mlplane.training.failure import EXIT_OUTAGE, OUTAGE_MARKER, exit_code, outage_of
from mlplane.training.runtime import TrainingSession

DEAD_MLFLOW = "http://127.0.0.1:9"  # the discard port: nothing listens


@pytest.fixture
def fast_mlflow_errors(monkeypatch):
    """MLflow's client retries for minutes by default; one quick try shows the same error."""
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")


def test_unreachable_mlflow_at_start_is_an_outage(fast_mlflow_errors, capsys):
    ctx = TrainingContext(tracking_uri=DEAD_MLFLOW, run_id="0" * 32, attempt=2)

    def main() -> int:
        TrainingSession.start(ctx)
        return 0

    assert exit_code(main) == EXIT_OUTAGE
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith(f"{OUTAGE_MARKER}: MLflow failed or could not be reached")


def test_mlflow_saying_no_is_not_an_outage(mlflow_uri):
    """A run that does not exist (404) is a configuration or code problem: backoffLimit."""
    from mlflow.exceptions import MlflowException

    ctx = TrainingContext(tracking_uri=mlflow_uri, run_id="f" * 32)
    with pytest.raises(MlflowException) as caught:
        TrainingSession.start(ctx)
    assert outage_of(caught.value) is None

    def main() -> int:
        TrainingSession.start(ctx)
        return 0

    with pytest.raises(MlflowException):
        exit_code(main)  # propagates: Python exits 1, a code failure


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_s3_going_away_between_checkpoints_is_an_outage(monkeypatch):
    import boto3
    from botocore.config import Config

    port = _free_port()
    exe = Path(sys.executable).parent / "moto_server"
    proc = subprocess.Popen([str(exe), "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while socket.socket().connect_ex(("127.0.0.1", port)) != 0:
            assert time.monotonic() < deadline, "moto_server did not start"
            time.sleep(0.1)
        for name, value in (("AWS_ACCESS_KEY_ID", "testing"), ("AWS_SECRET_ACCESS_KEY", "testing"),
                            ("AWS_DEFAULT_REGION", "us-east-1")):  # fmt: skip
            monkeypatch.setenv(name, value)
        client = boto3.client("s3", endpoint_url=f"http://127.0.0.1:{port}",
                              config=Config(retries={"max_attempts": 1},
                                            connect_timeout=2, read_timeout=2))  # fmt: skip
        client.create_bucket(Bucket="ckpt")
        store = S3CheckpointStore("s3://ckpt/ml/churn", client=client)
        store.save(10, {"model.pkl": b"step 10"})
        assert store.latest().step == 10
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    with pytest.raises(EndpointConnectionError) as caught:
        store.save(20, {"model.pkl": b"step 20"})
    what = outage_of(caught.value)
    assert what is not None and what.startswith("S3 could not be reached")


def test_s3_saying_no_is_not_an_outage(s3_bucket):
    store = S3CheckpointStore(f"s3://{s3_bucket}-missing/job")  # no such bucket: a 404
    with pytest.raises(ClientError, match="NoSuchBucket") as caught:
        store.save(1, {"f": b"x"})
    assert outage_of(caught.value) is None


def test_a_bug_is_not_an_outage():
    def main() -> int:
        return 1 // 0

    with pytest.raises(ZeroDivisionError):
        exit_code(main)


def test_outage_inside_a_ray_task_is_found_through_the_task_error():
    from ray.exceptions import RayTaskError

    try:
        raise ConnectionRefusedError(111, "Connection refused")
    except ConnectionRefusedError as exc:
        cause = exc
    wrapped = RayTaskError("train", "Traceback ...", cause).as_instanceof_cause()
    assert outage_of(wrapped) == (
        "a server could not be reached (ConnectionRefusedError: [Errno 111] Connection refused)"
    )


def test_the_example_entrypoint_exits_75_with_the_marker_last():
    """As Ray runs it: the driver's last line is what the operator finds in the job message."""
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": DEAD_MLFLOW,
        "MLFLOW_RUN_ID": "0" * 32,
        "MLPLANE_ATTEMPT": "1",
        "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0",
        "MLFLOW_HTTP_REQUEST_TIMEOUT": "5",
    }
    env.pop("RAY_ADDRESS", None)
    done = subprocess.run(
        [sys.executable, "-m", "mlplane.training.examples.sklearn_tabular", "--no-ray",
         "--steps", "2"],
        env=env, cwd="/", capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == EXIT_OUTAGE, done.stderr[-2000:]
    assert done.stderr.strip().splitlines()[-1].startswith(f"{OUTAGE_MARKER}: ")
