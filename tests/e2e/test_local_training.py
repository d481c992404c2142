"""TrainingJobs on the local platform, for real: Ray, MLflow, S3 (moto), the runner.

1. A worker node (the local stand-in for a spot node: it carries the ``spot`` resource) is
   SIGKILLed mid-run; Ray retries the training task on a replacement node, which resumes from
   the newest S3 checkpoint: at most one checkpoint interval of steps is repeated; the runner
   counts the preemption; exactly one model version is registered, with the alias.
2. An attempt that fails outright (the driver exits) is retried as attempt 2, which resumes
   from the checkpoint; the failure spends backoffLimit, not the preemption budget.
3. A TrainingJob that succeeded is deleted and applied again under the same name and
   ``checkpoint.uri`` (an Argo CD replace; here with a new data seed, as a retraining would
   have): the new incarnation (a new uid) trains from step 0 in its own checkpoint folder and
   registers a second version with its own weights, not the old final checkpoint's.
4. A TrainingJob with a Spot worker group and no ``checkpoint.uri`` runs, checkpointing under
   the local platform's default base ``<state-dir>/checkpoints/<namespace>/<name>/<uid>/``.
5. ``mlplane local reclaim --notice 20``: the notice checkpoint lands before the kill and the
   task retried on the replacement node repeats at most one step.

Runs inside a private network namespace (.ci/run does it).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import boto3
import mlflow.sklearn
import pytest
from local_ports import free_port, isolated_ports
from mlflow.tracking import MlflowClient

from mlplane.operator.platforms import processes
from mlplane.operator.platforms.local import LocalPlatform
from mlplane.operator.platforms.store import Store
from mlplane.operator.registry import process_uris
from mlplane.training import TrainingContext, TrainingSession, open_store
from mlplane.training.examples import sklearn_tabular

# One story per module (a module-scoped platform): modules are shuffled, tests are not.
pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900), pytest.mark.random_order(disabled=True)]
BIN = Path(sys.executable).parent
CHECKPOINT_EVERY = 5


def wait(condition: Callable[[], Any], timeout: float, what: str) -> Any:
    """Poll until ``condition()`` is truthy; fail naming ``what`` at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.5)


@pytest.fixture(scope="module")
def platform(tmp_path_factory) -> Iterator[LocalPlatform]:
    ports = isolated_ports()
    local = LocalPlatform(tmp_path_factory.mktemp("platform") / "state", ports)
    local.up(num_cpus=1)  # the head: drivers only; training runs on the "spot" workers
    try:
        yield local
    finally:
        local.down()


@pytest.fixture(scope="module")
def s3(tmp_path_factory) -> Iterator[dict[str, str]]:
    port = free_port()
    log = tmp_path_factory.mktemp("moto") / "moto.log"
    pid = processes.start([str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)], log)
    env = {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "test",
           "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1"}  # fmt: skip
    client = boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"], region_name="us-east-1",
                          aws_access_key_id="test", aws_secret_access_key="test")  # fmt: skip

    def ready() -> bool:
        try:
            client.list_buckets()
        except Exception:
            return False
        return True

    wait(ready, 30, "the moto S3 server")
    client.create_bucket(Bucket="ckpt")
    try:
        yield env
    finally:
        processes.stop_group(pid, grace=5)


class WorkerNode:
    """A Ray worker node with the ``spot`` resource, in its own process group (killable)."""

    def __init__(self, platform: LocalPlatform, log: Path) -> None:
        state = platform.state()
        assert state is not None
        env = {**platform.ray_env(), "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
        self.platform = platform
        self.pid = processes.start([
            str(BIN / "ray"), "start", "--block", f"--address=127.0.0.1:{state.ports.ray_gcs}",
            "--node-ip-address=127.0.0.1", "--num-cpus=1", '--resources={"spot": 1}',
            "--disable-usage-stats",
        ], log, env)  # fmt: skip

    def kill(self) -> None:
        """SIGKILL, as a reclaimed VM: no goodbye to the head."""
        os.killpg(self.pid, signal.SIGKILL)
        processes.wait_until(lambda: not processes.group_members(self.pid), 15)


def alive_spot_nodes(platform: LocalPlatform) -> int:
    return sum(1 for n in platform.nodes()
               if n["state"] == "ALIVE" and "spot" in (n.get("resources_total") or {}))  # fmt: skip


def trainingjob(name: str, args: str, env: dict[str, str], checkpoint: str) -> dict[str, Any]:
    return {
        "apiVersion": "mlplane.dev/v1alpha1", "kind": "TrainingJob",
        "metadata": {"name": name},
        "spec": {
            "entrypoint": f"python -m mlplane.training.examples.sklearn_tabular {args}",
            "runtimeEnv": {"env_vars": env},
            "checkpoint": {"uri": checkpoint, "keep": 2},
            "backoffLimit": 1,
            "mlflow": {"experiment": "e2e", "registeredModel": name, "alias": "champion"},
        },
    }  # fmt: skip


def status(platform: LocalPlatform, name: str) -> dict[str, Any]:
    return Store(platform.state_dir).get("TrainingJob", "default", name).get("status") or {}


def repeated_steps(client: MlflowClient, run_id: str) -> int:
    """Step executions beyond one per step: the work redone after a loss."""
    history = client.get_metric_history(run_id, "val_accuracy")
    return len(history) - len({m.step for m in history})


def test_worker_node_killed_mid_run_resumes_from_s3_checkpoint(platform, s3, tmp_path):
    first = WorkerNode(platform, tmp_path / "worker-a.log")
    replacement: WorkerNode | None = None
    try:
        wait(lambda: alive_spot_nodes(platform) == 1, 60, "the spot worker node to join")
        env = {**s3, "MLPLANE_WORKER_RESOURCES": json.dumps({"spot": 0.1})}
        args = f"--steps 40 --checkpoint-every {CHECKPOINT_EVERY} --step-seconds 0.4 --cpus 0.5"
        Store(platform.state_dir).apply(trainingjob("spotty", args, env, "s3://ckpt/spotty"))
        wait(lambda: (status(platform, "spotty").get("lastCheckpoint") or {}).get("step", 0)
             >= 10, 180, "the checkpoint at step 10")  # fmt: skip
        first.kill()
        replacement = WorkerNode(platform, tmp_path / "worker-b.log")  # KubeRay's new pod
        final = wait(lambda: status(platform, "spotty").get("phase") in ("Succeeded", "Failed")
                     and status(platform, "spotty"), 420, "the job to finish")  # fmt: skip
        assert final["phase"] == "Succeeded", final
        assert final["preemptions"] == 1, final
        assert (final["attempts"], final["failures"]) == (1, 0)
        client = MlflowClient(platform.mlflow_uri)
        assert repeated_steps(client, final["mlflow"]["runId"]) <= CHECKPOINT_EVERY
        versions = client.search_model_versions("name = 'spotty'")
        assert len(versions) == 1
        assert str(client.get_model_version_by_alias("spotty", "champion").version) == "1"
        objects = boto3.client("s3", endpoint_url=s3["AWS_ENDPOINT_URL"],
                               region_name="us-east-1", aws_access_key_id="test",
                               aws_secret_access_key="test").list_objects_v2(
            Bucket="ckpt", Prefix="spotty/")  # fmt: skip
        assert objects.get("KeyCount", 0) > 0, "checkpoints were written to S3"
    finally:
        for node in (first, replacement):
            if node is not None:
                processes.stop_group(node.pid, grace=5)


def test_failed_attempt_resumes_in_the_next_attempt(platform, s3, tmp_path):
    args = (f"--no-ray --steps 20 --checkpoint-every {CHECKPOINT_EVERY} --crash-at-step 12 "
            "--step-seconds 0.1")  # fmt: skip
    Store(platform.state_dir).apply(trainingjob("crashy", args, dict(s3), "s3://ckpt/crashy"))
    final = wait(lambda: status(platform, "crashy").get("phase") in ("Succeeded", "Failed")
                 and status(platform, "crashy"), 300, "the job to finish")  # fmt: skip
    assert final["phase"] == "Succeeded", final
    assert (final["attempts"], final["failures"], final["preemptions"]) == (2, 1, 0)
    client = MlflowClient(platform.mlflow_uri)
    # attempt 1 ran steps 1-12 and checkpointed at 10; attempt 2 resumed at 11
    assert 0 < repeated_steps(client, final["mlflow"]["runId"]) <= CHECKPOINT_EVERY
    assert len(client.search_model_versions("name = 'crashy'")) == 1
    assert subprocess.run([str(BIN / "mlplane"), "get", "tj", "crashy", "--state-dir",
                           str(platform.state_dir)], capture_output=True, text=True,
                          check=False).stdout.count("Succeeded") == 1  # fmt: skip


def finished(platform: LocalPlatform, name: str, timeout: float) -> dict[str, Any]:
    return wait(lambda: status(platform, name).get("phase") in ("Succeeded", "Failed")
                and status(platform, name), timeout, f"{name} to finish")  # fmt: skip


def coefficients(model: Any) -> list[float]:
    return [float(x) for x in model.named_steps["clf"].coef_.ravel()]


def registered_coefficients(platform: LocalPlatform, name: str, version: str) -> list[float]:
    with process_uris(platform.mlflow_uri):  # MLflow's globals, restored after
        return coefficients(mlflow.sklearn.load_model(f"models:/{name}/{version}"))


def test_job_applied_again_trains_from_step_zero_and_registers_its_own_weights(platform, tmp_path):
    store = Store(platform.state_dir)
    checkpoint = str(tmp_path / "checkpoints" / "again")  # the same for both incarnations
    steps, every = 20, CHECKPOINT_EVERY

    def apply(seed: int) -> tuple[str, dict[str, Any]]:
        args = f"--no-ray --steps {steps} --checkpoint-every {every} --rows 400 --seed {seed}"
        store.apply(trainingjob("again", args, {}, checkpoint))
        uid = store.get("TrainingJob", "default", "again")["metadata"]["uid"]
        final = finished(platform, "again", 300)
        assert final["phase"] == "Succeeded", final
        return uid, final

    first_uid, first = apply(seed=7)
    store.delete("TrainingJob", "default", "again")  # what `mlplane delete` does to the store
    second_uid, second = apply(seed=8)
    assert second_uid != first_uid
    client = MlflowClient(platform.mlflow_uri)

    # Trained from step 0: every step exactly once in the new run, nothing restored.
    run = second["mlflow"]["runId"]
    assert run != first["mlflow"]["runId"]
    history = client.get_metric_history(run, "val_accuracy")
    assert sorted(m.step for m in history) == list(range(1, steps + 1))
    assert "mlplane.resumed_from_step" not in client.get_run(run).data.tags
    assert second["attempts"] == 1

    # Each incarnation in its own folder, scoped by its uid.
    assert second["checkpointUri"] == f"{checkpoint}/{second_uid}"
    mine = open_store(second["checkpointUri"]).checkpoints()
    assert [c.step for c in mine] == [15, 20]  # keep: 2
    assert {c.trainingjob_uid for c in mine} == {second_uid}
    assert [c.step for c in open_store(f"{checkpoint}/{first_uid}").checkpoints()] == [15, 20]

    # A second version whose weights are the new training's, not the old checkpoint's: equal
    # to training the new data from scratch here, different from version 1.
    versions = sorted(v.version for v in client.search_model_versions("name = 'again'"))
    assert [str(v) for v in versions] == ["1", "2"]
    assert (first["mlflow"]["modelVersion"], second["mlflow"]["modelVersion"]) == ("1", "2")
    v1 = registered_coefficients(platform, "again", "1")
    v2 = registered_coefficients(platform, "again", "2")
    assert v1 != v2
    fresh = TrainingSession.start(TrainingContext(), mlflow=False)
    config = sklearn_tabular.Config(steps=steps, checkpoint_every=every, rows=400, seed=8)
    assert v2 == coefficients(sklearn_tabular.train(fresh, config))


def test_spot_job_without_checkpoint_uri_uses_the_default_base(platform, tmp_path):
    node = WorkerNode(platform, tmp_path / "worker.log")
    try:
        wait(lambda: alive_spot_nodes(platform) >= 1, 60, "the spot worker node to join")
        env = {"MLPLANE_WORKER_RESOURCES": json.dumps({"spot": 0.1})}
        body = trainingjob("spot-default", "--steps 10 --checkpoint-every 5 --cpus 0.5", env, "")
        del body["spec"]["checkpoint"]
        body["spec"]["workers"] = [{"name": "spot", "replicas": 1, "capacity": "Spot"}]
        store = Store(platform.state_dir)
        store.apply(body)  # accepted: the local platform has a default checkpoint base
        uid = store.get("TrainingJob", "default", "spot-default")["metadata"]["uid"]
        final = finished(platform, "spot-default", 300)
        assert final["phase"] == "Succeeded", final
        folder = platform.state_dir / "checkpoints" / "default" / "spot-default" / uid
        assert final["checkpointUri"] == str(folder)
        assert final["currentAttempt"]["capacity"] == "Spot"
        saved = open_store(str(folder)).checkpoints()
        assert [c.step for c in saved] == [5, 10] and {c.trainingjob_uid for c in saved} == {uid}
        assert final["lastCheckpoint"]["uri"] == f"{folder}/step-000000000010"
    finally:
        processes.stop_group(node.pid, grace=5)


def test_auto_checkpoint_interval_shows_c_and_m_from_a_real_run(platform, tmp_path):
    """``checkpoint.interval: Auto`` end to end: the runtime measures C and writes it with the
    checkpoint tags; the runner reads it into status.checkpoint with M from its history."""
    body = trainingjob("auto-interval", "--no-ray --steps 20 --step-seconds 0.1", {},
                       str(tmp_path / "checkpoints" / "auto"))  # fmt: skip
    body["spec"]["checkpoint"]["interval"] = "Auto"
    body["spec"]["workers"] = [{"name": "spot", "replicas": 1, "capacity": "Spot"}]
    Store(platform.state_dir).apply(body)
    final = finished(platform, "auto-interval", 300)
    assert final["phase"] == "Succeeded", final
    checkpoint = final["checkpoint"]
    assert checkpoint["interval"] == "Auto"
    assert checkpoint["writeSeconds"] > 0  # measured by the runtime, read from the run's tags
    assert checkpoint["meanTimeBetweenReclaimsSeconds"] > 0  # one spot worker: its pool's M
    # C is milliseconds here: sqrt(2*C*M) is below the lower bound, which the runtime reports
    assert checkpoint["intervalSeconds"] == 60.0
    assert final["lastCheckpoint"]["step"] == 20


def test_reclaim_notice_checkpoint_lands_before_the_kill_and_at_most_one_step_repeats(
    platform, tmp_path
):
    """``mlplane local reclaim --notice 20``: the runner sees the notice, writes it into the
    job's checkpoint folder, the runtime checkpoints at its next step (marked) and at every
    step until the node goes; the task retried on the replacement repeats at most one step,
    although the loop's own cadence (every 1000 steps) would have lost everything."""
    node = WorkerNode(platform, tmp_path / "worker-notice.log")
    replacement: WorkerNode | None = None
    try:
        wait(lambda: alive_spot_nodes(platform) == 1, 60, "the spot worker node to join")
        (spot,) = [n for n in platform.nodes() if n["state"] == "ALIVE"
                   and "spot" in (n.get("resources_total") or {})]  # fmt: skip
        env = {"MLPLANE_WORKER_RESOURCES": json.dumps({"spot": 0.1})}
        args = "--steps 80 --checkpoint-every 1000 --step-seconds 0.5 --cpus 0.5"
        folder = tmp_path / "checkpoints" / "noticed"
        Store(platform.state_dir).apply(trainingjob("noticed", args, env, str(folder)))
        client = MlflowClient(platform.mlflow_uri)
        run_id = wait(lambda: (status(platform, "noticed").get("mlflow") or {}).get("runId"),
                      180, "the job's run")  # fmt: skip
        wait(lambda: len(client.get_metric_history(run_id, "val_accuracy")) >= 5, 180,
             "five steps trained")  # fmt: skip
        reclaim = subprocess.Popen(
            [str(BIN / "mlplane"), "local", "reclaim", "--notice", "20", spot["node_id"][:12],
             "--state-dir", str(platform.state_dir)],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
        # KubeRay's new pod joins during the notice window: Ray retries the task on it at once.
        replacement = WorkerNode(platform, tmp_path / "worker-notice-b.log")
        try:
            notice = wait(lambda: (status(platform, "noticed").get("lastNotice") or {})
                          .get("checkpoint") and status(platform, "noticed")["lastNotice"],
                          20, "the notice checkpoint, before the kill")  # fmt: skip
            assert reclaim.poll() is None, "the node was killed before the notice checkpoint"
        finally:
            output, _ = reclaim.communicate(timeout=60)
        assert reclaim.returncode == 0, output
        assert notice["signal"] == "mlplane.dev/local-reclaim-notice"
        assert notice["node"] == spot["node_id"][:16]
        final = finished(platform, "noticed", 420)
        assert final["phase"] == "Succeeded", final
        assert (final["attempts"], final["preemptions"]) == (1, 1), final
        assert final["lastNotice"]["checkpoint"] == notice["checkpoint"]
        assert notice["checkpoint"]["uri"].startswith(final["checkpointUri"])
        # The loop's cadence saved nothing before the kill: the resume came from the notice
        # window's checkpoints, and the replacement repeated at most the step cut mid-way.
        resumed = client.get_run(run_id).data.tags.get("mlplane.resumed_from_step")
        assert resumed is not None and int(resumed) >= notice["checkpoint"]["step"]
        assert repeated_steps(client, run_id) <= 1
    finally:
        for worker in (node, replacement):
            if worker is not None:
                processes.stop_group(worker.pid, grace=5)
