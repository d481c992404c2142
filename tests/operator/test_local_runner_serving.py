"""The local platform's RayService records and Serve translation, and the runner's checks,
without Ray: Serve's answers are given as data (the e2e tests run them for real)."""

from __future__ import annotations

import copy
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from mlplane.crds import ModelDeploymentStatus
from mlplane.crds.validate import parse
from mlplane.operator.builders.rayservice import build_rayservice
from mlplane.operator.config import OperatorConfig
from mlplane.operator.platforms.local import LocalPlatform, Ports
from mlplane.operator.platforms.local_serving import LocalServing, merge_patch
from mlplane.operator.platforms.store import Store
from mlplane.operator.reconcile import modeldeployment as core
from mlplane.operator.registry import ResolvedModel
from mlplane.operator.runner import Runner

UID = "0d5c1f00-0000-4000-8000-00000000abcd"
NOW = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
CONFIG = OperatorConfig(mlflow_tracking_uri="http://127.0.0.1:5000")


def md_body(name: str = "churn") -> dict[str, Any]:
    return {
        "apiVersion": "mlplane.dev/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": name, "namespace": "team", "uid": UID, "generation": 1},
        "spec": {"model": {"name": "churn", "alias": "champion"}},
    }


@pytest.fixture
def serving(tmp_path: Path) -> LocalServing:
    return LocalServing(LocalPlatform(tmp_path, Ports(serve=8123)))


def serve_app(
    serving: LocalServing, record: dict[str, Any], status: str, deployment_status: str
) -> dict[str, Any]:
    """Serve's GET /api/serve/applications/ entry for a record's application (as PUT)."""
    app = serving.app_config(record)["applications"][0]
    return {
        "status": status,
        "message": "",
        "deployed_app_config": app,
        "deployments": {
            d["name"]: {"status": deployment_status, "message": "",
                        "replicas": [{"state": "RUNNING"}]}
            for d in app["deployments"]
        },
    }  # fmt: skip


def desired(version: int) -> dict[str, Any]:
    md = parse(md_body())
    return build_rayservice(md, version, CONFIG, owner_uid=UID)


def test_merge_patch_follows_rfc_7386() -> None:
    target = {"a": {"b": 1, "c": 2}, "d": [1, 2]}
    assert merge_patch(target, {"a": {"b": None, "e": 3}, "d": [3]}) == {
        "a": {"c": 2, "e": 3},
        "d": [3],
    }
    assert target == {"a": {"b": 1, "c": 2}, "d": [1, 2]}  # not modified


def test_records_move_generation_only_when_the_spec_changes(serving: LocalServing) -> None:
    rs = desired(1)
    name = rs["metadata"]["name"]
    assert serving.create(rs) is True
    assert serving.create(rs) is False  # exists: a retry never makes a second one
    serving.patch("team", name, {"metadata": {"annotations": {"x": "y"}, "resourceVersion": "7"}})
    record = serving.get("team", name)
    assert record is not None
    assert record["metadata"]["generation"] == 1
    assert "resourceVersion" not in record["metadata"]
    new = desired(2)
    serving.patch("team", name, {"spec": {"serveConfigV2": new["spec"]["serveConfigV2"]}})
    record = serving.get("team", name)
    assert record is not None and record["metadata"]["generation"] == 2
    assert record["spec"] == new["spec"]


def test_one_serve_config_names_and_mounts_each_deployment(serving: LocalServing) -> None:
    serving.create(desired(1))
    other = copy.deepcopy(desired(1))
    other["metadata"]["name"] = "fraud-serve"
    other["metadata"]["labels"]["mlplane.dev/modeldeployment"] = "fraud"
    serving.create(other)
    config = serving.desired_config()
    assert config["http_options"] == {"host": "127.0.0.1", "port": 8123}
    apps = {a["name"]: a["route_prefix"] for a in config["applications"]}
    assert apps == {"team-churn": "/team/churn", "team-fraud": "/team/fraud"}
    assert serving.delete_except([("team", "churn")]) == ["team/fraud-serve"]
    assert [a["name"] for a in serving.desired_config()["applications"]] == ["team-churn"]
    assert serving.endpoint("team", "churn") == "http://127.0.0.1:8123/team/churn"


def test_serve_status_reads_like_kuberays(serving: LocalServing) -> None:
    rs = desired(1)
    name = rs["metadata"]["name"]
    serving.create(rs)
    record = serving.get("team", name)
    assert record is not None
    # Serve has not got it yet: not observed, not ready.
    serving.apps = {}
    health = core.service_health(serving.get("team", name))  # type: ignore[arg-type]
    assert (health.serving, health.current) == (False, False)
    # Running the record's config: ready, current, running, one model replica.
    serving.apps = {"team-churn": serve_app(serving, record, "RUNNING", "HEALTHY")}
    health = core.service_health(serving.get("team", name))  # type: ignore[arg-type]
    assert (health.serving, health.current, health.running, health.ready_workers) == (
        True, True, True, 1)  # fmt: skip
    # A new version recorded, Serve still on the old one, updating in place: serving, not current.
    serving.patch("team", name, {"spec": {"serveConfigV2": desired(2)["spec"]["serveConfigV2"]}})
    serving.apps["team-churn"]["status"] = "DEPLOYING"
    health = core.service_health(serving.get("team", name))  # type: ignore[arg-type]
    assert (health.serving, health.current) == (True, False)
    # A failed deploy is reported with Serve's message.
    serving.apps["team-churn"].update(status="DEPLOY_FAILED", message="import error")
    serving.apps["team-churn"]["deployed_app_config"] = yaml.safe_load(
        yaml.safe_dump(
            serve_app(serving, serving.get("team", name), "x", "x")["deployed_app_config"]
        )  # type: ignore[arg-type]
    )
    health = core.service_health(serving.get("team", name))  # type: ignore[arg-type]
    assert health.failed_reason == "DeployFailed" and "import error" in (health.problem or "")


def test_reconcile_over_local_records_is_idempotent(serving: LocalServing) -> None:
    """Create, run, reconcile again: the second round changes nothing (no patch, no events)."""
    md = parse(md_body())
    model = ResolvedModel("churn", 1, None, None)
    skops = {"python_function": {"loader_module": "mlflow.sklearn"},
             "sklearn": {"serialization_format": "skops"}}  # fmt: skip
    flavors = {1: skops}
    plan = core.reconcile(md, core.Observed(model, None, flavors=flavors), NOW, CONFIG, uid=UID)
    assert plan.create and plan.desired is not None
    serving.create(plan.desired)
    name = plan.desired["metadata"]["name"]
    record = serving.get("team", name)
    serving.apps = {"team-churn": serve_app(serving, record, "RUNNING", "HEALTHY")}  # type: ignore[arg-type]
    md = md.model_copy(update={"status": ModelDeploymentStatus.model_validate(plan.status)})
    plan = core.reconcile(
        md, core.Observed(model, serving.get("team", name), flavors=flavors), NOW, CONFIG, uid=UID
    )
    assert plan.status["phase"] == "Ready" and plan.status["servedVersion"] == "1"
    md = md.model_copy(update={"status": ModelDeploymentStatus.model_validate(plan.status)})
    observed = core.Observed(model, serving.get("team", name), flavors=flavors)
    again = core.reconcile(md, observed, NOW, CONFIG, uid=UID)
    assert again.patch is None and not again.create and again.events == []
    assert again.status == plan.status


def test_runner_reports_an_invalid_resource_and_goes_on(tmp_path: Path) -> None:
    """A hand-edited file the API checks refuse: InvalidSpec and a Warning, nothing deployed."""
    store = Store(tmp_path)
    store.apply(md_body())
    path = next((tmp_path / "resources").rglob("churn.yaml"))
    body = yaml.safe_load(path.read_text())
    body["spec"]["replicas"] = {"min": 5, "max": 2}
    path.write_text(yaml.safe_dump(body))
    runner = Runner(tmp_path)
    runner.serving.refresh = lambda: None  # type: ignore[method-assign]  # no Ray here
    runner.pass_once(NOW)
    status = store.get("ModelDeployment", "team", "churn")["status"]
    assert status["phase"] == "Failed"
    invalid = next(c for c in status["conditions"] if c["type"] == "InvalidSpec")
    assert invalid["status"] == "True" and "replicas" in invalid["message"]
    events = store.events("ModelDeployment", "team", "churn")
    assert [e["reason"] for e in events] == ["InvalidSpec"]
    runner.pass_once(NOW)  # a second pass repeats nothing
    assert len(store.events("ModelDeployment", "team", "churn")) == 1
    assert not (tmp_path / "rayservices").exists()


class _Registry:
    """MLflow as the runner asks it: aliases resolve, every version is a skops model."""

    tracking_uri = "http://127.0.0.1:5000"

    def resolve(self, name: str, *, alias: str | None, version: int | None) -> ResolvedModel:
        return ResolvedModel(
            name, version or {"champion": 1, "candidate": 2}[str(alias)], None, None
        )

    def model_flavors(self, name: str, version: int) -> dict[str, Any]:
        return {"python_function": {"loader_module": "mlflow.sklearn"},
                "sklearn": {"serialization_format": "skops"}}  # fmt: skip


def test_runner_serves_a_running_abtests_split_with_its_outcome_range(tmp_path: Path) -> None:
    """The local runner hands a running ABTest's split to the ModelDeployment's RayService
    record, as the Kopf handler does: both variants (their flavors checked), the Mean
    objective's outcome range in the router's user_config. (The runner passed the flavors
    where the signing conflict goes: every A/B split was refused locally.)"""
    store = Store(tmp_path)
    store.apply(md_body())
    store.apply({
        "apiVersion": "mlplane.dev/v1alpha1", "kind": "ABTest",
        "metadata": {"name": "ab", "namespace": "team"},
        "spec": {"deployment": "churn",
                 "variants": [{"name": "control", "model": {"alias": "champion"}, "weight": 50},
                              {"name": "candidate", "model": {"alias": "candidate"}, "weight": 50}],
                 "objective": {"metric": "Mean", "outcomeRange": {"min": "0", "max": "100"}}},
    })  # fmt: skip
    body = store.get("ABTest", "team", "ab")
    store.write_status(body, {
        "phase": "Running", "startTime": "2026-11-30T11:00:00Z",
        "variants": [{"name": "control", "version": "1", "weight": 50},
                     {"name": "candidate", "version": "2", "weight": 50}],
    })  # fmt: skip
    runner = Runner(tmp_path)
    runner.serving.refresh = lambda: None  # type: ignore[method-assign]  # no Ray here
    runner.serving.sync = lambda: None  # type: ignore[method-assign]
    runner.registry = lambda uri: _Registry()  # type: ignore[method-assign,assignment,return-value]
    runner.pass_once(NOW)
    record = runner.serving.get("team", "churn")
    assert record is not None, store.get("ModelDeployment", "team", "churn").get("status")
    app = runner.serving.app_config(record)["applications"][0]
    router = app["deployments"][0]["user_config"]
    assert [(v["name"], v["version"], v["weight"]) for v in router["variants"]] == [
        ("control", 1, 50),
        ("candidate", 2, 50),
    ]
    assert (router["abtest"], router["objective"], router["outcome_range"]) == (
        "ab",
        "Mean",
        [0.0, 100.0],
    )


def test_a_feedback_token_secret_is_a_file_under_the_state_dir(serving: LocalServing) -> None:
    """On this machine the Secret named by spec.feedback.tokenSecret is the file
    secrets/<namespace>/<secret>/token; without the field the app gets no token."""
    body = md_body()
    body["spec"]["feedback"] = {"tokenSecret": "churn-feedback"}
    record = build_rayservice(parse(body), 1, CONFIG, owner_uid=UID)
    args = serving.app_config(record)["applications"][0]["args"]
    expected = serving.platform.state_dir / "secrets" / "team" / "churn-feedback" / "token"
    assert args["feedback_token_file"] == str(expected)
    plain = serving.app_config(desired(1))["applications"][0]["args"]
    assert "feedback_token_file" not in plain


def test_local_prometheus_scrapes_the_admin_path_with_the_token_the_apps_accept(
    serving: LocalServing,
) -> None:
    """The apps' metrics are an admin endpoint: this machine's Prometheus scrapes
    ``<prefix>/admin/metrics`` with its scrape token (a 0600 file made once), every app gets
    the token's hash, and an app built from that config lets that token read only /metrics.
    The operator's own token (stats, drift) is derived from the deployment's key folder."""
    import hashlib
    import stat

    from mlplane.operator.builders.signing import SigningKeys
    from mlplane.serving.admin import admin_auth, admin_token
    from mlplane.serving.config import AppSettings
    from mlplane.serving.request_id import KeyFiles, RequestIdSigner

    platform = serving.platform
    platform._prometheus_command("prometheus")
    token = platform.scrape_token()
    assert token and len(token) >= 32
    assert stat.S_IMODE(platform.scrape_token_file.stat().st_mode) == 0o600
    platform._prometheus_command("prometheus")
    assert platform.scrape_token() == token  # made once, kept
    config = yaml.safe_load((platform.prometheus_dir / "prometheus.yml").read_text())
    (job,) = [j for j in config["scrape_configs"] if j["job_name"] == "mlplane-serving"]
    assert job["authorization"] == {
        "type": "Bearer",
        "credentials_file": str(platform.scrape_token_file),
    }
    platform.write_serving_targets({"team/churn": serving.endpoint("team", "churn")})
    targets = yaml.safe_load(platform.serving_targets_file.read_text())
    assert targets[0]["labels"]["__metrics_path__"] == "/team/churn/admin/metrics"

    serving.signing.write("team", "churn", UID, SigningKeys("k" * 64))
    args = serving.app_config(desired(1))["applications"][0]["args"]
    settings = AppSettings.parse(args)
    assert settings.scrape_token_sha256 == hashlib.sha256(token.encode()).hexdigest()
    signer = RequestIdSigner(KeyFiles(args["signing_keys"]), settings.deployment)
    auth = admin_auth(settings.deployment, signer, settings.scrape_token_sha256)
    assert auth.allows(token, metrics=True) and not auth.allows(token)
    operator_token = serving.admin_token("team", "churn")
    assert operator_token == admin_token(b"k" * 64, "team/churn")
    assert auth.allows(operator_token) and auth.allows(operator_token, metrics=True)
    assert serving.admin_token("team", "nobody") is None
