"""Per-variant traffic statistics: mergeable deltas from router replicas, totals in the monitor.

Pure (no I/O, no clock). Each router replica records every request into a
:class:`TrafficStats` and ships it (as :meth:`TrafficStats.to_wire`) to the app's single
``monitor`` deployment, which merges the deltas into its totals. The totals feed both the
Prometheus exposition (:mod:`mlplane.serving.metrics`) and ``GET /v1/stats``
(:meth:`TrafficStats.snapshot`), so the two can never disagree.

Two keyings, because two consumers:

- per ``(version, variant)``: the SLO series (``mlplane_requests_total`` by status class,
  ``mlplane_request_duration_seconds``, ``mlplane_requests_slow_total``);
- per ``(abtest, variant)``: the A/B series and ``/v1/stats`` — requests, errors (5xx: a client's
  bad input is not the variant's failure), latency, and outcomes (count, sum, sum of squares:
  what the sequential test needs for a Mean objective). ``abtest`` is None outside an A/B test;
  those counts are in ``/v1/stats`` but not in the ``mlplane_abtest_*`` series.

Latency is kept as a histogram on :data:`mlplane.monitoring.names.REQUEST_DURATION_BUCKETS`
(the buckets the Prometheus series use) plus the exact sum and sum of squares, so the p99 in
``/v1/stats`` is estimated the way ``histogram_quantile`` would and the Latency objective's mean
and variance are exact.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from mlplane.monitoring.names import REQUEST_DURATION_BUCKETS, status_class

__all__ = ["BUCKETS", "Histogram", "TrafficStats", "VariantCounts", "quantile"]

BUCKETS: tuple[float, ...] = REQUEST_DURATION_BUCKETS


def quantile(q: float, bounds: Sequence[float], counts: Sequence[int]) -> float | None:
    """Estimate the ``q``-quantile from per-bucket counts (``len(bounds) + 1``, last is +Inf).

    Linear interpolation inside the bucket holding the quantile, as Prometheus'
    ``histogram_quantile`` does (lower edge 0 for the first bucket); a quantile in the +Inf
    bucket is reported as the largest finite bound (a lower bound on the truth). None without
    observations.
    """
    if not 0 <= q <= 1:
        raise ValueError("q must be in [0, 1]")
    if len(counts) != len(bounds) + 1:
        raise ValueError(f"{len(counts)} counts for {len(bounds)} bounds (+Inf)")
    total = sum(counts)
    if total == 0:
        return None
    rank = q * total
    cumulative = 0
    for i, c in enumerate(counts[:-1]):
        if c > 0 and cumulative + c >= rank:
            lower = bounds[i - 1] if i > 0 else 0.0
            return lower + (bounds[i] - lower) * (rank - cumulative) / c
        cumulative += c
    return bounds[-1]


@dataclass
class Histogram:
    """Counts per latency bucket (non-cumulative, +Inf last) and exact sum/sum of squares."""

    counts: list[int] = field(default_factory=lambda: [0] * (len(BUCKETS) + 1))
    total: float = 0.0
    total_sq: float = 0.0

    @property
    def count(self) -> int:
        return sum(self.counts)

    def observe(self, seconds: float) -> None:
        index = next((i for i, b in enumerate(BUCKETS) if seconds <= b), len(BUCKETS))
        self.counts[index] += 1
        self.total += seconds
        self.total_sq += seconds * seconds

    def merge(self, other: Histogram) -> None:
        for i, c in enumerate(other.counts):
            self.counts[i] += c
        self.total += other.total
        self.total_sq += other.total_sq

    def cumulative(self) -> list[tuple[str, int]]:
        """``(le, cumulative count)`` pairs as Prometheus exposes them, ``+Inf`` last."""
        out, running = [], 0
        for bound, c in zip((*BUCKETS, math.inf), self.counts, strict=True):
            running += c
            out.append(("+Inf" if bound == math.inf else repr(float(bound)), running))
        return out

    def to_wire(self) -> list[Any]:
        return [list(self.counts), self.total, self.total_sq]

    @classmethod
    def from_wire(cls, wire: Sequence[Any]) -> Histogram:
        counts, total, total_sq = wire
        if len(counts) != len(BUCKETS) + 1:
            raise ValueError("histogram on other buckets")
        return cls([int(c) for c in counts], float(total), float(total_sq))


@dataclass
class VariantCounts:
    """One variant's numbers within one A/B test (or outside any: ``abtest`` None)."""

    requests: int = 0
    errors: int = 0
    outcomes: int = 0
    outcome_sum: float = 0.0
    outcome_sum_sq: float = 0.0
    latency: Histogram = field(default_factory=Histogram)
    versions: set[int] = field(default_factory=set)

    def merge(self, other: VariantCounts) -> None:
        self.requests += other.requests
        self.errors += other.errors
        self.outcomes += other.outcomes
        self.outcome_sum += other.outcome_sum
        self.outcome_sum_sq += other.outcome_sum_sq
        self.latency.merge(other.latency)
        self.versions |= other.versions

    def to_wire(self) -> list[Any]:
        return [
            self.requests,
            self.errors,
            self.outcomes,
            self.outcome_sum,
            self.outcome_sum_sq,
            self.latency.to_wire(),
            sorted(self.versions),
        ]

    @classmethod
    def from_wire(cls, wire: Sequence[Any]) -> VariantCounts:
        requests, errors, outcomes, s, s2, latency, versions = wire
        return cls(
            int(requests),
            int(errors),
            int(outcomes),
            float(s),
            float(s2),
            Histogram.from_wire(latency),
            {int(v) for v in versions},
        )


@dataclass
class TrafficStats:
    """Request and outcome counts; a router's delta or the monitor's totals (same type)."""

    #: (version, variant, status class) → requests
    requests: dict[tuple[int, str, str], int] = field(default_factory=dict)
    #: (version, variant) → latency
    latency: dict[tuple[int, str], Histogram] = field(default_factory=dict)
    #: (version, variant) → requests slower than the latency objective
    slow: dict[tuple[int, str], int] = field(default_factory=dict)
    #: (abtest, variant) → A/B numbers
    variants: dict[tuple[str | None, str], VariantCounts] = field(default_factory=dict)
    #: (version, variant) → requests shed: answered 503 + Retry-After because the model's
    #: queue was full (``max_queued_requests``); also counted in ``requests`` as 5xx
    shed: dict[tuple[int, str], int] = field(default_factory=dict)

    def is_empty(self) -> bool:
        return not (self.requests or self.variants or self.slow or self.shed)

    def _variant(self, abtest: str | None, variant: str) -> VariantCounts:
        key = (abtest, variant)
        counts = self.variants.get(key)
        if counts is None:
            counts = self.variants[key] = VariantCounts()
        return counts

    def touch(self, version: int, variant: str, abtest: str | None, slo_s: float | None) -> None:
        """Create a served (version, variant)'s series at zero (see names.py: "create at 0")."""
        if slo_s is not None:
            self.slow.setdefault((version, variant), 0)
        self.shed.setdefault((version, variant), 0)
        self._variant(abtest, variant).versions.add(version)

    def record_request(
        self,
        variant: str,
        version: int,
        abtest: str | None,
        status: int,
        seconds: float,
        slo_s: float | None = None,
        *,
        shed: bool = False,
    ) -> None:
        """One answered request; ``slo_s`` is the latency objective (None: none); ``shed``:
        refused for overload (a 503 the model's full queue caused)."""
        code = status_class(status)
        key = (version, variant, code)
        self.requests[key] = self.requests.get(key, 0) + 1
        if shed:
            self.shed[(version, variant)] = self.shed.get((version, variant), 0) + 1
        hist = self.latency.get((version, variant))
        if hist is None:
            hist = self.latency[(version, variant)] = Histogram()
        hist.observe(seconds)
        if slo_s is not None:
            slow_key = (version, variant)
            self.slow[slow_key] = self.slow.get(slow_key, 0) + (1 if seconds > slo_s else 0)
        counts = self._variant(abtest, variant)
        counts.requests += 1
        counts.errors += 1 if status >= 500 else 0
        counts.latency.observe(seconds)
        counts.versions.add(version)

    def record_outcome(self, abtest: str | None, variant: str, version: int, value: float) -> None:
        counts = self._variant(abtest, variant)
        counts.outcomes += 1
        counts.outcome_sum += value
        counts.outcome_sum_sq += value * value
        counts.versions.add(version)

    def merge(self, other: TrafficStats) -> None:
        for key, n in other.requests.items():
            self.requests[key] = self.requests.get(key, 0) + n
        for key, hist in other.latency.items():
            mine = self.latency.get(key)
            if mine is None:
                mine = self.latency[key] = Histogram()
            mine.merge(hist)
        for key, n in other.slow.items():
            self.slow[key] = self.slow.get(key, 0) + n
        for key, n in other.shed.items():
            self.shed[key] = self.shed.get(key, 0) + n
        for (abtest, variant), counts in other.variants.items():
            self._variant(abtest, variant).merge(counts)

    def to_wire(self) -> dict[str, Any]:
        """Plain lists and numbers (what a Serve handle call carries)."""
        return {
            "requests": [[v, n, c, k] for (v, n, c), k in self.requests.items()],
            "latency": [[v, n, h.to_wire()] for (v, n), h in self.latency.items()],
            "slow": [[v, n, k] for (v, n), k in self.slow.items()],
            "variants": [[a, n, c.to_wire()] for (a, n), c in self.variants.items()],
            "shed": [[v, n, k] for (v, n), k in self.shed.items()],
        }

    @classmethod
    def from_wire(cls, wire: dict[str, Any]) -> TrafficStats:
        out = cls()
        for v, n, c, k in wire.get("requests", ()):
            out.requests[(int(v), str(n), str(c))] = int(k)
        for v, n, h in wire.get("latency", ()):
            out.latency[(int(v), str(n))] = Histogram.from_wire(h)
        for v, n, k in wire.get("slow", ()):
            out.slow[(int(v), str(n))] = int(k)
        for a, n, c in wire.get("variants", ()):
            out.variants[(None if a is None else str(a), str(n))] = VariantCounts.from_wire(c)
        for v, n, k in wire.get("shed", ()):  # absent from a router of an earlier release
            out.shed[(int(v), str(n))] = int(k)
        return out

    def snapshot(self, abtest: str | None = None, *, all_tests: bool = False) -> list[dict]:
        """Per-variant numbers for ``GET /v1/stats`` (camelCase JSON), sorted by variant.

        ``abtest`` selects one experiment (None: traffic outside any A/B test);
        ``all_tests`` lists every (abtest, variant) seen.
        """
        rows = []
        for (test, variant), c in sorted(
            self.variants.items(), key=lambda kv: (kv[0][0] or "", kv[0][1])
        ):
            if not all_tests and test != abtest:
                continue
            p99 = quantile(0.99, BUCKETS, c.latency.counts)
            rows.append(
                {
                    "abtest": test,
                    "variant": variant,
                    "versions": sorted(c.versions),
                    "requests": c.requests,
                    "errors": c.errors,
                    "errorRate": c.errors / c.requests if c.requests else None,
                    "outcomes": c.outcomes,
                    "outcomeSum": c.outcome_sum,
                    "outcomeSumSquares": c.outcome_sum_sq,
                    "outcomeMean": c.outcome_sum / c.outcomes if c.outcomes else None,
                    "latencyCount": c.latency.count,
                    "latencySumSeconds": c.latency.total,
                    "latencySumSquaresSeconds": c.latency.total_sq,
                    "latencyP99Ms": None if p99 is None else p99 * 1000,
                }
            )
        return rows

    def abtests(self) -> Iterable[str]:
        return sorted({a for a, _ in self.variants if a is not None})
