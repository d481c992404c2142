"""The operator Deployment: Pod Security "restricted", how it runs, its config, its network.

The restricted profile is checked field by field as the Pod Security Standards define it
(``pod_security.py``, after https://kubernetes.io/docs/concepts/security/pod-security-standards/),
on every pod spec the chart renders, plus what the chart promises on top (read-only root,
requests and limits, pod-level RuntimeDefault seccomp).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pod_security
import pytest
from chart_support import NAMESPACE, HelmError, by_kind, one, pod_specs, template

from mlplane.operator.config import OperatorConfig, Settings


def restricted_violations(pod: dict[str, Any]) -> list[str]:
    """What in a pod spec breaks the restricted profile (or the chart's extra promises)."""
    problems = [str(v) for v in pod_security.violations(pod, "restricted")]
    if (pod.get("securityContext") or {}).get("seccompProfile", {}).get("type") != "RuntimeDefault":
        problems.append("pod seccompProfile is not RuntimeDefault")
    for c in pod.get("initContainers", []) + pod["containers"]:
        name = c["name"]
        if (c.get("securityContext") or {}).get("readOnlyRootFilesystem") is not True:
            problems.append(f"{name}: root filesystem is writable")
        resources = c.get("resources", {})
        for kind in ("requests", "limits"):
            for resource in ("cpu", "memory"):
                if resource not in resources.get(kind, {}):
                    problems.append(f"{name}: no {resource} {kind[:-1]}")
    return problems


@pytest.mark.parametrize("render", ["rendered_default", "rendered_all"])
def test_every_pod_meets_pss_restricted(render: str, request: pytest.FixtureRequest) -> None:
    pods = pod_specs(request.getfixturevalue(render))
    assert pods
    for name, pod in pods:
        assert restricted_violations(pod) == [], name


def test_the_restricted_check_can_fail(rendered_default: list[dict[str, Any]]) -> None:
    import copy

    pod = copy.deepcopy(pod_specs(rendered_default)[0][1])
    container = pod["containers"][0]
    container["securityContext"]["allowPrivilegeEscalation"] = True
    container["securityContext"]["capabilities"] = {"add": ["SYS_ADMIN"]}
    del container["resources"]["limits"]
    pod["volumes"].append({"name": "host", "hostPath": {"path": "/"}})
    found = restricted_violations(pod)
    # Escalation; SYS_ADMIN (baseline and restricted), no drop of ALL (the capabilities were
    # replaced); hostPath (HostPath Volumes and Volume Types); the two limits.
    assert len(found) == 8, found


def test_tmp_is_a_writable_empty_dir(rendered_default: list[dict[str, Any]]) -> None:
    pod = one(rendered_default, "Deployment")["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: m for m in pod["containers"][0]["volumeMounts"]}
    assert "emptyDir" in volumes[mounts["/tmp"]["name"]]
    assert pod["securityContext"]["runAsUser"] == 10001


# --- how the operator runs ------------------------------------------------------------------


def _container(objects: list[dict[str, Any]]) -> dict[str, Any]:
    return one(objects, "Deployment")["spec"]["template"]["spec"]["containers"][0]


def test_two_replicas_one_leader_rolling_update(rendered_default: list[dict[str, Any]]) -> None:
    """Two pods, one writer (the Lease holder); a rollout starts the new standby before it
    stops an old pod, and a drain takes one pod at a time."""
    deployment = one(rendered_default, "Deployment")
    assert deployment["spec"]["replicas"] == 2
    assert deployment["spec"]["strategy"] == {
        "type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}}  # fmt: skip
    container = _container(rendered_default)
    assert container["command"] == ["mlplane"]
    assert container["args"] == [
        "operator",
        "--leader-elect",
        "--all-namespaces",
        "--liveness",
        "http://0.0.0.0:8080/healthz",
        "--metrics-port",
        "9090",
    ]
    assert container["env"][0] == {
        "name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}  # fmt: skip
    budget = one(rendered_default, "PodDisruptionBudget")
    assert budget["spec"]["maxUnavailable"] == 1
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert budget["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    leader = OperatorConfig.from_env(_config(rendered_default)).leader
    assert (leader.lease_name, leader.lease_namespace) == ("mlplane-leader", NAMESPACE)
    assert (leader.lease_duration, leader.renew_deadline, leader.retry_period) == (10, 7, 2)


def test_without_leader_election_one_replica_replaced_by_recreate() -> None:
    objects = template("--set", "operator.replicas=1",
                       "--set", "operator.leaderElection.enabled=false")  # fmt: skip
    deployment = one(objects, "Deployment")
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}
    assert _container(objects)["args"][:2] == ["operator", "--no-leader-elect"]
    assert not by_kind(objects, "PodDisruptionBudget")
    assert not any(k.startswith("MLPLANE_LEADER_") for k in _config(objects))


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (["operator.leaderElection.enabled=false"], "replicas above 1 needs"),
        (["operator.leaderElection.renewDeadlineSeconds=10"], "must be below leaseDuration"),
        (["operator.leaderElection.retryPeriodSeconds=6"], r"at most renewDeadlineSeconds / 1\.2"),
    ],
)
def test_unsafe_leader_election_settings_fail_clearly(values: list[str], message: str) -> None:
    args = [a for v in values for a in ("--set", v)]
    with pytest.raises(HelmError, match=message):
        template(*args)


def test_watch_namespaces_become_namespace_flags(rendered_all: list[dict[str, Any]]) -> None:
    args = _container(rendered_all)["args"]
    assert "--all-namespaces" not in args
    assert args == [
        "operator",
        "--leader-elect",
        "--namespace",
        "ml-team",
        "--namespace",
        "ml-research",
        "--liveness",
        "http://0.0.0.0:8081/healthz",
        "--metrics-port",
        "9191",
    ]


@pytest.mark.parametrize("render", ["rendered_default", "rendered_all"])
def test_the_cli_accepts_the_chart_arguments(render: str, request: pytest.FixtureRequest) -> None:
    """Parse the rendered command line with mlplane's own CLI (without running it)."""
    import typer

    from mlplane.operator.cli import app

    container = _container(request.getfixturevalue(render))
    assert container["command"] == ["mlplane"]
    group = typer.main.get_command(app)
    subcommand, *rest = container["args"]
    with group.make_context("mlplane", [subcommand, *rest], resilient_parsing=True) as ctx:
        command = group.get_command(ctx, subcommand)
        assert command is not None, f"mlplane has no {subcommand!r} command"
        parsed = command.make_context(subcommand, list(rest), parent=ctx).params
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert parsed["metrics_port"] == ports["metrics"]
    assert parsed["liveness"] == f"http://0.0.0.0:{ports['health']}/healthz"
    assert parsed["all_namespaces"] or parsed["namespace"]


def test_health_and_metrics_ports_must_differ() -> None:
    with pytest.raises(HelmError, match="must differ"):
        template("--set", "operator.healthPort=9090")


@pytest.mark.parametrize("render", ["rendered_default", "rendered_all"])
def test_probes_hit_the_liveness_port(render: str, request: pytest.FixtureRequest) -> None:
    container = _container(request.getfixturevalue(render))
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    liveness_url = container["args"][container["args"].index("--liveness") + 1]
    assert liveness_url.endswith(f":{ports['health']}/healthz")
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"] == {"path": "/healthz", "port": "health"}


DIGEST = "sha256:" + "0123456789abcdef" * 4


def test_image_tag_defaults_to_app_version_and_digest_pins_it(
    rendered_default: list[dict[str, Any]], rendered_all: list[dict[str, Any]]
) -> None:
    assert _container(rendered_default)["image"] == "ghcr.io/mlplane/mlplane-operator:0.1.0"
    # By tag as well as by digest: the runtime pulls the digest, humans read the tag.
    assert _container(rendered_all)["image"] == (
        f"registry.example.com/ml/mlplane-operator:0.1.0@{DIGEST}"
    )


def test_digest_without_tag_keeps_the_app_version_tag() -> None:
    objects = template("--set", f"image.digest={DIGEST}")
    assert _container(objects)["image"] == f"ghcr.io/mlplane/mlplane-operator:0.1.0@{DIGEST}"


def test_ray_image_is_pinned_by_digest_when_given() -> None:
    objects = template("--set", f"rayImage.digest={DIGEST}", "--set", "rayImage.tag=2.1.0")
    pinned = f"ghcr.io/mlplane/mlplane-ray:2.1.0@{DIGEST}"
    config = _config(objects)
    assert config["MLPLANE_DEFAULT_TRAINING_IMAGE"] == pinned
    assert config["MLPLANE_DEFAULT_SERVING_IMAGE"] == pinned


# --- configuration ---------------------------------------------------------------------------


def _config(objects: list[dict[str, Any]]) -> dict[str, str]:
    container = _container(objects)
    name = container["envFrom"][0]["configMapRef"]["name"]
    [config] = [o for o in by_kind(objects, "ConfigMap") if o["metadata"]["name"] == name]
    return config["data"]


OPERATOR_LABELS = ",".join(
    [
        "app.kubernetes.io/name=mlplane",
        "app.kubernetes.io/instance=mlplane",
        "app.kubernetes.io/component=operator",
    ]
)


def test_default_config(rendered_default: list[dict[str, Any]]) -> None:
    assert _config(rendered_default) == {
        "MLPLANE_MLFLOW_TRACKING_URI": "http://mlflow.mlflow.svc.cluster.local:5000",
        "MLPLANE_CAPACITY_LABELS": "eks",
        "MLPLANE_DEFAULT_TRAINING_IMAGE": "ghcr.io/mlplane/mlplane-ray:0.1.0",
        "MLPLANE_DEFAULT_SERVING_IMAGE": "ghcr.io/mlplane/mlplane-ray:0.1.0",
        "MLPLANE_MLFLOW_TIMEOUT": "10",
        "MLPLANE_RECONCILE_INTERVAL": "5",
        "MLPLANE_RESYNC_INTERVAL": "300",
        "MLPLANE_API_TIMEOUT": "30",
        "MLPLANE_RESOLVE_INTERVAL": "30",
        "MLPLANE_RETRY_DELAY": "15",
        "MLPLANE_PREEMPTION_EVIDENCE_GRACE": "15",
        "MLPLANE_SIGNING_KEY_SETTLE": "150",
        "MLPLANE_ALLOWED_MODEL_FLAVORS": "sklearn:skops,onnx",
        "MLPLANE_CHECKPOINT_INTERVAL_MIN": "1m",
        "MLPLANE_CHECKPOINT_INTERVAL_MAX": "4h",
        "MLPLANE_PRICE_CURRENCY": "USD",
        "MLPLANE_LOG_FORMAT": "json",
        "MLPLANE_OPERATOR_NAMESPACE": NAMESPACE,
        "MLPLANE_OPERATOR_POD_LABELS": OPERATOR_LABELS,
        "MLPLANE_LEADER_LEASE_NAME": "mlplane-leader",
        "MLPLANE_LEADER_LEASE_NAMESPACE": NAMESPACE,
        "MLPLANE_LEADER_LEASE_DURATION": "10",
        "MLPLANE_LEADER_RENEW_DEADLINE": "7",
        "MLPLANE_LEADER_RETRY_PERIOD": "2",
    }


def test_ray_cluster_policies_select_the_operators_pods(
    rendered_default: list[dict[str, Any]],
) -> None:
    """The labels the operator puts in each Ray cluster's NetworkPolicy are its pods' own."""
    config = _config(rendered_default)
    wanted = dict(item.split("=", 1) for item in config["MLPLANE_OPERATOR_POD_LABELS"].split(","))
    pod_labels = one(rendered_default, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert wanted.items() <= pod_labels.items()


def test_all_config(rendered_all: list[dict[str, Any]]) -> None:
    assert _config(rendered_all) == {
        "MLPLANE_MLFLOW_TRACKING_URI": "https://mlflow.example.com",
        "MLPLANE_CAPACITY_LABELS": "karpenter",
        "MLPLANE_DEFAULT_TRAINING_IMAGE": "registry.example.com/ml/train:2.0.0",
        "MLPLANE_DEFAULT_SERVING_IMAGE": "registry.example.com/ml/serve:2.0.0",
        "MLPLANE_ARTIFACTS_URI": "s3://ml-artifacts/mlplane",
        "MLPLANE_CHECKPOINT_BASE_URI": "s3://ml-checkpoints/mlplane",
        "MLPLANE_MLFLOW_TIMEOUT": "30",
        "MLPLANE_RECONCILE_INTERVAL": "10",
        "MLPLANE_RESYNC_INTERVAL": "600",
        "MLPLANE_API_TIMEOUT": "20",
        "MLPLANE_RESOLVE_INTERVAL": "60",
        "MLPLANE_RETRY_DELAY": "20",
        "MLPLANE_PREEMPTION_EVIDENCE_GRACE": "30",
        "MLPLANE_SIGNING_KEY_SETTLE": "300",
        "MLPLANE_ALLOWED_MODEL_FLAVORS": "sklearn:skops,onnx,sklearn:cloudpickle",
        "MLPLANE_MODEL_NAME_POLICY": '{"*":[],"ml-team":["churn-*","fraud"]}',
        "MLPLANE_ALLOWED_TRACKING_URIS": "https://mlflow-research.example.com",
        "MLPLANE_SERVING_CLIENT_NAMESPACES": "web,batch",
        "MLPLANE_PROMETHEUS_NAMESPACE": "monitoring",
        "MLPLANE_PROMETHEUS_POD_LABELS": (
            "app.kubernetes.io/name=prometheus,prometheus=kube-prometheus-stack"
        ),
        "MLPLANE_SERVING_SCRAPE_TOKEN_FILE": "/etc/mlplane/serving-scrape/token",
        "MLPLANE_CHECKPOINT_INTERVAL_MIN": "2m",
        "MLPLANE_CHECKPOINT_INTERVAL_MAX": "2h",
        "MLPLANE_GPU_PRICES": '{"*":{"OnDemand":3},"nvidia-l4":{"OnDemand":0.98,"Spot":0.35}}',
        "MLPLANE_PRICE_CURRENCY": "EUR",
        "MLPLANE_LOG_FORMAT": "text",
        "MLPLANE_OPERATOR_NAMESPACE": NAMESPACE,
        "MLPLANE_OPERATOR_POD_LABELS": OPERATOR_LABELS,
        "MLPLANE_LEADER_LEASE_NAME": "mlplane-operator-leader",
        "MLPLANE_LEADER_LEASE_NAMESPACE": NAMESPACE,
        "MLPLANE_LEADER_LEASE_DURATION": "15",
        "MLPLANE_LEADER_RENEW_DEADLINE": "10",
        "MLPLANE_LEADER_RETRY_PERIOD": "2.5",
    }
    env = {e["name"] for e in _container(rendered_all)["env"]}
    assert env == {"AWS_REGION", "POD_NAME"}


def test_the_operator_reads_the_rendered_config(
    rendered_default: list[dict[str, Any]], rendered_all: list[dict[str, Any]], tmp_path: Path
) -> None:
    """What the chart writes is what the operator's parser accepts, with the same meaning."""
    default = OperatorConfig.from_env(_config(rendered_default))
    assert default.allowed_model_flavors == ("sklearn:skops", "onnx")
    assert default.model_name_policy is None
    assert default.allowed_tracking_uris == ()
    assert default.serving_client_namespaces == ()
    assert (default.checkpoint_interval_min, default.checkpoint_interval_max) == (60.0, 14400.0)
    assert default.gpu_prices is None
    assert default.serving_scrape_token_sha256 is None
    # The scrape token's file is its Secret mounted in the operator's pod: a stand-in here.
    (tmp_path / "token").write_text("scrape-token\n")
    full_env = _config(rendered_all)
    assert full_env["MLPLANE_SERVING_SCRAPE_TOKEN_FILE"] == "/etc/mlplane/serving-scrape/token"
    full_env["MLPLANE_SERVING_SCRAPE_TOKEN_FILE"] = str(tmp_path / "token")
    full = OperatorConfig.from_env(full_env)
    assert full.serving_scrape_token_sha256 == hashlib.sha256(b"scrape-token").hexdigest()
    assert (full.checkpoint_interval_min, full.checkpoint_interval_max) == (120.0, 7200.0)
    assert full.gpu_price("nvidia-l4", "Spot") == 0.35
    assert full.gpu_price("nvidia-a100", "OnDemand") == 3.0
    assert full.gpu_price("nvidia-a100", "Spot") is None
    assert full.price_currency == "EUR"
    assert full.allowed_model_flavors == ("sklearn:skops", "onnx", "sklearn:cloudpickle")
    assert full.model_name_allowed("ml-team", "churn-v2")
    assert not full.model_name_allowed("ml-team", "other")
    assert not full.model_name_allowed("elsewhere", "churn-v2")
    assert full.tracking_uri_allowed("https://mlflow-research.example.com")
    assert not full.tracking_uri_allowed("https://evil.example.com")
    assert full.serving_client_namespaces == ("web", "batch")
    # The loop's settings too (the whole Settings the operator reads at start).
    assert Settings.from_env(_config(rendered_default)) == Settings(config=default)
    loop = Settings.from_env(_config(rendered_all))
    assert (loop.reconcile_interval, loop.resolve_interval, loop.retry_delay) == (10, 60, 20)
    assert (loop.resync_interval, loop.api_timeout) == (600, 20)
    assert (loop.signing_key_settle, loop.config.preemption_evidence_grace) == (300, 30)


def test_config_change_rolls_the_pod(rendered_default: list[dict[str, Any]]) -> None:
    def checksum(objects: list[dict[str, Any]]) -> str:
        meta = one(objects, "Deployment")["spec"]["template"]["metadata"]
        return meta["annotations"]["checksum/config"]

    changed = template("--set", "operator.logFormat=text")
    assert checksum(changed) != checksum(rendered_default)
    assert checksum(template()) == checksum(rendered_default)


def test_pod_metadata_and_scheduling(rendered_all: list[dict[str, Any]]) -> None:
    pod_template = one(rendered_all, "Deployment")["spec"]["template"]
    assert pod_template["metadata"]["labels"]["team"] == "ml-platform"
    assert pod_template["metadata"]["annotations"]["example.com/owner"] == "ml-platform"
    spec = pod_template["spec"]
    assert spec["nodeSelector"] == {"kubernetes.io/os": "linux"}
    assert spec["tolerations"][0]["key"] == "dedicated"
    assert "nodeAffinity" in spec["affinity"]
    assert spec["priorityClassName"] == "system-cluster-critical"
    assert spec["imagePullSecrets"] == [{"name": "regcred"}]
    assert spec["terminationGracePeriodSeconds"] == 60


# --- network policy ----------------------------------------------------------------------------


def _policy(objects: list[dict[str, Any]]) -> dict[str, Any]:
    return one(objects, "NetworkPolicy")["spec"]


def _ports(rule: dict[str, Any]) -> set[tuple[Any, str]]:
    return {(p["port"], p.get("protocol", "TCP")) for p in rule["ports"]}


def test_network_policy_selects_the_operator(rendered_default: list[dict[str, Any]]) -> None:
    policy = _policy(rendered_default)
    labels = one(rendered_default, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert all(labels[k] == v for k, v in policy["podSelector"]["matchLabels"].items())
    assert policy["policyTypes"] == ["Ingress", "Egress"]


@pytest.mark.parametrize("render", ["rendered_default", "rendered_all"])
def test_ingress_only_to_metrics_and_health(render: str, request: pytest.FixtureRequest) -> None:
    objects = request.getfixturevalue(render)
    policy = _policy(objects)
    container_ports = {p["name"] for p in _container(objects)["ports"]}
    opened = set().union(*(_ports(rule) for rule in policy["ingress"]))
    assert opened == {("metrics", "TCP"), ("health", "TCP")}
    assert {name for name, _ in opened} <= container_ports
    for rule in policy["ingress"]:
        assert rule["ports"], "an ingress rule without ports opens every port"


def test_default_egress_dns_api_server_mlflow(rendered_default: list[dict[str, Any]]) -> None:
    egress = _policy(rendered_default)["egress"]
    assert [_ports(rule) for rule in egress] == [
        {(53, "UDP"), (53, "TCP")},
        {(443, "TCP"), (6443, "TCP")},
        {(5000, "TCP")},
        {(8000, "TCP")},
    ]
    # The serving apps: only mlplane's pods, in any namespace.
    assert egress[3]["to"] == [{"namespaceSelector": {}, "podSelector": {
        "matchLabels": {"app.kubernetes.io/managed-by": "mlplane"}}}]  # fmt: skip
    dns = egress[0]["to"][0]
    assert dns["podSelector"]["matchLabels"] == {"k8s-app": "kube-dns"}
    for rule in egress:
        assert rule["ports"], "an egress rule without ports opens every port"


def test_all_egress_adds_artifacts_and_extra_rules(rendered_all: list[dict[str, Any]]) -> None:
    egress = _policy(rendered_all)["egress"]
    assert len(egress) == 6
    assert egress[1]["to"] == [{"ipBlock": {"cidr": "10.0.0.0/16"}}]
    assert _ports(egress[3]) == {(443, "TCP")} and "to" not in egress[3]
    assert _ports(egress[4]) == {(8000, "TCP")}
    assert _ports(egress[5]) == {(9090, "TCP")}
    ingress = _policy(rendered_all)["ingress"]
    assert ingress[0]["from"][0]["namespaceSelector"]["matchLabels"] == {
        "kubernetes.io/metadata.name": "monitoring"
    }


def test_network_policy_can_be_disabled() -> None:
    assert not by_kind(template("--set", "networkPolicy.enabled=false"), "NetworkPolicy")
