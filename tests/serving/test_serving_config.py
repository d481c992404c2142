"""The args / user_config contract between the RayService builder and the serving app."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from mlplane.crds.validate import parse
from mlplane.operator.builders import Variant, build_rayservice
from mlplane.operator.config import OperatorConfig
from mlplane.serving.config import AppSettings, ConfigError, ModelConfig, RouterConfig
from mlplane.serving.deploy import local_serve_config, ray_auth_token, serve_config_of

EXAMPLE = Path(__file__).resolve().parents[2] / "crds" / "examples"
CONFIG = OperatorConfig(mlflow_tracking_uri="http://mlflow:5000")


def app_config(**kwargs):
    md = parse(yaml.safe_load((EXAMPLE / "modeldeployment-autoscaled-drift.yaml").read_text()))
    rayservice = build_rayservice(md, 3, CONFIG, owner_uid="u", **kwargs)
    return serve_config_of(rayservice)["applications"][0]


def test_the_builders_config_parses():
    variants = [Variant("control", 3, 90), Variant("candidate", 4, 10)]
    app = app_config(variants=variants, bucketing_header="X-User-Id", abtest="ab1")
    settings = AppSettings.parse(app["args"])
    assert settings.model_deployments == ("model-0", "model-1")
    assert (settings.namespace, settings.name) == ("ml-team", "churn")
    assert settings.slo_s == 0.2
    assert settings.batching is not None and settings.batching.max_batch_size == 16
    by_name = {d["name"]: d for d in app["deployments"]}
    router = RouterConfig.parse(by_name["router"]["user_config"], settings.model_deployments)
    assert [(v.name, v.deployment, v.version, v.weight) for v in router.variants] == [
        ("control", "model-0", 3, 90),
        ("candidate", "model-1", 4, 10),
    ]
    assert router.bucketing_header == "x-user-id"  # header names compare lower-case
    assert ModelConfig.parse(by_name["model-1"]["user_config"]) == ModelConfig(
        "models:/churn-classifier/4", 4
    )
    assert set(by_name) == {"router", "monitor", "model-0", "model-1"}


@pytest.mark.parametrize(
    ("edit", "needle"),
    [
        (lambda a: a.pop("tracking_uri"), "missing key 'tracking_uri'"),
        (lambda a: a.update(model_version=3), "unknown key 'model_version'"),
        (lambda a: a.update(deployment="churn"), "'<namespace>/<name>'"),
        (lambda a: a.update(model_deployments=[]), "model_deployments"),
        (lambda a: a.update(model_deployments=["m", "m"]), "repeat"),
        (lambda a: a["drift"].update(method="KS"), "args.drift.method"),
        (lambda a: a["drift"].update(window_s=0), "window_s"),
        (lambda a: a.update(batching={"max_batch_size": 0, "batch_wait_timeout_s": 0}),
         "max_batch_size"),
        (lambda a: a.update(slo_latency_p99_ms="fast"), "slo_latency_p99_ms"),
    ],
)  # fmt: skip
def test_bad_args_are_refused_by_name(edit, needle):
    args = copy.deepcopy(app_config()["args"])
    edit(args)
    with pytest.raises(ConfigError, match=needle):
        AppSettings.parse(args)


def _router(**changes):
    base = {
        "variants": [
            {"name": "a", "deployment": "model-0", "version": 1, "model_uri": "m:/1",
             "weight": 60},
            {"name": "b", "deployment": "model-1", "version": 2, "model_uri": "m:/2",
             "weight": 40},
        ],
        "bucketing_header": None,
        "abtest": None,
        "objective": None,
    }  # fmt: skip
    base.update(changes)
    return base


@pytest.mark.parametrize(
    ("config", "needle"),
    [
        (_router(variants=[]), "non-empty"),
        (_router(objective="Revenue"), "objective"),
        (_router(extra=1), "unknown key 'extra'"),
        ({**_router(), "variants": [_router()["variants"][0]] * 2}, "unique"),
        ({**_router(), "variants": [{**_router()["variants"][0], "weight": 100},
                                    {**_router()["variants"][1], "deployment": "model-7",
                                     "weight": 0}]}, "model-7"),
        ({**_router(), "variants": [{**_router()["variants"][0], "weight": 50},
                                    _router()["variants"][1]]}, "sum to 100"),
    ],
)  # fmt: skip
def test_bad_router_configs_are_refused(config, needle):
    with pytest.raises(ConfigError, match=needle):
        RouterConfig.parse(config, ("model-0", "model-1"))


def test_model_config():
    assert ModelConfig.parse({"model_uri": "models:/m/2", "version": 2}).version == 2
    with pytest.raises(ConfigError, match="version"):
        ModelConfig.parse({"model_uri": "models:/m/2", "version": 0})
    with pytest.raises(ConfigError, match="missing key 'version'"):
        ModelConfig.parse({"model_uri": "models:/m/2"})


def test_local_config_changes_resources_only():
    serve = {"applications": [app_config()], "proxy_location": "EveryNode"}
    local = local_serve_config(serve, port=8123, num_cpus=0.25, max_replicas=1)
    # The pod's state path is not used on one machine (every run would share it).
    assert "state_dir" in serve["applications"][0]["args"]
    assert "state_dir" not in local["applications"][0]["args"]
    kept = local_serve_config(serve, state_dir="/tmp/x")["applications"][0]["args"]["state_dir"]
    assert kept == "/tmp/x"
    assert local["http_options"] == {"host": "127.0.0.1", "port": 8123}
    (app,) = local["applications"]
    for deployment in app["deployments"]:
        assert deployment["ray_actor_options"] == {"num_cpus": 0.25}
        if "autoscaling_config" in deployment:
            assert deployment["autoscaling_config"]["max_replicas"] == 1
            assert deployment["autoscaling_config"]["min_replicas"] <= 1
    original = serve["applications"][0]
    assert app["args"] == {k: v for k, v in original["args"].items() if k != "state_dir"}
    assert [d.get("user_config") for d in app["deployments"]] == [
        d.get("user_config") for d in original["deployments"]
    ]
    assert serve["applications"][0]["deployments"][2]["ray_actor_options"]["num_cpus"] == 2.0
    renamed = local_serve_config(serve, name="ml-team-churn", route_prefix="/ml-team/churn")
    assert (renamed["applications"][0]["name"], renamed["applications"][0]["route_prefix"]) == (
        "ml-team-churn",
        "/ml-team/churn",
    )


def test_ray_auth_token_sources(tmp_path):
    token_file = tmp_path / "token"
    token_file.write_text("from-file\n")
    assert ray_auth_token({"RAY_AUTH_TOKEN": "abc"}) == "abc"
    assert ray_auth_token({"RAY_AUTH_TOKEN_PATH": str(token_file)}) == "from-file"
    assert ray_auth_token({"RAY_AUTH_TOKEN_PATH": str(tmp_path / "none")}) is None
    assert ray_auth_token({"RAY_AUTH_MODE": "disabled", "RAY_AUTH_TOKEN": "abc"}) is None
