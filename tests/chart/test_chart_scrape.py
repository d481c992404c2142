"""On Kubernetes, every series a generated rule or dashboard panel reads is scraped, once, with
the labels the query reads it by.

The local platform's Prometheus is configured by the runner, so the e2e tests see data there; on
a cluster only the chart's monitors decide what Prometheus scrapes. This renders the chart with
its monitors on and plays the Prometheus Operator's part for the questions that matter:

- which monitor selects the pods that export each metric family (``monitoring/names.py`` names
  the exporter), in which namespaces, through which declared container port: exactly one, or
  the series are missing or counted twice;
- what the scraped series' labels are: ``job`` as the monitor's relabeling sets it (the rules
  watch ``up{job="mlplane-operator"}``), and ``namespace`` the series' own only with
  ``honorLabels`` (otherwise Prometheus renames it ``exported_namespace`` and sets the pod's);
- whether the Ray clusters' NetworkPolicies, built from the configuration the chart renders,
  let Prometheus reach the scraped ports.
"""

from __future__ import annotations

import base64
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from chart_support import NAMESPACE, template

from mlplane.crds.validate import parse
from mlplane.monitoring import dashboards as d
from mlplane.monitoring import names as n
from mlplane.operator.builders.access import build_network_policy
from mlplane.operator.builders.rayjob import build_rayjob
from mlplane.operator.builders.rayservice import build_rayservice
from mlplane.operator.config import OperatorConfig
from mlplane.serving.admin import admin_auth
from mlplane.serving.config import AppSettings
from mlplane.serving.deploy import serve_config_of
from mlplane.serving.request_id import RequestIdSigner

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "crds" / "examples"
RULES = REPO / "monitoring" / "generated" / "mlplane-rules.yaml"
TEAM = "team-a"
PROMETHEUS_NS = "observability"
PROMETHEUS_LABELS = {"app.kubernetes.io/name": "prometheus", "prometheus": "k8s"}
#: Labels the Prometheus Operator gives every target (besides job and, without
#: honorLabels, namespace).
TARGET_LABELS = {"instance", "pod", "container", "endpoint", "service"}
#: Exporters (``Metric.exporter``) and where they run on a cluster.
OPERATOR_EXPORTERS = {"operator", "operator/runner"}
SERVING_EXPORTERS = {"serving router", "drift tap"}
#: Where each exporter answers: the serving app's metrics are an admin endpoint (the public
#: /metrics is a 404; see test_the_serving_monitor_sends_the_token_the_apps_accept...).
METRICS_PATH = dict.fromkeys(SERVING_EXPORTERS, "/admin/metrics")
#: What KubeRay adds to the labels of the pods it makes from a head group's template.
KUBERAY_HEAD_LABELS = {"ray.io/node-type": "head", "ray.io/is-ray-node": "yes"}
#: A series selector: a contract or recorded series name (or ``up``), and its matchers if any.
SELECTOR = re.compile(
    r"(?<![\w:])(up|(?:[a-z_]+:)?mlplane_[a-z0-9_:]+)(?![\w:])\s*(?:\{([^}]*)\})?"
)
MATCHER = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)\s*(=~|!~|!=|=)\s*"([^"]*)"')
GROUPING = re.compile(r"\b(?:by|without)\s*\(([^)]*)\)")


@pytest.fixture(scope="module")
def rendered() -> list[dict[str, Any]]:
    return template(
        "--set", "podMonitor.enabled=true",
        "--set", "servingMonitor.enabled=true",
        "--set", "servingMonitor.rayMetrics=true",
        "--set", f"prometheus.namespace={PROMETHEUS_NS}",
        "--set", "prometheus.podLabels.prometheus=k8s",
    )  # fmt: skip


def _config(objects: list[dict[str, Any]]) -> OperatorConfig:
    (cm,) = [o for o in objects if o["kind"] == "ConfigMap" and "config" in o["metadata"]["name"]]
    # The scrape token's file exists in the operator's pod only (its mounted Secret): see
    # test_the_serving_monitor_sends_the_token_the_apps_accept_on_the_admin_path.
    env = {k: v for k, v in cm["data"].items() if k != "MLPLANE_SERVING_SCRAPE_TOKEN_FILE"}
    return OperatorConfig.from_env(env)


def _example(name: str) -> dict[str, Any]:
    body = yaml.safe_load((EXAMPLES / name).read_text())
    body["metadata"]["namespace"] = TEAM
    return body


def _pods(objects: list[dict[str, Any]]) -> dict[str, tuple[str, dict[str, str], list[dict]]]:
    """Exporter -> (namespace, labels, containers) of a pod that exports its series."""
    config = _config(objects)
    (deployment,) = [o for o in objects if o["kind"] == "Deployment"]
    op = deployment["spec"]["template"]
    md = parse(_example("modeldeployment-autoscaled-drift.yaml"))
    head = build_rayservice(md, 3, config, owner_uid="uid")["spec"]["rayClusterConfig"][
        "headGroupSpec"
    ]["template"]
    pods = {e: (NAMESPACE, op["metadata"]["labels"], op["spec"]["containers"])
            for e in OPERATOR_EXPORTERS}  # fmt: skip
    serving = (TEAM, {**head["metadata"]["labels"], **KUBERAY_HEAD_LABELS},
               head["spec"]["containers"])  # fmt: skip
    pods.update({e: serving for e in SERVING_EXPORTERS})
    return pods


def _selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    if any(labels.get(k) != v for k, v in (selector.get("matchLabels") or {}).items()):
        return False
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr["key"], expr["operator"], expr.get("values") or []
        ok = {
            "Exists": key in labels,
            "DoesNotExist": key not in labels,
            "In": labels.get(key) in values,
            "NotIn": labels.get(key) not in values,
        }[op]
        if not ok:
            return False
    return True


def _in_namespaces(monitor: dict[str, Any], namespace: str) -> bool:
    selector = monitor["spec"].get("namespaceSelector") or {}
    if selector.get("any"):
        return True
    names = selector.get("matchNames") or [monitor["metadata"]["namespace"]]
    return namespace in names


def _endpoints(monitor: dict[str, Any]) -> list[dict[str, Any]]:
    return monitor["spec"].get("podMetricsEndpoints") or monitor["spec"].get("endpoints") or []


def _port(endpoint: dict[str, Any], containers: list[dict]) -> int | None:
    """The container port a PodMonitor endpoint names, if the pod declares it."""
    for container in containers:
        for port in container.get("ports") or []:
            if port.get("name") == endpoint.get("port"):
                return int(port["containerPort"])
    return None


def _job(endpoint: dict[str, Any]) -> str | None:
    for relabel in endpoint.get("relabelings") or []:
        if relabel.get("targetLabel") == "job" and not relabel.get("sourceLabels"):
            return relabel.get("replacement")
    return None


def _scrapes(objects: list[dict[str, Any]]) -> dict[str, tuple[dict[str, Any], dict, int]]:
    """Exporter -> (monitor, endpoint, port) of the one monitor endpoint that scrapes it."""
    monitors = [o for o in objects if o["kind"] == "PodMonitor"]
    found: dict[str, tuple[dict[str, Any], dict, int]] = {}
    for exporter, (namespace, labels, containers) in _pods(objects).items():
        hits = [
            (m, e, _port(e, containers))
            for m in monitors
            if _selects(m["spec"]["selector"], labels) and _in_namespaces(m, namespace)
            for e in _endpoints(m)
            if _port(e, containers) is not None
            and e.get("path", "/metrics") == METRICS_PATH.get(exporter, "/metrics")
            and (exporter in OPERATOR_EXPORTERS or e.get("port") == "serve")
        ]  # fmt: skip
        assert len(hits) == 1, (
            f"{exporter}: {len(hits)} monitors scrape its /metrics (want exactly one): "
            f"{[m['metadata']['name'] for m, _, _ in hits]}"
        )
        found[exporter] = hits[0]  # type: ignore[assignment]
    return found


def _family(sample: str) -> n.Metric | None:
    if sample in n.METRICS:
        return n.METRICS[sample]
    for suffix in ("_bucket", "_sum", "_count"):
        base = sample.removesuffix(suffix)
        if base != sample and base in n.METRICS and n.METRICS[base].type == "histogram":
            return n.METRICS[base]
    return None


def _expressions() -> list[str]:
    rules = yaml.safe_load(RULES.read_text())
    exprs = [r["expr"] for g in rules["groups"] for r in g["rules"]]
    for dash in d.all_dashboards():
        exprs += [t["expr"] for p in dash["panels"] if p["type"] != "row" for t in p["targets"]]
    return exprs


def test_each_exporter_is_scraped_once_through_a_declared_port(rendered):
    scrapes = _scrapes(rendered)
    assert {_job(e) for _, e, _ in scrapes.values()} == {n.OPERATOR_JOB, "mlplane-serving"}


def test_series_keep_their_namespace_and_the_job_the_rules_watch(rendered):
    scrapes = _scrapes(rendered)
    for name, metric in n.METRICS.items():
        _, endpoint, _ = scrapes[metric.exporter]
        if "namespace" in metric.labels:
            assert endpoint.get("honorLabels") is True, (
                f"{name}: without honorLabels its namespace label would be the scraped pod's"
            )
    jobs = {_job(e) for _, e, _ in scrapes.values()}
    for expr in _expressions():
        for _sample, matchers in SELECTOR.findall(expr):
            for label, _, value in MATCHER.findall(matchers):
                if label == "job":
                    assert value in jobs, f"{expr!r}: no monitor sets job={value!r}"


def test_every_label_a_query_reads_is_on_the_scraped_series(rendered):
    scrapes = _scrapes(rendered)
    recorded = {r["record"] for g in yaml.safe_load(RULES.read_text())["groups"]
                for r in g["rules"] if "record" in r}  # fmt: skip
    for expr in _expressions():
        families, skip_grouping = [], False
        for sample, matchers in SELECTOR.findall(expr):
            if sample == "up":
                continue
            family = _family(sample)
            if family is None:
                assert sample in recorded, f"{expr!r}: {sample} is neither exported nor recorded"
                skip_grouping = True
                continue
            have = {*family.labels, "job", *TARGET_LABELS}
            if sample.endswith("_bucket"):
                have.add("le")
            families.append(have)
            for label, _, _ in MATCHER.findall(matchers):
                assert label in have, f"{expr!r}: {sample} has no label {label!r} when scraped"
        if families and not skip_grouping:
            union = set().union(*families)
            for group in GROUPING.findall(expr):
                for label in filter(None, (x.strip() for x in group.split(","))):
                    assert label in union, f"{expr!r}: groups by {label!r}, which no series has"
    assert {e for e in scrapes} >= {m.exporter for m in n.METRICS.values()}


def test_the_ray_clusters_let_prometheus_reach_the_scraped_ports(rendered):
    config = _config(rendered)
    assert config.prometheus_namespace == PROMETHEUS_NS
    scrapes = _scrapes(rendered)
    serve_port = next(p for e, (_, _, p) in scrapes.items() if e in SERVING_EXPORTERS)
    ray = next(m for m in rendered if m["kind"] == "PodMonitor" and
               _job(_endpoints(m)[0]) == "mlplane-ray")  # fmt: skip
    tj = parse(_example("trainingjob-gpu-spot.yaml"))
    rayjob = build_rayjob(tj, 1, "Spot", config, run_id=None, owner_uid="uid")
    ray_port = _port(_endpoints(ray)[0], rayjob["spec"]["rayClusterSpec"]["headGroupSpec"][
        "template"]["spec"]["containers"])  # fmt: skip
    assert ray_port is not None, "Ray's metrics port is not declared on the training head"
    for kind, owner, wanted in (("ModelDeployment", "churn", {serve_port, ray_port}),
                                ("TrainingJob", "train", {ray_port})):  # fmt: skip
        policy = build_network_policy(kind, owner, TEAM, "uid", config)  # type: ignore[arg-type]
        admitted = set()
        for rule in policy["spec"]["ingress"]:
            for peer in rule.get("from", []):
                ns = (peer.get("namespaceSelector") or {}).get("matchLabels") or {}
                pods = peer.get("podSelector")
                if ns.get("kubernetes.io/metadata.name") == PROMETHEUS_NS and (
                    pods is not None and _selects(pods, PROMETHEUS_LABELS)
                ):
                    admitted |= {p["port"] for p in rule.get("ports", [])}
        assert wanted <= admitted, f"{kind}: Prometheus may reach {admitted}, needs {wanted}"


def test_no_monitor_and_no_prometheus_peer_by_default():
    objects = template()
    assert not [o for o in objects if o["kind"] in ("PodMonitor", "ServiceMonitor")]
    assert _config(objects).prometheus_namespace is None


def _secret_value(objects: list[dict[str, Any]], namespace: str, name: str, key: str) -> str:
    (secret,) = [
        o
        for o in objects
        if o["kind"] == "Secret" and o["metadata"]["name"] == name
        and o["metadata"]["namespace"] == namespace
    ]  # fmt: skip
    return base64.b64decode(secret["data"][key]).decode()


@pytest.mark.parametrize("monitors_namespace", ["", PROMETHEUS_NS])
def test_the_serving_monitor_sends_the_token_the_apps_accept_on_the_admin_path(
    monitors_namespace: str, tmp_path: Path
) -> None:
    """The serving apps answer metrics only on /admin/metrics with a token (the public path is
    a 404): the PodMonitor scrapes that path with the Secret's token, the operator reads the
    same token from its copy of the Secret (mounted where its configuration says) and gives the
    apps its hash, and an app built from that configuration lets exactly that token read the
    metrics (and nothing else)."""
    objects = template(
        "--set", "servingMonitor.enabled=true",
        "--set", f"servingMonitor.namespace={monitors_namespace}",
        "--set", f"prometheus.namespace={PROMETHEUS_NS}",
    )  # fmt: skip
    (monitor,) = [o for o in objects if o["kind"] == "PodMonitor"
                  and o["metadata"]["name"].endswith("-serving")]  # fmt: skip
    (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
    assert (endpoint["port"], endpoint["path"]) == ("serve", "/admin/metrics")
    assert endpoint["authorization"]["type"] == "Bearer"
    credentials = endpoint["authorization"]["credentials"]
    scraped_with = _secret_value(
        objects, monitor["metadata"]["namespace"], credentials["name"], credentials["key"]
    )
    # The operator's pod: the Secret (in the release's namespace) mounted at the configured file.
    (deployment,) = [o for o in objects if o["kind"] == "Deployment"]
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    (cm,) = [o for o in objects if o["kind"] == "ConfigMap" and "config" in o["metadata"]["name"]]
    token_file = Path(cm["data"]["MLPLANE_SERVING_SCRAPE_TOKEN_FILE"])
    (mount,) = [m for m in container["volumeMounts"] if m["mountPath"] == str(token_file.parent)]
    (volume,) = [v for v in pod["volumes"] if v["name"] == mount["name"]]
    (item,) = [i for i in volume["secret"]["items"] if i["path"] == token_file.name]
    mounted = _secret_value(
        objects, deployment["metadata"]["namespace"], volume["secret"]["secretName"], item["key"]
    )
    (tmp_path / "token").write_text(mounted)
    config = OperatorConfig.from_env(
        {**cm["data"], "MLPLANE_SERVING_SCRAPE_TOKEN_FILE": str(tmp_path / "token")}
    )
    md = parse(_example("modeldeployment-autoscaled-drift.yaml"))
    rayservice = build_rayservice(md, 1, config, owner_uid="uid-1")
    settings = AppSettings.parse(serve_config_of(rayservice)["applications"][0]["args"])
    signer = RequestIdSigner(b"signing-key-signing-key-0123", settings.deployment)
    auth = admin_auth(settings.deployment, signer, settings.scrape_token_sha256)
    assert len(scraped_with) >= 32
    assert auth.allows(scraped_with, metrics=True)
    assert not auth.allows(scraped_with, metrics=False)  # stats, drift, models: the operator's
    assert not auth.allows(scraped_with + "x", metrics=True)
