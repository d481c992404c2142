"""Both examples on a real local Ray (2 CPUs), with a worker killed mid-run, then a new attempt.

Run inside a private network namespace, as CI does:
``unshare -n bash -c 'ip link set lo up; .venv/bin/pytest -m e2e tests/training'``.

What is checked is what the operator and a user would see in MLflow: the step each restart
resumed from, how many steps were repeated (at most one checkpoint interval), the newest
checkpoint's tags, and a model that loads.
"""

from __future__ import annotations

import collections
import shutil
import tempfile

import boto3
import mlflow
import pytest
from mlflow import MlflowClient

# In file order (modules themselves are shuffled).
pytestmark = [pytest.mark.e2e, pytest.mark.random_order(disabled=True)]

ray = pytest.importorskip("ray")
pytest.importorskip("torch")


@pytest.fixture(scope="module")
def local_ray(moto_endpoint):
    """Ray on this machine; workers reach moto through the job's runtime_env."""
    temp_dir = tempfile.mkdtemp(prefix="mlpt-", dir="/tmp")  # short: Ray's socket paths
    ray.init(
        address="local",
        num_cpus=2,
        resources={"spot": 1},
        include_dashboard=False,
        _temp_dir=temp_dir,
        runtime_env={
            "env_vars": {
                "AWS_ENDPOINT_URL": moto_endpoint,
                "AWS_ACCESS_KEY_ID": "testing",
                "AWS_SECRET_ACCESS_KEY": "testing",
                "AWS_DEFAULT_REGION": "us-east-1",
            }
        },
    )
    try:
        yield
    finally:
        ray.shutdown()
        shutil.rmtree(temp_dir, ignore_errors=True)


def repeated_steps(client: MlflowClient, run_id: str, metric: str) -> int:
    counts = collections.Counter(m.step for m in client.get_metric_history(run_id, metric))
    return sum(n - 1 for n in counts.values())


def contract(monkeypatch, mlflow_uri, run_id, job, checkpoint_uri, *, attempt, failures):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_uri)
    monkeypatch.setenv("MLFLOW_RUN_ID", run_id)
    monkeypatch.setenv("MLPLANE_TRAININGJOB", job)
    monkeypatch.setenv("MLPLANE_CHECKPOINT_URI", checkpoint_uri)
    monkeypatch.setenv("MLPLANE_CHECKPOINT_KEEP", "2")
    monkeypatch.setenv("MLPLANE_MAX_WORKER_FAILURES", str(failures))
    monkeypatch.setenv("MLPLANE_ATTEMPT", str(attempt))


def test_torch_mlp_restores_after_worker_loss_and_in_next_attempt(
    local_ray, monkeypatch, mlflow_uri, operator_run, s3_bucket
):
    from mlplane.training.examples import torch_mlp

    uri = f"s3://{s3_bucket}/ckpt/ns/mlp"
    common = ["--rows", "400", "--checkpoint-every", "3", "--num-workers", "2",
              "--cpus-per-worker", "0.5"]  # fmt: skip
    contract(monkeypatch, mlflow_uri, operator_run, "ns/mlp", uri, attempt=1, failures=2)
    # Rank 1 dies at step 5; the newest checkpoint is step 3.
    assert torch_mlp.main(["--steps", "8", "--crash-at-step", "5", *common]) == 0

    client = MlflowClient(mlflow_uri)
    run = client.get_run(operator_run)
    assert run.info.status == "FINISHED"
    resumes = client.get_metric_history(operator_run, "mlplane.resumed_from_step")
    assert [m.value for m in resumes] == [3.0]
    # Steps after the checkpoint are repeated (their first reports may also be lost with the
    # worker, before the controller collected them): never more than one interval.
    assert repeated_steps(client, operator_run, "val_loss") <= 3
    assert "WorkerHealthCheckFailedError" in run.data.tags["mlplane.last_worker_failure"]
    assert run.data.tags["mlplane.checkpoint.step"] == "8"
    assert run.data.tags["mlplane.checkpoint.uri"] == f"{uri}/ns--mlp/step-000000000008"
    model = mlflow.pyfunc.load_model(f"runs:/{operator_run}/model")
    assert model.metadata.get_input_schema().input_names() == torch_mlp.FEATURES

    # Attempt 2 (a new Ray Train controller) resumes from the newest checkpoint in S3.
    contract(monkeypatch, mlflow_uri, operator_run, "ns/mlp", uri, attempt=2, failures=2)
    assert torch_mlp.main(["--steps", "10", *common]) == 0
    run = client.get_run(operator_run)
    assert run.data.tags["mlplane.attempt"] == "2"
    resumes = client.get_metric_history(operator_run, "mlplane.resumed_from_step")
    assert [m.value for m in resumes] == [3.0, 8.0]
    assert run.data.tags["mlplane.checkpoint.step"] == "10"
    listing = boto3.client("s3").list_objects_v2(Bucket=s3_bucket, Prefix="ckpt/ns/mlp/ns--mlp/")
    folders = {o["Key"].split("/")[4] for o in listing["Contents"] if o["Key"].count("/") > 4}
    assert folders == {"step-000000000009", "step-000000000010"}  # 9 (every 3) and 10 (end)


def test_sklearn_task_is_retried_on_worker_loss_and_resumes(
    local_ray, monkeypatch, mlflow_uri, operator_run, tmp_path
):
    from mlplane.training.examples import sklearn_tabular

    contract(monkeypatch, mlflow_uri, operator_run, "ns/churn", str(tmp_path / "ck"),
             attempt=1, failures=1)  # fmt: skip
    monkeypatch.setenv("MLPLANE_WORKER_RESOURCES", '{"spot": 0.1}')
    argv = ["--steps", "12", "--checkpoint-every", "4", "--crash-at-step", "6", "--rows", "300",
            "--ray", "--cpus", "0.5"]  # fmt: skip
    assert sklearn_tabular.main(argv) == 0

    client = MlflowClient(mlflow_uri)
    run = client.get_run(operator_run)
    assert run.info.status == "FINISHED"
    resumes = client.get_metric_history(operator_run, "mlplane.resumed_from_step")
    assert [m.value for m in resumes] == [4.0]
    assert repeated_steps(client, operator_run, "val_accuracy") == 2  # steps 5 and 6
    assert run.data.tags["mlplane.checkpoint.step"] == "12"
    assert mlflow.pyfunc.load_model(f"runs:/{operator_run}/model") is not None
