"""The operator's settings are read once, at start; what it keeps is per operator and per object.

Against the real Kopf operator and the emulator: a variable changed after the start changes
nothing, a bad one fails the start naming it, the timers run at the interval read at start; the
status this process last wrote does not override a newer one written by someone else. And the
local runner holds its own settings per instance.
"""

from __future__ import annotations

import asyncio
import os
import threading
from pathlib import Path
from typing import Any

import kopf
import pytest
from k8s.harness import create, example, more_timer_runs, run_operator, stored, wait_for
from mlflow.tracking import MlflowClient

from mlplane.operator import handlers
from mlplane.operator.config import Settings
from mlplane.operator.runner import Runner

RAYJOBS = "ray.io/v1/rayjobs"
TRAININGJOBS = "mlplane.dev/v1alpha1/trainingjobs"
TIMEOUT = 30


@pytest.fixture(scope="module")
def mlflow_uri(tmp_path_factory):
    uri = f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"
    old = os.environ.get("MLPLANE_MLFLOW_TRACKING_URI")
    os.environ["MLPLANE_MLFLOW_TRACKING_URI"] = uri
    MlflowClient(uri).search_experiments()  # create the schema once, before any operator call
    yield uri
    if old is None:
        os.environ.pop("MLPLANE_MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLPLANE_MLFLOW_TRACKING_URI"] = old


def trainingjob(name: str) -> dict[str, Any]:
    body = example("trainingjob-gpu-spot")
    body["metadata"] = {"name": name, "namespace": "ml"}
    body["spec"]["mlflow"] = {"registeredModel": name, "alias": "candidate"}
    return body


def status(emulator, obj) -> dict[str, Any]:
    return (stored(emulator, obj) or {}).get("status") or {}


def paced_intervals() -> set[float | None]:
    """The intervals of mlplane's paced timers in Kopf's default registry."""
    return {
        h.interval
        for h in kopf.get_default_registry()._spawning.get_all_handlers()
        if h.fn in handlers._PACED
    }


def messages(exc: BaseException | None) -> str:
    """Everything an operator's failure says, its causes and Kopf's handler outcomes included."""
    out = []
    while exc is not None:
        out.append(str(exc))
        for outcome in (getattr(exc, "outcomes", None) or {}).values():
            out.append(str(getattr(outcome, "exception", "")))
        exc = exc.__cause__ or exc.__context__
    return " | ".join(out)


async def test_environment_changed_after_start_changes_nothing(
    emulator, operator, mlflow_uri, monkeypatch
):
    # After the start: a policy that would refuse this job's model name, and a bad interval.
    monkeypatch.setenv("MLPLANE_MODEL_NAME_POLICY", '{"ml": ["nothing-*"]}')
    monkeypatch.setenv("MLPLANE_RECONCILE_INTERVAL", "fast")
    obj = await create(emulator, trainingjob("tj-settled"))
    await wait_for(lambda: emulator.get_object(RAYJOBS, "ml", "tj-settled-a1"), timeout=TIMEOUT,
                   message="attempt 1 under the settings read at start",
                   seen=lambda: status(emulator, obj))  # fmt: skip
    await more_timer_runs(operator, obj, "follow")
    assert "Admitted" not in {c["type"] for c in status(emulator, obj).get("conditions", [])}
    assert operator.running and not operator.error
    assert paced_intervals() == {1.0}  # tests/operator/conftest.py's, read at start


async def test_a_bad_setting_fails_the_start_naming_it(emulator, kubeconfig, monkeypatch):
    monkeypatch.setenv("MLPLANE_RECONCILE_INTERVAL", "fast")
    stop, errors = threading.Event(), []

    async def operator() -> None:
        try:
            await kopf.operator(registry=kopf.get_default_registry(), clusterwide=True,
                                standalone=True, stop_flag=stop)  # fmt: skip
        except BaseException as exc:
            errors.append(exc)
        finally:
            stop.set()  # Kopf waits for its stop flag in a thread: release it when it exits

    thread = threading.Thread(target=lambda: asyncio.run(operator()), daemon=True)
    thread.start()
    try:
        await wait_for(lambda: not thread.is_alive(), timeout=60,
                       message="the operator to refuse to start")  # fmt: skip
    finally:
        stop.set()
    said = messages(errors[0] if errors else None)
    assert "MLPLANE_RECONCILE_INTERVAL must be a number" in said, said
    assert "'fast'" in said


async def test_timers_tick_at_the_interval_read_at_start(emulator, kubeconfig, monkeypatch):
    monkeypatch.setenv("MLPLANE_RECONCILE_INTERVAL", "2.5")
    async with run_operator():
        assert paced_intervals() == {2.5}
    monkeypatch.setenv("MLPLANE_RECONCILE_INTERVAL", "1")
    async with run_operator():
        assert paced_intervals() == {1.0}


async def test_a_newer_status_written_by_someone_else_wins(emulator, operator, mlflow_uri):
    """The operator's "last written status" is trusted only over bodies older than that write.

    Fault: another writer (a second replica, a restore) records a preemption after the
    operator's last write. The next rounds must build on it, not put back what this process
    wrote last (counters must never go back).
    """
    obj = await create(emulator, trainingjob("tj-otherwriter"))
    await wait_for(lambda: emulator.get_object(RAYJOBS, "ml", "tj-otherwriter-a1"),
                   timeout=TIMEOUT, message="attempt 1")  # fmt: skip
    await emulator.patch_object(RAYJOBS, "ml", "tj-otherwriter-a1",
                                {"status": {"jobStatus": "RUNNING",
                                            "jobDeploymentStatus": "Running"}},
                                subresource="status")  # fmt: skip
    await wait_for(lambda: status(emulator, obj).get("phase") == "Running", timeout=TIMEOUT,
                   message="the job Running", seen=lambda: status(emulator, obj))  # fmt: skip
    await more_timer_runs(operator, obj, "follow")  # settled: rounds write nothing new
    assert status(emulator, obj)["preemptions"] == 0

    await emulator.patch_object(
        TRAININGJOBS, "ml", "tj-otherwriter", {"status": {"preemptions": 1}}, subresource="status"
    )
    await more_timer_runs(operator, obj, "follow", count=3)
    assert status(emulator, obj)["preemptions"] == 1, status(emulator, obj)
    assert status(emulator, obj)["phase"] == "Running"


def test_the_local_runner_holds_its_settings_per_instance(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("MLPLANE_LOCAL_REPLICA_CPUS", "0.5")
    read = Runner(tmp_path / "a")
    given = Runner(tmp_path / "b", Settings(local_replica_cpus=0.2, local_max_replicas=4))
    monkeypatch.setenv("MLPLANE_LOCAL_REPLICA_CPUS", "0.75")  # after the start: nothing changes
    assert read.settings.local_replica_cpus == 0.5
    assert (read.serving.replica_cpus, read.serving.max_replicas) == (0.5, 2)
    assert (given.serving.replica_cpus, given.serving.max_replicas) == (0.2, 4)
    monkeypatch.setenv("MLPLANE_LOCAL_MAX_REPLICAS", "many")
    with pytest.raises(ValueError, match="MLPLANE_LOCAL_MAX_REPLICAS"):
        Runner(tmp_path / "c")


async def test_a_status_write_returns_the_resource_version_it_made(emulator, kubeconfig):
    """What the handlers compare bodies with: the resourceVersion the API server gave our write."""
    from mlplane.operator.platforms.kuberay import KubeRayPlatform

    obj = await create(emulator, trainingjob("tj-version"))
    before = obj["metadata"]["resourceVersion"]
    written = await asyncio.to_thread(
        handlers.write_status, obj, {"phase": "Pending"}, KubeRayPlatform()
    )
    after = stored(emulator, obj)
    assert after is not None and after["status"]["phase"] == "Pending"
    assert written == after["metadata"]["resourceVersion"]
    assert int(written) > int(before)
    assert await asyncio.to_thread(handlers.write_status, obj, {}, KubeRayPlatform()) is None
    gone = {**obj, "metadata": {**obj["metadata"], "name": "tj-nowhere"}}
    assert await asyncio.to_thread(
        handlers.write_status, gone, {"phase": "Pending"}, KubeRayPlatform()
    ) is None  # fmt: skip
