"""The chart lints, renders, and every rendered object is valid for the Kubernetes API.

Standard kinds are validated strictly (unknown fields rejected) with kubernetes-validate's JSON
schemas of the API, for the oldest Kubernetes the chart supports and the newest the validator
knows. The Prometheus Operator kinds are checked against closed schemas of the fields the chart
uses, plus the cross-object facts that make them work (selectors and port names that match).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from chart_support import (
    CHART,
    NAMESPACE,
    VALUES_ALL,
    HelmError,
    by_kind,
    one,
    run_helm,
    template,
)

#: Oldest supported (Chart.yaml kubeVersion) and newest known to kubernetes-validate.
KUBE_VERSIONS = ("1.30.0", kubernetes_validate.utils.latest_version())

STANDARD_KINDS = {
    "ConfigMap",
    "ClusterRole",
    "ClusterRoleBinding",
    "Deployment",
    "Secret",
    "NetworkPolicy",
    "PodDisruptionBudget",
    "Role",
    "RoleBinding",
    "Service",
    "ServiceAccount",
}
CLUSTER_SCOPED = {"ClusterRole", "ClusterRoleBinding"}

# --- closed schemas of the Prometheus Operator objects the chart renders ---------------------

_LABELS = {"type": "object", "additionalProperties": {"type": "string"}}
_DURATION = {"type": "string", "pattern": r"^([0-9]+(ms|s|m|h|d|w|y))+$"}
_METADATA = {
    "type": "object",
    "additionalProperties": False,
    "required": ["name", "namespace", "labels"],
    "properties": {
        "name": {"type": "string", "pattern": r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", "maxLength": 63},
        "namespace": {"type": "string"},
        "labels": _LABELS,
        "annotations": _LABELS,
    },
}
_SELECTOR = {
    "type": "object",
    "additionalProperties": False,
    "required": ["matchLabels"],
    "properties": {
        "matchLabels": _LABELS,
        "matchExpressions": {
            "type": "array",
            "items": {
                "type": "object",
                "additionalProperties": False,
                "required": ["key", "operator"],
                "properties": {
                    "key": {"type": "string"},
                    "operator": {"enum": ["In", "NotIn", "Exists", "DoesNotExist"]},
                    "values": {"type": "array", "items": {"type": "string"}},
                },
            },
        },
    },
}
_NS_SELECTOR = {
    "type": "object",
    "additionalProperties": False,
    "maxProperties": 1,
    "properties": {
        "any": {"type": "boolean"},
        "matchNames": {"type": "array", "items": {"type": "string"}, "minItems": 1},
    },
}
_RELABELING = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "sourceLabels": {"type": "array", "items": {"type": "string"}},
        "targetLabel": {"type": "string"},
        "replacement": {"type": "string"},
        "regex": {"type": "string"},
        "action": {"enum": ["replace", "keep", "drop", "labelmap", "labeldrop", "labelkeep"]},
    },
}
_ENDPOINT = {
    "type": "object",
    "additionalProperties": False,
    "required": ["port", "path"],
    "properties": {
        "port": {"type": "string"},
        "path": {"type": "string", "pattern": "^/"},
        "interval": _DURATION,
        "scrapeTimeout": _DURATION,
        "honorLabels": {"type": "boolean"},
        "relabelings": {"type": "array", "items": _RELABELING},
        # monitoring.coreos.com/v1 SafeAuthorization: a bearer token from a Secret key.
        "authorization": {
            "type": "object",
            "additionalProperties": False,
            "required": ["credentials"],
            "properties": {
                "type": {"type": "string"},
                "credentials": {
                    "type": "object",
                    "additionalProperties": False,
                    "required": ["name", "key"],
                    "properties": {
                        "name": {"type": "string", "minLength": 1},
                        "key": {"type": "string", "minLength": 1},
                        "optional": {"type": "boolean"},
                    },
                },
            },
        },
    },
}


def _monitor(kind: str, endpoints_key: str) -> dict[str, Any]:
    return {
        "type": "object",
        "additionalProperties": False,
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "properties": {
            "apiVersion": {"const": "monitoring.coreos.com/v1"},
            "kind": {"const": kind},
            "metadata": _METADATA,
            "spec": {
                "type": "object",
                "additionalProperties": False,
                "required": ["selector", endpoints_key],
                "properties": {
                    "jobLabel": {"type": "string"},
                    "namespaceSelector": _NS_SELECTOR,
                    "selector": _SELECTOR,
                    endpoints_key: {"type": "array", "items": _ENDPOINT, "minItems": 1},
                },
            },
        },
    }


_RULE = {
    "type": "object",
    "additionalProperties": False,
    "required": ["expr"],
    "oneOf": [{"required": ["alert"]}, {"required": ["record"]}],
    "properties": {
        "alert": {"type": "string", "minLength": 1},
        "record": {"type": "string", "pattern": r"^[a-zA-Z_:][a-zA-Z0-9_:]*$"},
        "expr": {"type": ["string", "integer"]},
        "for": _DURATION,
        "keep_firing_for": _DURATION,
        "labels": _LABELS,
        "annotations": _LABELS,
    },
}
CUSTOM_SCHEMAS: dict[str, dict[str, Any]] = {
    "ServiceMonitor": _monitor("ServiceMonitor", "endpoints"),
    "PodMonitor": _monitor("PodMonitor", "podMetricsEndpoints"),
    "PrometheusRule": {
        "type": "object",
        "additionalProperties": False,
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "properties": {
            "apiVersion": {"const": "monitoring.coreos.com/v1"},
            "kind": {"const": "PrometheusRule"},
            "metadata": _METADATA,
            "spec": {
                "type": "object",
                "additionalProperties": False,
                "required": ["groups"],
                "properties": {
                    "groups": {
                        "type": "array",
                        "minItems": 1,
                        "items": {
                            "type": "object",
                            "additionalProperties": False,
                            "required": ["name", "rules"],
                            "properties": {
                                "name": {"type": "string", "minLength": 1},
                                "interval": _DURATION,
                                "limit": {"type": "integer"},
                                "labels": _LABELS,
                                "partial_response_strategy": {"type": "string"},
                                "query_offset": _DURATION,
                                "rules": {"type": "array", "items": _RULE},
                            },
                        },
                    }
                },
            },
        },
    },
}


def validate_objects(objects: list[dict[str, Any]]) -> None:
    """Validate every object; every kind the chart renders must be known here."""
    assert objects, "nothing rendered"
    for obj in objects:
        kind = obj["kind"]
        name = f"{kind}/{obj['metadata']['name']}"
        if kind in CUSTOM_SCHEMAS:
            jsonschema.Draft202012Validator(CUSTOM_SCHEMAS[kind]).validate(obj)
            continue
        assert kind in STANDARD_KINDS, f"{name}: no validation for kind {kind}"
        for version in KUBE_VERSIONS:
            try:
                kubernetes_validate.validate(obj, version, strict=True)
            except kubernetes_validate.ValidationError as err:
                path = ".".join(str(p) for p in err.path)
                pytest.fail(f"{name} invalid for Kubernetes {version} at {path}: {err.message}")


# --- lint ------------------------------------------------------------------------------------


@pytest.mark.parametrize("values", [[], [VALUES_ALL]], ids=["default", "all-features"])
def test_helm_lint_strict(values: list[Path]) -> None:
    args = ["lint", "--strict", str(CHART)]
    for path in values:
        args += ["--values", str(path)]
    out = run_helm(*args)
    assert "0 chart(s) failed" in out
    assert "[WARNING]" not in out and "[ERROR]" not in out


def test_helm_lint_strict_with_monitoring_files(chart_with_monitoring: Path) -> None:
    out = run_helm("lint", "--strict", str(chart_with_monitoring), "--values", str(VALUES_ALL))
    assert "0 chart(s) failed" in out


# --- validity of what is rendered ------------------------------------------------------------


def test_default_render_is_valid(rendered_default: list[dict[str, Any]]) -> None:
    kinds = sorted(o["kind"] for o in rendered_default)
    assert kinds == sorted(
        [
            "ClusterRole",
            "ClusterRoleBinding",
            "ConfigMap",
            "Deployment",
            "NetworkPolicy",
            "PodDisruptionBudget",  # two replicas: a drain takes one at a time
            "Role",  # the operator's state (the reclaim history ConfigMap)
            "RoleBinding",
            "Role",  # leader election (its Lease)
            "RoleBinding",
            "Service",
            "ServiceAccount",
        ]
    )
    validate_objects(rendered_default)


def test_all_features_render_is_valid(rendered_all: list[dict[str, Any]]) -> None:
    kinds = {o["kind"] for o in rendered_all}
    assert {"ServiceMonitor", "PodMonitor", "Role", "RoleBinding"} <= kinds
    validate_objects(rendered_all)


def test_monitoring_render_is_valid(rendered_monitoring: list[dict[str, Any]]) -> None:
    validate_objects(rendered_monitoring)
    assert len(by_kind(rendered_monitoring, "PrometheusRule")) == 2


def test_every_namespaced_object_names_its_namespace(
    rendered_default: list[dict[str, Any]], rendered_all: list[dict[str, Any]]
) -> None:
    for obj in rendered_default + rendered_all:
        namespace = obj["metadata"].get("namespace")
        if obj["kind"] in CLUSTER_SCOPED:
            assert namespace is None, f"{obj['kind']} is cluster-scoped"
        else:
            assert namespace, f"{obj['kind']}/{obj['metadata']['name']} has no namespace"
    assert {o["metadata"].get("namespace") for o in rendered_default} <= {NAMESPACE, None}


def test_every_object_carries_the_standard_labels(rendered_all: list[dict[str, Any]]) -> None:
    for obj in rendered_all:
        labels = obj["metadata"]["labels"]
        for key in ("app.kubernetes.io/name", "app.kubernetes.io/instance", "helm.sh/chart"):
            assert key in labels, f"{obj['kind']}/{obj['metadata']['name']} lacks {key}"


def test_empty_monitoring_folders_render_nothing(tmp_path: Path) -> None:
    """A chart whose files/ are empty (a fork without the generated files) renders fine."""
    import shutil

    chart = tmp_path / "mlplane"
    shutil.copytree(CHART, chart)
    for folder in ("rules", "dashboards"):
        for item in (chart / "files" / folder).iterdir():
            item.unlink()
    rendered = template(chart=chart, values=[VALUES_ALL])
    assert not by_kind(rendered, "PrometheusRule")
    assert not [o for o in rendered if "grafana_dashboard" in o["metadata"]["labels"]]
    assert by_kind(rendered, "Deployment")


# --- the Prometheus Operator objects work together with the rest ------------------------------


def _pod_labels(objects: list[dict[str, Any]]) -> dict[str, str]:
    return one(objects, "Deployment")["spec"]["template"]["metadata"]["labels"]


def _container_ports(objects: list[dict[str, Any]]) -> dict[str, int]:
    pod = one(objects, "Deployment")["spec"]["template"]["spec"]
    return {p["name"]: p["containerPort"] for c in pod["containers"] for p in c.get("ports", [])}


def _selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def test_service_selects_the_operator_pod(rendered_all: list[dict[str, Any]]) -> None:
    service = one(rendered_all, "Service")
    assert _selects(service["spec"]["selector"], _pod_labels(rendered_all))
    for port in service["spec"]["ports"]:
        assert port["targetPort"] in _container_ports(rendered_all)
    assert service["spec"]["ports"][0]["port"] == 8443  # values-all's service.port


def test_servicemonitor_finds_the_service(rendered_all: list[dict[str, Any]]) -> None:
    monitor = one(rendered_all, "ServiceMonitor")
    service = one(rendered_all, "Service")
    assert _selects(monitor["spec"]["selector"]["matchLabels"], service["metadata"]["labels"])
    assert monitor["spec"]["namespaceSelector"]["matchNames"] == [NAMESPACE]
    port_names = {p["name"] for p in service["spec"]["ports"]}
    assert {e["port"] for e in monitor["spec"]["endpoints"]} <= port_names
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert monitor["metadata"]["namespace"] == "monitoring"


def test_podmonitor_finds_the_pod(rendered_all: list[dict[str, Any]]) -> None:
    (monitor,) = [
        m
        for m in by_kind(rendered_all, "PodMonitor")
        if m["metadata"]["name"] == "mlplane-operator"
    ]  # fmt: skip  (the others scrape Ray pods: test_chart_scrape)
    assert _selects(monitor["spec"]["selector"]["matchLabels"], _pod_labels(rendered_all))
    ports = _container_ports(rendered_all)
    assert {e["port"] for e in monitor["spec"]["podMetricsEndpoints"]} <= set(ports)
    assert ports["metrics"] == 9191  # values-all's operator.metricsPort
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"


def test_servicemonitor_needs_the_service() -> None:
    with pytest.raises(HelmError, match=r"serviceMonitor\.enabled needs service\.enabled"):
        template("--set", "serviceMonitor.enabled=true", "--set", "service.enabled=false")


# --- rules and dashboards from files/ ----------------------------------------------------------


def _fixture_groups(path: Path) -> list[dict[str, Any]]:
    doc = yaml.safe_load(path.read_text())
    return doc["groups"] if "groups" in doc else doc["spec"]["groups"]


def test_prometheusrules_carry_the_files_groups_verbatim(
    chart_with_monitoring: Path, rendered_monitoring: list[dict[str, Any]]
) -> None:
    rules = {r["metadata"]["name"]: r for r in by_kind(rendered_monitoring, "PrometheusRule")}
    for path in sorted((chart_with_monitoring / "files" / "rules").glob("*.yaml")):
        name = f"mlplane-operator-{path.stem}"
        assert name in rules, f"no PrometheusRule for {path.name}"
        rule = rules[name]
        assert rule["spec"]["groups"] == _fixture_groups(path)
        assert rule["metadata"]["labels"]["release"] == "kube-prometheus-stack"
        assert rule["metadata"]["namespace"] == "monitoring"
    # Alert templates are data, not Helm templates: they pass through untouched.
    annotations = [
        value
        for r in rules.values()
        for group in r["spec"]["groups"]
        for rule in group["rules"]
        for value in rule.get("annotations", {}).values()
    ]
    assert any("{{ $labels.namespace }}" in a for a in annotations)
    assert any("{{ $value }}" in a for a in annotations)


@pytest.mark.parametrize("render", ["rendered_all", "rendered_monitoring"])
def test_rule_groups_are_not_shipped_twice(render: str, request: pytest.FixtureRequest) -> None:
    """Prometheus rejects duplicate group names within a file and alerts twice across files."""
    names = [
        group["name"]
        for rule in by_kind(request.getfixturevalue(render), "PrometheusRule")
        for group in rule["spec"]["groups"]
    ]
    assert len(names) == len(set(names)), names


def test_dashboards_become_sidecar_configmaps(
    chart_with_monitoring: Path, rendered_monitoring: list[dict[str, Any]]
) -> None:
    import json

    maps = [
        o
        for o in rendered_monitoring
        if o["kind"] == "ConfigMap" and "-dashboard-" in o["metadata"]["name"]
    ]
    files = sorted((chart_with_monitoring / "files" / "dashboards").glob("*.json"))
    assert len(maps) == len(files) >= 1
    for cm, path in zip(sorted(maps, key=lambda m: m["metadata"]["name"]), files, strict=True):
        assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
        assert cm["metadata"]["annotations"] == {"grafana_folder": "MLOps"}
        assert cm["metadata"]["namespace"] == "monitoring"
        assert json.loads(cm["data"][path.name]) == json.loads(path.read_text())


def test_dashboard_label_is_configurable(chart_with_monitoring: Path) -> None:
    objects = template(
        "--set", "dashboards.enabled=true",
        "--set", "dashboards.label=grafana_dashboard_mlops",
        "--set-string", "dashboards.labelValue=yes",
        chart=chart_with_monitoring,
    )  # fmt: skip
    maps = [o for o in objects if "-dashboard-" in o["metadata"]["name"]]
    assert maps
    for cm in maps:
        assert cm["metadata"]["labels"]["grafana_dashboard_mlops"] == "yes"
        assert cm["metadata"]["namespace"] == NAMESPACE


def test_invalid_rule_file_fails_clearly(chart_with_monitoring: Path, tmp_path: Path) -> None:
    import shutil

    chart = tmp_path / "mlplane"
    shutil.copytree(chart_with_monitoring, chart)
    (chart / "files" / "rules" / "broken.yaml").write_text("metadata: {name: x}\n")
    with pytest.raises(HelmError, match="holds no rule groups"):
        template("--set", "prometheusRule.enabled=true", chart=chart)


# --- the KubeRay preflight --------------------------------------------------------------------


def test_kuberay_preflight_fails_without_rayjob_api() -> None:
    with pytest.raises(HelmError, match="KubeRay is not installed"):
        template("--set", "kuberay.failIfMissing=true")


def test_kuberay_preflight_passes_with_rayjob_api() -> None:
    objects = template("--set", "kuberay.failIfMissing=true", "--api-versions", "ray.io/v1/RayJob")
    assert one(objects, "Deployment")


def test_install_notes_warn_when_kuberay_is_missing() -> None:
    notes = run_helm("install", "mlplane", str(CHART), "--dry-run=client", "--namespace", NAMESPACE)
    assert "KubeRay is a prerequisite" in notes
    assert "lets the operator reach the API server ports anywhere" in notes


def test_validation_rejects_what_the_api_server_would(
    rendered_default: list[dict[str, Any]],
) -> None:
    """The checks above can fail: an unknown field and a wrong custom object are caught."""
    import copy

    deployment = copy.deepcopy(one(rendered_default, "Deployment"))
    deployment["spec"]["template"]["spec"]["containers"][0]["securityContxt"] = {}
    with pytest.raises(pytest.fail.Exception, match="securityContxt"):
        validate_objects([deployment])
    monitor = {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "ServiceMonitor",
        "metadata": {"name": "x", "namespace": "y", "labels": {}},
        "spec": {"selector": {"matchLabels": {}}, "endpoints": [{"port": "metrics"}]},
    }
    with pytest.raises(jsonschema.ValidationError, match="'path' is a required property"):
        validate_objects([monitor])
