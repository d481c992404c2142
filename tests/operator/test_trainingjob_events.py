"""TrainingJobs are event-driven (issue 16, item 2): no fixed timer per job.

A job is reconciled when it changes, when its RayJob's state changes, when new disruption
evidence arrives, when the core asks to come back (``requeue_after``), and at the latest every
``MLPLANE_RESYNC_INTERVAL``. These tests run the operator with a resync (and a timer interval)
of ten minutes, so only an event can explain a round within a test.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from typing import Any

import pytest
from k8s.harness import create, example, run_operator, run_operator_process, stored, wait_for
from mlflow.tracking import MlflowClient

from mlplane.operator import registry as registry_module

RAYJOBS = "ray.io/v1/rayjobs"
TRAININGJOBS = "mlplane.dev/v1alpha1/trainingjobs"
TIMEOUT = 30
#: Longer than any test here: a round within a test was woken, not timed.
QUIET = {"MLPLANE_RESYNC_INTERVAL": "600", "MLPLANE_RECONCILE_INTERVAL": "600"}


@pytest.fixture(scope="module")
def mlflow_uri(tmp_path_factory):
    uri = f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"
    old = os.environ.get("MLPLANE_MLFLOW_TRACKING_URI")
    os.environ["MLPLANE_MLFLOW_TRACKING_URI"] = uri
    MlflowClient(uri).search_experiments()  # the schema, once, before any operator call
    yield uri
    if old is None:
        os.environ.pop("MLPLANE_MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLPLANE_MLFLOW_TRACKING_URI"] = old


@pytest.fixture
async def quiet_operator(emulator, kubeconfig, mlflow_uri, monkeypatch):
    """The operator with no timer or resync due within the test (settings read at start)."""
    for name, value in QUIET.items():
        monkeypatch.setenv(name, value)
    async with run_operator() as run:
        yield run


@pytest.fixture
async def resting_operator(emulator, kubeconfig, mlflow_uri, monkeypatch):
    """The operator with a resync of minutes; the timers of other kinds (and, before issue
    16, of TrainingJobs) at the tests' pace of one second."""
    monkeypatch.setenv("MLPLANE_RESYNC_INTERVAL", "600")
    async with run_operator() as run:
        yield run


@pytest.fixture
def mlflow_calls(monkeypatch) -> list[str]:
    """Every MLflow call of a TrainingJob round (the operator runs in this process)."""
    calls: list[str] = []
    for method in ("observe_run", "ensure_run", "register"):
        original = getattr(registry_module.Registry, method)

        def counted(self, *args: Any, _original: Any = original, _name: str = method, **kw: Any):
            calls.append(_name)
            return _original(self, *args, **kw)

        monkeypatch.setattr(registry_module.Registry, method, counted)
    return calls


def trainingjob(name: str) -> dict[str, Any]:
    body = example("trainingjob-gpu-spot")
    body["metadata"] = {"name": name, "namespace": "ml"}
    body["spec"]["mlflow"] = {"registeredModel": name}
    return body


def status(emulator, obj) -> dict[str, Any]:
    return (stored(emulator, obj) or {}).get("status") or {}


async def set_running(emulator, rayjob: str) -> None:
    await emulator.patch_object(RAYJOBS, "ml", rayjob,
                                {"status": {"jobStatus": "RUNNING",
                                            "jobDeploymentStatus": "Running"}},
                                subresource="status")  # fmt: skip


def status_writes(emulator) -> int:
    return len(emulator.requests_to(TRAININGJOBS, method="PATCH", subresource="status"))


async def test_a_rayjob_status_change_is_reconciled_without_waiting_for_a_timer(
    emulator, quiet_operator
):
    obj = await create(emulator, trainingjob("tj-woken"))
    await wait_for(lambda: emulator.get_object(RAYJOBS, "ml", "tj-woken-a1"), timeout=TIMEOUT,
                   message="attempt 1's RayJob")  # fmt: skip
    await wait_for(lambda: quiet_operator.processed(obj, "creation") and
                   status(emulator, obj).get("currentAttempt"), timeout=TIMEOUT,
                   message="the creation handled")  # fmt: skip
    # Past the first look a timer takes when an object appears (a timer's only look within
    # ten minutes): from here only an event can explain a round.
    await asyncio.sleep(2)
    await set_running(emulator, "tj-woken-a1")
    started = time.monotonic()
    await wait_for(lambda: status(emulator, obj).get("phase") == "Running", timeout=TIMEOUT,
                   message="the RayJob's RUNNING in the TrainingJob's status",
                   seen=lambda: status(emulator, obj))  # fmt: skip
    assert time.monotonic() - started < 10  # an event, not the ten-minute resync


async def test_at_rest_no_status_write_and_no_mlflow_call(emulator, resting_operator, mlflow_calls):
    """Running jobs with nothing changing cost nothing: no round, so no MLflow call and no
    status write. Then a positive sign the operator was alive all along: a new job (and a
    RayJob change of a resting one) are handled at once."""
    count = 4
    objs = [await create(emulator, trainingjob(f"tj-rest-{i}")) for i in range(count)]
    for i in range(count):
        await wait_for(lambda i=i: emulator.get_object(RAYJOBS, "ml", f"tj-rest-{i}-a1"),
                       timeout=TIMEOUT, message=f"tj-rest-{i}'s RayJob")  # fmt: skip
        await set_running(emulator, f"tj-rest-{i}-a1")
    for obj in objs:
        await wait_for(lambda obj=obj: status(emulator, obj).get("phase") == "Running",
                       timeout=TIMEOUT, message="every job Running")  # fmt: skip
    await asyncio.sleep(1.0)  # let the rounds these changes woke finish
    writes, calls = status_writes(emulator), len(mlflow_calls)
    await asyncio.sleep(4.0)  # the window at rest (the old timers looked every second)
    assert (status_writes(emulator) - writes, len(mlflow_calls) - calls) == (0, 0), mlflow_calls

    probe = await create(emulator, trainingjob("tj-rest-probe"))
    await wait_for(lambda: emulator.get_object(RAYJOBS, "ml", "tj-rest-probe-a1"),
                   timeout=TIMEOUT, message="the probe's RayJob: the operator lives")  # fmt: skip
    await emulator.patch_object(RAYJOBS, "ml", "tj-rest-0-a1",
                                {"status": {"jobStatus": "SUCCEEDED",
                                            "jobDeploymentStatus": "Complete"}},
                                subresource="status")  # fmt: skip
    await wait_for(lambda: status(emulator, objs[0]).get("phase") != "Running", timeout=TIMEOUT,
                   message="the resting job's RayJob end reconciled",
                   seen=lambda: status(emulator, objs[0]))  # fmt: skip
    assert status(emulator, probe).get("currentAttempt")


async def test_sigterm_exits_within_5s_with_jobs_being_followed(emulator, kubeconfig, mlflow_uri):
    """A real operator process, as deployed (``--leader-elect``), following 30 jobs, exits
    within 5 s of SIGTERM: its daemons leave on Kopf's stop flag, not at their deadline,
    and no watch leftover holds Kopf's exit (``handlers.release_watch_waiters``)."""
    count = 30
    env = {**QUIET, "POD_NAME": "op-term"}
    async with run_operator_process(env=env, tag="sigterm", leader_elect=True) as proc:
        await wait_for(lambda: proc.ready, timeout=TIMEOUT, message="Kopf ready as the leader")
        for i in range(count):
            await create(emulator, trainingjob(f"tj-term-{i}"))
        await wait_for(
            lambda: len(emulator.list_objects(RAYJOBS, "ml")) >= count, timeout=90,
            message=f"{count} RayJobs",
            seen=lambda: len(emulator.list_objects(RAYJOBS, "ml")),
        )  # fmt: skip
        asked = time.monotonic()
        os.kill(proc.pid, signal.SIGTERM)
        await wait_for(lambda: not proc.running, timeout=30, message="the operator to exit")
        assert time.monotonic() - asked < 5, time.monotonic() - asked
        assert proc.popen.returncode == 0
