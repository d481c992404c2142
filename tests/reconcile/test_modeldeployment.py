"""The ModelDeployment reconcile core: create, roll versions in place, keep serving when the
model cannot be resolved, follow KubeRay's status, read back what is served, idempotence.

:class:`Server` stands in for the API server (merge patches, generations, resource versions and
the schema defaults KubeRay's CRD makes it fill in) and plays KubeRay writing status.
"""

from __future__ import annotations

import copy
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from mlplane.crds.validate import parse
from mlplane.operator import conditions
from mlplane.operator.builders.rayservice import Variant, build_rayservice
from mlplane.operator.config import OperatorConfig
from mlplane.operator.reconcile.modeldeployment import (
    APPLIED,
    Observed,
    Plan,
    Unresolved,
    rayservice_patch,
    reconcile,
    served_config,
)
from mlplane.operator.registry import ResolvedModel

T0 = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)
CONFIG = OperatorConfig()
UID = "md-uid-1"
MODEL = "churn-classifier"
ALIAS_GONE = Unresolved("AliasNotFound", f"model {MODEL!r} has no alias 'champion'")
#: MLmodel flavors of a scikit-learn model saved with skops (allowed by default).
SKOPS = {
    "python_function": {"loader_module": "mlflow.sklearn", "model_path": "model.skops"},
    "sklearn": {"serialization_format": "skops"},
}
PICKLE = {**SKOPS, "sklearn": {"serialization_format": "cloudpickle"}}
#: Every version the tests use is a skops model unless a test says otherwise.
SAFE_FLAVORS = dict.fromkeys(range(1, 100), SKOPS)
MLFLOW_DOWN = Unresolved("RegistryUnavailable", "MLflow at http://mlflow:5000: connection refused")


def resolved(version: int) -> ResolvedModel:
    return ResolvedModel(MODEL, version, f"run{version}", f"models:/m-{version}")


def modeldeployment(name: str = "churn", **spec: Any) -> dict[str, Any]:
    body = {
        "apiVersion": "mlplane.dev/v1alpha1", "kind": "ModelDeployment",
        "metadata": {"name": name, "namespace": "ml", "uid": UID, "generation": 1},
        "spec": {
            "model": {"name": MODEL, "alias": "champion"},
            "replicas": {"min": 1, "max": 4},
            "resources": {"cpu": "1", "memory": "2Gi"},
            "nodeSelector": {"team": "churn"},
            **spec,
        },
    }  # fmt: skip
    return body


def _merge(old: Any, patch: Any) -> Any:
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = dict(old) if isinstance(old, dict) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = _merge(out.get(key), value)
    return out


class Server:
    """One RayService as the API server stores it, and KubeRay's status writes."""

    def __init__(self) -> None:
        self.rs: dict[str, Any] | None = None
        self.version = 0
        self.writes = 0

    def _defaults(self) -> None:
        # KubeRay 1.7's CRD defaults the API server fills in on every write.
        assert self.rs is not None
        for group in self.rs["spec"]["rayClusterConfig"].get("workerGroupSpecs", []):
            group.setdefault("numOfHosts", 1)
            group.setdefault("priority", 0)

    def _bump(self) -> None:
        assert self.rs is not None
        self.version += 1
        self.rs["metadata"]["resourceVersion"] = str(self.version)
        self.writes += 1

    def create(self, obj: dict[str, Any]) -> None:
        assert self.rs is None, "created twice"
        self.rs = copy.deepcopy(obj)
        self.rs["metadata"].update(uid="rs-uid", generation=1)
        self._defaults()
        self._bump()

    def patch(self, patch: dict[str, Any]) -> None:
        assert self.rs is not None
        given = patch.get("metadata", {}).get("resourceVersion")
        assert given in (None, self.rs["metadata"]["resourceVersion"]), "stale patch"
        before = copy.deepcopy(self.rs["spec"])
        status = self.rs.pop("status", None)
        self.rs = _merge(self.rs, patch)
        self._defaults()
        if status is not None:
            self.rs["status"] = status
        if self.rs["spec"] != before:
            self.rs["metadata"]["generation"] += 1
        self._bump()

    def kuberay(
        self,
        *,
        ready: bool = True,
        reason: str | None = None,
        app: str = "RUNNING",
        deployments: dict[str, str] | None = None,
        observed: bool = True,
        upgrading: bool = False,
        workers: int | None = 1,
        message: str = "",
    ) -> None:
        """Write status as KubeRay 1.7 does (observedGeneration current unless told not)."""
        assert self.rs is not None
        generation = self.rs["metadata"]["generation"]
        statuses = deployments or {"router": "HEALTHY", "monitor": "HEALTHY", "model-0": "HEALTHY"}
        self.rs["status"] = {
            "observedGeneration": generation if observed else generation - 1,
            "serviceStatus": "Running" if ready else "",
            "numServeEndpoints": 1 if ready else 0,
            "conditions": [
                {"type": "Ready", "status": "True" if ready else "False",
                 "reason": reason or ("NonZeroServeEndpoints" if ready else "Initializing"),
                 "message": message, "lastTransitionTime": "2026-11-29T12:00:00Z"},
                {"type": "UpgradeInProgress", "status": "True" if upgrading else "False",
                 "reason": "BothActivePendingClustersExist" if upgrading else "NoPendingCluster",
                 "message": "", "lastTransitionTime": "2026-11-29T12:00:00Z"},
            ],
            "activeServiceStatus": {
                "rayClusterName": "churn-abc12",
                "applicationStatuses": {"mlplane": {
                    "status": app, "message": message,
                    "serveDeploymentStatuses": {
                        n: {"status": s, "message": message if s == "UNHEALTHY" else ""}
                        for n, s in statuses.items()},
                }},
                "rayClusterStatus": {} if workers is None else {"readyWorkerReplicas": workers},
            },
        }  # fmt: skip


class Deployment:
    """Drives reconcile like the handler: status carried over, the plan carried out."""

    def __init__(self, body: dict[str, Any], server: Server | None = None) -> None:
        self.body = body
        self.server = server or Server()
        self.now = T0
        self.plans: list[Plan] = []

    def step(self, model: ResolvedModel | Unresolved, *, act: bool = True, **kw: Any) -> Plan:
        self.now += timedelta(seconds=30)
        kw.setdefault("flavors", SAFE_FLAVORS)
        observed = Observed(model, copy.deepcopy(self.server.rs), **kw)
        plan = reconcile(parse(self.body), observed, self.now, CONFIG, uid=UID)
        # The same inputs again give the same plan: nothing depends on hidden state.
        again = reconcile(parse(self.body), observed, self.now, CONFIG, uid=UID)
        assert (again.status, again.patch, again.create, again.events) == (
            plan.status, plan.patch, plan.create, plan.events)  # fmt: skip
        assert not (plan.create and plan.patch)
        if act:
            if plan.create:
                assert plan.desired is not None
                self.server.create(plan.desired)
            elif plan.patch is not None:
                self.server.patch(plan.patch)
        self.body["status"] = plan.status
        self.plans.append(plan)
        return plan

    def edit(self, **spec: Any) -> None:
        self.body["spec"].update(spec)
        self.body["metadata"]["generation"] += 1

    @property
    def status(self) -> dict[str, Any]:
        return self.body["status"]

    def condition(self, type_: str) -> dict[str, Any]:
        found = conditions.find(self.status.get("conditions"), type_)
        assert found is not None, f"no {type_} condition in {self.status}"
        return found

    def events(self, plan: Plan | None = None) -> list[str]:
        return [e.reason for e in (plan or self.plans[-1]).events]


def serve(rs: dict[str, Any]) -> dict[str, Any]:
    return yaml.safe_load(rs["spec"]["serveConfigV2"])


def deployments_of(rs: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {d["name"]: d for d in serve(rs)["applications"][0]["deployments"]}


def ready_deployment(version: int = 1, **spec: Any) -> Deployment:
    d = Deployment(modeldeployment(**spec))
    d.step(resolved(version))
    d.server.kuberay()
    d.step(resolved(version))
    assert d.status["phase"] == "Ready"
    return d


# --- create ------------------------------------------------------------------------------------


def test_first_reconcile_creates_the_rayservice_for_the_resolved_version():
    d = Deployment(modeldeployment())
    plan = d.step(resolved(1))
    assert plan.create and plan.patch is None
    rs = d.server.rs
    assert rs["metadata"]["name"] == "churn"
    assert rs["metadata"]["ownerReferences"][0]["uid"] == UID
    assert deployments_of(rs)["model-0"]["user_config"]["version"] == 1
    assert d.status["phase"] == "Deploying"
    assert (d.condition("Ready")["status"], d.condition("Ready")["reason"]) == (
        "Unknown", "Deploying")  # fmt: skip
    resolved_ = d.condition("ModelResolved")
    assert (resolved_["status"], resolved_["reason"]) == ("True", "Resolved")
    assert "alias champion -> version 1" in resolved_["message"]
    assert d.status["endpoint"] == "http://churn-serve-svc.ml.svc:8000"
    assert d.status["selector"] == (
        "app.kubernetes.io/managed-by=mlplane,mlplane.dev/modeldeployment=churn,"
        "ray.io/node-type=worker"
    )
    assert d.status["replicas"] == 1
    assert d.status["observedGeneration"] == 1
    assert "servedVersion" not in d.status  # nothing answers yet
    assert set(d.events()) == {"ModelResolved", "Deploying"}
    assert plan.requeue_after is not None


def test_nothing_to_do_while_kuberay_starts_despite_server_defaults():
    d = Deployment(modeldeployment())
    d.step(resolved(1))
    writes = d.server.writes
    for _ in range(3):
        plan = d.step(resolved(1))
        assert plan.patch is None and not plan.create
        assert d.events() == []
    assert d.server.writes == writes
    assert d.status["phase"] == "Deploying"
    assert d.server.rs["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]["numOfHosts"] == 1


def test_ready_when_kuberay_serves_then_quiet():
    d = Deployment(modeldeployment())
    d.step(resolved(1))
    d.server.kuberay(workers=1)
    plan = d.step(resolved(1))
    assert d.status["phase"] == "Ready"
    ready = d.condition("Ready")
    assert (ready["status"], ready["reason"]) == ("True", "Serving")
    assert d.status["servedVersion"] == "1"
    assert d.status["modelUri"] == f"models:/{MODEL}/1"
    assert d.events(plan) == ["Ready"]
    before = copy.deepcopy(d.status)
    for _ in range(3):
        plan = d.step(resolved(1))
        assert plan.patch is None and plan.events == [] and plan.requeue_after is None
    assert conditions.status_patch(before, d.status) == {}


def test_kuberay_without_conditions_falls_back_on_service_status():
    d = Deployment(modeldeployment())
    d.step(resolved(1))
    d.server.kuberay()
    del d.server.rs["status"]["conditions"]
    d.step(resolved(1))
    assert d.status["phase"] == "Ready"


# --- versions ----------------------------------------------------------------------------------


def test_alias_moved_patches_only_serve_config_in_place():
    d = ready_deployment(1)
    before = copy.deepcopy(d.server.rs)
    plan = d.step(resolved(2))
    assert plan.changed == ("spec.serveConfigV2",)
    assert set(plan.patch["spec"]) == {"serveConfigV2"}
    assert set(plan.patch["metadata"]) == {"annotations", "resourceVersion"}
    after = d.server.rs
    assert after["metadata"]["uid"] == before["metadata"]["uid"]
    assert {k: v for k, v in after["spec"].items() if k != "serveConfigV2"} == {
        k: v for k, v in before["spec"].items() if k != "serveConfigV2"
    }
    assert deployments_of(after)["model-0"]["user_config"]["version"] == 2
    assert "VersionChanged" in d.events(plan)
    assert "version 1 -> 2" in next(e.message for e in plan.events if e.reason == "VersionChanged")
    # The previous version answers until KubeRay has applied the new spec.
    assert d.status["servedVersion"] == "1"
    assert d.status["phase"] == "Deploying"
    assert d.condition("Ready")["status"] == "True"


def test_served_version_follows_once_kuberay_applied_the_new_spec():
    d = ready_deployment(1)
    d.step(resolved(2))
    d.server.kuberay(observed=False)  # KubeRay has not seen generation 2 yet
    plan = d.step(resolved(2))
    assert plan.patch is None
    assert (d.status["servedVersion"], d.status["phase"]) == ("1", "Deploying")
    d.server.kuberay(app="RUNNING", deployments={"router": "HEALTHY", "monitor": "HEALTHY",
                                                  "model-0": "UPDATING"})  # fmt: skip
    d.step(resolved(2))
    assert (d.status["servedVersion"], d.status["phase"]) == ("1", "Deploying")
    d.server.kuberay()
    plan = d.step(resolved(2))
    assert (d.status["servedVersion"], d.status["phase"]) == ("2", "Ready")
    assert d.status["modelUri"] == f"models:/{MODEL}/2"
    assert d.events(plan) == ["Ready"]


def test_pinned_version_is_served():
    d = Deployment(modeldeployment(model={"name": MODEL, "version": 3}))
    d.step(resolved(3))
    assert "version 3" in d.condition("ModelResolved")["message"]
    assert deployments_of(d.server.rs)["model-0"]["user_config"]["version"] == 3


def test_restart_reads_the_served_version_back():
    d = ready_deployment(3)
    d.body["status"] = {}  # a status lost (or an operator that never saw it): nothing remembered
    plan = d.step(resolved(3))
    assert plan.patch is None and not plan.create
    assert d.status["servedVersion"] == "3"
    assert d.status["phase"] == "Ready"
    # ...also when MLflow cannot be asked.
    d.body["status"] = {}
    plan = d.step(MLFLOW_DOWN)
    assert d.status["servedVersion"] == "3" and plan.patch is None


def test_served_config_reads_every_variant():
    d = Deployment(modeldeployment())
    variants = (Variant("control", 3, 80), Variant("candidate", 4, 20))
    d.step(resolved(3), variants=variants, bucketing_header="x-user-id", abtest="churn-ab")
    found = served_config(d.server.rs)
    assert found is not None
    assert found.model_name == MODEL
    assert [(v[0], v[1], v[3]) for v in found.variants] == [("control", 3, 80),
                                                             ("candidate", 4, 20)]  # fmt: skip
    assert found.version == 3
    router = deployments_of(d.server.rs)["router"]["user_config"]
    assert (router["bucketing_header"], router["abtest"]) == ("x-user-id", "churn-ab")
    assert set(deployments_of(d.server.rs)) == {"router", "monitor", "model-0", "model-1"}


def test_served_config_of_garbage_is_none():
    assert served_config(None) is None
    assert served_config({"spec": {"serveConfigV2": "{{{"}}) is None
    assert served_config({"spec": {"serveConfigV2": "applications: []"}}) is None


# --- the model cannot be resolved -----------------------------------------------------------


def test_unknown_alias_creates_nothing_and_says_why():
    d = Deployment(modeldeployment())
    plan = d.step(ALIAS_GONE)
    assert not plan.create and plan.patch is None and plan.desired is None
    assert d.server.rs is None
    assert d.status["phase"] == "Failed"
    mr, ready = d.condition("ModelResolved"), d.condition("Ready")
    assert (mr["status"], mr["reason"]) == ("False", "AliasNotFound")
    assert (ready["status"], ready["reason"]) == ("False", "AliasNotFound")
    assert "champion" in mr["message"]
    assert "endpoint" not in d.status
    assert d.events(plan) == ["AliasNotFound", "Failed"]
    assert d.step(ALIAS_GONE).events == []  # said once
    # The alias appears later: the next look deploys.
    plan = d.step(resolved(1))
    assert plan.create
    assert d.condition("ModelResolved")["status"] == "True"


@pytest.mark.parametrize(
    ("model", "reason"),
    [
        (Unresolved("ModelNotFound", "registered model 'x' does not exist"), "ModelNotFound"),
        (Unresolved("VersionNotFound", "model 'x' has no version 9"), "VersionNotFound"),
    ],
)
def test_unknown_model_or_version_fails_without_creating(model, reason):
    d = Deployment(modeldeployment(model={"name": MODEL, "version": 9}))
    plan = d.step(model)
    assert d.server.rs is None and plan.requeue_after is None
    assert d.condition("ModelResolved")["reason"] == reason
    assert d.status["phase"] == "Failed"


def test_mlflow_down_before_anything_is_deployed_is_pending_and_retried():
    d = Deployment(modeldeployment())
    plan = d.step(MLFLOW_DOWN)
    assert d.server.rs is None
    assert d.status["phase"] == "Pending"
    assert d.condition("ModelResolved")["reason"] == "RegistryUnavailable"
    assert d.condition("Ready")["status"] == "False"
    assert plan.requeue_after is not None


def test_alias_removed_after_deploy_keeps_serving_the_version():
    d = ready_deployment(2)
    rs = copy.deepcopy(d.server.rs)
    plan = d.step(ALIAS_GONE)
    assert plan.patch is None and not plan.create and plan.desired is None
    assert d.server.rs == rs
    assert d.status["servedVersion"] == "2"
    mr = d.condition("ModelResolved")
    assert (mr["status"], mr["reason"]) == ("False", "AliasNotFound")
    ready = d.condition("Ready")
    assert ready["status"] == "True"  # as KubeRay says
    assert "not following alias champion" in ready["message"]
    assert d.status["phase"] == "Degraded"
    assert set(d.events(plan)) == {"AliasNotFound", "Degraded"}
    assert d.step(ALIAS_GONE).events == []
    # KubeRay's view still counts: the service going down is reported as it is.
    d.server.kuberay(ready=False, reason="ZeroServeEndpoints", app="UNHEALTHY", message="boom")
    d.step(ALIAS_GONE)
    assert d.condition("Ready")["status"] == "False"
    assert d.server.rs["spec"] == rs["spec"]


def test_mlflow_down_after_deploy_changes_nothing_but_the_condition():
    d = ready_deployment(2)
    rs = copy.deepcopy(d.server.rs)
    plan = d.step(MLFLOW_DOWN)
    assert plan.patch is None and d.server.rs == rs
    assert d.status["phase"] == "Ready"  # a registry blip is not the service's problem
    assert d.condition("Ready")["status"] == "True"
    assert d.condition("ModelResolved")["reason"] == "RegistryUnavailable"
    assert d.events(plan) == ["RegistryUnavailable"]
    assert plan.requeue_after is not None
    plan = d.step(resolved(2))
    assert plan.patch is None
    assert d.events(plan) == ["ModelResolved"]
    assert d.condition("ModelResolved")["status"] == "True"


# --- KubeRay's status --------------------------------------------------------------------------


def test_deploy_failed_without_serving_is_failed():
    d = Deployment(modeldeployment())
    d.step(resolved(1))
    d.server.kuberay(ready=False, app="DEPLOY_FAILED", message="ImportError: no module x")
    plan = d.step(resolved(1))
    assert d.status["phase"] == "Failed"
    ready = d.condition("Ready")
    assert (ready["status"], ready["reason"]) == ("False", "DeployFailed")
    assert "ImportError" in ready["message"]
    assert "Failed" in d.events(plan)


def test_initializing_timeout_is_failed():
    d = Deployment(modeldeployment())
    d.step(resolved(1))
    d.server.kuberay(ready=False, reason="InitializingTimeout", app="DEPLOYING",
                     message="not ready after 10m")  # fmt: skip
    d.step(resolved(1))
    assert d.status["phase"] == "Failed"
    assert d.condition("Ready")["reason"] == "InitializingTimeout"


def test_unhealthy_deployment_while_serving_is_degraded():
    d = ready_deployment(1)
    d.server.kuberay(app="UNHEALTHY", deployments={"router": "HEALTHY", "monitor": "HEALTHY",
                                                    "model-0": "UNHEALTHY"},
                     message="replica crashed")  # fmt: skip
    plan = d.step(resolved(1))
    assert d.status["phase"] == "Degraded"
    ready = d.condition("Ready")
    assert ready["status"] == "True"
    assert "model-0" in ready["message"] and "replica crashed" in ready["message"]
    assert d.events(plan) == ["Degraded"]
    d.server.kuberay()
    plan = d.step(resolved(1))
    assert d.status["phase"] == "Ready" and d.events(plan) == ["Ready"]


def test_losing_every_endpoint_after_ready_is_degraded_not_ready():
    d = ready_deployment(1)
    d.server.kuberay(ready=False, reason="ZeroServeEndpoints", app="RUNNING")
    d.step(resolved(1))
    assert d.status["phase"] == "Degraded"
    ready = d.condition("Ready")
    assert (ready["status"], ready["reason"]) == ("False", "NoServeEndpoints")


def test_cluster_upgrade_in_progress_is_deploying_while_serving():
    d = ready_deployment(1)
    d.server.kuberay(upgrading=True)
    d.step(resolved(1))
    assert d.status["phase"] == "Deploying"
    assert d.condition("Ready")["status"] == "True"
    assert "upgrade" in d.condition("Ready")["message"]


# --- scaling and other spec changes -----------------------------------------------------------


def test_scale_moves_worker_bounds_and_serve_autoscaling():
    d = ready_deployment(1)
    d.edit(replicas={"min": 3, "max": 4})
    plan = d.step(resolved(1))
    assert set(plan.changed) == {"spec.serveConfigV2", "spec.rayClusterConfig"}
    group = d.server.rs["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]
    built = build_rayservice(parse(d.body), 1, CONFIG, owner_uid=UID)
    assert group["minReplicas"] == 3
    assert group == {**built["spec"]["rayClusterConfig"]["workerGroupSpecs"][0],
                     "numOfHosts": 1, "priority": 0}  # fmt: skip
    assert deployments_of(d.server.rs)["model-0"]["autoscaling_config"]["min_replicas"] == 3
    assert "VersionChanged" not in d.events(plan)
    assert "Updating" in d.events(plan)
    assert d.status["observedGeneration"] == 2
    assert d.status["replicas"] == 1  # what is ready now
    d.server.kuberay(workers=3)
    d.step(resolved(1))
    assert d.status["replicas"] == 3
    assert d.status["phase"] == "Ready"


def test_replicas_fall_back_on_the_spec_minimum():
    d = ready_deployment(1, replicas={"min": 2, "max": 4})
    d.server.kuberay(workers=None)
    d.step(resolved(1))
    assert d.status["replicas"] == 2


def test_a_field_removed_from_the_spec_is_removed_from_the_rayservice():
    d = ready_deployment(1)
    worker = d.server.rs["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]
    assert worker["template"]["spec"]["nodeSelector"]["team"] == "churn"
    del d.body["spec"]["nodeSelector"]
    d.body["metadata"]["generation"] += 1
    plan = d.step(resolved(1))
    assert "spec.rayClusterConfig" in plan.changed
    worker = d.server.rs["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]
    assert "team" not in worker["template"]["spec"].get("nodeSelector", {})
    assert worker["numOfHosts"] == 1  # the server's default came back
    assert d.step(resolved(1)).patch is None


def test_someone_editing_the_rayservice_is_put_back_keeping_foreign_keys():
    d = ready_deployment(1)
    rs = d.server.rs
    worker = rs["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]
    wanted = worker["maxReplicas"]
    worker["maxReplicas"] = 99
    rs["spec"]["rayClusterConfig"]["headServiceAnnotations"] = {"team": "x"}
    plan = d.step(resolved(1))
    assert plan.changed == ("spec.rayClusterConfig",)
    cluster = d.server.rs["spec"]["rayClusterConfig"]
    assert cluster["workerGroupSpecs"][0]["maxReplicas"] == wanted
    assert cluster["headServiceAnnotations"] == {"team": "x"}  # not mlplane's: left alone
    # A merge patch replaces lists whole: the group is mlplane's again (server defaults return).
    assert cluster["workerGroupSpecs"][0]["numOfHosts"] == 1
    assert d.step(resolved(1)).patch is None


def test_lost_labels_and_owner_reference_are_restored():
    d = ready_deployment(1)
    meta = d.server.rs["metadata"]
    meta["ownerReferences"] = []
    meta["labels"].pop("app.kubernetes.io/managed-by")
    # Without the managed-by label and without an owner, it is not provably ours.
    plan = d.step(resolved(1))
    assert plan.patch is None and d.condition("Ready")["reason"] == "RayServiceConflict"
    meta = d.server.rs["metadata"]
    meta["labels"]["app.kubernetes.io/managed-by"] = "mlplane"
    plan = d.step(resolved(1))
    assert plan.changed == ("metadata.ownerReferences",)
    assert d.server.rs["metadata"]["ownerReferences"][0]["uid"] == UID
    assert d.status["phase"] == "Ready"


def test_a_rayservice_owned_by_someone_else_is_left_alone():
    d = Deployment(modeldeployment())
    d.step(resolved(1))
    d.server.rs["metadata"]["ownerReferences"][0]["uid"] = "other-uid"
    rs = copy.deepcopy(d.server.rs)
    plan = d.step(resolved(2))
    assert plan.patch is None and d.server.rs == rs
    assert d.status["phase"] == "Failed"
    ready = d.condition("Ready")
    assert (ready["status"], ready["reason"]) == ("False", "RayServiceConflict")
    assert "other-uid" in ready["message"]


def test_a_rayservice_being_deleted_is_waited_for():
    d = ready_deployment(1)
    d.server.rs["metadata"]["deletionTimestamp"] = "2026-11-29T12:00:00Z"
    plan = d.step(resolved(1))
    assert not plan.create and plan.patch is None
    assert d.status["phase"] == "Deploying"
    d.server.rs = None
    plan = d.step(resolved(1))
    assert plan.create
    assert "servedVersion" not in d.status  # nothing serves until the new one is up


def test_a_rayservice_that_cannot_be_built_fails_clearly_and_keeps_what_serves():
    conflict = {"capacity": "Spot", "nodeSelector": {"eks.amazonaws.com/capacityType": "ON_DEMAND"}}
    d = Deployment(modeldeployment(**conflict))
    plan = d.step(resolved(1))
    assert not plan.create and d.server.rs is None
    assert d.status["phase"] == "Failed"
    ready = d.condition("Ready")
    assert (ready["status"], ready["reason"]) == ("False", "InvalidRayService")
    assert "capacityType" in ready["message"]
    # The same mistake made on a serving deployment: it keeps serving, the status says why.
    d = ready_deployment(1)
    d.edit(**conflict)
    rs = copy.deepcopy(d.server.rs)
    plan = d.step(resolved(1))
    assert plan.patch is None and d.server.rs == rs
    assert d.status["phase"] == "Degraded"
    assert "capacityType" in d.condition("Ready")["message"]


def test_invalid_spec_verdict_is_dropped_once_valid():
    body = modeldeployment()
    body["status"] = {
        "phase": "Failed",
        "conditions": [{"type": "InvalidSpec", "status": "True", "reason": "InvalidSpec",
                        "message": "x", "lastTransitionTime": "2026-11-29T11:00:00Z"}],
    }  # fmt: skip
    d = Deployment(body)
    d.step(resolved(1))
    assert conditions.find(d.status["conditions"], "InvalidSpec") is None
    assert d.status["phase"] == "Deploying"


def test_ab_variants_change_only_serve_config_when_weights_move():
    d = Deployment(modeldeployment())
    split = (Variant("control", 3, 90), Variant("candidate", 4, 10))
    d.step(resolved(3), variants=split, abtest="ab")
    d.server.kuberay(deployments={"router": "HEALTHY", "monitor": "HEALTHY",
                                  "model-0": "HEALTHY", "model-1": "HEALTHY"})  # fmt: skip
    d.step(resolved(3), variants=split, abtest="ab")
    assert d.status["servedVersion"] == "3"
    plan = d.step(resolved(3), variants=(Variant("control", 3, 50), Variant("candidate", 4, 50)),
                  abtest="ab")  # fmt: skip
    assert plan.changed == ("spec.serveConfigV2",)
    assert "VersionChanged" not in d.events(plan)


def test_ending_a_split_drains_the_dropped_variants_before_removing_them():
    """The router must stop picking a variant before Serve deletes its deployment: first the
    dropped variant goes to weight 0 (deployments kept), then, once KubeRay runs that, it goes."""
    d = Deployment(modeldeployment())
    both = {"router": "HEALTHY", "monitor": "HEALTHY", "model-0": "HEALTHY", "model-1": "HEALTHY"}
    split = (Variant("control", 3, 50), Variant("candidate", 4, 50))
    d.step(resolved(3), variants=split, abtest="ab")
    d.server.kuberay(deployments=both)
    d.step(resolved(3), variants=split, abtest="ab")
    # The test ends (promoted: the alias now points at 4): single-model routing is wanted.
    d.step(resolved(4))
    router = deployments_of(d.server.rs)["router"]["user_config"]["variants"]
    assert [(v["name"], v["version"], v["weight"]) for v in router] == [
        ("primary", 4, 100), ("candidate", 4, 0)]  # fmt: skip
    assert set(deployments_of(d.server.rs)) == {"router", "monitor", "model-0", "model-1"}
    assert d.step(resolved(4)).patch is None  # KubeRay has not applied it yet: wait
    d.server.kuberay(deployments=both)
    d.step(resolved(4))
    assert set(deployments_of(d.server.rs)) == {"router", "monitor", "model-0"}
    router = deployments_of(d.server.rs)["router"]["user_config"]["variants"]
    assert [(v["name"], v["weight"]) for v in router] == [("primary", 100)]
    d.server.kuberay()
    assert d.step(resolved(4)).patch is None


# --- properties --------------------------------------------------------------------------------


@settings(max_examples=40, deadline=None)
@given(
    versions=st.lists(st.integers(1, 5), min_size=1, max_size=4),
    minimum=st.integers(0, 3),
    selector=st.booleans(),
    gpu=st.booleans(),
)
def test_patches_converge_and_only_serve_config_follows_versions(versions, minimum, selector, gpu):
    """Whatever sequence of versions and specs: applying a plan's patch makes the next plan
    empty, and a change of version alone changes nothing but ``serveConfigV2``."""
    spec: dict[str, Any] = {"replicas": {"min": minimum, "max": 4}}
    if gpu:
        spec["resources"] = {"cpu": "1", "memory": "2Gi", "gpu": 1}
    body = modeldeployment(**spec)
    if not selector:
        del body["spec"]["nodeSelector"]
    d = Deployment(body)
    d.step(resolved(versions[0]))
    for version in versions:
        before = copy.deepcopy(d.server.rs["spec"])
        plan = d.step(resolved(version))
        assert set(plan.changed) <= {"spec.serveConfigV2"}
        changed = {k for k in before if before[k] != d.server.rs["spec"].get(k)}
        assert changed <= {"serveConfigV2"}
        assert d.step(resolved(version)).patch is None
        assert deployments_of(d.server.rs)["model-0"]["user_config"]["version"] == version


def test_patch_records_what_it_applied():
    d = ready_deployment(1)
    record = json.loads(d.server.rs["metadata"]["annotations"][APPLIED])
    assert set(record) == set(d.server.rs["spec"])  # one hash per top-level field
    # A RayService without the record (made by an older operator): made exactly what is
    # wanted once, then left alone.
    d.server.rs["metadata"]["annotations"].pop(APPLIED)
    desired = d.plans[0].desired
    assert desired is not None
    patch, _ = rayservice_patch(d.server.rs, desired, UID)
    assert patch is not None and APPLIED in patch["metadata"]["annotations"]
    d.server.patch(patch)
    assert rayservice_patch(d.server.rs, desired, UID) == (None, ())


# --- registry policy: the model's serialisation ------------------------------------------------


def test_unsafe_flavor_deploys_nothing_and_says_how_to_opt_in():
    d = Deployment(modeldeployment())
    plan = d.step(resolved(1), flavors={1: PICKLE})
    assert d.server.rs is None and not plan.create and plan.desired is None
    assert d.status["phase"] == "Failed"
    ready, allowed = d.condition("Ready"), d.condition("ModelAllowed")
    assert (ready["status"], ready["reason"]) == ("False", "UnsafeModelFlavor")
    assert (allowed["status"], allowed["reason"]) == ("False", "UnsafeModelFlavor")
    assert "'sklearn:cloudpickle'" in allowed["message"]
    assert "spec.model.allowUnsafeDeserialization: true" in allowed["message"]
    assert d.condition("ModelResolved")["status"] == "True"  # resolved, but refused
    assert "UnsafeModelFlavor" in d.events(plan)
    assert "UnsafeModelFlavor" not in d.events(d.step(resolved(1), flavors={1: PICKLE}))


def test_flavors_not_read_deploy_nothing():
    d = Deployment(modeldeployment())
    d.step(resolved(1), flavors=None)
    assert d.server.rs is None
    assert "were not read" in d.condition("ModelAllowed")["message"]


def test_opt_in_deploys_an_unsafe_flavor_and_lifts_the_condition():
    d = Deployment(modeldeployment())
    d.step(resolved(1), flavors={1: PICKLE})
    d.edit(model={"name": MODEL, "alias": "champion", "allowUnsafeDeserialization": True})
    plan = d.step(resolved(1), flavors={1: PICKLE})
    assert plan.create
    assert conditions.find(d.status["conditions"], "ModelAllowed") is None
    args = serve(d.server.rs)["applications"][0]["args"]
    assert args["model_policy"]["allow_unsafe"] is True


def test_alias_moved_to_an_unsafe_version_keeps_serving_the_safe_one():
    d = ready_deployment(1)
    rs = copy.deepcopy(d.server.rs)
    plan = d.step(resolved(2), flavors={1: SKOPS, 2: PICKLE})
    assert plan.patch is None and d.server.rs == rs
    assert d.status["servedVersion"] == "1"
    assert d.status["phase"] == "Degraded"
    assert "version 2 of" in d.condition("Ready")["message"]
    assert d.condition("ModelAllowed")["reason"] == "UnsafeModelFlavor"


def test_an_ab_variant_with_an_unsafe_flavor_is_refused_too():
    d = ready_deployment(1)
    rs = copy.deepcopy(d.server.rs)
    variants = (Variant("control", 1, 50), Variant("candidate", 2, 50))
    d.step(resolved(1), variants=variants, flavors={1: SKOPS, 2: PICKLE})
    assert d.server.rs == rs
    assert "version 2" in d.condition("ModelAllowed")["message"]
    d.step(resolved(1), variants=variants, flavors={1: SKOPS, 2: SKOPS})
    assert len(deployments_of(d.server.rs)) == 4  # router, monitor, model-0, model-1
