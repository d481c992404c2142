"""Prometheus exposition of the serving app, from ONE process: the app's ``monitor`` replica.

Design. Ray Serve replicas are separate processes, possibly on several nodes. The usual answers
have drawbacks here:

- ``prometheus_client.start_http_server`` in every replica needs one port per replica; several
  replicas share a pod, Prometheus would need to discover every (pod, port), and a scrape through
  the Serve HTTP proxy hits one random router replica;
- Ray's metrics API (``ray.util.metrics``) exports through Ray's per-node metrics agent, which
  renames every series ``ray_<name>`` and adds Ray's own labels: the contract in
  :mod:`mlplane.monitoring.names`, which the alert rules and dashboards read, would not hold.

So router replicas record each request into an in-memory delta (:class:`~.stats.TrafficStats`,
a few dict updates, no I/O) and ship it every flush (~0.5 s; exactly once, see
:mod:`mlplane.serving.router`) to the single ``monitor`` replica, which merges the deltas and
renders the contract's series from its totals at scrape time with this collector. Prometheus
scrapes ``GET /admin/metrics`` (with the scrape token, :mod:`mlplane.serving.admin`) on the
app's HTTP endpoint (any router replica forwards to the monitor): locally
``http://127.0.0.1:8000/<namespace>/<name>/admin/metrics``, on Kubernetes the RayService's
``-serve-svc`` on port 8000 — one target per deployment, complete whichever replica answers. A
monitor restart resets the counters, which ``rate()``/``increase()`` handle like any process
restart. ``GET /admin/v1/stats`` reads the same totals, so the JSON and the series agree.

The series are exactly those of :data:`mlplane.monitoring.names.METRICS` (names, types, label
names, buckets come from there): per-request SLO series for every (version, variant) served;
``mlplane_abtest_*`` for traffic inside an A/B test; drift gauges from the drift tap. Following
names.py, ``mlplane_requests_slow_total`` exists (from 0) only when the deployment has a latency
objective, and the ``*_sum``/``*_sum_squares`` outcome counters are typed as gauges.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client.core import (
    CollectorRegistry,
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import generate_latest
from prometheus_client.registry import Collector

from mlplane.monitoring import names as n
from mlplane.serving.drift_tap import DriftTap
from mlplane.serving.stats import Histogram, TrafficStats

__all__ = ["ServingCollector", "exposition"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def _family(name: str) -> Metric:
    metric = n.METRICS[name]
    labels = list(metric.labels)
    if metric.type == "histogram":
        return HistogramMetricFamily(name, metric.help, labels=labels)
    if metric.type == "counter" and name.endswith("_total"):
        return CounterMetricFamily(name.removesuffix("_total"), metric.help, labels=labels)
    return GaugeMetricFamily(name, metric.help, labels=labels)


def _histogram(family: Metric, labels: list[str], hist: Histogram) -> None:
    assert isinstance(family, HistogramMetricFamily)
    family.add_metric(labels, buckets=hist.cumulative(), sum_value=hist.total)


def _value(v: float | None) -> float:
    return float("nan") if v is None else float(v)


class ServingCollector(Collector):
    """Renders a deployment's totals (and its drift tap) as the contract's series."""

    def __init__(
        self,
        namespace: str,
        deployment: str,
        stats: TrafficStats,
        drift: DriftTap | None = None,
        *,
        has_slo: bool = False,
    ) -> None:
        self.namespace = namespace
        self.deployment = deployment
        self.stats = stats
        self.drift = drift
        self.has_slo = has_slo

    def collect(self) -> Iterator[Metric]:
        yield from self._requests()
        yield from self._abtests()
        if self.drift is not None and self.drift.settings.enabled:
            yield from self._drift()

    def _requests(self) -> Iterator[Metric]:
        dep = [self.namespace, self.deployment]
        total = _family(n.REQUESTS_TOTAL)
        for (version, variant, code), count in sorted(self.stats.requests.items()):
            total.add_metric([*dep, str(version), variant, code], count)
        duration = _family(n.REQUEST_DURATION_SECONDS)
        for (version, variant), hist in sorted(self.stats.latency.items()):
            _histogram(duration, [*dep, str(version), variant], hist)
        shed = _family(n.REQUESTS_SHED_TOTAL)
        for (version, variant), count in sorted(self.stats.shed.items()):
            shed.add_metric([*dep, str(version), variant], count)
        yield total
        yield duration
        yield shed
        if self.has_slo:
            slow = _family(n.REQUESTS_SLOW_TOTAL)
            for (version, variant), count in sorted(self.stats.slow.items()):
                slow.add_metric([*dep, str(version), variant], count)
            yield slow

    def _abtests(self) -> Iterator[Metric]:
        families = {
            name: _family(name)
            for name in (
                n.ABTEST_REQUESTS_TOTAL,
                n.ABTEST_ERRORS_TOTAL,
                n.ABTEST_OUTCOMES_TOTAL,
                n.ABTEST_OUTCOME_SUM,
                n.ABTEST_OUTCOME_SUM_SQUARES,
                n.ABTEST_LATENCY_SECONDS,
            )
        }
        items = sorted(
            ((a, v, c) for (a, v), c in self.stats.variants.items() if a is not None),
            key=lambda t: (t[0], t[1]),
        )
        for abtest, variant, c in items:
            labels = [self.namespace, abtest, variant]
            families[n.ABTEST_REQUESTS_TOTAL].add_metric(labels, c.requests)
            families[n.ABTEST_ERRORS_TOTAL].add_metric(labels, c.errors)
            families[n.ABTEST_OUTCOMES_TOTAL].add_metric(labels, c.outcomes)
            families[n.ABTEST_OUTCOME_SUM].add_metric(labels, c.outcome_sum)
            families[n.ABTEST_OUTCOME_SUM_SQUARES].add_metric(labels, c.outcome_sum_sq)
            _histogram(families[n.ABTEST_LATENCY_SECONDS], labels, c.latency)
        yield from families.values()

    def _drift(self) -> Iterator[Metric]:
        assert self.drift is not None
        dep = [self.namespace, self.deployment]
        samples = _family(n.DRIFT_WINDOW_SAMPLES)
        samples.add_metric(dep, self.drift.window_samples())
        yield samples
        latest = self.drift.latest()
        if latest is None:
            return
        score = _family(n.FEATURE_DRIFT_SCORE)
        p_value = _family(n.FEATURE_DRIFT_P_VALUE)
        drifted = _family(n.FEATURE_DRIFTED)
        for r in latest.results:
            for method, value in (("psi", r.psi), ("js", r.js), (r.method, r.statistic)):
                if value is not None:
                    score.add_metric([*dep, r.feature, method], value)
            if r.p_value_adjusted is not None:
                p_value.add_metric([*dep, r.feature], r.p_value_adjusted)
            drifted.add_metric([*dep, r.feature], 1.0 if r.drifted else 0.0)
        last = _family(n.DRIFT_LAST_EVALUATION_TIMESTAMP_SECONDS)
        last.add_metric(dep, _value(latest.evaluated_at))
        yield from (score, p_value, drifted, last)


def exposition(collector: ServingCollector) -> bytes:
    """The Prometheus text format of one collector (what ``GET /admin/metrics`` answers)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    return generate_latest(registry)


def describe() -> dict[str, Any]:
    """The serving series and their label names (for docs and tests)."""
    serving = {m.name: m.labels for m in n.METRICS.values() if m.exporter != "operator"}
    return {k: v for k, v in serving.items() if not k.startswith(("mlplane_slo_", "mlplane_tr"))}
