"""The metric-name contract (monitoring/names.py): data, docs and exposition agree."""

from __future__ import annotations

import re

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from mlplane.monitoring import names as n


def test_the_brief_names_exactly():
    assert set(n.METRICS) == {
        "mlplane_requests_total",
        "mlplane_request_duration_seconds",
        "mlplane_requests_slow_total",
        "mlplane_requests_shed_total",
        "mlplane_abtest_requests_total",
        "mlplane_abtest_errors_total",
        "mlplane_abtest_outcomes_total",
        "mlplane_abtest_outcome_sum",
        "mlplane_abtest_outcome_sum_squares",
        "mlplane_abtest_latency_seconds",
        "mlplane_abtest_p_value",
        "mlplane_abtest_decision",
        "mlplane_feature_drift_score",
        "mlplane_feature_drift_p_value",
        "mlplane_feature_drifted",
        "mlplane_drift_window_samples",
        "mlplane_drift_last_evaluation_timestamp_seconds",
        "mlplane_slo_availability_target",
        "mlplane_slo_latency_target_seconds",
        "mlplane_trainingjob_attempts_total",
        "mlplane_trainingjob_preemptions_total",
        "mlplane_trainingjob_failures_total",
        "mlplane_trainingjob_returns_to_spot_total",
        "mlplane_trainingjob_reclaim_notices_total",
        "mlplane_trainingjob_notice_checkpoints_total",
        "mlplane_trainingjob_last_checkpoint_timestamp_seconds",
        "mlplane_trainingjob_phase",
        "mlplane_trainingjob_gpu_hours",
        "mlplane_trainingjob_lost_gpu_hours",
        "mlplane_trainingjob_estimated_cost",
        "mlplane_trainingjob_checkpoint_interval_seconds",
        "mlplane_trainingjob_checkpoint_write_seconds",
        "mlplane_trainingjob_mean_time_between_reclaims_seconds",
        "mlplane_operator_reconcile_total",
        "mlplane_operator_reconcile_duration_seconds",
    }
    labels = {name: m.labels for name, m in n.METRICS.items()}
    assert labels["mlplane_requests_total"] == (
        "namespace",
        "deployment",
        "version",
        "variant",
        "code",
    )
    assert labels["mlplane_abtest_decision"] == ("namespace", "abtest", "decision")
    assert labels["mlplane_feature_drift_score"] == ("namespace", "deployment", "feature", "method")
    assert labels["mlplane_trainingjob_phase"] == ("namespace", "trainingjob", "phase")
    assert labels["mlplane_operator_reconcile_total"] == ("kind", "result")
    assert labels["mlplane_operator_reconcile_duration_seconds"] == ("kind",)
    assert n.OPERATOR_JOB == "mlplane-operator"


def test_constants_are_the_table():
    constants = {
        value for key, value in vars(n).items() if key.isupper() and isinstance(value, str)
    }
    assert set(n.METRICS) <= constants


def test_docstring_lists_every_metric_with_its_type():
    doc = n.__doc__ or ""
    for name, metric in n.METRICS.items():
        line = next((ln for ln in doc.splitlines() if re.match(rf"\s+{name}\s", ln)), None)
        assert line is not None, f"{name} missing from the docstring table"
        assert metric.type in line, f"{name}: docstring type differs from {metric.type}"


def test_types_and_naming_conventions():
    for name, m in n.METRICS.items():
        if m.type == "counter":
            assert name.endswith("_total") or name in {
                n.ABTEST_OUTCOME_SUM,
                n.ABTEST_OUTCOME_SUM_SQUARES,
            }
        else:
            assert not name.endswith("_total")
        if m.type == "histogram":
            assert name.endswith("_seconds")
            assert list(m.buckets) == sorted(m.buckets)
        else:
            assert m.buckets is None


def test_request_buckets_span_5ms_to_10s():
    assert n.REQUEST_DURATION_BUCKETS[0] == 0.005
    assert n.REQUEST_DURATION_BUCKETS[-1] == 10.0
    # Typical latency objectives fall on bucket boundaries.
    assert {0.05, 0.1, 0.2, 0.25, 0.5, 1.0} <= set(n.REQUEST_DURATION_BUCKETS)


@pytest.mark.parametrize(
    ("status", "code"), [(200, "2xx"), (204, "2xx"), (404, "4xx"), (429, "4xx"), (503, "5xx")]
)
def test_status_class(status, code):
    assert n.status_class(status) == code


def test_status_class_rejects_non_statuses():
    with pytest.raises(ValueError, match="HTTP"):
        n.status_class(99)


def test_build_exposes_exactly_the_contract_series():
    """What prometheus_client exports from build() is what the rules and dashboards read."""
    registry = CollectorRegistry()
    for name, metric in n.METRICS.items():
        collector = n.build(name, registry)
        child = collector.labels(*(f"v{i}" for i in range(len(metric.labels))))
        if metric.type == "histogram":
            child.observe(0.3)
        else:
            child.inc(2)
    exposed = {}
    for family in text_string_to_metric_families(generate_latest(registry).decode()):
        for sample in family.samples:
            if not sample.name.endswith("_created"):
                exposed.setdefault(sample.name, set(sample.labels) - {"le"})
    assert set(exposed) == n.series_names()
    for metric in n.METRICS.values():
        for series in metric.series:
            assert exposed[series] == set(metric.labels), series
    # The counters without _total keep their names (a Counter would add _total).
    for name in ("mlplane_abtest_outcome_sum", "mlplane_abtest_outcome_sum_squares"):
        assert name in exposed
        assert f"{name}_total" not in exposed
