"""Grafana dashboards for mlplane, built as plain JSON in Python (never hand-edited).

Why code: the queries must stay in step with the metric contract (:mod:`.names`) and the
recorded SLIs (:mod:`.rules`); built here, a test parses every query and fails on a name that
neither defines. Each dashboard has a stable ``uid`` (links and provisioning survive a
regeneration), the Prometheus data source as the ``${datasource}`` variable (no instance
specific data-source uid baked in), and namespace/deployment variables where they apply.

Dashboards: SLOs (SLIs, 30-day budget remaining, burn rates), serving (traffic and latency per
deployment and version), A/B tests (per variant), drift (per feature), training (attempts,
preemptions, checkpoint age) and operator health.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mlplane.monitoring import names as n
from mlplane.monitoring import rules as r

SCHEMA_VERSION = 39
TAG = "mlplane"
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}

# --- variables ----------------------------------------------------------------------------------


def _datasource_variable() -> dict[str, Any]:
    return {
        "name": "datasource",
        "label": "Data source",
        "type": "datasource",
        "query": "prometheus",
        "current": {},
        "hide": 0,
        "includeAll": False,
        "multi": False,
        "options": [],
        "refresh": 1,
        "regex": "",
    }


def _query_variable(name: str, label: str, query: str) -> dict[str, Any]:
    """A multi-select label-values variable (``All`` = ``.*``, so queries use ``=~``)."""
    return {
        "name": name,
        "label": label,
        "type": "query",
        "datasource": DATASOURCE,
        "definition": query,
        "query": {"query": query, "refId": f"{name}-values"},
        "current": {},
        "hide": 0,
        "includeAll": True,
        "allValue": ".*",
        "multi": True,
        "options": [],
        "refresh": 2,
        "regex": "",
        "sort": 1,
    }


NS_DEP = 'namespace=~"$namespace", deployment=~"$deployment"'


def _namespace_deployment_variables(metric: str) -> list[dict[str, Any]]:
    return [
        _query_variable("namespace", "Namespace", f"label_values({metric}, namespace)"),
        _query_variable(
            "deployment",
            "Deployment",
            f'label_values({metric}{{namespace=~"$namespace"}}, deployment)',
        ),
    ]


# --- panels -------------------------------------------------------------------------------------


def _target(expr: str, legend: str = "", ref: str = "A", **extra: Any) -> dict[str, Any]:
    target = {
        "datasource": DATASOURCE,
        "expr": expr,
        "legendFormat": legend or "__auto",
        "refId": ref,
        "range": True,
        "instant": False,
    }
    target.update(extra)
    return target


def _targets(*queries: tuple[str, str]) -> list[dict[str, Any]]:
    return [_target(expr, legend, chr(ord("A") + i)) for i, (expr, legend) in enumerate(queries)]


def _thresholds(*steps: tuple[float | None, str]) -> dict[str, Any]:
    return {
        "mode": "absolute",
        "steps": [{"color": color, "value": value} for value, color in steps],
    }


_GREEN = ((None, "green"),)


def timeseries(
    title: str,
    queries: Sequence[tuple[str, str]],
    unit: str = "short",
    description: str = "",
    thresholds: Sequence[tuple[float | None, str]] = _GREEN,
    show_thresholds: bool = False,
    log_scale: bool = False,
    min_value: float | None = None,
    max_value: float | None = None,
    width: int = 12,
    height: int = 8,
) -> dict[str, Any]:
    """A time-series panel; ``show_thresholds`` draws the threshold steps as lines."""
    custom: dict[str, Any] = {
        "drawStyle": "line",
        "lineWidth": 1,
        "fillOpacity": 10,
        "showPoints": "never",
        "spanNulls": False,
        "thresholdsStyle": {"mode": "line" if show_thresholds else "off"},
    }
    if log_scale:
        custom["scaleDistribution"] = {"type": "log", "log": 10}
    defaults: dict[str, Any] = {
        "unit": unit,
        "custom": custom,
        "thresholds": _thresholds(*thresholds),
        "color": {"mode": "palette-classic"},
    }
    if min_value is not None:
        defaults["min"] = min_value
    if max_value is not None:
        defaults["max"] = max_value
    return {
        "type": "timeseries",
        "title": title,
        "description": description,
        "datasource": DATASOURCE,
        "fieldConfig": {"defaults": defaults, "overrides": []},
        "options": {
            "legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
            "tooltip": {"mode": "multi", "sort": "desc"},
        },
        "targets": _targets(*queries),
        "_size": (width, height),
    }


def stat(
    title: str,
    queries: Sequence[tuple[str, str]],
    unit: str = "short",
    description: str = "",
    thresholds: Sequence[tuple[float | None, str]] = _GREEN,
    decimals: int | None = None,
    text_mode: str = "auto",
    mappings: Sequence[dict[str, Any]] = (),
    width: int = 6,
    height: int = 6,
    kind: str = "stat",
) -> dict[str, Any]:
    """A stat (or ``kind="bargauge"``) panel showing each series' last value."""
    defaults: dict[str, Any] = {
        "unit": unit,
        "thresholds": _thresholds(*thresholds),
        "color": {"mode": "thresholds"},
        "mappings": list(mappings),
    }
    if decimals is not None:
        defaults["decimals"] = decimals
    reduce = {"calcs": ["lastNotNull"], "fields": "", "values": False}
    options: dict[str, Any]
    if kind == "bargauge":
        options = {
            "reduceOptions": reduce,
            "orientation": "horizontal",
            "displayMode": "gradient",
            "showUnfilled": True,
        }
    else:
        options = {
            "reduceOptions": reduce,
            "colorMode": "value",
            "graphMode": "area",
            "justifyMode": "auto",
            "orientation": "auto",
            "textMode": text_mode,
        }
    return {
        "type": kind,
        "title": title,
        "description": description,
        "datasource": DATASOURCE,
        "fieldConfig": {"defaults": defaults, "overrides": []},
        "options": options,
        "targets": _targets(*queries),
        "_size": (width, height),
    }


def state_timeline(
    title: str,
    queries: Sequence[tuple[str, str]],
    mappings: Sequence[dict[str, Any]],
    description: str = "",
    thresholds: Sequence[tuple[float | None, str]] = _GREEN,
    width: int = 12,
    height: int = 8,
) -> dict[str, Any]:
    """States over time (drifted or not, phases) as coloured bands."""
    return {
        "type": "state-timeline",
        "title": title,
        "description": description,
        "datasource": DATASOURCE,
        "fieldConfig": {
            "defaults": {
                "thresholds": _thresholds(*thresholds),
                "color": {"mode": "thresholds"},
                "mappings": list(mappings),
                "custom": {"fillOpacity": 70, "lineWidth": 0},
            },
            "overrides": [],
        },
        "options": {
            "mergeValues": True,
            "showValue": "never",
            "alignValue": "left",
            "rowHeight": 0.9,
            "legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
            "tooltip": {"mode": "single", "sort": "none"},
        },
        "targets": _targets(*queries),
        "_size": (width, height),
    }


def table(
    title: str,
    expr: str,
    description: str = "",
    hide: Sequence[str] = ("Time", "Value"),
    width: int = 12,
    height: int = 8,
) -> dict[str, Any]:
    """The labels of an instant query's series as rows (e.g. the current phase of each job)."""
    return {
        "type": "table",
        "title": title,
        "description": description,
        "datasource": DATASOURCE,
        "fieldConfig": {"defaults": {}, "overrides": []},
        "options": {"showHeader": True, "cellHeight": "sm"},
        "targets": [_target(expr, "", "A", format="table", instant=True, range=False)],
        "transformations": [
            {"id": "organize", "options": {"excludeByName": dict.fromkeys(hide, True)}}
        ],
        "_size": (width, height),
    }


def _value_map(*pairs: tuple[int, str, str]) -> dict[str, Any]:
    return {
        "type": "value",
        "options": {
            str(value): {"text": text, "color": color, "index": i}
            for i, (value, text, color) in enumerate(pairs)
        },
    }


def _layout(sections: Sequence[tuple[str, Sequence[dict[str, Any]]]]) -> list[dict[str, Any]]:
    """Rows of panels, left to right, wrapping at Grafana's 24 columns; ids in order."""
    panels: list[dict[str, Any]] = []
    y = 0
    next_id = 1
    for title, section in sections:
        panels.append(
            {
                "type": "row",
                "id": next_id,
                "title": title,
                "collapsed": False,
                "panels": [],
                "gridPos": {"h": 1, "w": 24, "x": 0, "y": y},
            }
        )
        next_id += 1
        y += 1
        x = 0
        row_height = 0
        for panel in section:
            p = dict(panel)
            w, h = p.pop("_size")
            if x + w > 24:
                x, y, row_height = 0, y + row_height, 0
            p["id"] = next_id
            p["gridPos"] = {"h": h, "w": w, "x": x, "y": y}
            next_id += 1
            panels.append(p)
            x += w
            row_height = max(row_height, h)
        y += row_height
    return panels


def dashboard(
    uid: str,
    title: str,
    description: str,
    variables: Sequence[dict[str, Any]],
    sections: Sequence[tuple[str, Sequence[dict[str, Any]]]],
    time_from: str = "now-24h",
) -> dict[str, Any]:
    """A complete dashboard model (no ``id``: Grafana assigns it; ``uid`` is the identity)."""
    return {
        "uid": uid,
        "title": title,
        "description": description,
        "tags": [TAG],
        "timezone": "browser",
        "editable": True,
        "graphTooltip": 1,
        "fiscalYearStartMonth": 0,
        "liveNow": False,
        "refresh": "1m",
        "schemaVersion": SCHEMA_VERSION,
        "version": 1,
        "time": {"from": time_from, "to": "now"},
        "timepicker": {},
        "annotations": {
            "list": [
                {
                    "builtIn": 1,
                    "datasource": {"type": "grafana", "uid": "-- Grafana --"},
                    "enable": True,
                    "hide": True,
                    "iconColor": "rgba(0, 211, 255, 1)",
                    "name": "Annotations & Alerts",
                    "type": "dashboard",
                }
            ]
        },
        "links": [
            {
                "title": "mlplane",
                "type": "dashboards",
                "tags": [TAG],
                "asDropdown": True,
                "includeVars": True,
                "keepTime": True,
                "icon": "external link",
                "targetBlank": False,
                "tooltip": "",
                "url": "",
            }
        ],
        "templating": {"list": [_datasource_variable(), *variables]},
        "panels": _layout(sections),
    }


# --- the dashboards -----------------------------------------------------------------------------

_BUDGET_STEPS = ((None, "red"), (0.0, "orange"), (0.25, "yellow"), (0.5, "green"))
_LEGEND_DEP = "{{namespace}}/{{deployment}}"


def _sel(record: str) -> str:
    return f"{record}{{{NS_DEP}}}"


def slo_dashboard() -> dict[str, Any]:
    """Availability and latency SLIs, 30-day budget remaining, burn rates per window."""
    budget = _sel(r.AVAILABILITY_BUDGET_RECORD)
    err30 = _sel(r.error_ratio_record(r.SLO_PERIOD_WINDOW))
    slow30 = _sel(r.slow_ratio_record(r.SLO_PERIOD_WINDOW))
    on = "on(namespace, deployment) group_left()"
    burn_windows = [w.long for w in r.BURN_RATE_WINDOWS]
    factors = sorted({w.factor for w in r.BURN_RATE_WINDOWS})
    burn_lines = ((None, "green"), *((f, "red" if f > 3 else "orange") for f in factors))
    lat_budget = f"{r.LATENCY_BUDGET:g}"
    availability = [
        stat(
            "Availability, 30 days",
            [(f"1 - {err30}", _LEGEND_DEP)],
            unit="percentunit",
            decimals=3,
            description="Share of requests not answered 5xx over the SLO period.",
        ),
        stat(
            "Objective",
            [(f"1 - {budget}", _LEGEND_DEP)],
            unit="percentunit",
            decimals=3,
            description="mlplane_slo_availability_target, exported per ModelDeployment.",
        ),
        stat(
            "Error budget remaining, 30 days",
            [(f"1 - ({err30} / {on} {budget})", _LEGEND_DEP)],
            unit="percentunit",
            thresholds=_BUDGET_STEPS,
            kind="bargauge",
            width=12,
            description="1 - errors spent / errors allowed over the period; below 0: SLO missed.",
        ),
        timeseries(
            "Error ratio (5xx)",
            [
                (_sel(r.error_ratio_record("5m")), f"{_LEGEND_DEP} 5m"),
                (_sel(r.error_ratio_record("1h")), f"{_LEGEND_DEP} 1h"),
            ],
            unit="percentunit",
            min_value=0,
        ),
        timeseries(
            "Availability burn rate",
            [
                (f"{_sel(r.error_ratio_record(w))} / {on} {budget}", f"{_LEGEND_DEP} {w}")
                for w in burn_windows
            ],
            thresholds=burn_lines,
            show_thresholds=True,
            min_value=0,
            description=(
                "Error ratio / error budget. Pages at 14.4 (1h, with 5m) and 6 (6h, with 30m), "
                "tickets at 3 (1d, with 2h) and 1 (3d, with 6h)."
            ),
        ),
    ]
    latency = [
        stat(
            "Requests within the latency objective, 30 days",
            [(f"1 - {slow30}", _LEGEND_DEP)],
            unit="percentunit",
            decimals=3,
        ),
        stat(
            "Latency objective (p99)",
            [
                (
                    f"max by (namespace, deployment) ({n.SLO_LATENCY_TARGET_SECONDS}{{{NS_DEP}}})",
                    _LEGEND_DEP,
                )
            ],
            unit="s",
        ),
        stat(
            "Latency budget remaining, 30 days",
            [(f"1 - ({slow30} / {lat_budget})", _LEGEND_DEP)],
            unit="percentunit",
            thresholds=_BUDGET_STEPS,
            kind="bargauge",
            width=12,
            description="The latency budget is 1 % of requests slower than the objective.",
        ),
        timeseries(
            "Slow ratio",
            [
                (_sel(r.slow_ratio_record("5m")), f"{_LEGEND_DEP} 5m"),
                (_sel(r.slow_ratio_record("1h")), f"{_LEGEND_DEP} 1h"),
            ],
            unit="percentunit",
            min_value=0,
        ),
        timeseries(
            "Latency burn rate",
            [
                (f"{_sel(r.slow_ratio_record(w))} / {lat_budget}", f"{_LEGEND_DEP} {w}")
                for w in burn_windows
            ],
            thresholds=burn_lines,
            show_thresholds=True,
            min_value=0,
        ),
    ]
    traffic = [
        timeseries(
            "Requests per second",
            [(_sel(r.TRAFFIC_RECORD), _LEGEND_DEP)],
            unit="reqps",
            width=24,
        )
    ]
    return dashboard(
        "mlplane-slo",
        "mlplane / SLOs",
        "Availability and latency objectives of every ModelDeployment over 30 days.",
        _namespace_deployment_variables(n.REQUESTS_TOTAL),
        [("Availability", availability), ("Latency", latency), ("Traffic", traffic)],
        time_from="now-7d",
    )


def serving_dashboard() -> dict[str, Any]:
    """Traffic, errors and latency per deployment and model version."""
    sel = f'{NS_DEP}, version=~"$version"'
    req = f"{n.REQUESTS_TOTAL}{{{sel}}}"
    rate = "[$__rate_interval]"
    by = "namespace, deployment, version"
    legend = "{{deployment}} v{{version}}"
    bucket = f"{n.REQUEST_DURATION_SECONDS}_bucket{{{sel}}}"

    def quantile(q: float) -> tuple[str, str]:
        expr = f"histogram_quantile({q}, sum by ({by}, le) (rate({bucket}{rate})))"
        return expr, f"{legend} p{round(q * 100)}"

    target = (
        f"max by (namespace, deployment) ({n.SLO_LATENCY_TARGET_SECONDS}{{{NS_DEP}}})",
        "{{deployment}} objective",
    )
    traffic = [
        timeseries(
            "Requests per second by version",
            [(f"sum by ({by}) (rate({req}{rate}))", legend)],
            unit="reqps",
        ),
        timeseries(
            "Requests per second by status class",
            [(f"sum by (deployment, code) (rate({req}{rate}))", "{{deployment}} {{code}}")],
            unit="reqps",
        ),
        timeseries(
            "Error ratio (5xx) by version",
            [
                (
                    # "or ... * 0": no 5xx series yet reads 0 %, not "no data".
                    f'(\n  sum by ({by}) (rate({n.REQUESTS_TOTAL}{{{sel}, code="5xx"}}{rate}))\n'
                    f"  or\n  sum by ({by}) (rate({req}{rate})) * 0\n)\n"
                    f"/\nsum by ({by}) (rate({req}{rate}))",
                    legend,
                )
            ],
            unit="percentunit",
            min_value=0,
        ),
        timeseries(
            "Shed for overload (503 + Retry-After) by version",
            [(f"sum by ({by}) (rate({n.REQUESTS_SHED_TOTAL}{{{sel}}}{rate}))", legend)],
            unit="reqps",
            min_value=0,
            description="Requests refused at once because the model's queue was full "
            "(spec.maxQueuedRequests); they count as 5xx. Sustained: too few replicas.",
        ),
        timeseries(
            "Traffic share by variant",
            [
                (
                    f"sum by (namespace, deployment, variant) (rate({req}{rate}))\n"
                    f"/ on(namespace, deployment) group_left()\n"
                    f"sum by (namespace, deployment) (rate({req}{rate}))",
                    "{{deployment}} {{variant}}",
                )
            ],
            unit="percentunit",
            min_value=0,
            max_value=1,
        ),
    ]
    latency = [
        timeseries(
            "Latency p50 / p95 / p99 by version",
            [quantile(0.5), quantile(0.95), quantile(0.99), target],
            unit="s",
            width=24,
            description="From the router's histogram; the objective is the latencyP99Ms line.",
        ),
        timeseries(
            "Slow ratio by version",
            [
                (
                    f"sum by ({by}) (rate({n.REQUESTS_SLOW_TOTAL}{{{sel}}}{rate}))\n"
                    f"/\nsum by ({by}) (rate({req}{rate}))",
                    legend,
                )
            ],
            unit="percentunit",
            min_value=0,
            thresholds=((None, "green"), (r.LATENCY_BUDGET, "red")),
            show_thresholds=True,
            description="Requests slower than the latency objective; the SLO allows 1 %.",
        ),
        timeseries(
            "Mean latency by version",
            [
                (
                    f"sum by ({by}) (rate({n.REQUEST_DURATION_SECONDS}_sum{{{sel}}}{rate}))\n"
                    f"/\nsum by ({by}) (rate({n.REQUEST_DURATION_SECONDS}_count{{{sel}}}{rate}))",
                    legend,
                )
            ],
            unit="s",
        ),
        {
            "type": "heatmap",
            "title": "Latency distribution",
            "description": "Requests per latency bucket (all selected deployments and versions).",
            "datasource": DATASOURCE,
            "fieldConfig": {"defaults": {}, "overrides": []},
            "options": {
                "calculate": False,
                "yAxis": {"unit": "s"},
                "color": {"mode": "scheme", "scheme": "Oranges", "steps": 64},
                "cellGap": 1,
                "tooltip": {"show": True, "yHistogram": False},
                "legend": {"show": True},
            },
            "targets": [
                _target(
                    f"sum by (le) (increase({bucket}{rate}))",
                    "{{le}}",
                    "A",
                    format="heatmap",
                )
            ],
            "_size": (24, 8),
        },
    ]
    return dashboard(
        "mlplane-serving",
        "mlplane / Serving",
        "Traffic, errors and latency of ModelDeployments per model version and variant.",
        [
            *_namespace_deployment_variables(n.REQUESTS_TOTAL),
            _query_variable(
                "version",
                "Version",
                f"label_values({n.REQUESTS_TOTAL}{{{NS_DEP}}}, version)",
            ),
        ],
        [("Traffic", traffic), ("Latency", latency)],
        time_from="now-6h",
    )


def abtest_dashboard() -> dict[str, Any]:
    """Per-variant traffic, errors, outcomes, latency; the analysis' p-values and decision."""
    sel = 'namespace=~"$namespace", abtest=~"$abtest"'
    rate = "[$__rate_interval]"
    by = "namespace, abtest, variant"
    legend = "{{abtest}} {{variant}}"
    req = f"{n.ABTEST_REQUESTS_TOTAL}{{{sel}}}"
    traffic = [
        timeseries(
            "Requests per second by variant",
            [(f"sum by ({by}) (rate({req}{rate}))", legend)],
            unit="reqps",
        ),
        timeseries(
            "Traffic share by variant",
            [
                (
                    f"sum by ({by}) (rate({req}{rate}))\n"
                    "/ on(namespace, abtest) group_left()\n"
                    f"sum by (namespace, abtest) (rate({req}{rate}))",
                    legend,
                )
            ],
            unit="percentunit",
            min_value=0,
            max_value=1,
        ),
        timeseries(
            "Error ratio by variant",
            [
                (
                    f"sum by ({by}) (rate({n.ABTEST_ERRORS_TOTAL}{{{sel}}}{rate}))\n"
                    f"/\nsum by ({by}) (rate({req}{rate}))",
                    legend,
                )
            ],
            unit="percentunit",
            min_value=0,
        ),
        timeseries(
            "Latency p99 by variant",
            [
                (
                    "histogram_quantile(0.99, sum by (namespace, abtest, variant, le) "
                    f"(rate({n.ABTEST_LATENCY_SECONDS}_bucket{{{sel}}}{rate})))",
                    legend,
                )
            ],
            unit="s",
        ),
    ]
    outcomes = [
        stat(
            "Mean outcome by variant, over the time range",
            [
                (
                    f"sum by ({by}) (increase({n.ABTEST_OUTCOME_SUM}{{{sel}}}[$__range]))\n"
                    f"/\nsum by ({by}) (increase({n.ABTEST_OUTCOMES_TOTAL}{{{sel}}}[$__range]))",
                    legend,
                )
            ],
            decimals=4,
            kind="bargauge",
            width=12,
            height=8,
            description="Conversion rate for 0/1 outcomes; the mean value otherwise.",
        ),
        timeseries(
            "Mean outcome by variant, last hour (sliding)",
            [
                (
                    f"sum by ({by}) (rate({n.ABTEST_OUTCOME_SUM}{{{sel}}}[1h]))\n"
                    f"/\nsum by ({by}) (rate({n.ABTEST_OUTCOMES_TOTAL}{{{sel}}}[1h]))",
                    legend,
                )
            ],
        ),
        timeseries(
            "Outcome feedback per second by variant",
            [(f"sum by ({by}) (rate({n.ABTEST_OUTCOMES_TOTAL}{{{sel}}}{rate}))", legend)],
            unit="reqps",
        ),
        stat(
            "Outcome standard deviation by variant, over the time range",
            [
                (
                    "sqrt(\n"
                    f"  sum by ({by}) (increase({n.ABTEST_OUTCOME_SUM_SQUARES}{{{sel}}}"
                    "[$__range]))\n"
                    f"  / sum by ({by}) (increase({n.ABTEST_OUTCOMES_TOTAL}{{{sel}}}[$__range]))\n"
                    f"  - (sum by ({by}) (increase({n.ABTEST_OUTCOME_SUM}{{{sel}}}[$__range]))\n"
                    f"  / sum by ({by}) (increase({n.ABTEST_OUTCOMES_TOTAL}{{{sel}}}[$__range])))"
                    " ^ 2\n)",
                    legend,
                )
            ],
            decimals=4,
            kind="bargauge",
            width=12,
            height=8,
            description="Spread of numeric outcomes (Mean objectives), from the sum of squares.",
        ),
    ]
    analysis = [
        timeseries(
            "Always-valid p-value by variant",
            [(f"max by ({by}) ({n.ABTEST_P_VALUE}{{{sel}}})", legend)],
            log_scale=True,
            thresholds=((None, "orange"), (0.05, "green")),
            show_thresholds=True,
            description="From the operator's sequential test; valid under continuous peeking.",
        ),
        stat(
            "Current decision",
            [
                (
                    f"max by (namespace, abtest, decision) ({n.ABTEST_DECISION}{{{sel}}}) == 1",
                    "{{abtest}}: {{decision}}",
                )
            ],
            text_mode="name",
            width=12,
            height=8,
        ),
    ]
    return dashboard(
        "mlplane-abtest",
        "mlplane / A/B tests",
        "Per-variant traffic, errors, outcomes and latency, and the analysis' decision.",
        [
            _query_variable(
                "namespace", "Namespace", f"label_values({n.ABTEST_REQUESTS_TOTAL}, namespace)"
            ),
            _query_variable(
                "abtest",
                "A/B test",
                f'label_values({n.ABTEST_REQUESTS_TOTAL}{{namespace=~"$namespace"}}, abtest)',
            ),
        ],
        [("Traffic", traffic), ("Outcomes", outcomes), ("Analysis", analysis)],
        time_from="now-7d",
    )


def drift_dashboard() -> dict[str, Any]:
    """Per-feature drift scores, p-values and verdicts; the drift tap's own health."""
    sel = f'{NS_DEP}, feature=~"$feature"'
    legend = "{{deployment}} {{feature}}"
    drifted_map = _value_map((0, "ok", "green"), (1, "drifted", "red"))
    features = [
        stat(
            "Drifted features",
            [
                (
                    f"sum by (namespace, deployment) ({n.FEATURE_DRIFTED}{{{NS_DEP}}})",
                    _LEGEND_DEP,
                )
            ],
            thresholds=((None, "green"), (1, "red")),
            width=8,
        ),
        stat(
            "Samples in the drift window",
            [
                (
                    f"max by (namespace, deployment) ({n.DRIFT_WINDOW_SAMPLES}{{{NS_DEP}}})",
                    _LEGEND_DEP,
                )
            ],
            width=8,
        ),
        stat(
            "Since the last drift evaluation",
            [
                (
                    "time() - max by (namespace, deployment) "
                    f"({n.DRIFT_LAST_EVALUATION_TIMESTAMP_SECONDS}{{{NS_DEP}}})",
                    _LEGEND_DEP,
                )
            ],
            unit="s",
            thresholds=((None, "green"), (1800, "red")),
            width=8,
        ),
        state_timeline(
            "Drifted (per feature)",
            [(f"max by (namespace, deployment, feature) ({n.FEATURE_DRIFTED}{{{sel}}})", legend)],
            [drifted_map],
            thresholds=((None, "green"), (1, "red")),
            width=24,
        ),
        timeseries(
            "Drift score by feature",
            [
                (
                    "max by (namespace, deployment, feature, method) "
                    f"({n.FEATURE_DRIFT_SCORE}{{{sel}}})",
                    "{{deployment}} {{feature}} ({{method}})",
                )
            ],
        ),
        timeseries(
            "Drift p-value by feature",
            [
                (
                    f"max by (namespace, deployment, feature) ({n.FEATURE_DRIFT_P_VALUE}{{{sel}}})",
                    legend,
                )
            ],
            log_scale=True,
        ),
    ]
    return dashboard(
        "mlplane-drift",
        "mlplane / Drift",
        "Live inputs against the training reference profile, per feature.",
        [
            *_namespace_deployment_variables(n.FEATURE_DRIFT_SCORE),
            _query_variable(
                "feature", "Feature", f"label_values({n.FEATURE_DRIFT_SCORE}{{{NS_DEP}}}, feature)"
            ),
        ],
        [("Features", features)],
        time_from="now-7d",
    )


def training_dashboard() -> dict[str, Any]:
    """Phases, attempts, spot preemptions, failures, checkpoint age; spot hours, waste, cost."""
    sel = 'namespace=~"$namespace", trainingjob=~"$trainingjob"'
    by = "namespace, trainingjob"
    legend = "{{namespace}}/{{trainingjob}}"
    jobs = [
        table(
            "Current phase",
            f"max by ({by}, phase) ({n.TRAININGJOB_PHASE}{{{sel}}}) == 1",
            width=12,
        ),
        stat(
            "Jobs by phase",
            [(f"count by (phase) ({n.TRAININGJOB_PHASE}{{{sel}}} == 1)", "{{phase}}")],
            width=12,
            height=8,
        ),
        timeseries(
            "Attempts",
            [(f"max by ({by}) ({n.TRAININGJOB_ATTEMPTS_TOTAL}{{{sel}}})", legend)],
            width=8,
        ),
        timeseries(
            "Spot preemptions, reclaim notices and returns to spot in the last hour",
            [
                (
                    f"sum by ({by}) (increase({n.TRAININGJOB_PREEMPTIONS_TOTAL}{{{sel}}}[1h]))",
                    legend,
                ),
                (
                    f"sum by ({by}) (increase({n.TRAININGJOB_RETURNS_TO_SPOT_TOTAL}{{{sel}}}[1h]))",
                    f"{legend} returned to spot",
                ),
                (
                    f"sum by ({by}) (increase({n.TRAININGJOB_RECLAIM_NOTICES_TOTAL}{{{sel}}}[1h]))",
                    f"{legend} reclaim notices",
                ),
                (
                    f"sum by ({by}) (increase({n.TRAININGJOB_NOTICE_CHECKPOINTS_TOTAL}{{{sel}}}"
                    "[1h]))",
                    f"{legend} checkpointed on notice",
                ),
            ],
            width=8,
        ),
        timeseries(
            "Failed attempts",
            [(f"max by ({by}) ({n.TRAININGJOB_FAILURES_TOTAL}{{{sel}}})", legend)],
            width=8,
        ),
        timeseries(
            "Checkpoint age",
            [
                (
                    f"time() - max by ({by}) "
                    f"({n.TRAININGJOB_LAST_CHECKPOINT_TIMESTAMP_SECONDS}{{{sel}}} > 0)",
                    legend,
                )
            ],
            unit="s",
            thresholds=((None, "green"), (3600, "red")),
            show_thresholds=True,
            width=24,
            description="Work lost if the job were preempted now; alerts past 1h while Running.",
        ),
    ]
    spot = _spot_panels(sel, by, legend)
    return dashboard(
        "mlplane-training",
        "mlplane / Training",
        "TrainingJobs: phases, attempts, spot preemptions and checkpoints.",
        [
            _query_variable(
                "namespace", "Namespace", f"label_values({n.TRAININGJOB_PHASE}, namespace)"
            ),
            _query_variable(
                "trainingjob",
                "TrainingJob",
                f'label_values({n.TRAININGJOB_PHASE}{{namespace=~"$namespace"}}, trainingjob)',
            ),
        ],
        [("Jobs", jobs), ("Spot: hours, waste, cost and checkpoint interval", spot)],
        time_from="now-24h",
    )


def _spot_panels(sel: str, by: str, legend: str) -> list[dict[str, Any]]:
    """GPU-hours by capacity, hours lost to reclaims, estimated cost, and the interval with
    the C and M it follows (``status.cost``, ``status.checkpoint``)."""
    return [
        timeseries(
            "GPU-hours by capacity",
            [
                (
                    f"max by ({by}, capacity) ({n.TRAININGJOB_GPU_HOURS}{{{sel}}})",
                    "{{namespace}}/{{trainingjob}} {{capacity}}",
                )
            ],
            width=8,
            description="Cumulative GPU-hours of the job's workers on spot and on-demand nodes.",
        ),
        timeseries(
            "GPU-hours lost to reclaims",
            [(f"max by ({by}) ({n.TRAININGJOB_LOST_GPU_HOURS}{{{sel}}})", legend)],
            width=8,
            description="Work repeated since the last checkpoint before each reclaim, plus "
            "the restart time of attempts after a preemption.",
        ),
        timeseries(
            "Estimated cost",
            [
                (
                    f"max by ({by}, currency) ({n.TRAININGJOB_ESTIMATED_COST}{{{sel}}})",
                    "{{namespace}}/{{trainingjob}} {{currency}}",
                )
            ],
            width=8,
            description="From the operator's GPU price table (chart value "
            "operator.gpuPrices); empty without one.",
        ),
        timeseries(
            "Checkpoint interval, write time C, time between reclaims M",
            [
                (
                    f"max by ({by}) ({n.TRAININGJOB_CHECKPOINT_INTERVAL_SECONDS}{{{sel}}})",
                    f"interval {legend}",
                ),
                (
                    f"max by ({by}) ({n.TRAININGJOB_CHECKPOINT_WRITE_SECONDS}{{{sel}}})",
                    f"C {legend}",
                ),
                (
                    f"max by ({by}) ({n.TRAININGJOB_MEAN_TIME_BETWEEN_RECLAIMS_SECONDS}{{{sel}}})",
                    f"M {legend}",
                ),
            ],
            unit="s",
            log_scale=True,
            width=24,
            description="spec.checkpoint.interval: Auto follows sqrt(2*C*M) within the "
            "operator's bounds.",
        ),
    ]


def operator_dashboard() -> dict[str, Any]:
    """Is the operator up, how often and how fast it reconciles, how often it fails."""
    rate = "[$__rate_interval]"
    up = f'up{{job="{n.OPERATOR_JOB}"}}'
    health = [
        stat(
            "Operator replicas up",
            [(f"sum by (job) ({up})", "up")],
            thresholds=((None, "red"), (1, "green")),
            width=6,
        ),
        stat(
            "ModelDeployments with SLO targets",
            [(f"count(max by (namespace, deployment) ({n.SLO_AVAILABILITY_TARGET}))", "")],
            width=6,
        ),
        stat(
            "A/B tests by decision",
            [(f"count by (decision) ({n.ABTEST_DECISION} == 1)", "{{decision}}")],
            width=12,
        ),
    ]
    reconciles = [
        timeseries(
            "Reconciles per second by kind and result",
            [
                (
                    f"sum by (kind, result) (rate({n.OPERATOR_RECONCILE_TOTAL}{rate}))",
                    "{{kind}} {{result}}",
                )
            ],
            unit="ops",
        ),
        timeseries(
            "Reconcile error ratio by kind",
            [
                (
                    f'sum by (kind) (rate({n.OPERATOR_RECONCILE_TOTAL}{{result="error"}}{rate}))\n'
                    f"/\nsum by (kind) (rate({n.OPERATOR_RECONCILE_TOTAL}{rate}))",
                    "{{kind}}",
                )
            ],
            unit="percentunit",
            min_value=0,
            thresholds=((None, "green"), (r.RuleOptions().reconcile_error_ratio, "red")),
            show_thresholds=True,
        ),
        timeseries(
            "Reconcile duration p50 / p99 by kind",
            [
                (
                    f"histogram_quantile({q}, sum by (kind, le) "
                    f"(rate({n.OPERATOR_RECONCILE_DURATION_SECONDS}_bucket{rate})))",
                    f"{{{{kind}}}} p{round(q * 100)}",
                )
                for q in (0.5, 0.99)
            ],
            unit="s",
            width=24,
        ),
    ]
    return dashboard(
        "mlplane-operator",
        "mlplane / Operator",
        "Health of the mlplane operator: scrape status, reconcile rate, errors and latency.",
        [],
        [("Health", health), ("Reconciles", reconciles)],
        time_from="now-6h",
    )


def all_dashboards() -> list[dict[str, Any]]:
    """Every mlplane dashboard, in a stable order."""
    return [
        slo_dashboard(),
        serving_dashboard(),
        abtest_dashboard(),
        drift_dashboard(),
        training_dashboard(),
        operator_dashboard(),
    ]


def to_json(dash: dict[str, Any]) -> str:
    """Stable JSON text of a dashboard (what gets committed and provisioned)."""
    return json.dumps(dash, indent=2, ensure_ascii=False) + "\n"


def write_dashboards(out_dir: str | Path) -> list[Path]:
    """Write ``<uid>.json`` per dashboard into ``out_dir``, removing dashboards no longer made."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    dashes = all_dashboards()
    wanted = {f"{d['uid']}.json" for d in dashes}
    for stale in out.glob("*.json"):
        if stale.name not in wanted:
            stale.unlink()
    paths = []
    for d in dashes:
        path = out / f"{d['uid']}.json"
        path.write_text(to_json(d), encoding="utf-8")
        paths.append(path)
    return paths
