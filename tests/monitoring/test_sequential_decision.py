"""The ABTest decision rules (mlplane.monitoring.abtest_analysis.decide)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from mlplane.monitoring.abtest_analysis import (
    GUARDRAIL_MIN_SAMPLES,
    Guardrail,
    RunningBounds,
    VariantObservation,
    decide,
)


def conv(name, n, rate, **kw):
    return VariantObservation(name, n, round(n * rate), **kw)


def latency(name, n, mean_ms, sd_ms, **kw):
    """Sufficient statistics of n latencies with exactly this mean and sample sd."""
    return VariantObservation(name, n, n * mean_ms, n * mean_ms**2 + (n - 1) * sd_ms**2, **kw)


CLEAR_WIN = [conv("control", 2000, 0.10), conv("treatment", 2000, 0.16)]
CLEAR_LOSS = [conv("control", 2000, 0.16), conv("treatment", 2000, 0.10)]
TIE = [conv("control", 2000, 0.10), conv("treatment", 2000, 0.10)]


def test_significantly_better_treatment_is_promoted():
    r = decide(CLEAR_WIN, min_samples_per_variant=1000)
    assert r.decision == "Promote"
    assert r.winner == "treatment"
    t = r.variant("treatment")
    assert t.significant
    assert t.better
    assert t.p_value is not None
    assert t.p_value <= 0.05
    assert t.interval is not None
    assert 0 < t.interval[0] < 0.06 < t.interval[1]
    assert t.difference == pytest.approx(0.06)
    assert r.variant("control").mean == pytest.approx(0.10)
    assert r.variant("control").p_value is None
    assert "'treatment' is better than 'control'" in r.reason


def test_significantly_worse_treatment_is_rolled_back():
    r = decide(CLEAR_LOSS, min_samples_per_variant=1000)
    assert r.decision == "Rollback"
    assert r.winner is None
    assert r.variant("treatment").better is False
    assert "worse" in r.reason


def test_direction_decrease_prefers_lower_values():
    faster = [latency("control", 2000, 200.0, 20.0), latency("fast", 2000, 195.0, 20.0)]
    down = decide(faster, kind="mean", direction="Decrease", min_samples_per_variant=1000)
    assert down.decision == "Promote"
    assert down.winner == "fast"
    up = decide(faster, kind="mean", direction="Increase", min_samples_per_variant=1000)
    assert up.decision == "Rollback"


def test_no_decision_before_min_samples_per_variant():
    few = [conv("control", 2000, 0.10), conv("treatment", 999, 0.30)]
    r = decide(few, min_samples_per_variant=1000)
    assert r.decision == "Continue"
    assert r.winner is None
    assert r.variant("treatment").p_value is None
    assert r.variant("treatment").interval is None
    assert r.variant("treatment").mean == pytest.approx(0.30, abs=1e-3)
    assert "minSamplesPerVariant=1000" in r.reason
    enough = [conv("control", 2000, 0.10), conv("treatment", 1000, 0.30)]
    assert decide(enough, min_samples_per_variant=1000).decision == "Promote"


def test_max_duration_without_significance_is_no_difference():
    week = 7 * 86400.0
    r = decide(TIE, min_samples_per_variant=1000, elapsed_seconds=week, max_duration_seconds=week)
    assert r.decision == "NoDifference"
    assert r.winner is None
    assert "maxDuration" in r.reason
    early = decide(TIE, elapsed_seconds=3600, max_duration_seconds=week)
    assert early.decision == "Continue"
    # Even when the minimum sample size was never reached.
    starved = [conv("control", 10, 0.1), conv("treatment", 10, 0.1)]
    late = decide(starved, elapsed_seconds=week, max_duration_seconds=week)
    assert late.decision == "NoDifference"
    # A significant result at the deadline still counts.
    won = decide(CLEAR_WIN, elapsed_seconds=week + 1, max_duration_seconds=week)
    assert won.decision == "Promote"


def test_guardrail_breach_rolls_back_at_once_whatever_the_test_says():
    variants = [
        conv("control", 300, 0.10, error_rate=0.001),
        conv("treatment", 300, 0.30, error_rate=0.08, requests=400),
    ]
    r = decide(variants, min_samples_per_variant=1000, guardrails=[("ErrorRate", 0.05)])
    assert r.decision == "Rollback"
    assert r.winner is None
    (breach,) = r.guardrail_breaches
    assert (breach.variant, breach.metric, breach.observed, breach.threshold) == (
        "treatment",
        "ErrorRate",
        0.08,
        0.05,
    )
    assert not breach.control
    assert "ErrorRate of 'treatment' is 0.08" in r.reason
    # Also overrides a significant win.
    winning = [
        conv("control", 2000, 0.10),
        conv("treatment", 2000, 0.16, latency_p99_ms=900.0),
    ]
    r = decide(winning, guardrails=[Guardrail("LatencyP99Ms", 500.0)])
    assert r.decision == "Rollback"
    assert r.guardrail_breaches[0].metric == "LatencyP99Ms"


def test_guardrail_waits_for_enough_requests_and_is_strict():
    rails = [("ErrorRate", 0.05)]
    thin = [conv("control", 50, 0.1), conv("treatment", 50, 0.1, error_rate=0.5)]
    assert decide(thin, guardrails=rails).decision == "Continue"
    served = GUARDRAIL_MIN_SAMPLES
    enough = [conv("control", 50, 0.1), conv("treatment", 50, 0.1, error_rate=0.5, requests=served)]
    assert decide(enough, guardrails=rails).decision == "Rollback"
    at = [conv("control", 500, 0.1), conv("treatment", 500, 0.1, error_rate=0.05)]
    assert decide(at, guardrails=rails).guardrail_breaches == ()
    unmeasured = [conv("control", 500, 0.1), conv("treatment", 500, 0.1)]
    assert decide(unmeasured, guardrails=rails).decision == "Continue"


def test_control_breach_is_reported_but_decides_nothing():
    variants = [
        conv("control", 2000, 0.10, latency_p99_ms=800.0),
        conv("treatment", 2000, 0.16, latency_p99_ms=300.0),
    ]
    r = decide(variants, guardrails=[("LatencyP99Ms", 500)])
    assert r.decision == "Promote"
    assert [(b.variant, b.control) for b in r.guardrail_breaches] == [("control", True)]


def test_several_treatments():
    better, worse, neutral = (
        conv("better", 3000, 0.15),
        conv("worse", 3000, 0.05),
        conv("neutral", 3000, 0.10),
    )
    control = conv("control", 3000, 0.10)
    r = decide([control, worse, better])
    assert (r.decision, r.winner) == ("Promote", "better")
    best = decide([control, conv("good", 3000, 0.13), conv("great", 3000, 0.17)])
    assert (best.decision, best.winner) == ("Promote", "great")
    assert decide([control, worse, conv("worse2", 3000, 0.06)]).decision == "Rollback"
    waiting = decide([control, worse, neutral])
    assert waiting.decision == "Continue"
    assert "significantly worse: worse" in waiting.reason


def test_bonferroni_adjusts_the_p_values():
    control = conv("control", 3000, 0.10)
    two = decide([control, conv("a", 3000, 0.115)], min_samples_per_variant=100)
    three = decide(
        [control, conv("a", 3000, 0.115), conv("b", 3000, 0.10)], min_samples_per_variant=100
    )
    a2, a3 = two.variant("a"), three.variant("a")
    assert a2.p_value_adjusted == pytest.approx(a2.p_value)
    assert a3.p_value_adjusted == pytest.approx(min(1.0, 2 * a3.p_value))
    assert a3.interval is not None
    assert a2.interval is not None
    assert a3.interval[1] - a3.interval[0] > a2.interval[1] - a2.interval[0]  # level alpha/2


def test_previous_bounds_keep_p_values_monotone_and_intervals_nested():
    rng = np.random.default_rng(1)
    counts = np.zeros(2, dtype=int)
    conversions = np.zeros(2, dtype=int)
    previous = None
    history = []
    for _ in range(30):
        counts += 200
        conversions += rng.binomial(200, [0.10, 0.11])
        obs = [
            VariantObservation(nm, int(n), int(x))
            for nm, n, x in zip("ct", counts, conversions, strict=True)
        ]
        r = decide(obs, min_samples_per_variant=200, previous=previous)
        previous = r.running_bounds()
        history.append(r.variant("t"))
    ps = [v.p_value for v in history]
    assert all(b <= a for a, b in itertools.pairwise(ps))
    for a, b in itertools.pairwise(history):
        assert a.interval[0] <= b.interval[0] <= b.interval[1] <= a.interval[1]
    # A remembered small p-value concludes even if today's numbers alone would not.
    kept = decide(TIE, previous={"treatment": RunningBounds(0.01, 0.001, 0.02)})
    assert kept.decision == "Promote"
    assert kept.variant("treatment").p_value == 0.01


def test_explicit_control_need_not_be_first():
    r = decide(list(reversed(CLEAR_WIN)), control="control")
    assert (r.decision, r.winner) == ("Promote", "treatment")
    assert [v.name for v in r.variants] == ["treatment", "control"]


@pytest.mark.parametrize(
    ("variants", "kwargs", "message"),
    [
        ([conv("a", 10, 0.1)], {}, "at least two variants"),
        ([conv("a", 10, 0.1), conv("a", 10, 0.1)], {}, "unique"),
        (TIE, {"alpha": 0.0}, "alpha"),
        (TIE, {"kind": "mean"}, "total_sq"),
        (TIE, {"kind": "median"}, "kind"),
        (TIE, {"direction": "Up"}, "direction"),
        (TIE, {"control": "nope"}, "control"),
        (TIE, {"guardrails": [("Cost", 1.0)]}, "guardrail metric"),
        ([VariantObservation("a", 10, 11), conv("b", 10, 0.1)], {}, "total <= n"),
    ],
)
def test_bad_inputs(variants, kwargs, message):
    with pytest.raises(ValueError, match=message):
        decide(variants, **kwargs)
