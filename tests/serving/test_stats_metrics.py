"""Per-variant totals and their Prometheus exposition (the contract of monitoring/names.py)."""

from __future__ import annotations

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from mlplane.monitoring import names as n
from mlplane.monitoring.profile import build_profile
from mlplane.serving.config import DriftSettings
from mlplane.serving.drift_tap import DriftTap
from mlplane.serving.metrics import ServingCollector, exposition
from mlplane.serving.stats import BUCKETS, Histogram, TrafficStats, quantile


def traffic(seed: int = 0, n_requests: int = 200) -> TrafficStats:
    rng = np.random.default_rng(seed)
    stats = TrafficStats()
    for _ in range(n_requests):
        variant = "control" if rng.random() < 0.7 else "candidate"
        status = int(rng.choice([200, 200, 200, 422, 503]))
        seconds = float(rng.exponential(0.05))
        stats.record_request(variant, 3 if variant == "control" else 4, "ab1", status, seconds)
    return stats


def test_quantile_interpolates_like_histogram_quantile():
    bounds = (0.1, 0.2, 0.5)
    assert quantile(0.5, bounds, [0, 10, 0, 0]) == pytest.approx(0.15)
    assert quantile(0.99, bounds, [50, 0, 50, 0]) == pytest.approx(0.2 + 0.3 * 49 / 50)
    assert quantile(0.99, bounds, [0, 0, 0, 7]) == 0.5  # +Inf bucket: the largest bound
    assert quantile(0.5, bounds, [0, 0, 0, 0]) is None
    with pytest.raises(ValueError, match="counts"):
        quantile(0.5, bounds, [1])


def test_histogram_observes_on_the_contract_buckets():
    hist = Histogram()
    for x in (0.001, 0.005, 0.0051, 11.0):
        hist.observe(x)
    assert hist.counts[0] == 2 and hist.counts[1] == 1 and hist.counts[-1] == 1
    assert hist.cumulative()[-1] == ("+Inf", 4)
    assert hist.total == pytest.approx(11.0111)
    assert len(hist.counts) == len(BUCKETS) + 1


def test_deltas_merge_to_the_whole_through_the_wire():
    """Three routers' deltas, shipped as wire data and merged, equal one router's record."""
    rng = np.random.default_rng(5)
    events = [
        (str(rng.choice(["a", "b"])), int(rng.choice([200, 404, 500])), float(rng.random()))
        for _ in range(300)
    ]
    whole, parts = TrafficStats(), [TrafficStats() for _ in range(3)]
    for i, (variant, status, seconds) in enumerate(events):
        for stats in (whole, parts[i % 3]):
            stats.record_request(variant, 1, "t", status, seconds, slo_s=0.5)
            if status == 200:
                stats.record_outcome("t", variant, 1, seconds)
    merged = TrafficStats()
    for part in parts:
        merged.merge(TrafficStats.from_wire(part.to_wire()))
    assert merged.requests == whole.requests
    assert merged.slow == whole.slow
    assert {k: h.counts for k, h in merged.latency.items()} == {
        k: h.counts for k, h in whole.latency.items()
    }
    for key, counts in whole.variants.items():
        got = merged.variants[key]
        assert (got.requests, got.errors, got.outcomes) == (
            counts.requests,
            counts.errors,
            counts.outcomes,
        )
        assert got.outcome_sum == pytest.approx(counts.outcome_sum)
        assert got.outcome_sum_sq == pytest.approx(counts.outcome_sum_sq)
    assert sum(c.errors for c in merged.variants.values()) == sum(s == 500 for _, s, _ in events)


def test_outcomes_and_snapshot():
    stats = TrafficStats()
    stats.record_request("control", 3, "ab1", 200, 0.02)
    stats.record_request("control", 3, "ab1", 500, 0.3)
    for value in (1.0, 0.0, 1.0):
        stats.record_outcome("ab1", "control", 3, value)
    stats.record_outcome(None, "primary", 2, 4.0)
    (row,) = stats.snapshot("ab1")
    assert row["variant"] == "control" and row["versions"] == [3]
    assert (row["requests"], row["errors"], row["errorRate"]) == (2, 1, 0.5)
    assert (row["outcomes"], row["outcomeSum"], row["outcomeSumSquares"]) == (3, 2.0, 2.0)
    assert row["outcomeMean"] == pytest.approx(2 / 3)
    assert row["latencySumSeconds"] == pytest.approx(0.32)
    assert 250 < row["latencyP99Ms"] <= 300
    assert [r["variant"] for r in stats.snapshot(None)] == ["primary"]
    assert len(stats.snapshot(all_tests=True)) == 2
    assert list(stats.abtests()) == ["ab1"]


def _scrape(collector: ServingCollector) -> dict[str, list]:
    out: dict[str, list] = {}
    for family in text_string_to_metric_families(exposition(collector).decode()):
        for s in family.samples:
            out.setdefault(s.name, []).append(s)
    return out


def test_exposition_is_exactly_the_contract():
    stats = traffic()
    stats.record_outcome("ab1", "control", 3, 2.0)
    stats.record_request("primary", 2, None, 200, 0.01, slo_s=0.1)  # outside any A/B test
    samples = _scrape(ServingCollector("ml-team", "churn", stats, has_slo=True))
    exported = {m.name: m for m in n.METRICS.values()}
    for name, series in samples.items():
        family = next(m for m in exported.values() if name in m.series)
        for s in series:
            assert set(s.labels) - {"le"} == set(family.labels), name
    assert set(samples) <= n.series_names()
    requests = samples["mlplane_requests_total"]
    assert sum(s.value for s in requests) == 201
    assert {s.labels["deployment"] for s in requests} == {"churn"}
    assert {s.labels["namespace"] for s in requests} == {"ml-team"}
    assert {s.labels["code"] for s in requests} == {"2xx", "4xx", "5xx"}
    # A/B series only for traffic inside the test; the outcome sums keep their names.
    assert sum(s.value for s in samples["mlplane_abtest_requests_total"]) == 200
    assert {s.labels["abtest"] for s in samples["mlplane_abtest_requests_total"]} == {"ab1"}
    sums = {s.labels["variant"]: s.value for s in samples["mlplane_abtest_outcome_sum"]}
    assert sums == {"candidate": 0.0, "control": 2.0}
    squares = {s.labels["variant"]: s.value for s in samples["mlplane_abtest_outcome_sum_squares"]}
    assert squares == {"candidate": 0.0, "control": 4.0}
    errors = sum(s.value for s in samples["mlplane_abtest_errors_total"])
    assert errors == sum(s.value for s in requests if s.labels["code"] == "5xx")


def test_slow_series_start_at_zero_and_only_with_an_objective():
    stats = TrafficStats()
    stats.touch(7, "primary", None, slo_s=0.2)
    with_slo = _scrape(ServingCollector("ns", "d", stats, has_slo=True))
    (slow,) = with_slo["mlplane_requests_slow_total"]
    assert (slow.value, slow.labels["version"], slow.labels["variant"]) == (0.0, "7", "primary")
    stats.record_request("primary", 7, None, 200, 0.5, slo_s=0.2)
    stats.record_request("primary", 7, None, 200, 0.1, slo_s=0.2)
    (slow,) = _scrape(ServingCollector("ns", "d", stats, has_slo=True))[
        "mlplane_requests_slow_total"
    ]
    assert slow.value == 1.0
    assert "mlplane_requests_slow_total" not in _scrape(ServingCollector("ns", "d", stats))


def test_drift_gauges_after_an_evaluation():
    rng = np.random.default_rng(0)
    profile = build_profile({"x": rng.normal(0, 1, 5000), "c": rng.choice(["a", "b"], 5000)})
    tap = DriftTap(DriftSettings(True, "StatisticalTest", 0.01, 10.0, 100))
    tap.set_reference(3, profile)
    shifted = {"x": list(rng.normal(1, 1, 500)), "c": list(rng.choice(["a", "b"], 500))}
    tap.add(3, shifted, [5.0] * 500, now=5.0)
    assert tap.advance(25.0)  # the window [0, 10) closes
    samples = _scrape(ServingCollector("ns", "d", TrafficStats(), tap))
    drifted = {s.labels["feature"]: s.value for s in samples["mlplane_feature_drifted"]}
    assert drifted == {"x": 1.0, "c": 0.0}
    methods = {(s.labels["feature"], s.labels["method"]) for s in samples[n.FEATURE_DRIFT_SCORE]}
    assert {("x", "psi"), ("x", "js"), ("x", "ks"), ("c", "chi2")} <= methods
    assert samples[n.DRIFT_LAST_EVALUATION_TIMESTAMP_SECONDS][0].value == 25.0
    assert samples[n.DRIFT_WINDOW_SAMPLES][0].value == 0
    p = {s.labels["feature"]: s.value for s in samples[n.FEATURE_DRIFT_P_VALUE]}
    assert p["x"] < 0.01 < p["c"]
