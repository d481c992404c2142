"""Error rates of the always-valid sequential test under continuous monitoring (simulation).

Every simulation is seeded and vectorised: experiments x looks arrays of cumulative counts.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import norm

from mlplane.monitoring.sequential import (
    Mixture,
    arm_variance,
    compare,
    confidence_radius,
    fixed_horizon_sample_size,
    mixture_log_lr,
    moments_from_histogram,
    p_value_from_log_lr,
    running_interval,
    running_p_value,
)

ALPHA = 0.05
EXPERIMENTS = 1000
STEP = 100  # observations per arm between looks
LOOKS = 50  # 5,000 per arm at most


def binomial_paths(rng, rates, experiments=EXPERIMENTS, looks=LOOKS, step=STEP):
    """Cumulative conversions per look: shape (experiments, looks, arms); n per arm per look."""
    x = rng.binomial(step, rates, size=(experiments, looks, len(rates))).cumsum(axis=1)
    n = step * np.arange(1, looks + 1)
    return x, n


def first_significant(p_running, alpha):
    """Index of the first look with p <= alpha (LOOKS - 1 when never) and whether it happened."""
    hit = p_running <= alpha
    return np.where(hit.any(axis=-1), hit.argmax(axis=-1), hit.shape[-1] - 1), hit.any(axis=-1)


def test_aa_false_positive_rate_holds_under_continuous_monitoring_unlike_a_naive_z_test():
    rng = np.random.default_rng(20261129)
    x, n = binomial_paths(rng, [0.10, 0.10])
    cmp = compare(n, x[..., 0], None, n, x[..., 1], None, kind="proportion", alpha=ALPHA)
    p = running_p_value(cmp.p_value, axis=1)
    fpr = float((p[:, -1] <= ALPHA).mean())

    # The naive alternative: a pooled two-proportion z-test read at every look.
    pooled = (x[..., 0] + x[..., 1]) / (2 * n)
    se = np.sqrt(pooled * (1 - pooled) * 2 / n)
    z = np.abs(x[..., 1] - x[..., 0]) / n / np.where(se > 0, se, np.inf)
    naive = float((z >= norm.ppf(1 - ALPHA / 2)).any(axis=1).mean())
    print(f"\nA/A, {LOOKS} looks: always-valid FPR {fpr:.3f}, naive repeated z-test {naive:.3f}")

    assert fpr <= ALPHA
    assert naive > 0.15
    assert naive > 3 * max(fpr, 0.01)
    # Always valid: p never goes back up.
    assert (np.diff(p, axis=1) <= 0).all()


def test_detects_three_points_lift_sooner_than_a_fixed_horizon_test_with_the_same_power():
    """0.10 vs 0.13: compared with the fixed-horizon n at alpha 0.05 two-sided, POWER 0.95."""
    rng = np.random.default_rng(7)
    x, n = binomial_paths(rng, [0.10, 0.13])
    cmp = compare(n, x[..., 0], None, n, x[..., 1], None, kind="proportion", alpha=ALPHA)
    p = running_p_value(cmp.p_value, axis=1)
    stop, detected = first_significant(p, ALPHA)
    rows = np.arange(EXPERIMENTS)
    lower, upper = running_interval(cmp.lower, cmp.upper, axis=1)
    wrong = detected & (upper[rows, stop] < 0)
    right = detected & (lower[rows, stop] > 0)
    samples = n[stop]  # undetected experiments ran to the 5,000 cap
    fixed = fixed_horizon_sample_size(0.10, 0.13, alpha=ALPHA, power=0.95)
    ratio = samples.mean() / fixed
    print(
        f"\n0.10 vs 0.13: detected {detected.mean():.3f}, mean samples per arm at stop "
        f"{samples.mean():.0f} = {ratio:.3f} x fixed-horizon n {fixed} (power 0.95)"
    )

    assert 2900 <= fixed <= 2960  # the textbook value, about 2,937 per arm
    assert detected.mean() >= 0.95
    assert not wrong.any()
    assert right.sum() == detected.sum()
    assert ratio <= 0.7


def test_default_mixture_beats_the_best_centred_normal_mixture_on_the_design_effect():
    """Why the default is centred away from 0 (see the module docstring)."""
    rng = np.random.default_rng(11)
    x, n = binomial_paths(rng, [0.10, 0.13], experiments=500)
    stops = {}
    for label, mixture in {"default": Mixture(), "johari": Mixture(center=0.0, scale=0.1)}.items():
        cmp = compare(
            n, x[..., 0], None, n, x[..., 1], None, kind="proportion", alpha=ALPHA, mixture=mixture
        )
        stop, _ = first_significant(running_p_value(cmp.p_value, axis=1), ALPHA)
        stops[label] = n[stop].mean()
    print(f"\nmean samples per arm at stop: {stops}")
    assert stops["default"] < stops["johari"]


def normal_paths(rng, means, sd, experiments=EXPERIMENTS, looks=LOOKS, step=STEP, dist="normal"):
    """Cumulative (n, sum, sum of squares) per look for numeric outcomes."""
    shape = (experiments, looks * step, len(means))
    if dist == "normal":
        y = rng.normal(means, sd, size=shape)
    else:  # lognormal latency with the given medians
        y = np.exp(rng.normal(np.log(means), sd, size=shape))
    y = y.reshape(experiments, looks, step, len(means))
    s = y.sum(axis=2).cumsum(axis=1)
    q = (y * y).sum(axis=2).cumsum(axis=1)
    return s, q, step * np.arange(1, looks + 1)


@pytest.mark.parametrize("dist", ["normal", "lognormal"])
def test_means_aa_false_positive_rate(dist):
    rng = np.random.default_rng(3 if dist == "normal" else 4)
    sd = 20.0 if dist == "normal" else 0.8
    s, q, n = normal_paths(rng, [200.0, 200.0], sd, experiments=600, dist=dist)
    cmp = compare(n, s[..., 0], q[..., 0], n, s[..., 1], q[..., 1], kind="mean", alpha=ALPHA)
    fpr = float((running_p_value(cmp.p_value, axis=1)[:, -1] <= ALPHA).mean())
    print(f"\nmeans A/A ({dist}): FPR {fpr:.3f}")
    assert fpr <= ALPHA


def test_means_detects_a_latency_shift_in_the_right_direction():
    rng = np.random.default_rng(5)
    # 200 ms -> 196 ms with sd 20 ms: a shift of 0.2 sd.
    s, q, n = normal_paths(rng, [200.0, 196.0], 20.0, experiments=400)
    cmp = compare(n, s[..., 0], q[..., 0], n, s[..., 1], q[..., 1], kind="mean", alpha=ALPHA)
    stop, detected = first_significant(running_p_value(cmp.p_value, axis=1), ALPHA)
    rows = np.arange(len(stop))
    _, upper = running_interval(cmp.lower, cmp.upper, axis=1)
    print(f"\nlatency -0.2 sd: detected {detected.mean():.3f}, mean stop {n[stop].mean():.0f}")
    assert detected.mean() >= 0.95
    assert (upper[rows, stop][detected] < 0).all()  # the treatment is faster, never slower


def test_three_variants_bonferroni_keeps_the_family_wise_error_rate():
    rng = np.random.default_rng(13)
    x, n = binomial_paths(rng, [0.10, 0.10, 0.10])
    treatments = 2
    cmp = compare(
        n[None, :],
        x[None, ..., 0],
        None,
        n[None, :],
        np.moveaxis(x[..., 1:], -1, 0),
        None,
        kind="proportion",
        alpha=ALPHA / treatments,
    )
    p_adj = np.minimum(1.0, treatments * running_p_value(cmp.p_value, axis=-1))
    family = float((p_adj[..., -1] <= ALPHA).any(axis=0).mean())
    raw = running_p_value(cmp.p_value, axis=-1)[..., -1]
    uncorrected = float((raw <= ALPHA).any(axis=0).mean())
    print(f"\nA/A/A: family-wise FPR {family:.3f} (uncorrected {uncorrected:.3f})")
    assert family <= ALPHA
    assert family <= uncorrected


# --- the pieces -------------------------------------------------------------------------------


def test_centred_mixture_is_johari_closed_form():
    d = np.array([0.0, 0.01, -0.02, 0.05])
    v = np.array([1e-4, 2e-4, 5e-5, 1e-3])
    ref = np.array([0.09, 0.1, 0.09, 0.2])
    tau2 = 0.1**2 * ref
    expected = 0.5 * np.log(v / (v + tau2)) + d**2 * tau2 / (2 * v * (v + tau2))
    mixture = Mixture(center=0.0, scale=0.1)
    np.testing.assert_allclose(mixture_log_lr(d, v, ref, mixture), expected, rtol=1e-12)
    radius = np.sqrt(v * (v + tau2) / tau2 * (np.log((v + tau2) / v) + 2 * np.log(1 / ALPHA)))
    np.testing.assert_allclose(confidence_radius(v, ref, ALPHA, mixture), radius, rtol=1e-10)


@pytest.mark.parametrize("mixture", [Mixture(), Mixture(0.3, 0.02), Mixture(0.0, 1.0)])
def test_interval_edges_are_exactly_where_the_test_rejects(mixture):
    v = np.array([1e-6, 1e-4, 3e-3, 0.5])
    ref = np.array([0.09, 0.09, 0.25, 4.0])
    h = confidence_radius(v, ref, ALPHA, mixture)
    for sign in (1.0, -1.0):
        np.testing.assert_allclose(
            mixture_log_lr(sign * h, v, ref, mixture), math.log(1 / ALPHA), rtol=1e-9
        )
        assert (mixture_log_lr(sign * h * 0.999, v, ref, mixture) < math.log(1 / ALPHA)).all()


def test_p_value_and_interval_agree():
    """p <= alpha exactly when the confidence sequence at alpha excludes 0."""
    rng = np.random.default_rng(17)
    x, n = binomial_paths(rng, [0.10, 0.12], experiments=300)
    cmp = compare(n, x[..., 0], None, n, x[..., 1], None, kind="proportion", alpha=ALPHA)
    excludes = (cmp.lower > 0) | (cmp.upper < 0)
    assert ((cmp.p_value <= ALPHA) == excludes).all()
    p = running_p_value(cmp.p_value, axis=1)
    lo, hi = running_interval(cmp.lower, cmp.upper, axis=1)
    assert ((p <= ALPHA) == ((lo > 0) | (hi < 0))).all()


def test_degenerate_arms():
    # Fewer than two observations: nothing to say yet.
    c = compare(1, 1, 1, 5, 2, 2, kind="mean", alpha=ALPHA)
    assert c.p_value == 1.0
    assert np.isinf(c.lower)
    assert np.isinf(c.upper)
    # Constant arms: equal means prove nothing, different means are certain.
    same = compare(4, 8, 16, 4, 8, 16, kind="mean", alpha=ALPHA)
    assert same.p_value == 1.0
    differ = compare(4, 8, 16, 4, 12, 36, kind="mean", alpha=ALPHA)
    assert differ.p_value == 0.0
    assert differ.lower == differ.upper == 1.0
    # No conversions yet in either arm: smoothing keeps the variance positive.
    assert arm_variance(50, 0, None, "proportion") > 0
    assert compare(50, 0, None, 50, 0, None, kind="proportion", alpha=ALPHA).p_value == 1.0


def test_p_value_from_log_lr_is_capped_at_one():
    np.testing.assert_allclose(p_value_from_log_lr([-3.0, 0.0, math.log(20)]), [1.0, 1.0, 0.05])


def test_bad_parameters():
    with pytest.raises(ValueError, match="scale"):
        Mixture(scale=0.0)
    with pytest.raises(ValueError, match="center"):
        Mixture(center=-0.1)
    with pytest.raises(ValueError, match="alpha"):
        confidence_radius(1e-3, 0.09, 1.5)
    with pytest.raises(ValueError, match="sum of squares"):
        arm_variance(10, 5.0, None, "mean")
    with pytest.raises(ValueError, match="kind"):
        arm_variance(10, 5.0, None, "median")  # type: ignore[arg-type]


def test_moments_from_a_latency_histogram():
    rng = np.random.default_rng(23)
    latency = rng.gamma(16.0, 0.0125, size=200_000)  # seconds: mean 0.2, sd 0.05
    bounds = np.array([*np.arange(0.01, 0.6, 0.01), np.inf])
    cumulative = np.searchsorted(np.sort(latency), bounds, side="right")
    n, total, total_sq = moments_from_histogram(bounds, cumulative, float(latency.sum()))
    assert n == len(latency)
    assert total == pytest.approx(latency.sum())
    var = arm_variance(n, total, total_sq, "mean")
    assert var == pytest.approx(latency.var(ddof=1), rel=0.05)
    with pytest.raises(ValueError, match="increase"):
        moments_from_histogram([0.1, 0.05], [1, 2])
