"""Every Ray cluster mlplane builds is closed: token auth, hardened pods, its service account.

And the pure objects that go with each cluster: the token Secret and the NetworkPolicy.
"""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import pytest
import yaml
from builder_strategies import configs, modeldeployments, trainingjobs
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from kuberay_crds import assert_valid

from mlplane.crds import ModelDeployment, TrainingJob
from mlplane.crds.validate import parse
from mlplane.operator.builders import build_rayjob, build_rayservice
from mlplane.operator.builders.access import (
    AUTH_TOKEN_KEY,
    CLIENT_PORT,
    DASHBOARD_PORT,
    GCS_PORT,
    SERVE_PORT,
    auth_secret_name,
    build_auth_secret,
    build_network_policy,
    cluster_access,
    token_of,
)
from mlplane.operator.config import OperatorConfig

EXAMPLES = Path(__file__).resolve().parents[2] / "crds" / "examples"
SETTINGS = settings(
    max_examples=80,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
UID = "6a1f3c2e-0000-4000-8000-000000000009"


def _cluster(obj: dict[str, Any]) -> dict[str, Any]:
    spec = obj["spec"]
    return spec["rayClusterSpec"] if obj["kind"] == "RayJob" else spec["rayClusterConfig"]


def _pod_specs(obj: dict[str, Any]) -> list[dict[str, Any]]:
    cluster = _cluster(obj)
    groups = [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]
    return [g["template"]["spec"] for g in groups]


def assert_closed(obj: dict[str, Any], service_account: str | None) -> None:
    """Token auth with the owner's Secret; restricted contexts; the configured identity."""
    owner = obj["metadata"]["labels"].get("mlplane.dev/trainingjob") or obj["metadata"][
        "labels"
    ].get("mlplane.dev/modeldeployment")
    cluster = _cluster(obj)
    assert cluster["authOptions"] == {"mode": "token", "secretName": f"{owner}-ray-auth"}
    for pod in _pod_specs(obj):
        context = pod["securityContext"]
        assert context["runAsNonRoot"] is True
        assert context["runAsUser"] != 0
        assert context["seccompProfile"] == {"type": "RuntimeDefault"}
        assert pod.get("serviceAccountName") == service_account
        for container in pod["containers"]:
            c = container["securityContext"]
            assert c["allowPrivilegeEscalation"] is False
            assert c["capabilities"] == {"drop": ["ALL"]}
            assert c["runAsNonRoot"] is True
            assert c["seccompProfile"] == {"type": "RuntimeDefault"}
            assert c.get("privileged") is False
            limits = container["resources"]["limits"]
            assert limits["cpu"] and limits["memory"]
    if cluster.get("enableInTreeAutoscaling"):
        autoscaler = cluster["autoscalerOptions"]
        assert autoscaler["securityContext"]["allowPrivilegeEscalation"] is False
        assert autoscaler["securityContext"]["capabilities"] == {"drop": ["ALL"]}
        assert autoscaler["resources"]["limits"]["memory"]


@SETTINGS
@given(
    body=trainingjobs(),
    config=configs(),
    attempt=st.integers(1, 50),
    capacity=st.sampled_from(["OnDemand", "Spot"]),
)
def test_every_rayjob_is_closed(body, config, attempt, capacity):
    tj = parse(body)
    assert isinstance(tj, TrainingJob)
    rayjob = build_rayjob(tj, attempt, capacity, config, run_id=None, owner_uid=UID)
    assert_closed(rayjob, config.training_service_account)
    assert_valid(rayjob)


@SETTINGS
@given(body=modeldeployments(), config=configs(), version=st.integers(1, 500))
def test_every_rayservice_is_closed(body, config, version):
    md = parse(body)
    assert isinstance(md, ModelDeployment)
    rayservice = build_rayservice(md, version, config, owner_uid=UID)
    # The serving service account on head and workers: before, serving pods ignored it.
    assert_closed(rayservice, config.serving_service_account)
    assert_valid(rayservice)


def test_serving_pods_use_the_serving_service_account():
    md = parse(yaml.safe_load((EXAMPLES / "modeldeployment-autoscaled-drift.yaml").read_text()))
    config = OperatorConfig(serving_service_account="serving-irsa")
    rayservice = build_rayservice(md, 3, config, owner_uid=UID)
    assert [p["serviceAccountName"] for p in _pod_specs(rayservice)] == ["serving-irsa"] * 2


def test_auth_secret_holds_the_token_under_kuberays_key_and_is_owned():
    secret = build_auth_secret("TrainingJob", "fraud", "team-a", UID, "s3cr3t")
    assert secret["metadata"]["name"] == auth_secret_name("fraud") == "fraud-ray-auth"
    assert secret["metadata"]["namespace"] == "team-a"
    assert base64.b64decode(secret["data"][AUTH_TOKEN_KEY]) == b"s3cr3t"
    assert AUTH_TOKEN_KEY == "auth_token"
    (owner,) = secret["metadata"]["ownerReferences"]
    assert (owner["kind"], owner["name"], owner["uid"], owner["controller"]) == (
        "TrainingJob", "fraud", UID, True)  # fmt: skip
    assert token_of(secret) == "s3cr3t"
    assert token_of({"stringData": {AUTH_TOKEN_KEY: "x"}}) == "x"
    assert token_of(None) is None
    with pytest.raises(ValueError, match="must not be empty"):
        build_auth_secret("TrainingJob", "fraud", "team-a", UID, "")


def _ports(rule: dict[str, Any]) -> set[int] | None:
    return None if "ports" not in rule else {p["port"] for p in rule["ports"]}


def test_training_policy_lets_in_only_its_own_pods_and_kuberay_to_the_dashboard():
    policy = build_network_policy("TrainingJob", "fraud", "team-a", UID, OperatorConfig())
    spec = policy["spec"]
    own = {"app.kubernetes.io/managed-by": "mlplane", "mlplane.dev/trainingjob": "fraud"}
    assert spec["podSelector"] == {"matchLabels": own}
    assert spec["policyTypes"] == ["Ingress"]
    own_rule, kuberay = spec["ingress"]
    assert own_rule == {"from": [{"podSelector": {"matchLabels": own}}]}  # every port
    assert _ports(kuberay) == {DASHBOARD_PORT}
    assert kuberay["from"] == [
        {
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kuberay-system"}},
            "podSelector": {"matchLabels": {"app.kubernetes.io/name": "kuberay-operator"}},
        }
    ]
    assert policy["metadata"]["ownerReferences"][0]["uid"] == UID


def test_serving_policy_opens_serve_to_the_operator_and_the_configured_clients():
    config = OperatorConfig(
        operator_namespace="ops",
        operator_pod_labels=(("app", "mlplane"),),
        serving_client_namespaces=("web", "gateway"),
    )
    spec = build_network_policy("ModelDeployment", "churn", "team-b", UID, config)["spec"]
    own = {"app.kubernetes.io/managed-by": "mlplane", "mlplane.dev/modeldeployment": "churn"}
    assert spec["podSelector"] == {"matchLabels": own}
    own_rule, kuberay, operator, clients = spec["ingress"]
    assert own_rule == {"from": [{"podSelector": {"matchLabels": own}}]}
    assert _ports(kuberay) == {DASHBOARD_PORT, SERVE_PORT}
    assert _ports(operator) == {SERVE_PORT}
    assert operator["from"] == [
        {
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "ops"}},
            "podSelector": {"matchLabels": {"app": "mlplane"}},
        }
    ]
    assert _ports(clients) == {SERVE_PORT}
    assert [p["namespaceSelector"]["matchLabels"] for p in clients["from"]] == [
        {"kubernetes.io/metadata.name": "web"},
        {"kubernetes.io/metadata.name": "gateway"},
    ]
    # GCS, dashboard and client ports: only the cluster's own pods (and KubeRay's dashboard).
    for rule in spec["ingress"][2:]:
        assert not {GCS_PORT, DASHBOARD_PORT, CLIENT_PORT} & (_ports(rule) or set())


def test_serving_clients_default_to_the_deployments_own_namespace():
    spec = build_network_policy("ModelDeployment", "churn", "team-b", UID, OperatorConfig())["spec"]
    assert spec["ingress"][-1] == {
        "from": [{"podSelector": {}}],
        "ports": [{"protocol": "TCP", "port": SERVE_PORT}],
    }
    everyone = OperatorConfig(serving_client_namespaces=("*",))
    spec = build_network_policy("ModelDeployment", "churn", "team-b", UID, everyone)["spec"]
    assert spec["ingress"][-1]["from"] == [{"namespaceSelector": {}}]


def test_policy_selects_the_pods_the_builders_make():
    """The policy's selector matches the labels of every pod template of the owner's cluster."""
    md = parse(yaml.safe_load((EXAMPLES / "modeldeployment-autoscaled-drift.yaml").read_text()))
    rayservice = build_rayservice(md, 3, OperatorConfig(), owner_uid=UID)
    name = md.metadata.name or ""
    selector = build_network_policy("ModelDeployment", name, "default", UID, OperatorConfig())[
        "spec"
    ]["podSelector"]["matchLabels"]
    cluster = _cluster(rayservice)
    for group in [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]:
        labels = group["template"]["metadata"]["labels"]
        assert selector.items() <= labels.items()


def test_cluster_access_is_secret_then_policy_and_deterministic():
    first = cluster_access("ModelDeployment", "m", "ns", UID, OperatorConfig(), "t")
    assert [o["kind"] for o in first] == ["Secret", "NetworkPolicy"]
    assert first == cluster_access("ModelDeployment", "m", "ns", UID, OperatorConfig(), "t")


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("", (("app.kubernetes.io/name", "mlplane"), ("app.kubernetes.io/component", "operator"))),
        ("a=b, c=d", (("a", "b"), ("c", "d"))),
    ],
)
def test_operator_pod_labels_from_the_environment(raw, expected):
    config = OperatorConfig.from_env({"MLPLANE_OPERATOR_POD_LABELS": raw})
    assert config.operator_pod_labels == expected


def test_bad_pod_labels_and_client_namespaces_are_read_or_refused():
    with pytest.raises(ValueError, match="MLPLANE_KUBERAY_POD_LABELS"):
        OperatorConfig.from_env({"MLPLANE_KUBERAY_POD_LABELS": "novalue"})
    config = OperatorConfig.from_env({"MLPLANE_SERVING_CLIENT_NAMESPACES": " web ,, gw "})
    assert config.serving_client_namespaces == ("web", "gw")
