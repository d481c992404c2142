"""The ABTest decision: per-variant counts in, Continue/Promote/Rollback/NoDifference out.

Pure (no I/O, no clock: elapsed time is an input) so the ABTest reconciler can call it on the
numbers it read from Prometheus and tests can drive every rule directly.

Rules, in order:

1. Guardrails. A treatment whose observed error rate or p99 latency exceeds a guardrail's
   threshold (strictly) is rolled back at once, whatever the test says and before
   ``minSamplesPerVariant``: an SLO breach is harm to users now, not a hypothesis. But only once
   the treatment has served ``guardrail_min_samples`` requests (default 100): below that an
   observed p99 is just the maximum of a handful of requests and an error rate moves in steps of
   more than a point, so one unlucky early request would end every experiment. The control's
   breaches are reported but decide nothing (rolling back to the control cannot cure them). A
   breach by any treatment rolls back the whole experiment: the decision is about the
   experiment, and no treatment that breached may be promoted.
2. No test decision before every variant has ``minSamplesPerVariant`` observations (at least 2):
   the normal approximation behind the test needs them. Until then p-values and intervals are
   ``None``.
3. Each treatment is compared with the control by the always-valid mixture SPRT
   (``mlplane.monitoring.sequential``) at level ``alpha / k`` for ``k`` treatments (Bonferroni:
   the chance that *any* treatment is falsely declared different stays <= alpha).
   Some treatment significantly better (in the objective's direction) -> Promote, the winner
   being the significantly better treatment with the best estimate. Every treatment
   significantly worse -> Rollback.
4. ``maxDuration`` reached without (1) or (3) -> NoDifference.
5. Otherwise Continue.

Always-valid p-values only go down and confidence sequences only shrink over time; to keep
that across calls, pass the previous result's ``running_bounds()`` as ``previous`` (keep them in
the ABTest status). Without it each call uses only the current numbers, which is still valid,
just not monotone. Reset it when alpha, the metric or the mixture changes.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal, get_args

import numpy as np

from mlplane.monitoring.sequential import DEFAULT_MIXTURE, MetricKind, Mixture, compare

__all__ = [
    "GUARDRAIL_MIN_SAMPLES",
    "AnalysisResult",
    "Decision",
    "Direction",
    "Guardrail",
    "GuardrailBreach",
    "GuardrailMetric",
    "RunningBounds",
    "VariantObservation",
    "VariantResult",
    "decide",
]

Decision = Literal["Continue", "Promote", "Rollback", "NoDifference"]
Direction = Literal["Increase", "Decrease"]
GuardrailMetric = Literal["ErrorRate", "LatencyP99Ms"]

GUARDRAIL_MIN_SAMPLES = 100
"""Requests a variant must have served before its guardrails can roll it back (see rule 1)."""


@dataclass(frozen=True)
class VariantObservation:
    """What was observed for one variant, as cumulative counts since the experiment started.

    ``n``, ``total`` and ``total_sq`` are the count, sum and sum of squares of the objective
    metric's outcomes (``total_sq`` only for kind ``mean``; for 0/1 outcomes it equals
    ``total``). ``requests`` is how many requests the variant served, the sample size of its
    guardrail metrics (``None``: use ``n``). ``error_rate`` (a ratio in [0, 1]) and
    ``latency_p99_ms`` are the observed guardrail metrics, ``None`` when not measured.
    """

    name: str
    n: int
    total: float
    total_sq: float | None = None
    requests: int | None = None
    error_rate: float | None = None
    latency_p99_ms: float | None = None


@dataclass(frozen=True)
class Guardrail:
    """Breached when the variant's observed ``metric`` is strictly above ``threshold``."""

    metric: GuardrailMetric
    threshold: float


@dataclass(frozen=True)
class GuardrailBreach:
    variant: str
    metric: GuardrailMetric
    observed: float
    threshold: float
    control: bool

    def describe(self) -> str:
        unit = "ms" if self.metric == "LatencyP99Ms" else ""
        return (
            f"{self.metric} of {self.variant!r} is {self.observed:g}{unit}, "
            f"above the guardrail {self.threshold:g}{unit}"
        )


@dataclass(frozen=True)
class RunningBounds:
    """What must survive between calls for one treatment (store it in the ABTest status)."""

    p_value: float
    lower: float
    upper: float


@dataclass(frozen=True)
class VariantResult:
    """One variant's numbers. The comparison fields are for treatments against the control.

    ``difference`` is ``mean - control mean``; ``interval`` its confidence sequence at level
    ``alpha / k`` (running intersection with ``previous``); ``p_value`` the always-valid p-value
    (running minimum), ``p_value_adjusted`` = ``min(1, k * p_value)``, which is compared with
    alpha. ``better`` says whether the difference points in the objective's direction (by the
    interval when it excludes 0, else by the estimate). All ``None`` for the control and until
    the test has started.
    """

    name: str
    control: bool
    n: int
    mean: float | None
    difference: float | None = None
    interval: tuple[float, float] | None = None
    p_value: float | None = None
    p_value_adjusted: float | None = None
    significant: bool = False
    better: bool | None = None


@dataclass(frozen=True)
class AnalysisResult:
    """The decision and everything a status or an event message needs to explain it.

    ``winner`` is set only with Promote. ``guardrail_breaches`` lists every breach seen, the
    control's included (those have ``control=True`` and decide nothing). ``reason`` is one
    human sentence for a condition message.
    """

    decision: Decision
    winner: str | None
    reason: str
    alpha: float
    variants: tuple[VariantResult, ...]
    guardrail_breaches: tuple[GuardrailBreach, ...] = ()

    def variant(self, name: str) -> VariantResult:
        for v in self.variants:
            if v.name == name:
                return v
        raise KeyError(name)

    def running_bounds(self) -> dict[str, RunningBounds]:
        """The state to pass back as ``previous`` on the next call."""
        return {
            v.name: RunningBounds(v.p_value, v.interval[0], v.interval[1])
            for v in self.variants
            if v.p_value is not None and v.interval is not None
        }


def _check_inputs(variants: Sequence[VariantObservation], kind: MetricKind, alpha: float) -> None:
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    if kind not in get_args(MetricKind):
        raise ValueError(f"kind must be 'proportion' or 'mean', got {kind!r}")
    if len(variants) < 2:
        raise ValueError("an A/B test needs at least two variants (a control and a treatment)")
    names = [v.name for v in variants]
    if len(set(names)) != len(names):
        raise ValueError(f"variant names must be unique, got {names}")
    for v in variants:
        if v.n < 0 or not math.isfinite(v.total):
            raise ValueError(f"variant {v.name!r}: n must be >= 0 and total finite")
        if kind == "proportion" and not 0 <= v.total <= v.n:
            raise ValueError(
                f"variant {v.name!r}: a proportion needs 0 <= total <= n, "
                f"got total={v.total} n={v.n}"
            )
        if kind == "mean" and (v.total_sq is None or not math.isfinite(v.total_sq)):
            raise ValueError(f"variant {v.name!r}: kind 'mean' needs a finite total_sq")


def _guardrails(
    variants: Sequence[VariantObservation],
    guardrails: Sequence[Guardrail | tuple[str, float]],
    control: str,
    min_samples: int,
) -> list[GuardrailBreach]:
    breaches = []
    for given in guardrails:
        if isinstance(given, Guardrail):
            metric, threshold = given.metric, given.threshold
        else:
            metric, threshold = given
        if metric not in get_args(GuardrailMetric):
            raise ValueError(
                f"guardrail metric must be one of {get_args(GuardrailMetric)}, got {metric!r}"
            )
        rail = Guardrail(metric, float(threshold))  # type: ignore[arg-type]
        for v in variants:
            served = v.n if v.requests is None else v.requests
            observed = v.error_rate if rail.metric == "ErrorRate" else v.latency_p99_ms
            if observed is None or served < min_samples:
                continue
            if observed > rail.threshold:
                is_control = v.name == control
                breaches.append(
                    GuardrailBreach(v.name, rail.metric, observed, rail.threshold, is_control)
                )
    return breaches


def decide(
    variants: Sequence[VariantObservation],
    *,
    alpha: float = 0.05,
    min_samples_per_variant: int = 1000,
    elapsed_seconds: float = 0.0,
    max_duration_seconds: float | None = None,
    direction: Direction = "Increase",
    guardrails: Sequence[Guardrail | tuple[str, float]] = (),
    kind: MetricKind = "proportion",
    control: str | None = None,
    previous: Mapping[str, RunningBounds] | None = None,
    mixture: Mixture = DEFAULT_MIXTURE,
    guardrail_min_samples: int = GUARDRAIL_MIN_SAMPLES,
) -> AnalysisResult:
    """Decide an A/B test from cumulative per-variant statistics (rules in the module doc).

    ``control`` names the control variant (default: the first). ``direction`` is the
    objective's: ``Increase`` (conversion) or ``Decrease`` (latency, cost). ``guardrails`` are
    ``Guardrail`` objects or ``(metric, threshold)`` pairs. ``previous`` is the last result's
    ``running_bounds()`` to keep p-values and intervals monotone.
    """
    _check_inputs(variants, kind, alpha)
    if direction not in get_args(Direction):
        raise ValueError(f"direction must be 'Increase' or 'Decrease', got {direction!r}")
    control_name = variants[0].name if control is None else control
    by_name = {v.name: v for v in variants}
    if control_name not in by_name:
        raise ValueError(f"control {control_name!r} is not among the variants {list(by_name)}")
    ctrl = by_name[control_name]
    treatments = [v for v in variants if v.name != control_name]
    k = len(treatments)
    sign = 1.0 if direction == "Increase" else -1.0
    previous = previous or {}

    breaches = _guardrails(variants, guardrails, control_name, guardrail_min_samples)
    need = max(int(min_samples_per_variant), 2)
    started = all(v.n >= need for v in variants)

    def mean(v: VariantObservation) -> float | None:
        return v.total / v.n if v.n > 0 else None

    results = [VariantResult(ctrl.name, True, ctrl.n, mean(ctrl))]
    if started:
        cmp = compare(
            ctrl.n,
            ctrl.total,
            ctrl.total_sq,
            np.array([t.n for t in treatments]),
            np.array([t.total for t in treatments]),
            None if kind == "proportion" else np.array([t.total_sq for t in treatments]),
            kind=kind,
            alpha=alpha / k,
            mixture=mixture,
        )
        for i, t in enumerate(treatments):
            p = float(cmp.p_value[i])
            lo, hi = float(cmp.lower[i]), float(cmp.upper[i])
            prior = previous.get(t.name)
            if prior is not None:
                # Running minimum and running intersection. The intersection is empty only on
                # the probability-alpha event of a miss; it is kept as is (lower > upper) so
                # that calls in a row and `replay` decide alike.
                p = min(p, prior.p_value)
                lo, hi = max(lo, prior.lower), min(hi, prior.upper)
            diff = float(cmp.difference[i])
            positive = True if lo > 0 else False if hi < 0 else diff > 0
            better = positive if sign > 0 else not positive
            p_adj = min(1.0, k * p)
            results.append(
                VariantResult(
                    t.name, False, t.n, mean(t), diff, (lo, hi), p, p_adj, p_adj <= alpha, better
                )
            )
    else:
        results.extend(VariantResult(t.name, False, t.n, mean(t)) for t in treatments)

    def result(decision: Decision, reason: str, winner: str | None = None) -> AnalysisResult:
        ordered = {r.name: r for r in results}
        return AnalysisResult(
            decision=decision,
            winner=winner,
            reason=reason,
            alpha=alpha,
            variants=tuple(ordered[v.name] for v in variants),
            guardrail_breaches=tuple(breaches),
        )

    treatment_breaches = [b for b in breaches if not b.control]
    if treatment_breaches:
        return result("Rollback", "; ".join(b.describe() for b in treatment_breaches))

    compared = [r for r in results if not r.control]
    if started:
        winners = [r for r in compared if r.significant and r.better]
        if winners:
            best = max(winners, key=lambda r: sign * (r.difference or 0.0))
            return result("Promote", _explain(best, control_name, alpha, k), best.name)
        if all(r.significant and r.better is False for r in compared):
            worst = max(compared, key=lambda r: r.p_value_adjusted or 0.0)
            reason = "every treatment is worse than the control; weakest evidence: "
            return result("Rollback", reason + _explain(worst, control_name, alpha, k))

    timed_out = max_duration_seconds is not None and elapsed_seconds >= max_duration_seconds
    if not started:
        counts = ", ".join(f"{v.name}={v.n}" for v in variants)
        waiting = f"fewer than minSamplesPerVariant={need} observations ({counts})"
        if timed_out:
            return result("NoDifference", f"maxDuration reached with {waiting}")
        return result("Continue", f"waiting for samples: {waiting}")
    # Here no treatment is significantly better; report the undecided ones' best p-value.
    losers = [r.name for r in compared if r.significant]
    undecided = [r.p_value_adjusted for r in compared if not r.significant]
    best_p = min(1.0 if p is None else p for p in undecided)
    worse = f"; significantly worse: {', '.join(losers)}" if losers else ""
    if timed_out:
        return result(
            "NoDifference",
            f"maxDuration reached without a conclusive difference (smallest adjusted "
            f"always-valid p-value {best_p:.3g}, alpha {alpha:g}{worse})",
        )
    return result(
        "Continue",
        f"no conclusive difference yet (smallest adjusted always-valid p-value {best_p:.3g}, "
        f"alpha {alpha:g}{worse})",
    )


def _explain(r: VariantResult, control: str, alpha: float, k: int) -> str:
    assert r.interval is not None
    assert r.difference is not None
    lo, hi = r.interval
    word = "better" if r.better else "worse"
    correction = f", Bonferroni over {k} treatments" if k > 1 else ""
    return (
        f"{r.name!r} is {word} than {control!r}: difference {r.difference:+.4g} "
        f"(confidence sequence [{lo:.4g}, {hi:.4g}]), always-valid p-value "
        f"{r.p_value_adjusted:.3g} <= alpha {alpha:g}{correction}"
    )
