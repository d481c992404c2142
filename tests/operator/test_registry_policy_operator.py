"""The registry policy through the real Kopf operator (in-memory API server, real MLflow).

A model whose serialisation is refused, a model name the namespace may not register, a
tracking URI the operator may not contact: each gives a condition saying why and what to do,
and nothing is deployed, created or registered; a refused tracking URI is not even contacted.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import mlflow
import pytest
import yaml
from k8s.harness import create, example, run_operator, stored, wait_for
from mlflow.tracking import MlflowClient
from sklearn.linear_model import LogisticRegression

from mlplane.operator import conditions
from mlplane.operator.registry import process_uris

RAYSERVICES = "ray.io/v1/rayservices"
RAYJOBS = "ray.io/v1/rayjobs"
MDS = "mlplane.dev/v1alpha1/modeldeployments"
NAMESPACE = "ml"
MODEL = "pickled-md"
TIMEOUT = 30


@pytest.fixture(scope="module")
def mlflow_uri(tmp_path_factory):
    """The operator's MLflow: one scikit-learn model saved with cloudpickle, alias champion."""
    folder = tmp_path_factory.mktemp("mlflow-policy-op")
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    old_env = os.environ.get("MLPLANE_MLFLOW_TRACKING_URI")
    os.environ["MLPLANE_MLFLOW_TRACKING_URI"] = uri
    client = MlflowClient(uri, registry_uri=uri)
    experiment = client.create_experiment("p", artifact_location=(folder / "a").as_uri())
    # MLflow's globals set for the fluent API, then restored exactly
    with process_uris(uri), mlflow.start_run(experiment_id=experiment):
        mlflow.sklearn.log_model(
                LogisticRegression().fit([[0.0], [1.0], [2.0], [3.0]], [0, 0, 1, 1]),
                name="model", registered_model_name=MODEL, serialization_format="cloudpickle",
                pip_requirements=["scikit-learn"],
            )  # fmt: skip
    client.set_registered_model_alias(MODEL, "champion", "1")
    yield uri
    if old_env is None:
        os.environ.pop("MLPLANE_MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLPLANE_MLFLOW_TRACKING_URI"] = old_env


def status(emulator, obj: dict[str, Any]) -> dict[str, Any]:
    return (stored(emulator, obj) or {}).get("status") or {}


def condition(emulator, obj: dict[str, Any], type_: str) -> dict[str, Any]:
    return conditions.find(status(emulator, obj).get("conditions"), type_) or {}


async def refused(emulator, obj: dict[str, Any], type_: str, reason: str) -> dict[str, Any]:
    return await wait_for(
        lambda: (
            condition(emulator, obj, type_).get("reason") == reason
            and condition(emulator, obj, type_)
        ),
        timeout=TIMEOUT,
        message=f"{type_} with reason {reason}",
        seen=lambda: status(emulator, obj),
    )


def modeldeployment(name: str, **model: Any) -> dict[str, Any]:
    return {
        "apiVersion": "mlplane.dev/v1alpha1", "kind": "ModelDeployment",
        "metadata": {"name": name, "namespace": NAMESPACE},
        "spec": {"model": {"name": MODEL, "alias": "champion", **model},
                 "resources": {"cpu": "1", "memory": "2Gi"}},
    }  # fmt: skip


def trainingjob(name: str, **mlflow_spec: Any) -> dict[str, Any]:
    body = example("trainingjob-gpu-spot")
    body["metadata"] = {"name": name, "namespace": NAMESPACE}
    body["spec"]["mlflow"] = {"registeredModel": name, "alias": "candidate", **mlflow_spec}
    return body


async def test_refused_flavor_deploys_nothing_until_the_deployment_opts_in(
    emulator, operator, mlflow_uri
):
    obj = await create(emulator, modeldeployment("md-pickle"))
    allowed = await refused(emulator, obj, "ModelAllowed", "UnsafeModelFlavor")
    assert "'sklearn:cloudpickle'" in allowed["message"]
    assert "spec.model.allowUnsafeDeserialization: true" in allowed["message"]
    ready = condition(emulator, obj, "Ready")
    assert (ready["status"], ready["reason"]) == ("False", "UnsafeModelFlavor")
    assert status(emulator, obj)["phase"] == "Failed"
    assert emulator.get_object(RAYSERVICES, NAMESPACE, "md-pickle") is None

    opt_in = {"spec": {"model": {"allowUnsafeDeserialization": True}}}
    await emulator.patch_object(MDS, NAMESPACE, "md-pickle", opt_in)
    rs = await wait_for(
        lambda: emulator.get_object(RAYSERVICES, NAMESPACE, "md-pickle"),
        timeout=TIMEOUT, message="the RayService once opted in", seen=lambda: status(emulator, obj),
    )  # fmt: skip
    args = yaml.safe_load(rs["spec"]["serveConfigV2"])["applications"][0]["args"]
    assert args["model_policy"]["allow_unsafe"] is True  # serving checks again with it
    await wait_for(lambda: not condition(emulator, obj, "ModelAllowed"), timeout=TIMEOUT,
                   message="ModelAllowed lifted", seen=lambda: status(emulator, obj))  # fmt: skip


async def test_refused_tracking_uri_is_not_contacted(emulator, operator, mlflow_uri, tmp_path):
    evil = tmp_path / "elsewhere.db"
    obj = await create(emulator, trainingjob("tj-elsewhere", trackingUri=f"sqlite:///{evil}"))
    admitted = await refused(emulator, obj, "Admitted", "TrackingUriNotAllowed")
    assert "MLPLANE_ALLOWED_TRACKING_URIS" in admitted["message"]
    assert condition(emulator, obj, "Running")["reason"] == "TrackingUriNotAllowed"
    assert status(emulator, obj)["phase"] == "Pending"
    assert emulator.get_object(RAYJOBS, NAMESPACE, "tj-elsewhere-a1") is None
    assert not Path(evil).exists()  # an MLflow client would have created the store


async def test_refused_model_name_starts_and_registers_nothing(
    emulator, kubeconfig, mlflow_uri, monkeypatch
):
    monkeypatch.setenv("MLPLANE_MODEL_NAME_POLICY", '{"ml": ["team-ml-*"]}')
    async with run_operator():
        obj = await create(emulator, trainingjob("tj-badname"))
        admitted = await refused(emulator, obj, "Admitted", "ModelNameNotAllowed")
    assert "namespace ml may not register or alias model 'tj-badname'" in admitted["message"]
    assert emulator.get_object(RAYJOBS, NAMESPACE, "tj-badname-a1") is None
    client = MlflowClient(mlflow_uri, registry_uri=mlflow_uri)
    assert client.search_registered_models("name = 'tj-badname'") == []
    assert client.get_experiment_by_name("ml/tj-badname") is None  # no run was made either
    # The name allowed (settings are read at start: the operator restarts, as a chart upgrade
    # restarts its pod): the job goes on.
    monkeypatch.setenv("MLPLANE_MODEL_NAME_POLICY", '{"ml": ["tj-*"]}')
    async with run_operator():
        await wait_for(lambda: emulator.get_object(RAYJOBS, NAMESPACE, "tj-badname-a1"),
                       timeout=TIMEOUT, message="attempt 1 once allowed",
                       seen=lambda: status(emulator, obj))  # fmt: skip
