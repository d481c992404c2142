"""The generated Prometheus rules: structure, contract names, options, explicit targets."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from mlplane.monitoring import names as n
from mlplane.monitoring import rules as r

REPO = Path(__file__).resolve().parents[2]
RUNBOOKS = REPO / "docs" / "runbooks.md"
DURATION = re.compile(
    r"^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$"
)
METRIC_NAME = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")
LABEL_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
TARGETS = [
    r.SLOTarget("ml", "fraud", 0.999, 250),
    r.SLOTarget("ml", "lenient", 0.99),
    r.SLOTarget("other", "ranker", 0.9995, 80),
]


def all_rules(groups):
    return [rule for g in groups for rule in g["rules"]]


def alerts(groups):
    return [rule for rule in all_rules(groups) if "alert" in rule]


# --- burn rates -----------------------------------------------------------------------------


def test_burn_rate_factors_are_the_sre_workbook_table():
    table = [(w.severity, w.long, w.short, w.factor) for w in r.BURN_RATE_WINDOWS]
    assert table == [
        ("page", "1h", "5m", 14.4),
        ("page", "6h", "30m", 6.0),
        ("ticket", "1d", "2h", 3.0),
        ("ticket", "3d", "6h", 1.0),
    ]
    # Every window an alert uses is recorded.
    used = {w.long for w in r.BURN_RATE_WINDOWS} | {w.short for w in r.BURN_RATE_WINDOWS}
    assert used == set(r.SLI_WINDOWS)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("5m", 300), ("1h30m", 5400), ("3d", 259200), ("2w", 1209600), ("250ms", 0.25)],
)
def test_duration_seconds(text, seconds):
    assert r.duration_seconds(text) == seconds


@pytest.mark.parametrize("text", ["", "5", "m", "1.5h", "5 m", "1m1h", "-5m"])
def test_duration_seconds_rejects(text):
    with pytest.raises(ValueError, match="duration"):
        r.duration_seconds(text)


# --- structure ------------------------------------------------------------------------------


def check_rule_groups(groups):
    """What Prometheus and the PrometheusRule CRD require of rule groups, checked here."""
    names = [g["name"] for g in groups]
    assert len(names) == len(set(names)), "group names must be unique"
    for group in groups:
        assert set(group) <= {"name", "interval", "rules"}
        if "interval" in group:
            assert DURATION.match(group["interval"])
        assert group["rules"], f"group {group['name']} is empty"
        for rule in group["rules"]:
            assert ("record" in rule) != ("alert" in rule)
            assert isinstance(rule["expr"], str)
            assert rule["expr"].strip()
            assert rule["expr"] == rule["expr"].strip()
            for line in rule["expr"].splitlines():
                assert line == line.rstrip(), "trailing spaces break YAML block scalars"
            for key, value in rule.get("labels", {}).items():
                assert LABEL_NAME.match(key)
                assert isinstance(value, str)
            if "record" in rule:
                assert set(rule) <= {"record", "expr", "labels"}
                assert METRIC_NAME.match(rule["record"])
            else:
                assert set(rule) <= {"alert", "expr", "for", "labels", "annotations"}
                if "for" in rule:
                    assert DURATION.match(rule["for"])
                assert rule["labels"]["severity"] in {"page", "ticket", "warning"}
                assert set(rule["annotations"]) == {"summary", "description", "runbook_url"}
                assert all(isinstance(v, str) and v for v in rule["annotations"].values())


@pytest.mark.parametrize("targets", [None, TARGETS], ids=["generic", "explicit"])
def test_rule_groups_are_well_formed(targets):
    check_rule_groups(r.rule_groups(targets))


def test_generic_rules_have_every_alert_once():
    names = [a["alert"] for a in alerts(r.rule_groups())]
    assert sorted(names) == sorted(set(names))
    assert set(names) == {
        "MlplaneAvailabilityBudgetBurnFast",
        "MlplaneAvailabilityBudgetBurnSlow",
        "MlplaneLatencyBudgetBurnFast",
        "MlplaneLatencyBudgetBurnSlow",
        "MlplaneSLOTargetMissing",
        "MlplaneFeatureDrift",
        "MlplaneDriftEvaluationStale",
        "MlplaneTrainingPreemptionRateHigh",
        "MlplaneTrainingCheckpointStale",
        "MlplaneTrainingJobFailed",
        "MlplaneOperatorReconcileErrors",
        "MlplaneOperatorDown",
    }


def test_severities():
    severity = {a["alert"]: a["labels"]["severity"] for a in alerts(r.rule_groups())}
    assert severity["MlplaneAvailabilityBudgetBurnFast"] == "page"
    assert severity["MlplaneLatencyBudgetBurnFast"] == "page"
    assert severity["MlplaneAvailabilityBudgetBurnSlow"] == "ticket"
    assert severity["MlplaneLatencyBudgetBurnSlow"] == "ticket"
    assert severity["MlplaneOperatorDown"] == "page"


def test_generic_burn_alerts_compare_with_the_target_gauge():
    groups = r.rule_groups()
    budget = next(x for x in all_rules(groups) if x.get("record") == r.AVAILABILITY_BUDGET_RECORD)
    assert n.SLO_AVAILABILITY_TARGET in budget["expr"]
    assert "max by (namespace, deployment)" in budget["expr"]
    fast = next(a for a in alerts(groups) if a["alert"] == "MlplaneAvailabilityBudgetBurnFast")
    for window in ("1h", "5m", "6h", "30m"):
        assert r.error_ratio_record(window) in fast["expr"]
    assert "on(namespace, deployment) group_left()" in fast["expr"]
    assert f"(14.4 * {r.AVAILABILITY_BUDGET_RECORD})" in fast["expr"]
    assert f"(6 * {r.AVAILABILITY_BUDGET_RECORD})" in fast["expr"]
    slow = next(a for a in alerts(groups) if a["alert"] == "MlplaneLatencyBudgetBurnSlow")
    assert f"{r.slow_ratio_record('1d')} > (3 * 0.01)" in slow["expr"]
    assert f"{r.slow_ratio_record('6h')} > (1 * 0.01)" in slow["expr"]


def test_error_ratio_is_5xx_over_all_requests():
    rules = {x.get("record"): x["expr"] for x in all_rules(r.rule_groups())}
    expr = rules[r.error_ratio_record("1h")]
    numerator, denominator = expr.rsplit("\n/\n", 1)
    assert f'rate({n.REQUESTS_TOTAL}{{code="5xx"}}[1h])' in numerator
    assert denominator == f"sum by (namespace, deployment) (rate({n.REQUESTS_TOTAL}[1h]))"
    slow = rules[r.slow_ratio_record("3d")]
    assert slow.startswith(f"sum by (namespace, deployment) (rate({n.REQUESTS_SLOW_TOTAL}[3d]))")
    assert set(rules) - {None} == r.recorded_series()


# --- explicit targets -----------------------------------------------------------------------


def test_explicit_targets_inline_constants_per_deployment():
    groups = r.rule_groups(TARGETS)
    slo = next(g for g in groups if g["name"] == "mlplane-slo-alerts")["rules"]
    by_dep = {}
    for a in slo:
        by_dep.setdefault(a["labels"]["deployment"], []).append(a["alert"])
    assert sorted(by_dep["fraud"]) == sorted(
        [
            "MlplaneAvailabilityBudgetBurnFast",
            "MlplaneAvailabilityBudgetBurnSlow",
            "MlplaneLatencyBudgetBurnFast",
            "MlplaneLatencyBudgetBurnSlow",
        ]
    )
    # No latency objective: no latency alerts.
    assert sorted(by_dep["lenient"]) == [
        "MlplaneAvailabilityBudgetBurnFast",
        "MlplaneAvailabilityBudgetBurnSlow",
    ]
    ranker = next(
        a
        for a in slo
        if a["alert"] == "MlplaneAvailabilityBudgetBurnFast"
        and a["labels"]["deployment"] == "ranker"
    )
    assert '{namespace="other", deployment="ranker"}' in ranker["expr"]
    assert "(14.4 * (1 - 0.9995))" in ranker["expr"]
    assert n.SLO_AVAILABILITY_TARGET not in ranker["expr"]
    assert "99.95%" in ranker["annotations"]["description"]
    latency = next(
        a
        for a in slo
        if a["alert"] == "MlplaneLatencyBudgetBurnFast" and a["labels"]["deployment"] == "ranker"
    )
    assert "80ms" in latency["annotations"]["description"]
    # No target-missing alert: the targets are in the rules, not in gauges.
    assert all(a["alert"] != "MlplaneSLOTargetMissing" for a in alerts(groups))


def test_explicit_targets_record_their_budget_for_dashboards():
    budgets = [
        x
        for x in all_rules(r.rule_groups(TARGETS))
        if x.get("record") == r.AVAILABILITY_BUDGET_RECORD
    ]
    assert [(b["labels"]["namespace"], b["labels"]["deployment"], b["expr"]) for b in budgets] == [
        ("ml", "fraud", "vector(1 - 0.999)"),
        ("ml", "lenient", "vector(1 - 0.99)"),
        ("other", "ranker", "vector(1 - 0.9995)"),
    ]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("ML", "fraud", 0.999), "namespace"),
        (("ml", "Fraud_1", 0.999), "deployment"),
        (("ml", "fraud", 99.9), "ratio"),
        (("ml", "fraud", 1.0), "ratio"),
        (("ml", "fraud", 0.999, 0), "latency"),
        (('ml"} or vector(1) #', "fraud", 0.999), "namespace"),
    ],
)
def test_slo_target_validation(args, message):
    with pytest.raises(ValueError, match=message):
        r.SLOTarget(*args)


def test_slo_targets_from_manifests_and_entries(tmp_path):
    path = tmp_path / "deployments.yaml"
    path.write_text(
        """
apiVersion: mlplane.dev/v1alpha1
kind: ModelDeployment
metadata: {name: fraud, namespace: ml}
spec:
  model: {name: fraud, alias: champion}
  slo: {availability: "99.95", latencyP99Ms: 200}
---
apiVersion: v1
kind: List
items:
  - apiVersion: mlplane.dev/v1alpha1
    kind: ModelDeployment
    metadata: {name: ranker}
    spec: {model: {name: ranker, version: 3}}
---
- {namespace: batch, deployment: scorer, availability: "99", latencyP99Ms: 1500}
- {deployment: plain}
""",
        encoding="utf-8",
    )
    targets = r.load_slo_targets(path)
    assert targets == [
        r.SLOTarget("ml", "fraud", 0.9995, 200),
        r.SLOTarget("default", "ranker", 0.999, None),  # the CRD's defaults
        r.SLOTarget("batch", "scorer", 0.99, 1500),
        r.SLOTarget("default", "plain", 0.999, None),
    ]


def test_slo_targets_reject_duplicates_and_junk():
    entry = {"namespace": "ml", "deployment": "fraud"}
    with pytest.raises(ValueError, match="twice"):
        r.slo_targets_from_documents([[entry, entry]])
    with pytest.raises(ValueError, match="neither"):
        r.slo_targets_from_documents([{"kind": "TrainingJob", "metadata": {"name": "x"}}])
    with pytest.raises(ValueError, match="not a number"):
        r.slo_targets_from_documents([{"deployment": "x", "availability": "high"}])


# --- options ----------------------------------------------------------------------------------


def test_options_change_thresholds_labels_and_runbooks():
    options = r.RuleOptions(
        runbook_base_url="https://runbooks.example/mlplane",
        drift_for="1h",
        drift_stale_after="2h",
        preemptions_per_hour=5,
        checkpoint_max_age="30m",
        reconcile_error_ratio=0.25,
        target_lookback="15m",
        extra_labels={"team": "ml-platform"},
    )
    groups = r.rule_groups(options=options)
    by_name = {a["alert"]: a for a in alerts(groups)}
    assert all(a["labels"]["team"] == "ml-platform" for a in by_name.values())
    assert by_name["MlplaneFeatureDrift"]["for"] == "1h"
    assert "> 7200" in by_name["MlplaneDriftEvaluationStale"]["expr"]
    assert by_name["MlplaneTrainingPreemptionRateHigh"]["expr"].endswith("> 5")
    stale = by_name["MlplaneTrainingCheckpointStale"]["expr"]
    assert ") > 1800" in stale
    assert "[30m:1m]" in stale
    assert by_name["MlplaneOperatorReconcileErrors"]["expr"].endswith("> 0.25")
    assert by_name["MlplaneOperatorDown"]["annotations"]["runbook_url"] == (
        "https://runbooks.example/mlplane#mlplaneoperatordown"
    )
    budget = next(x for x in all_rules(groups) if x.get("record") == r.AVAILABILITY_BUDGET_RECORD)
    assert "[15m]" in budget["expr"]
    assert "[15m]" in by_name["MlplaneAvailabilityBudgetBurnFast"]["annotations"]["description"]


@pytest.mark.parametrize(
    "kwargs",
    [{"drift_for": "30 minutes"}, {"reconcile_error_ratio": 1.5}, {"preemptions_per_hour": -1}],
)
def test_options_validation(kwargs):
    with pytest.raises(ValueError):  # noqa: PT011 - each case has its own message
        r.RuleOptions(**kwargs)


# --- names --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("expr", "expected"),
    [
        ('rate(a_total{code="5xx"}[5m])', {"a_total"}),
        ("sum by (le, version) (rate(b_bucket[$__rate_interval]))", {"b_bucket"}),
        ("x / on(namespace, deployment) group_left() (14.4 * y)", {"x", "y"}),
        ('absent(up{job="mlplane-operator"}) or max by (job) (up) == 0', {"up"}),
        ("a > 1e-05 and b offset 5m unless c > bool 0", {"a", "b", "c"}),
        ('z{label="has {braces} and [brackets] and # hash"}', {"z"}),
        ("min_over_time((m or on(a) m * 0)[1h:1m]) # a comment naming q", {"m"}),
        ('ns:metric:ratio_rate5m{namespace=~"$namespace"}', {"ns:metric:ratio_rate5m"}),
        ("time() - max(ts > 0)", {"ts"}),
        ("histogram_quantile(0.99, sum(rate(h[5m])) by (le))", {"h"}),
    ],
)
def test_selected_metric_names(expr, expected):
    assert r.selected_metric_names(expr) == expected


def test_rules_read_only_contract_metrics_and_recorded_series():
    allowed = n.series_names() | r.recorded_series() | {"up"}
    for targets in (None, TARGETS):
        for rule in all_rules(r.rule_groups(targets)):
            unknown = r.selected_metric_names(rule["expr"]) - allowed
            assert not unknown, f"{rule.get('record') or rule.get('alert')} reads {unknown}"


# --- outputs ------------------------------------------------------------------------------------


def test_prometheus_rule_object():
    groups = r.rule_groups()
    obj = r.prometheus_rule(groups, "mlplane-slo", "monitoring", {"release": "kube-prometheus"})
    assert obj["apiVersion"] == "monitoring.coreos.com/v1"
    assert obj["kind"] == "PrometheusRule"
    assert obj["metadata"] == {
        "name": "mlplane-slo",
        "namespace": "monitoring",
        "labels": {
            "app.kubernetes.io/name": "mlplane",
            "app.kubernetes.io/component": "monitoring",
            "release": "kube-prometheus",
        },
    }
    assert obj["spec"]["groups"] == r.rules_file(groups)["groups"]
    # Namespace left to `kubectl apply -n` / the chart.
    assert "namespace" not in r.prometheus_rule(groups, namespace=None)["metadata"]


def test_yaml_round_trips_and_keeps_promql_readable():
    doc = r.rules_file(r.rule_groups(TARGETS))
    text = r.to_yaml(doc, header="# hello\n")
    assert text.startswith("# hello\n")
    assert yaml.safe_load(text) == doc
    assert "expr: |-\n" in text  # multi-line PromQL as block scalars
    assert r.to_yaml(doc) == r.to_yaml(r.rules_file(r.rule_groups(TARGETS)))  # deterministic


# --- runbooks -----------------------------------------------------------------------------------


def test_every_alert_has_a_runbook_section_and_no_section_is_orphaned():
    headings = re.findall(r"^## (\S+)\s*$", RUNBOOKS.read_text(encoding="utf-8"), re.MULTILINE)
    names = {a["alert"] for t in (None, TARGETS) for a in alerts(r.rule_groups(t))}
    assert sorted(headings) == sorted(names)
    for a in alerts(r.rule_groups()):
        base, anchor = a["annotations"]["runbook_url"].split("#")
        assert base == "https://github.com/mlplane/mlplane/blob/main/docs/runbooks.md"
        assert anchor == a["alert"].lower()  # GitHub's heading anchor


def test_runbooks_state_the_same_severity_as_the_rules():
    text = RUNBOOKS.read_text(encoding="utf-8")
    for a in alerts(r.rule_groups()):
        section = text.split(f"## {a['alert']}\n", 1)[1].split("\n## ", 1)[0]
        assert f"**Severity:** {a['labels']['severity']}." in section, a["alert"]


def test_render_rules_for_the_cli(tmp_path):
    plain = yaml.safe_load(r.render_rules())
    assert plain == r.rules_file(r.rule_groups())
    obj = yaml.safe_load(
        r.render_rules(
            TARGETS[:1], kind="prometheusrule", name="x", namespace="mon", labels={"a": "b"}
        )
    )
    assert obj["metadata"]["name"] == "x"
    assert obj["metadata"]["namespace"] == "mon"
    assert obj["metadata"]["labels"]["a"] == "b"
    assert obj["spec"]["groups"] == r.rule_groups(TARGETS[:1])
    with pytest.raises(ValueError, match="kind"):
        r.render_rules(kind="json")


def test_empty_target_list(tmp_path):
    groups = r.rule_groups([])
    check_rule_groups(groups)
    assert "mlplane-slo-alerts" not in [g["name"] for g in groups]
    empty = tmp_path / "empty.yaml"
    empty.write_text("---\n", encoding="utf-8")
    with pytest.raises(ValueError, match="no ModelDeployment"):
        r.load_slo_targets(empty)
