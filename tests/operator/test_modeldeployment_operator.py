"""ModelDeployment through the real Kopf operator against the in-memory API server, with a real
MLflow registry (SQLite, one store for this module): the test plays KubeRay by writing the
RayService's status, and the user by moving aliases in MLflow and editing the spec.

Covers what issue 4 asks of the operator: deploy by alias; the alias moved → the RayService's
``serveConfigV2`` updated in place, nothing else in its spec changed, same object; an unknown
alias → a condition and nothing created (and a deploy once the alias appears); the alias
removed after deploy → the version keeps serving and the condition says why; deletion cleans
up; an operator restart creates and rewrites nothing; ``kubectl scale`` (``spec.replicas.min``)
reaches the worker bounds and Serve's autoscaling, and ``status.replicas`` follows KubeRay;
MLflow unreachable → Pending and retried.
"""

from __future__ import annotations

import http.server
import json
import os
import threading
from typing import Any

import mlflow
import pytest
import yaml
from k8s.harness import admin_tokens, create, events_for, run_operator_process, stored, wait_for
from mlflow.tracking import MlflowClient
from sklearn.linear_model import LogisticRegression

from mlplane.operator import conditions
from mlplane.operator.builders.retrain import retrain_name
from mlplane.operator.registry import process_uris

RAYSERVICES = "ray.io/v1/rayservices"
MDS = "mlplane.dev/v1alpha1/modeldeployments"
TRAININGJOBS = "mlplane.dev/v1alpha1/trainingjobs"
MODEL = "churn-md"
NAMESPACE = "serving"
TIMEOUT = 30


@pytest.fixture(scope="module")
def mlflow_uri(tmp_path_factory):
    """A registry with two versions of MODEL (real sklearn models), for this module only."""
    folder = tmp_path_factory.mktemp("mlflow-md")
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    old_env = os.environ.get("MLPLANE_MLFLOW_TRACKING_URI")
    os.environ["MLPLANE_MLFLOW_TRACKING_URI"] = uri
    client = MlflowClient(uri)
    experiment = client.create_experiment("md", artifact_location=(folder / "artifacts").as_uri())
    with process_uris(uri):  # MLflow's globals, restored exactly
        for threshold in (1.5, 2.5):  # two versions that predict differently
            x = [[0.0], [1.0], [2.0], [3.0]]
            y = [int(v[0] > threshold) for v in x]
            with mlflow.start_run(experiment_id=experiment):
                mlflow.sklearn.log_model(
                    LogisticRegression().fit(x, y),
                    name="model",
                    registered_model_name=MODEL,
                    pip_requirements=["scikit-learn"],
                )
    assert sorted(int(v.version) for v in client.search_model_versions(f"name='{MODEL}'")) == [
        1,
        2,
    ]
    yield uri
    if old_env is None:
        os.environ.pop("MLPLANE_MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLPLANE_MLFLOW_TRACKING_URI"] = old_env


def set_alias(uri: str, alias: str, version: int) -> None:
    MlflowClient(uri).set_registered_model_alias(MODEL, alias, str(version))


def modeldeployment(name: str, alias: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "mlplane.dev/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": name, "namespace": NAMESPACE},
        "spec": {
            "model": {"name": MODEL, "alias": alias},
            "replicas": {"min": 1, "max": 4},
            "resources": {"cpu": "1", "memory": "2Gi"},
            **spec,
        },
    }


def rayservice(emulator, name: str) -> dict[str, Any] | None:
    return emulator.get_object(RAYSERVICES, NAMESPACE, name)


def status(emulator, obj) -> dict[str, Any]:
    return (stored(emulator, obj) or {}).get("status") or {}


def condition(emulator, obj, type_: str) -> dict[str, Any]:
    return conditions.find(status(emulator, obj).get("conditions"), type_) or {}


def model_version(rs: dict[str, Any] | None) -> int | None:
    """The version in the RayService's Serve config (``model-0``'s user_config)."""
    if rs is None:
        return None
    app = yaml.safe_load(rs["spec"]["serveConfigV2"])["applications"][0]
    model = next(d for d in app["deployments"] if d["name"] == "model-0")
    return model["user_config"]["version"]


def deployments_of(rs: dict[str, Any]) -> dict[str, dict[str, Any]]:
    app = yaml.safe_load(rs["spec"]["serveConfigV2"])["applications"][0]
    return {d["name"]: d for d in app["deployments"]}


async def play_kuberay(emulator, name: str, *, ready: bool = True, workers: int = 1) -> None:
    """Write the status KubeRay 1.7 writes once the Serve application runs (current spec)."""
    rs = rayservice(emulator, name)
    assert rs is not None
    await emulator.patch_object(RAYSERVICES, NAMESPACE, name, {"status": {
        "observedGeneration": rs["metadata"]["generation"],
        "serviceStatus": "Running" if ready else "",
        "numServeEndpoints": 1 if ready else 0,
        "conditions": [{"type": "Ready", "status": "True" if ready else "False",
                        "reason": "NonZeroServeEndpoints" if ready else "Initializing",
                        "message": "", "lastTransitionTime": "2026-11-29T12:00:00Z"}],
        "activeServiceStatus": {
            "rayClusterName": f"{name}-abcde",
            "applicationStatuses": {"mlplane": {
                "status": "RUNNING" if ready else "DEPLOYING",
                "serveDeploymentStatuses": {
                    d: {"status": "HEALTHY" if ready else "UPDATING"}
                    for d in ("router", "monitor", "model-0")},
            }},
            "rayClusterStatus": {"readyWorkerReplicas": workers},
        },
    }}, subresource="status")  # fmt: skip


async def deployed(emulator, obj, version: int) -> dict[str, Any]:
    """Wait for the RayService serving ``version``, play KubeRay, wait for phase Ready."""
    name = obj["metadata"]["name"]
    rs = await wait_for(
        lambda: model_version(rayservice(emulator, name)) == version and rayservice(emulator, name),
        timeout=TIMEOUT,
        message=f"RayService {name} with version {version}",
        seen=lambda: status(emulator, obj),
    )
    await play_kuberay(emulator, name)
    await wait_for(
        lambda: (
            status(emulator, obj).get("phase") == "Ready"
            and status(emulator, obj).get("servedVersion") == str(version)
        ),
        timeout=TIMEOUT,
        message=f"phase Ready serving {version}",
        seen=lambda: status(emulator, obj),
    )
    return rs


def rayservice_writes(emulator, name: str) -> list[Any]:
    """Every request that created or changed the RayService (its status aside)."""
    return [
        r
        for method in ("POST", "PATCH", "PUT")
        for r in emulator.requests_to(RAYSERVICES, method=method)
        if r.subresource is None and (r.name == name or method == "POST")
    ]


def timer_runs(run, obj) -> int:
    uid = obj["metadata"]["uid"]
    return sum(
        1
        for r in list(run.records)
        if getattr(r, "k8s_ref", {}).get("uid") == uid
        and r.getMessage() == "Timer 'follow' succeeded."
    )


async def test_deploy_by_alias_then_move_the_alias_in_place(emulator, operator, mlflow_uri):
    set_alias(mlflow_uri, "champion", 1)
    obj = await create(emulator, modeldeployment("churn", "champion"))
    first = await deployed(emulator, obj, 1)
    assert first["metadata"]["ownerReferences"][0]["uid"] == obj["metadata"]["uid"]
    st = status(emulator, obj)
    assert st["modelUri"] == f"models:/{MODEL}/1"
    assert st["endpoint"] == f"http://churn-serve-svc.{NAMESPACE}.svc:8000"
    assert st["observedGeneration"] == 1
    assert condition(emulator, obj, "ModelResolved")["status"] == "True"
    assert condition(emulator, obj, "Ready")["status"] == "True"

    set_alias(mlflow_uri, "champion", 2)
    moved = await wait_for(
        lambda: model_version(rayservice(emulator, "churn")) == 2 and rayservice(emulator, "churn"),
        timeout=TIMEOUT,
        message="the RayService to follow the alias",
        seen=lambda: status(emulator, obj),
    )
    assert moved["metadata"]["uid"] == first["metadata"]["uid"]  # patched, not recreated
    assert moved["metadata"]["generation"] == first["metadata"]["generation"] + 1
    assert {k: v for k, v in moved["spec"].items() if k != "serveConfigV2"} == {
        k: v for k, v in first["spec"].items() if k != "serveConfigV2"
    }
    assert moved["metadata"]["labels"] == first["metadata"]["labels"]
    assert moved["metadata"]["ownerReferences"] == first["metadata"]["ownerReferences"]
    assert len(emulator.list_objects(RAYSERVICES, NAMESPACE)) == 1
    # Every write after the create touched the spec's serveConfigV2 only.
    patches = [r.data for r in rayservice_writes(emulator, "churn") if r.method == "PATCH"]
    assert patches and all(set(p.get("spec", {})) <= {"serveConfigV2"} for p in patches)
    # Until KubeRay has applied it, version 1 still answers.
    assert status(emulator, obj)["servedVersion"] == "1"
    await play_kuberay(emulator, "churn")
    await wait_for(
        lambda: (
            status(emulator, obj).get("servedVersion") == "2"
            and status(emulator, obj).get("phase") == "Ready"
        ),
        timeout=TIMEOUT,
        message="servedVersion 2",
        seen=lambda: status(emulator, obj),
    )
    assert status(emulator, obj)["modelUri"] == f"models:/{MODEL}/2"
    reasons = [e["reason"] for e in events_for(emulator, obj)]
    assert {"ModelResolved", "Deploying", "Ready", "VersionChanged"} <= set(reasons)
    assert reasons.count("VersionChanged") == 1


async def test_unknown_alias_creates_nothing_until_it_exists(emulator, operator, mlflow_uri):
    obj = await create(emulator, modeldeployment("late", "not-yet"))
    resolved = await wait_for(
        lambda: condition(emulator, obj, "ModelResolved"),
        timeout=TIMEOUT,
        message="the ModelResolved condition",
    )
    assert (resolved["status"], resolved["reason"]) == ("False", "AliasNotFound")
    assert "not-yet" in resolved["message"]
    assert status(emulator, obj)["phase"] == "Failed"
    assert condition(emulator, obj, "Ready")["reason"] == "AliasNotFound"
    assert rayservice(emulator, "late") is None
    warnings = await wait_for(
        lambda: events_for(emulator, obj, "Warning"), timeout=TIMEOUT, message="a Warning"
    )
    assert "AliasNotFound" in {e["reason"] for e in warnings}
    # The user creates the alias: the timer finds it and deploys.
    set_alias(mlflow_uri, "not-yet", 2)
    await deployed(emulator, obj, 2)
    assert condition(emulator, obj, "ModelResolved")["status"] == "True"


async def test_unknown_model_and_version_are_told_apart(emulator, operator, mlflow_uri):
    missing_model = {"name": "nope", "alias": "x"}
    missing = await create(emulator, modeldeployment("nomodel", "x", model=missing_model))
    pinned = await create(
        emulator, modeldeployment("noversion", "x", model={"name": MODEL, "version": 9})
    )
    for obj, reason in ((missing, "ModelNotFound"), (pinned, "VersionNotFound")):
        found = await wait_for(
            lambda o=obj: condition(emulator, o, "ModelResolved"),
            timeout=TIMEOUT,
            message=f"{reason} on {obj['metadata']['name']}",
        )
        assert (found["status"], found["reason"]) == ("False", reason)
    assert emulator.list_objects(RAYSERVICES, NAMESPACE) == []


async def test_alias_removed_after_deploy_keeps_serving(emulator, operator, mlflow_uri):
    set_alias(mlflow_uri, "keep", 1)
    obj = await create(emulator, modeldeployment("keep", "keep"))
    await deployed(emulator, obj, 1)
    before = rayservice(emulator, "keep")
    MlflowClient(mlflow_uri).delete_registered_model_alias(MODEL, "keep")
    resolved = await wait_for(
        lambda: (
            condition(emulator, obj, "ModelResolved").get("status") == "False"
            and condition(emulator, obj, "ModelResolved")
        ),
        timeout=TIMEOUT,
        message="ModelResolved False",
        seen=lambda: status(emulator, obj),
    )
    assert resolved["reason"] == "AliasNotFound"
    st = status(emulator, obj)
    assert st["servedVersion"] == "1"
    assert st["phase"] == "Degraded"
    ready = condition(emulator, obj, "Ready")
    assert ready["status"] == "True" and "not following alias keep" in ready["message"]
    after = rayservice(emulator, "keep")
    assert after["metadata"]["resourceVersion"] == before["metadata"]["resourceVersion"]
    # Put back: it resolves again, and the RayService (already on version 1) is not touched.
    set_alias(mlflow_uri, "keep", 1)
    await wait_for(
        lambda: status(emulator, obj).get("phase") == "Ready",
        timeout=TIMEOUT,
        message="Ready again",
        seen=lambda: status(emulator, obj),
    )
    assert (
        rayservice(emulator, "keep")["metadata"]["resourceVersion"]
        == (before["metadata"]["resourceVersion"])
    )


async def test_deletion_removes_the_rayservice(emulator, operator, mlflow_uri):
    # A deletion meeting a running timer round waits for it only this long between looks.
    assert operator.settings.background.cancellation_polling == 1.0
    set_alias(mlflow_uri, "gone", 1)
    obj = await create(emulator, modeldeployment("gone", "gone"))
    await wait_for(lambda: rayservice(emulator, "gone"), timeout=TIMEOUT, message="RayService")
    await emulator.delete_object(MDS, NAMESPACE, "gone")
    await wait_for(lambda: stored(emulator, obj) is None, timeout=TIMEOUT,
                   message="the ModelDeployment to be gone")  # fmt: skip
    await wait_for(lambda: rayservice(emulator, "gone") is None, timeout=TIMEOUT,
                   message="its RayService to be gone")  # fmt: skip


async def test_restart_creates_and_rewrites_nothing(emulator, kubeconfig, mlflow_uri):
    """SIGKILL once settled; a new process (none of the first one's caches) writes nothing."""
    set_alias(mlflow_uri, "restart", 2)
    async with run_operator_process() as first:
        obj = await create(emulator, modeldeployment("restart", "restart"))
        await deployed(emulator, obj, 2)

        # Settled: two timer rounds in a row write nothing (a patch Kopf had not applied yet
        # when the operator stopped would otherwise be the second operator's to write).
        def status_patches() -> int:
            return len(emulator.requests_to(MDS, method="PATCH", name="restart",
                                            subresource="status"))  # fmt: skip

        mark = [status_patches(), timer_runs(first, obj)]

        def settled() -> bool:
            if status_patches() != mark[0]:
                mark[:] = [status_patches(), timer_runs(first, obj)]
            return timer_runs(first, obj) >= mark[1] + 2

        await wait_for(settled, timeout=TIMEOUT, message="no status writes for two timer runs")
        first.kill()
    rs = rayservice(emulator, "restart")
    writes = len(rayservice_writes(emulator, "restart"))
    status_writes = len(emulator.requests_to(MDS, method="PATCH", name="restart",
                                             subresource="status"))  # fmt: skip
    async with run_operator_process() as second:
        await wait_for(lambda: second.processed(obj, "resuming"), timeout=TIMEOUT,
                       message="the resume")  # fmt: skip
        await wait_for(lambda: timer_runs(second, obj) >= 3, timeout=TIMEOUT,
                       message="three timer runs after the restart")  # fmt: skip
    assert [r["metadata"]["name"] for r in emulator.list_objects(RAYSERVICES, NAMESPACE)] == [
        "restart"
    ]
    assert (
        rayservice(emulator, "restart")["metadata"]["resourceVersion"]
        == (rs["metadata"]["resourceVersion"])
    )
    assert len(rayservice_writes(emulator, "restart")) == writes
    assert len(emulator.requests_to(MDS, method="PATCH", name="restart",
                                    subresource="status")) == status_writes  # fmt: skip
    assert status(emulator, obj)["servedVersion"] == "2"


async def test_kill_between_rayservice_create_and_status_write(emulator, kubeconfig, mlflow_uri):
    """SIGKILL right after the RayService POST is applied (before the answer, before any
    status): the new process adopts that RayService, creates no second one, and the status
    converges to what is served."""
    set_alias(mlflow_uri, "killed", 1)
    async with run_operator_process() as first:
        fired = first.kill_after(emulator, "POST", RAYSERVICES, name="killed")
        obj = await create(emulator, modeldeployment("killed", "killed"))
        await wait_for(lambda: fired and not first.running, timeout=TIMEOUT,
                       message="the kill after the RayService POST")  # fmt: skip
    made = rayservice(emulator, "killed")
    assert made is not None and model_version(made) == 1
    assert status(emulator, obj).get("phase") != "Ready"
    async with run_operator_process() as second:
        # Killed inside its creation handler: the new process handles the creation again.
        await deployed(emulator, obj, 1)
        mark = timer_runs(second, obj)
        await wait_for(lambda: timer_runs(second, obj) >= mark + 2, timeout=TIMEOUT,
                       message="two timer runs once Ready")  # fmt: skip
    assert [r["metadata"]["name"] for r in emulator.list_objects(RAYSERVICES, NAMESPACE)
            if r["metadata"]["name"].startswith("killed")] == ["killed"]  # fmt: skip
    now = rayservice(emulator, "killed")
    assert now["metadata"]["uid"] == made["metadata"]["uid"]
    assert now["metadata"]["ownerReferences"][0]["uid"] == obj["metadata"]["uid"]
    assert len(emulator.requests_to(RAYSERVICES, method="POST")) >= 1
    st = status(emulator, obj)
    assert (st["phase"], st["servedVersion"]) == ("Ready", "1")
    assert condition(emulator, obj, "Ready")["status"] == "True"


async def test_scale_reaches_workers_and_serve_autoscaling(emulator, operator, mlflow_uri):
    set_alias(mlflow_uri, "scale", 1)
    obj = await create(emulator, modeldeployment("scale", "scale"))
    first = await deployed(emulator, obj, 1)
    assert status(emulator, obj)["replicas"] == 1
    assert status(emulator, obj)["selector"] == (
        "app.kubernetes.io/managed-by=mlplane,mlplane.dev/modeldeployment=scale,"
        "ray.io/node-type=worker"
    )
    # What `kubectl scale md/scale --replicas=3` writes through the scale subresource.
    await emulator.patch_object(MDS, NAMESPACE, "scale", {"spec": {"replicas": {"min": 3}}})

    def scaled():
        rs = rayservice(emulator, "scale")
        group = rs["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]
        return group["minReplicas"] == 3 and rs

    rs = await wait_for(scaled, timeout=TIMEOUT, message="worker bounds to follow",
                        seen=lambda: rayservice(emulator, "scale"))  # fmt: skip
    assert rs["metadata"]["uid"] == first["metadata"]["uid"]
    workers = rs["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]
    before = first["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]
    assert workers["maxReplicas"] == before["maxReplicas"]  # the maximum did not move
    assert workers["minReplicas"] > before["minReplicas"]
    scaling = deployments_of(rs)["model-0"]["autoscaling_config"]
    assert (scaling["min_replicas"], scaling["max_replicas"]) == (3, 4)
    assert model_version(rs) == 1
    await play_kuberay(emulator, "scale", workers=3)
    await wait_for(
        lambda: (
            status(emulator, obj).get("replicas") == 3
            and status(emulator, obj).get("observedGeneration") == 2
            and status(emulator, obj).get("phase") == "Ready"
        ),
        timeout=TIMEOUT,
        message="status.replicas 3",
        seen=lambda: status(emulator, obj),
    )


async def test_unreachable_mlflow_is_pending_then_deploys(
    emulator, operator, mlflow_uri, monkeypatch
):
    from mlplane.operator.registry import Registry, RegistryUnavailable

    set_alias(mlflow_uri, "blip", 1)
    # An MLflow outage (the operator's settings are read at start: the outage is injected).
    real_resolve = Registry.resolve

    def unreachable(self: Registry, *args: Any, **kwargs: Any) -> Any:
        raise RegistryUnavailable("injected: connection refused")

    monkeypatch.setattr(Registry, "resolve", unreachable)
    obj = await create(emulator, modeldeployment("blip", "blip"))
    resolved = await wait_for(
        lambda: condition(emulator, obj, "ModelResolved"),
        timeout=TIMEOUT,
        message="ModelResolved",
    )
    assert (resolved["status"], resolved["reason"]) == ("False", "RegistryUnavailable")
    assert status(emulator, obj)["phase"] == "Pending"
    assert rayservice(emulator, "blip") is None
    monkeypatch.setattr(Registry, "resolve", real_resolve)  # MLflow is back
    await deployed(emulator, obj, 1)


# --- drift → retraining ---------------------------------------------------------------------

#: A window boundary (windows are aligned to the epoch); the test's windows end after it.
WINDOW_T0 = 1_800_000_000.0
HOUR = 3600.0


class DriftStub:
    """``GET /admin/v1/drift`` of the serving app on 127.0.0.1, shaped like
    ``DriftTap.report()``; 401 without one of the ``tokens()`` (as the app answers)."""

    def __init__(self, version: int, tokens: Any = None) -> None:
        self.version = version
        self.history: list[dict[str, Any]] = []
        self.reads = 0
        self.refused = 0
        stub = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path.split("?")[0] != "/admin/v1/drift":
                    self.send_error(404)
                    return
                given = (self.headers.get("authorization") or "").removeprefix("Bearer ")
                if given not in (tokens() if tokens else set()):
                    stub.refused += 1
                    self.send_error(401)
                    return
                stub.reads += 1
                body = json.dumps(stub.report()).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close_window(self, drifted: bool) -> None:
        """Close the next hour-long window with a verdict (``f1`` drifted, or nothing)."""
        end = WINDOW_T0 + HOUR * (len(self.history) + 1)
        names = ["f1"] if drifted else []
        self.history.append({
            "version": self.version, "windowStart": end - HOUR, "windowEnd": end,
            "rows": 5000, "evaluatedAt": end + 1.5, "drifted": names,
            "anyDrifted": drifted, "hasVerdict": True,
            "features": [{"feature": f"f{i}", "psi": 0.4 if f"f{i}" in names else 0.001,
                          "js": 0.01, "drifted": f"f{i}" in names} for i in range(3)],
        })  # fmt: skip

    def report(self) -> dict[str, Any]:
        streak = 0
        for window in self.history:
            streak = streak + 1 if window["anyDrifted"] else 0
        latest = self.history[-1] if self.history else None
        nxt = WINDOW_T0 + HOUR * len(self.history)
        return {
            "enabled": True, "status": "Ok", "reason": "", "method": "StatisticalTest",
            "threshold": 0.01, "windowSeconds": HOUR, "minSamples": 1000,
            "referenceVersion": self.version,
            "currentWindow": {"start": nxt, "end": nxt + HOUR, "rows": 12},
            "consecutiveDriftedWindows": streak, "lastEvaluation": latest,
            "history": [{k: v for k, v in h.items() if k != "features"} for h in self.history],
            "droppedRows": 0, "lateRows": 0,
        }  # fmt: skip

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()


def drift_monitoring() -> dict[str, Any]:
    return {"drift": {
        "enabled": True, "window": "1h", "minSamples": 1000, "consecutiveWindows": 2,
        "onDrift": "Retrain",
        "retrain": {"minInterval": "1h", "trainingJobTemplate": {"spec": {
            "entrypoint": "python -m churn.train", "image": "ghcr.io/example/churn-train:1.4.0",
            "workers": [{"name": "cpu", "replicas": 1,
                         "resources": {"cpu": "1", "memory": "2Gi"}}],
            "mlflow": {"registeredModel": MODEL, "alias": "candidate"},
        }}},
    }}  # fmt: skip


def retrain_jobs(emulator) -> list[dict[str, Any]]:
    return [
        tj
        for tj in emulator.list_objects(TRAININGJOBS, NAMESPACE)
        if (tj["metadata"].get("labels") or {}).get("mlplane.dev/modeldeployment") == "drifty"
    ]


async def test_drift_fills_status_and_retrains_once(emulator, kubeconfig, mlflow_uri, monkeypatch):
    stub = DriftStub(version=1, tokens=lambda: admin_tokens(emulator, NAMESPACE))
    monkeypatch.setenv("MLPLANE_SERVING_URL", stub.url)
    set_alias(mlflow_uri, "drift", 1)
    try:
        async with run_operator_process() as killed:
            # SIGKILLed right after the retraining TrainingJob's POST is applied, before the
            # operator hears the answer or writes status.drift.retrains.
            fired = killed.kill_after(emulator, "POST", TRAININGJOBS)
            obj = await create(
                emulator, modeldeployment("drifty", "drift", monitoring=drift_monitoring())
            )
            await deployed(emulator, obj, 1)
            stub.close_window(drifted=True)
            first = await wait_for(
                lambda: (
                    condition(emulator, obj, "Drifted").get("status") == "True"
                    and status(emulator, obj)
                ),
                timeout=TIMEOUT,
                message="Drifted True after one window",
                seen=lambda: status(emulator, obj),
            )
            assert first["drift"]["driftedFeatures"] == ["f1"]
            assert first["drift"]["consecutiveDriftedWindows"] == 1
            assert first["drift"]["score"] == pytest.approx(0.4)
            assert retrain_jobs(emulator) == []  # one window is not enough (2 needed)

            stub.close_window(drifted=True)
            jobs = await wait_for(
                lambda: retrain_jobs(emulator), timeout=TIMEOUT, message="a retraining job"
            )
            await wait_for(lambda: fired and not killed.running, timeout=TIMEOUT,
                           message="the kill after the TrainingJob POST")  # fmt: skip
        assert (status(emulator, obj).get("drift") or {}).get("retrains", 0) == 0
        async with run_operator_process():
            await wait_for(
                lambda: (status(emulator, obj).get("drift") or {}).get("retrains") == 1,
                timeout=TIMEOUT,
                message="status.drift.retrains 1",
                seen=lambda: status(emulator, obj),
            )
        assert [j["metadata"]["name"] for j in jobs] == [retrain_name("drifty", 1)]
        owner = jobs[0]["metadata"]["ownerReferences"][0]
        assert (owner["kind"], owner["uid"], owner["controller"]) == (
            "ModelDeployment",
            obj["metadata"]["uid"],
            True,
        )
        st = status(emulator, obj)
        assert st["drift"]["consecutiveDriftedWindows"] == 2
        assert st["drift"]["lastRetrainJob"] == "drifty-r1"
        drifted = condition(emulator, obj, "Drifted")
        assert drifted["reason"] == "Drifted" and "f1" in drifted["message"]
        reasons = [e["reason"] for e in events_for(emulator, obj)]
        assert reasons.count("RetrainCreated") <= 1  # the killed process may have sent none

        # A restart and its ticks over the same report: no second job, nothing counted twice.
        reads = stub.reads
        async with run_operator_process() as second:
            await wait_for(lambda: timer_runs(second, obj) >= 3 and stub.reads > reads,
                           timeout=TIMEOUT, message="ticks after the restart")  # fmt: skip
        assert [j["metadata"]["name"] for j in retrain_jobs(emulator)] == ["drifty-r1"]
        # The killed process's POST landed; the new ones found it (adopted, not duplicated).
        assert len(retrain_jobs(emulator)) == 1
        assert jobs[0]["metadata"]["uid"] == retrain_jobs(emulator)[0]["metadata"]["uid"]
        assert status(emulator, obj)["drift"]["consecutiveDriftedWindows"] == 2
    finally:
        stub.stop()


# --- each Ray cluster closed: its token Secret and NetworkPolicy (issue 14, items 1 and 2) ------

SECRETS = "v1/secrets"
POLICIES = "networking.k8s.io/v1/networkpolicies"


async def test_rayservice_gets_an_owned_token_secret_and_network_policy(emulator, operator,
                                                                        mlflow_uri):  # fmt: skip
    set_alias(mlflow_uri, "champion", 1)
    obj = await create(emulator, modeldeployment("closed", "champion"))
    rs = await wait_for(lambda: rayservice(emulator, "closed"), timeout=TIMEOUT,
                        message="the RayService", seen=lambda: status(emulator, obj))  # fmt: skip
    uid = obj["metadata"]["uid"]
    secret = emulator.get_object(SECRETS, NAMESPACE, "closed-ray-auth")
    policy = emulator.get_object(POLICIES, NAMESPACE, "closed-ray")
    assert secret is not None and policy is not None
    for child in (secret, policy):
        (owner,) = child["metadata"]["ownerReferences"]
        assert (owner["kind"], owner["uid"], owner["controller"]) == ("ModelDeployment", uid, True)
    assert secret["data"]["auth_token"]
    assert rs["spec"]["rayClusterConfig"]["authOptions"] == {
        "mode": "token", "secretName": "closed-ray-auth"}  # fmt: skip
    spec = policy["spec"]
    assert spec["podSelector"]["matchLabels"]["mlplane.dev/modeldeployment"] == "closed"
    serve_rules = [r for r in spec["ingress"] if r.get("ports") == [{"protocol": "TCP",
                                                                      "port": 8000}]]  # fmt: skip
    assert len(serve_rules) == 2  # the operator's pods, the serving clients
    # Moving the alias patches the RayService: the Secret is kept as it was (same token).
    set_alias(mlflow_uri, "champion", 2)
    await wait_for(lambda: model_version(rayservice(emulator, "closed")) == 2, timeout=TIMEOUT,
                   message="the alias followed", seen=lambda: status(emulator, obj))  # fmt: skip
    assert emulator.get_object(SECRETS, NAMESPACE, "closed-ray-auth")["data"] == secret["data"]


async def test_network_policy_of_another_owner_is_not_adopted(emulator, operator, mlflow_uri):
    """A NetworkPolicy of the same name controlled by another uid: no RayService, a condition
    saying what to do; once it is gone the operator makes its own and deploys."""
    set_alias(mlflow_uri, "champion", 1)
    await emulator.create_object(POLICIES, {
        "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": {"name": "taken-ray", "namespace": NAMESPACE, "ownerReferences": [{
            "apiVersion": "mlplane.dev/v1alpha1", "kind": "ModelDeployment", "name": "taken",
            "uid": "uid-of-someone-else", "controller": True}]},
        "spec": {"podSelector": {}, "ingress": [{}]},
    })  # fmt: skip
    obj = await create(emulator, modeldeployment("taken", "champion"))
    blocked = await wait_for(lambda: condition(emulator, obj, "RayClusterAccess"),
                             timeout=TIMEOUT, message="RayClusterAccess False",
                             seen=lambda: status(emulator, obj))  # fmt: skip
    assert (blocked["status"], blocked["reason"]) == ("False", "OwnedByOther")
    assert "NetworkPolicy" in blocked["message"] and "uid-of-someone-else" in blocked["message"]
    # Two more timer rounds (a positive sign the operator looked again): still nothing
    # deployed, the policy untouched.
    start = timer_runs(operator, obj)
    await wait_for(lambda: timer_runs(operator, obj) >= start + 2, timeout=TIMEOUT,
                   message="two more timer rounds")  # fmt: skip
    assert rayservice(emulator, "taken") is None
    kept = emulator.get_object(POLICIES, NAMESPACE, "taken-ray")
    assert kept["metadata"]["ownerReferences"][0]["uid"] == "uid-of-someone-else"

    await emulator.delete_object(POLICIES, NAMESPACE, "taken-ray")
    await wait_for(lambda: rayservice(emulator, "taken"), timeout=TIMEOUT,
                   message="the RayService", seen=lambda: status(emulator, obj))  # fmt: skip
    mine = emulator.get_object(POLICIES, NAMESPACE, "taken-ray")
    assert mine["metadata"]["ownerReferences"][0]["uid"] == obj["metadata"]["uid"]
    await wait_for(lambda: not condition(emulator, obj, "RayClusterAccess"), timeout=TIMEOUT,
                   message="the condition removed", seen=lambda: status(emulator, obj))  # fmt: skip
