"""Auto checkpoint interval and cost through the real Kopf operator on the emulator.

The reclaim history lives in the ConfigMap ``mlplane-reclaim-history`` of the operator's
namespace: the operator reads M from it for a new attempt's interval, writes a counted reclaim
into it, and a new operator process (a restart) reads it back.
"""

from __future__ import annotations

import asyncio
import json
import os

import pytest
import yaml
from k8s.harness import create, example, stored, wait_for
from mlflow.tracking import MlflowClient

from mlplane.monitoring import spot
from mlplane.operator.config import Settings
from mlplane.operator.handlers.state import OperatorState

RAYJOBS = "ray.io/v1/rayjobs"
CONFIGMAPS = "v1/configmaps"
NAMESPACE = "mlplane-system"  # OperatorConfig's default operator namespace
TIMEOUT = 30
POOL = spot.pool_key("nvidia-a10g", None)


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


def status(emulator, obj) -> dict:
    return (stored(emulator, obj) or {}).get("status") or {}


def stored_history(emulator) -> dict:
    found = emulator.get_object(CONFIGMAPS, NAMESPACE, "mlplane-reclaim-history")
    return spot.load_history((found or {}).get("data"))


async def test_auto_interval_uses_and_feeds_the_configmap_history(emulator, operator, mlflow_uri):
    earlier = spot.record({}, POOL, "old-job/1", spot.Exposure(40 * 3600.0, 20))
    await emulator.create_object(CONFIGMAPS, {
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "mlplane-reclaim-history", "namespace": NAMESPACE},
        "data": spot.dump_history(earlier),
    })  # fmt: skip
    body = example("trainingjob-gpu-spot")
    body["metadata"] = {"name": "tj-auto", "namespace": "ml"}
    body["spec"]["checkpoint"]["interval"] = "Auto"
    body["spec"]["mlflow"] = {}
    obj = await create(emulator, body)
    job = await wait_for(lambda: emulator.get_object(RAYJOBS, "ml", "tj-auto-a1"),
                         timeout=TIMEOUT, message="attempt 1")  # fmt: skip
    env = yaml.safe_load(job["spec"]["runtimeEnvYAML"])["env_vars"]
    expected_m = spot.node_mtbr(earlier, POOL) / 4  # four spot workers
    assert env["MLPLANE_CHECKPOINT_INTERVAL"] == "Auto"
    assert float(env["MLPLANE_RECLAIM_MTBR_SECONDS"]) == pytest.approx(expected_m, abs=1e-3)
    checkpoint = await wait_for(lambda: status(emulator, obj).get("checkpoint"),
                                timeout=TIMEOUT, message="status.checkpoint")  # fmt: skip
    assert checkpoint["meanTimeBetweenReclaimsSeconds"] == pytest.approx(expected_m, abs=0.1)
    assert status(emulator, obj)["cost"]["spotGpuHours"] == 0.0

    await emulator.patch_object(RAYJOBS, "ml", "tj-auto-a1",
                                {"status": {"jobStatus": "RUNNING",
                                            "jobDeploymentStatus": "Running"}},
                                subresource="status")  # fmt: skip
    await wait_for(lambda: status(emulator, obj).get("currentAttempt", {}).get("runningTime"),
                   timeout=TIMEOUT, message="attempt 1 seen running")  # fmt: skip
    # A spot reclaim of one worker (DisruptionTarget on its pod).
    await emulator.create_object("v1/pods", {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "tj-auto-a1-worker-x", "namespace": "ml",
                     "labels": {"mlplane.dev/trainingjob": "tj-auto", "mlplane.dev/attempt": "1",
                                "ray.io/node-type": "worker"}},
        "spec": {"nodeName": "spot-node-7", "containers": [{"name": "w", "image": "r"}]},
    })  # fmt: skip
    await emulator.patch_object("v1/pods", "ml", "tj-auto-a1-worker-x",
                                {"status": {"conditions": [{
                                    "type": "DisruptionTarget", "status": "True",
                                    "reason": "DeletionByTaintManager"}]}},
                                subresource="status")  # fmt: skip
    uid = obj["metadata"]["uid"]
    history = await wait_for(
        lambda: (h := stored_history(emulator)).get(POOL)
        and f"{uid}/1" in h[POOL].recent and h,
        timeout=TIMEOUT, message="the reclaim in the ConfigMap",
        seen=lambda: stored_history(emulator),
    )  # fmt: skip
    assert history[POOL].recent[f"{uid}/1"].reclaims == 1
    assert history[POOL].recent["old-job/1"] == spot.Exposure(40 * 3600.0, 20)
    assert status(emulator, obj)["preemptions"] == 1

    # A new operator (its own state: nothing kept in memory) reads the same history back from
    # the ConfigMap.
    keeper = OperatorState(Settings.from_env()).reclaims()
    again = await asyncio.to_thread(keeper.history)
    assert again[POOL].total().reclaims == 21
    assert json.loads(spot.dump_history(again)[spot.STORED_KEY]) == json.loads(
        spot.dump_history(history)[spot.STORED_KEY]
    )
