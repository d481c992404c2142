"""The Grafana dashboards: model structure, stable identity, and every query's metric names."""

from __future__ import annotations

import json
import re
import shutil
import subprocess

import pytest

from mlplane.monitoring import dashboards as d
from mlplane.monitoring import names as n
from mlplane.monitoring import rules as r

DASHBOARDS = d.all_dashboards()
IDS = [x["uid"] for x in DASHBOARDS]
GRAFANA_BUILTINS = {"__rate_interval", "__range", "__interval", "__range_s", "__interval_ms"}
LABEL_VALUES = re.compile(r"^label_values\((?:(?P<metric>.+),\s*)?(?P<label>\w+)\)$")


def panels(dash):
    return [p for p in dash["panels"] if p["type"] != "row"]


def queries(dash):
    return [t["expr"] for p in panels(dash) for t in p["targets"]]


def variable_queries(dash):
    return [v["definition"] for v in dash["templating"]["list"] if v["type"] == "query"]


def test_uids_are_stable_unique_and_short():
    assert IDS == [
        "mlplane-slo",
        "mlplane-serving",
        "mlplane-abtest",
        "mlplane-drift",
        "mlplane-training",
        "mlplane-operator",
    ]
    assert all(len(uid) <= 40 and re.fullmatch(r"[a-z0-9-]+", uid) for uid in IDS)
    assert len({x["title"] for x in DASHBOARDS}) == len(DASHBOARDS)


@pytest.mark.parametrize("dash", DASHBOARDS, ids=IDS)
def test_dashboard_model(dash):
    assert dash["schemaVersion"] == d.SCHEMA_VERSION
    assert "id" not in dash  # Grafana assigns ids; the uid is the identity
    assert d.TAG in dash["tags"]
    variables = dash["templating"]["list"]
    assert variables[0]["name"] == "datasource"
    assert variables[0]["type"] == "datasource"
    assert variables[0]["query"] == "prometheus"
    names = [v["name"] for v in variables]
    assert len(names) == len(set(names))
    for v in variables[1:]:
        assert v["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
    ids = [p["id"] for p in dash["panels"]]
    assert ids == list(range(1, len(ids) + 1))
    for p in panels(dash):
        assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, p["title"]
        assert p["title"]
        assert "_size" not in p
        refs = [t["refId"] for t in p["targets"]]
        assert refs and len(refs) == len(set(refs)), p["title"]
        for t in p["targets"]:
            assert t["datasource"] == p["datasource"]
    json.dumps(dash)  # plain JSON


@pytest.mark.parametrize("dash", DASHBOARDS, ids=IDS)
def test_panels_tile_the_grid_without_overlap(dash):
    occupied: set[tuple[int, int]] = set()
    for p in dash["panels"]:
        g = p["gridPos"]
        assert g["x"] >= 0 and g["x"] + g["w"] <= 24, p["title"]
        cells = {
            (x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])
        }
        assert not cells & occupied, f"{p['title']} overlaps another panel"
        occupied |= cells


@pytest.mark.parametrize("dash", DASHBOARDS, ids=IDS)
def test_queries_use_only_contract_metrics_and_recorded_series(dash):
    allowed = n.series_names() | r.recorded_series() | {"up"}
    for expr in queries(dash):
        names = r.selected_metric_names(expr)
        assert names, f"no metric in {expr!r}"
        assert names <= allowed, f"{expr!r} reads {names - allowed}"
    for definition in variable_queries(dash):
        match = LABEL_VALUES.match(definition)
        assert match and match["metric"], definition
        assert r.selected_metric_names(match["metric"]) <= n.series_names(), definition


@pytest.mark.parametrize("dash", DASHBOARDS, ids=IDS)
def test_queries_only_reference_defined_variables(dash):
    defined = {v["name"] for v in dash["templating"]["list"]} | GRAFANA_BUILTINS
    for text in [*queries(dash), *variable_queries(dash)]:
        used = set(re.findall(r"\$\{?(\w+)", text))
        assert used <= defined, f"{text!r} uses undefined {used - defined}"


@pytest.mark.parametrize("dash", DASHBOARDS, ids=IDS)
def test_queries_filter_by_the_dashboard_variables(dash):
    """The scope chosen at the top (namespace, deployment / A/B test / job) narrows every panel.

    Finer selectors (version, feature) may be ignored by summary panels.
    """
    scope = {"namespace", "deployment", "abtest", "trainingjob"}
    variables = {v["name"] for v in dash["templating"]["list"]} & scope
    for expr in queries(dash):
        for var in variables:
            assert f"${var}" in expr, f"{expr!r} ignores ${var}"


def test_every_contract_metric_is_shown_somewhere():
    shown = set()
    for dash in DASHBOARDS:
        for expr in queries(dash):
            shown |= r.selected_metric_names(expr)
    # Recorded SLIs stand for the request counters on the SLO dashboard.
    shown_metrics = {m.name for m in n.METRICS.values() if set(m.series) & shown}
    assert set(n.METRICS) - shown_metrics == set()


def test_slo_dashboard_shows_budget_and_every_burn_window():
    dash = d.slo_dashboard()
    text = "\n".join(queries(dash))
    assert r.error_ratio_record(r.SLO_PERIOD_WINDOW) in text
    assert r.slow_ratio_record(r.SLO_PERIOD_WINDOW) in text
    for w in r.BURN_RATE_WINDOWS:
        assert r.error_ratio_record(w.long) in text
        assert r.slow_ratio_record(w.long) in text
    burn = next(p for p in panels(dash) if p["title"] == "Availability burn rate")
    lines = [s["value"] for s in burn["fieldConfig"]["defaults"]["thresholds"]["steps"]]
    assert lines == [None, 1.0, 3.0, 6.0, 14.4]


def test_dashboards_are_deterministic():
    assert [d.to_json(x) for x in d.all_dashboards()] == [d.to_json(x) for x in DASHBOARDS]


def test_queries_are_valid_promql(tmp_path):
    """promtool parses every panel query (Grafana variables replaced by plausible values)."""
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail(
            "promtool is not installed: `apt-get update && apt-get install -y "
            "--no-install-recommends prometheus`",
            pytrace=False,
        )
    substitutions = {"$__rate_interval": "2m", "$__range": "1d", "${datasource}": "prom"}
    rules = []
    for dash in DASHBOARDS:
        for i, expr in enumerate(queries(dash)):
            for var, value in substitutions.items():
                expr = expr.replace(var, value)
            expr = re.sub(r"\$(\w+)", ".*", expr)
            rules.append(
                {"record": f"dashboard:{dash['uid'].replace('-', '_')}:q{i}", "expr": expr}
            )
    path = tmp_path / "dashboard-queries.yaml"
    path.write_text(r.to_yaml({"groups": [{"name": "queries", "rules": rules}]}), encoding="utf-8")
    result = subprocess.run(
        [promtool, "check", "rules", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
