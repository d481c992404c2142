"""ModelDeployment → RayService: version changes touch serveConfigV2 only; Serve config; sizing."""

from __future__ import annotations

import copy
import math
from dataclasses import replace
from pathlib import Path

import pytest
import yaml
from builder_strategies import configs, modeldeployments
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from kuberay_crds import assert_valid, label_maps

from mlplane.crds.validate import parse
from mlplane.operator.builders import Variant, abtest_variants, build_rayservice, render
from mlplane.operator.builders import quantities as q
from mlplane.operator.builders.rayservice import MONITOR_NUM_CPUS, ROUTER_NUM_CPUS
from mlplane.operator.config import OperatorConfig
from mlplane.serving.config import AppSettings
from mlplane.serving.flavors import ModelPolicy

EXAMPLES = Path(__file__).resolve().parents[2] / "crds" / "examples"
UID = "6a1f3c2e-0000-4000-8000-000000000002"
CONFIG = OperatorConfig(mlflow_tracking_uri="http://mlflow.mlflow:5000")
#: KubeRay 1.7's RayServiceUpgradeType values (ray-operator/apis/ray/v1/rayservice_types.go);
#: the CRD schema itself has no enum for the field.
UPGRADE_TYPES = {"NewCluster", "NewClusterWithIncrementalUpgrade", "None"}


def _body(**spec_changes):
    body = yaml.safe_load((EXAMPLES / "modeldeployment-autoscaled-drift.yaml").read_text())
    body["spec"].update(spec_changes)
    return body


def _md(**spec_changes):
    return parse(_body(**spec_changes))


def _build(md=None, version=3, config=CONFIG, **kwargs):
    return build_rayservice(md or _md(), version, config, owner_uid=UID, **kwargs)


def _serve(rayservice):
    return yaml.safe_load(rayservice["spec"]["serveConfigV2"])


def _deployments(rayservice):
    return {d["name"]: d for d in _serve(rayservice)["applications"][0]["deployments"]}


def _models(rayservice):
    """The model deployments' entries in order (model-0, model-1, ...)."""
    deployments = _deployments(rayservice)
    return [deployments[f"model-{i}"] for i in range(len(deployments) - 2)]


def _diff(a, b, path=""):
    """Paths where two JSON-like values differ."""
    if isinstance(a, dict) and isinstance(b, dict):
        return [
            p for k in sorted(a.keys() | b.keys()) for p in _diff(a.get(k), b.get(k), f"{path}.{k}")
        ]
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return [
            p
            for i, (x, y) in enumerate(zip(a, b, strict=True))
            for p in _diff(x, y, f"{path}[{i}]")
        ]
    return [] if a == b else [path]


def test_version_change_touches_serve_config_only():
    assert _diff(_build(version=3), _build(version=4)) == [".spec.serveConfigV2"]


@settings(
    max_examples=60, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow]
)
@given(
    body=modeldeployments(),
    config=configs(),
    version=st.integers(1, 1000),
    step=st.integers(1, 5),
    ab=st.booleans(),
)
def test_version_change_touches_serve_config_only_for_any_spec(body, config, version, step, ab):
    md = parse(body)

    def build(v):
        variants = [Variant("control", v, 80), Variant("candidate", v + 1, 20)] if ab else None
        return build_rayservice(md, v, config, owner_uid=UID, variants=variants)

    assert _diff(build(version), build(version + step)) == [".spec.serveConfigV2"]
    parent = body["metadata"].get("labels", {})
    for path, mapping in label_maps(build(version)):
        if not path.endswith("nodeSelector"):
            assert not {k for k in parent if k in mapping and k != "app.kubernetes.io/managed-by"}


def test_version_change_is_a_user_config_change_only():
    """Serve reconfigures running replicas for user_config-only changes: no restart at all."""
    before, after = _serve(_build(version=3)), _serve(_build(version=4))
    assert _diff(before, after) == [
        ".applications[0].deployments[0].user_config.variants[0].model_uri",
        ".applications[0].deployments[0].user_config.variants[0].version",
        ".applications[0].deployments[2].user_config.model_uri",
        ".applications[0].deployments[2].user_config.version",
    ]
    # args feed Serve's code version: equal args, no rolling restart.
    assert before["applications"][0]["args"] == after["applications"][0]["args"]


def test_ab_weight_change_touches_the_router_user_config_only():
    def build(weights):
        variants = [Variant("control", 3, weights[0]), Variant("candidate", 4, weights[1])]
        return _serve(_build(variants=variants, bucketing_header="x-user-id", abtest="ab1"))

    assert _diff(build((90, 10)), build((80, 20))) == [
        ".applications[0].deployments[0].user_config.variants[0].weight",
        ".applications[0].deployments[0].user_config.variants[1].weight",
    ]


def test_metadata_owner_and_labels():
    body = _body()
    body["metadata"]["labels"] = {"app.kubernetes.io/instance": "ml-apps", "team": "churn"}
    rayservice = _build(parse(body))
    assert rayservice["metadata"] == {
        "name": "churn",
        "namespace": "ml-team",
        "labels": {
            "app.kubernetes.io/managed-by": "mlplane",
            "mlplane.dev/modeldeployment": "churn",
        },
        "ownerReferences": [
            {
                "apiVersion": "mlplane.dev/v1alpha1",
                "kind": "ModelDeployment",
                "name": "churn",
                "uid": UID,
                "controller": True,
                "blockOwnerDeletion": True,
            }
        ],
    }
    cluster = rayservice["spec"]["rayClusterConfig"]
    for template in (
        cluster["headGroupSpec"]["template"],
        cluster["workerGroupSpecs"][0]["template"],
    ):
        assert template["metadata"]["labels"] == rayservice["metadata"]["labels"]


def test_serve_config_is_the_mlplane_app():
    rs = _build(version=12)
    serve = _serve(rs)
    assert serve["proxy_location"] == "EveryNode"
    (app,) = serve["applications"]
    assert app["import_path"] == "mlplane.serving.app:build_app"
    assert app["route_prefix"] == "/"
    assert app["args"] == {
        "deployment": "ml-team/churn",
        "model_name": "churn-classifier",
        "tracking_uri": "http://mlflow.mlflow:5000",
        "model_deployments": ["model-0"],
        "batching": {"max_batch_size": 16, "batch_wait_timeout_s": 0.005},
        "slo_latency_p99_ms": 200,
        "drift": {
            "enabled": True,
            "method": "StatisticalTest",
            "threshold": 0.01,
            "window_s": 3600.0,
            "min_samples": 2000,
        },
        "signing_keys": "/etc/mlplane/request-signing",
        "state_dir": "/var/lib/mlplane/monitor",
        "model_policy": {"allowed": ["sklearn:skops", "onnx"], "allow_unsafe": False},
    }
    router, monitor, model = app["deployments"]
    assert router["name"] == "router"
    assert router["autoscaling_config"]["min_replicas"] == 1
    assert router["autoscaling_config"]["max_replicas"] == 4
    assert router["max_surge_percent"] == 1
    assert router["max_queued_requests"] == 200  # twice the models': theirs trips first
    assert router["user_config"] == {
        "variants": [
            {
                "name": "primary",
                "deployment": "model-0",
                "version": 12,
                "model_uri": "models:/churn-classifier/12",
                "weight": 100,
            }
        ],
        "bucketing_header": None,
        "abtest": None,
        "objective": None,
    }
    assert monitor == {
        "name": "monitor",
        "num_replicas": 1,
        "max_ongoing_requests": 256,
        # On the head, beside the emptyDir holding its saved counts.
        "ray_actor_options": {"num_cpus": 0, "resources": {"node:__internal_head__": 0.001}},
    }
    head = rs["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]
    assert {"name": "monitor-state", "emptyDir": {}} in head["volumes"]
    assert {"name": "monitor-state", "mountPath": "/var/lib/mlplane/monitor"} in (
        head["containers"][0]["volumeMounts"]
    )
    assert model == {
        "name": "model-0",
        "max_ongoing_requests": 16,
        "max_queued_requests": 100,
        "autoscaling_config": {
            "min_replicas": 1,
            "max_replicas": 4,
            "target_ongoing_requests": 4,
            "upscale_delay_s": 30,
            "downscale_delay_s": 300,
        },
        "max_surge_percent": 1,
        "ray_actor_options": {"num_cpus": 2.0, "num_gpus": 0, "memory": 4 * 2**30},
        "user_config": {"model_uri": "models:/churn-classifier/12", "version": 12},
    }


def test_drift_threshold_defaults_by_method():
    for method, default in (("PSI", 0.1), ("JensenShannon", 0.1), ("StatisticalTest", 0.01)):
        md = _md(monitoring={"drift": {"enabled": True, "method": method}})
        assert _serve(_build(md))["applications"][0]["args"]["drift"]["threshold"] == default


def test_ab_variants_become_one_deployment_each():
    variants = [Variant("control", 3, 90), Variant("candidate", 4, 10)]
    rayservice = _build(
        version=3,
        variants=variants,
        bucketing_header="x-user-id",
        abtest="ab1",
        objective="Conversion",
    )
    app = _serve(rayservice)["applications"][0]
    router = app["deployments"][0]["user_config"]
    assert [
        (v["name"], v["deployment"], v["version"], v["weight"], v["model_uri"])
        for v in router["variants"]
    ] == [
        ("control", "model-0", 3, 90, "models:/churn-classifier/3"),
        ("candidate", "model-1", 4, 10, "models:/churn-classifier/4"),
    ]
    assert router["bucketing_header"] == "x-user-id"
    assert router["abtest"] == "ab1"
    assert router["objective"] == "Conversion"
    assert app["args"]["model_deployments"] == ["model-0", "model-1"]
    assert [d["name"] for d in app["deployments"]] == ["router", "monitor", "model-0", "model-1"]
    assert [m["user_config"]["version"] for m in _models(rayservice)] == [3, 4]
    (group,) = rayservice["spec"]["rayClusterConfig"]["workerGroupSpecs"]
    assert (group["minReplicas"], group["maxReplicas"]) == (2, 8 + 2)  # + surge headroom
    assert_valid(rayservice)


def test_a_mean_objectives_outcome_range_and_non_finite_inputs_reach_the_app():
    """The ABTest's outcomeRange goes to the router's user_config (it refuses feedback outside);
    spec.model.allowNonFiniteInputs to the args (absent when off: no restart on upgrade)."""
    variants = [Variant("control", 3, 50), Variant("candidate", 4, 50)]
    rayservice = _build(
        version=3, variants=variants, abtest="ab1", objective="Mean", outcome_range=(0.0, 250.0)
    )
    app = _serve(rayservice)["applications"][0]
    assert app["deployments"][0]["user_config"]["outcome_range"] == [0.0, 250.0]
    assert "allow_non_finite" not in app["args"]
    md = _md(model={"name": "churn-classifier", "alias": "champion", "allowNonFiniteInputs": True})
    assert _serve(_build(md))["applications"][0]["args"]["allow_non_finite"] is True
    assert_valid(rayservice)


@pytest.mark.parametrize(
    "variants",
    [
        [Variant("a", 3, 90), Variant("b", 4, 20)],
        [Variant("a", 3, 50), Variant("a", 4, 50)],
        [Variant("a", 0, 100)],
    ],
)
def test_invalid_variants_are_refused(variants):
    with pytest.raises(ValueError, match=r"variant|versions"):
        _build(variants=variants)


def test_abtest_variants_resolve_aliases():
    abtest = parse(yaml.safe_load((EXAMPLES / "abtest.yaml").read_text()))
    assert abtest_variants(abtest, {"champion": 3, "candidate": 5}) == [
        Variant("control", 3, 90),
        Variant("candidate", 5, 10),
    ]
    with pytest.raises(ValueError, match="alias 'candidate' is not resolved"):
        abtest_variants(abtest, {"champion": 3})


def test_cluster_upgrade_and_head():
    spec = _build()["spec"]
    assert spec["upgradeStrategy"] == {"type": "NewCluster"}
    assert spec["upgradeStrategy"]["type"] in UPGRADE_TYPES
    assert spec["excludeHeadPodFromServeSvc"] is True
    cluster = spec["rayClusterConfig"]
    assert cluster["enableInTreeAutoscaling"] is True
    assert cluster["rayVersion"] == "2.60.0"
    head = cluster["headGroupSpec"]
    assert head["rayStartParams"] == {"num-cpus": "0"}
    assert head["template"]["spec"]["nodeSelector"] == {
        "eks.amazonaws.com/capacityType": "ON_DEMAND"
    }
    assert [c["name"] for c in head["template"]["spec"]["containers"]] == ["ray-head"]


@pytest.mark.parametrize(
    ("capacity", "selector", "preferred"),
    [
        ("OnDemand", "ON_DEMAND", False),
        ("Spot", "SPOT", False),
        ("SpotWithFallback", None, True),
    ],
)
def test_worker_capacity(capacity, selector, preferred):
    md = _md(
        capacity=capacity,
        resources={"cpu": "4", "memory": "16Gi", "gpu": 1},
        accelerator="nvidia-l4",
    )
    group = _build(md)["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]
    pod = group["template"]["spec"]
    assert pod["nodeSelector"].get("eks.amazonaws.com/capacityType") == selector
    assert pod["nodeSelector"]["mlplane.dev/accelerator"] == "nvidia-l4"
    assert ("affinity" in pod) == preferred
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod[
        "tolerations"
    ]
    assert pod["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"
    (serve,) = _models(_build(md))
    assert serve["ray_actor_options"]["num_gpus"] == 1


@settings(
    max_examples=80, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow]
)
@given(body=modeldeployments(), config=configs(), n=st.integers(1, 3))
def test_worker_pods_hold_a_replica_and_a_router(body, config, n):
    md = parse(body)
    weights = {1: [100], 2: [50, 50], 3: [34, 33, 33]}[n]
    variants = [Variant(f"v{i}", 1 + i, w) for i, w in enumerate(weights)]
    rayservice = build_rayservice(md, 1, config, owner_uid=UID, variants=variants)
    (group,) = rayservice["spec"]["rayClusterConfig"]["workerGroupSpecs"]
    limits = group["template"]["spec"]["containers"][0]["resources"]["limits"]
    # What Ray sees in the pod: KubeRay rounds the CPU limit up, memory is the limit.
    ray_cpus = math.ceil(q.parse(limits["cpu"]))
    ray_memory = q.parse(limits["memory"])
    models = _models(rayservice)
    assert len(models) == n
    options = models[0]["ray_actor_options"]
    # A model replica, a router replica and (on one pod) the monitor fit in a pod.
    assert options["num_cpus"] + ROUTER_NUM_CPUS + MONITOR_NUM_CPUS <= ray_cpus
    object_store = int(group["rayStartParams"]["object-store-memory"])
    assert options["memory"] + object_store < ray_memory
    assert int(limits.get("nvidia.com/gpu", 0)) == options["num_gpus"] == md.spec.resources.gpu
    # One pod per replica of every variant, at the floor and at the ceiling, plus one per
    # variant for the surge replica of a rolling restart.
    assert group["minReplicas"] == md.spec.replicas.min * n
    assert group["maxReplicas"] == md.spec.replicas.max * n + n
    assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
    assert group["replicas"] >= 1
    for deployment in models:
        scaling = deployment["autoscaling_config"]
        assert (scaling["min_replicas"], scaling["max_replicas"]) == (
            md.spec.replicas.min,
            md.spec.replicas.max,
        )
        assert scaling["target_ongoing_requests"] == md.spec.autoscaling.target_ongoing_requests
        assert deployment["max_ongoing_requests"] >= scaling["target_ongoing_requests"]
        assert deployment["max_surge_percent"] == 1
        if md.spec.batching:
            assert deployment["max_ongoing_requests"] >= md.spec.batching.max_batch_size
    assert_valid(rayservice)


def test_render_needs_a_version_for_an_alias():
    md = _md()
    with pytest.raises(ValueError, match="--model-version"):
        render(md, CONFIG)
    (rayservice,) = render(md, CONFIG, model_version=9)
    assert "ownerReferences" not in rayservice["metadata"]
    assert _models(rayservice)[0]["user_config"]["version"] == 9


def test_render_pinned_version():
    pinned = _body(model={"name": "churn-classifier", "version": 5})
    (rayservice,) = render(parse(pinned), CONFIG)
    assert _models(rayservice)[0]["user_config"]["version"] == 5
    assert render(parse(pinned), CONFIG, model_version=5) == [rayservice]
    with pytest.raises(ValueError, match="pins model version 5"):
        render(parse(pinned), CONFIG, model_version=6)
    with_uid = copy.deepcopy(pinned)
    with_uid["metadata"]["uid"] = UID
    assert render(parse(with_uid), CONFIG) == [_build(parse(pinned), version=5)]


def test_abtest_does_not_render_alone():
    abtest = parse(yaml.safe_load((EXAMPLES / "abtest.yaml").read_text()))
    with pytest.raises(ValueError, match="ModelDeployment 'churn'"):
        render(abtest, CONFIG)


# --- the request-id signing Secret (issue #14, item 5) -------------------------------------------


@pytest.mark.parametrize("n_variants", [1, 2])
def test_every_ray_container_mounts_the_signing_secret_read_only(n_variants):
    """Head and workers mount ``<md>-request-signing`` where ``args.signing_keys`` points:
    router replicas may land on any pod, and every one must verify the others' ids."""
    variants = [Variant(f"v{i}", 3 + i, 100 // n_variants + (100 % n_variants if i == 0 else 0))
                for i in range(n_variants)]  # fmt: skip
    rayservice = _build(variants=variants)
    assert_valid(rayservice)
    cluster = rayservice["spec"]["rayClusterConfig"]
    templates = [cluster["headGroupSpec"]["template"]] + [
        g["template"] for g in cluster["workerGroupSpecs"]
    ]
    path = _serve(rayservice)["applications"][0]["args"]["signing_keys"]
    for template in templates:
        volumes = [v for v in template["spec"]["volumes"] if v["name"] == "request-signing"]
        assert volumes == [
            {"name": "request-signing",
             "secret": {"secretName": "churn-request-signing", "defaultMode": 0o444}}
        ]  # fmt: skip
        for container in template["spec"]["containers"]:
            mounts = [m for m in container["volumeMounts"] if m["name"] == "request-signing"]
            assert mounts == [{"name": "request-signing", "mountPath": path, "readOnly": True}]


def test_the_signing_mount_does_not_depend_on_the_version():
    """A version change stays a serveConfigV2-only change with the Secret mounted."""
    a, b = _build(version=3), _build(version=4)
    assert a["spec"]["rayClusterConfig"] == b["spec"]["rayClusterConfig"]


def test_model_policy_reaches_the_app_args():
    """The serving app re-checks flavors with the operator's list and the deployment's opt-in."""
    body = _body()
    body["spec"]["model"]["allowUnsafeDeserialization"] = True
    config = replace(CONFIG, allowed_model_flavors=("onnx",))
    args = _serve(_build(parse(body), config=config))["applications"][0]["args"]
    assert args["model_policy"] == {"allowed": ["onnx"], "allow_unsafe": True}
    assert AppSettings.parse(args).model_policy == ModelPolicy(("onnx",), True)


def test_a_feedback_token_secret_is_mounted_where_the_app_reads_it():
    """spec.feedback.tokenSecret: the user's Secret (its 'token' key only) read-only in every
    Ray container, and args.feedback_token_file pointing at it; nothing without the field."""
    plain = _build()
    assert "feedback_token_file" not in _serve(plain)["applications"][0]["args"]
    md = _md(feedback={"tokenSecret": "churn-feedback"})
    rayservice = _build(md)
    args = _serve(rayservice)["applications"][0]["args"]
    assert args["feedback_token_file"] == "/etc/mlplane/feedback-token/token"
    cluster = rayservice["spec"]["rayClusterConfig"]
    templates = [cluster["headGroupSpec"]["template"]] + [
        g["template"] for g in cluster["workerGroupSpecs"]
    ]
    for template in templates:
        (volume,) = [v for v in template["spec"]["volumes"] if v["name"] == "feedback-token"]
        assert volume["secret"] == {
            "secretName": "churn-feedback",
            "defaultMode": 0o444,
            "items": [{"key": "token", "path": "token"}],
        }
        for container in template["spec"]["containers"]:
            assert {"name": "feedback-token", "mountPath": "/etc/mlplane/feedback-token",
                    "readOnly": True} in container["volumeMounts"]  # fmt: skip
    assert AppSettings.parse(args).feedback_token_file == "/etc/mlplane/feedback-token/token"
    assert_valid(rayservice)


def test_backpressure_bounds_the_model_and_router_queues_as_serve_reads_them():
    """spec.maxQueuedRequests is each model deployment's max_queued_requests (the routers'
    queue at the proxies is twice it, so the models' trips first); Serve's own schema accepts
    the config."""
    from ray.serve.schema import ServeDeploySchema

    variants = [Variant("control", 3, 50), Variant("candidate", 4, 50)]
    serve = _serve(_build(_md(maxQueuedRequests=7), variants=variants, abtest="ab"))
    ServeDeploySchema.model_validate(serve)
    deployments = {d["name"]: d for d in serve["applications"][0]["deployments"]}
    assert deployments["model-0"]["max_queued_requests"] == 7
    assert deployments["model-1"]["max_queued_requests"] == 7
    assert deployments["router"]["max_queued_requests"] == 14
    assert _deployments(_build())["model-0"]["max_queued_requests"] == 100  # the default
    with pytest.raises(ValueError, match="maxQueuedRequests"):
        _md(maxQueuedRequests=0)


def test_the_scrape_token_hash_reaches_the_app_args():
    digest = "ab" * 32
    args = _serve(_build(config=replace(CONFIG, serving_scrape_token_sha256=digest)))[
        "applications"
    ][0]["args"]
    assert args["scrape_token_sha256"] == digest
    assert AppSettings.parse(args).scrape_token_sha256 == digest
    assert "scrape_token_sha256" not in _serve(_build())["applications"][0]["args"]
