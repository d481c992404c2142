"""The sequential sample-ratio-mismatch test: finds broken splits, stays quiet on healthy ones
however often it is read (false alarms under alpha over many seeded A/A simulations)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from mlplane.monitoring.srm import SRM_ALPHA, log_bayes_factor, srm_check


def test_a_60_40_split_under_50_50_is_a_mismatch():
    result = srm_check([600, 400], [50, 50])
    assert result.mismatch
    assert result.observed == (0.6, 0.4) and result.expected == (0.5, 0.5)
    assert "control 60.0% of 600 requests (configured 50%)" in result.describe(
        ["control", "candidate"]
    )


def test_an_exact_split_is_no_mismatch_and_the_evidence_favours_it():
    for n in (10, 1000, 100_000):
        result = srm_check([n, n], [50, 50])
        assert not result.mismatch
        assert result.log_bayes_factor < 0  # an exact split is evidence for the weights


def test_percent_and_unnormalised_weights_agree():
    assert log_bayes_factor([900, 100], [90, 10]) == pytest.approx(
        log_bayes_factor([900, 100], [0.9, 0.1])
    )


def test_a_request_on_a_zero_weight_variant_is_a_mismatch_at_once():
    assert srm_check([1000, 0, 1], [50, 50, 0]).mismatch
    assert not srm_check([1000, 1000, 0], [50, 50, 0]).mismatch
    assert srm_check([1000, 0, 1], [50, 50, 0]).p_value == 0.0


@pytest.mark.parametrize(
    "bad",
    [([1], [50, 50]), ([-1, 2], [50, 50]), ([1, 2], [0, 0]), ([1, 2], [math.nan, 1])],
)
def test_bad_inputs_are_refused(bad):
    with pytest.raises(ValueError, match=r"count|weight"):
        log_bayes_factor(*bad)


def _false_alarm_rate(weights: list[float], alpha: float, runs: int, n: int, every: int) -> float:
    """A/A runs: requests assigned by ``weights``, the test read every ``every`` requests."""
    rng = np.random.default_rng(20261203)
    p = np.asarray(weights, dtype=float) / sum(weights)
    alarms = 0
    for _ in range(runs):
        draws = rng.choice(len(p), size=n, p=p)
        counts = np.cumsum(np.eye(len(p), dtype=np.int64)[draws], axis=0)
        for look in range(every - 1, n, every):
            if srm_check(counts[look].tolist(), weights, alpha=alpha).mismatch:
                alarms += 1
                break
    return alarms / runs


@pytest.mark.parametrize(("weights", "alpha"), [([50, 50], 0.05), ([90, 10], 0.05)])
def test_continuous_monitoring_keeps_false_alarms_under_alpha(weights, alpha):
    """Read 100 times per run: a fixed-horizon test would alarm far more often than alpha."""
    assert _false_alarm_rate(weights, alpha, runs=400, n=10_000, every=100) < alpha


def test_at_the_operators_alpha_healthy_splits_never_alarm_in_1000_runs():
    assert _false_alarm_rate([50, 50], SRM_ALPHA, runs=1000, n=5_000, every=100) < SRM_ALPHA


def test_a_60_40_router_is_found_within_a_few_hundred_requests_when_read_continuously():
    rng = np.random.default_rng(7)
    draws = rng.random(5_000) < 0.6
    control = np.cumsum(draws)
    found = next(
        i + 1
        for i in range(len(draws))
        if srm_check([int(control[i]), i + 1 - int(control[i])], [50, 50]).mismatch
    )
    assert found < 1_000


def test_the_path_agrees_with_the_single_evaluation():
    from mlplane.monitoring.srm import log_bayes_factor_path

    counts = np.array([[0, 3, 60, 600, 7], [0, 1, 40, 400, 0], [0, 0, 0, 0, 1]])
    path = log_bayes_factor_path(counts, [45, 45, 10])
    for t in range(counts.shape[1]):
        assert path[t] == pytest.approx(log_bayes_factor(counts[:, t].tolist(), [45, 45, 10]))
    assert log_bayes_factor_path([[1, 2], [0, 1]], [100, 0])[1] == math.inf
