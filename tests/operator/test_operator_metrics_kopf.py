"""The Kopf operator exports its metrics: a TrainingJob's counters and phase from the status it
writes, every reconcile counted by kind, and a deleted job's series gone.

The operator runs in this process, so its series are in ``prometheus_client.REGISTRY`` (what
``mlplane operator --metrics-port`` serves).
"""

from __future__ import annotations

import os
from typing import Any

import pytest
from k8s.harness import create, example, stored, wait_for
from mlflow.tracking import MlflowClient
from prometheus_client import REGISTRY

from mlplane.monitoring import names as n

RAYJOBS = "ray.io/v1/rayjobs"
TIMEOUT = 30
JOB = {"namespace": "ml", "trainingjob": "tj-metrics"}


@pytest.fixture(scope="module")
def mlflow_uri(tmp_path_factory):
    uri = f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"
    old = os.environ.get("MLPLANE_MLFLOW_TRACKING_URI")
    os.environ["MLPLANE_MLFLOW_TRACKING_URI"] = uri
    MlflowClient(uri).search_experiments()
    yield uri
    if old is None:
        os.environ.pop("MLPLANE_MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLPLANE_MLFLOW_TRACKING_URI"] = old


def sample(name: str, **labels: str) -> float | None:
    return REGISTRY.get_sample_value(name, labels)


def reconciles(result: str) -> float:
    return sample(n.OPERATOR_RECONCILE_TOTAL, kind="TrainingJob", result=result) or 0.0


def training() -> dict[str, Any]:
    return {
        "attempts": sample(n.TRAININGJOB_ATTEMPTS_TOTAL, **JOB),
        "preemptions": sample(n.TRAININGJOB_PREEMPTIONS_TOTAL, **JOB),
        "failures": sample(n.TRAININGJOB_FAILURES_TOTAL, **JOB),
        "running": sample(n.TRAININGJOB_PHASE, **JOB, phase="Running"),
    }


async def test_trainingjob_series_follow_status_and_go_with_the_job(emulator, operator, mlflow_uri):
    before = reconciles(n.RESULT_SUCCESS)
    body = example("trainingjob-gpu-spot")
    body["metadata"] = {"name": JOB["trainingjob"], "namespace": "ml"}
    obj = await create(emulator, body)
    await wait_for(lambda: emulator.get_object(RAYJOBS, "ml", "tj-metrics-a1"), timeout=TIMEOUT,
                   message="attempt 1")  # fmt: skip
    await emulator.patch_object(RAYJOBS, "ml", "tj-metrics-a1",
                                {"status": {"jobStatus": "RUNNING",
                                            "jobDeploymentStatus": "Running"}},
                                subresource="status")  # fmt: skip
    await wait_for(lambda: training()["running"] == 1.0, timeout=TIMEOUT,
                   message="phase Running exported", seen=training)  # fmt: skip
    got = training()
    assert (got["attempts"], got["preemptions"], got["failures"]) == (1.0, 0.0, 0.0)
    assert sample(n.TRAININGJOB_PHASE, **JOB, phase="Pending") == 0.0
    # The change handler and the timer both count as TrainingJob reconciles.
    assert reconciles(n.RESULT_SUCCESS) >= before + 2

    await emulator.patch_object(RAYJOBS, "ml", "tj-metrics-a1",
                                {"status": {"jobStatus": "FAILED",
                                            "jobDeploymentStatus": "Failed"}},
                                subresource="status")  # fmt: skip
    await wait_for(lambda: training()["attempts"] == 2.0, timeout=TIMEOUT,
                   message="attempt 2 counted", seen=training)  # fmt: skip
    assert training()["failures"] == 1.0  # a failure without disruption evidence is a failure

    await emulator.delete_object("mlplane.dev/v1alpha1/trainingjobs", "ml", "tj-metrics")
    await wait_for(lambda: stored(emulator, obj) is None, timeout=TIMEOUT,
                   message="the TrainingJob to be gone")  # fmt: skip
    await wait_for(lambda: set(training().values()) == {None}, timeout=TIMEOUT,
                   message="its series to be removed", seen=training)  # fmt: skip
