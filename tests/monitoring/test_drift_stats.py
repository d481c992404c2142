"""The statistics behind drift verdicts, checked against scipy and hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats
from scipy.spatial.distance import jensenshannon

from mlplane.monitoring.drift import (
    KS_EXACT_MAX_N,
    DriftConfig,
    benjamini_hochberg,
    binned_ks,
    chi2_independence,
    evaluate,
    holm,
    js_distance,
    ks_pvalue,
    psi,
    summarize,
)
from mlplane.monitoring.profile import build_profile
from mlplane.monitoring.sketches import sketch_once


def test_binned_ks_equals_the_exact_test_when_every_value_is_an_edge():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 10, 3000).astype(float)
    b = rng.integers(0, 11, 2000).astype(float)
    edges = np.arange(0, 11, dtype=float)  # every value sits on an edge: no information lost
    count = lambda x: np.bincount(np.searchsorted(edges, x, side="left"), minlength=12)  # noqa: E731
    d, p = binned_ks(count(a), count(b))
    exact = stats.ks_2samp(a, b, method="asymp")
    assert d == pytest.approx(exact.statistic, abs=1e-12)
    assert p == pytest.approx(exact.pvalue, rel=1e-6)


def test_binning_can_only_shrink_the_ks_distance():
    rng = np.random.default_rng(1)
    for _ in range(20):
        a = rng.normal(size=800)
        b = rng.normal(rng.uniform(-0.3, 0.3), rng.uniform(0.8, 1.2), size=600)
        edges = np.quantile(a, np.linspace(0, 1, 21)[1:-1])
        count = lambda x, e=edges: np.bincount(np.searchsorted(e, x), minlength=e.size + 1)  # noqa: E731
        d, p = binned_ks(count(a), count(b))
        exact = stats.ks_2samp(a, b, method="asymp")
        assert d <= exact.statistic + 1e-12
        assert p >= exact.pvalue * (1 - 1e-9)


def test_ks_pvalue_switches_to_the_corrected_limit_smoothly():
    n = KS_EXACT_MAX_N
    for d in (0.01, 0.02, 0.03):
        exact = stats.kstwo.sf(d, n)
        assert ks_pvalue(d, n) == pytest.approx(exact, rel=1e-12)
        assert ks_pvalue(d, n + 1) == pytest.approx(exact, rel=0.05)
    assert ks_pvalue(0.0, 100) == 1.0
    assert ks_pvalue(0.04, 100_000) < 1e-100


def test_chi2_independence_matches_scipy_on_a_dense_table():
    ref = np.array([500, 300, 150, 50])
    cur = np.array([480, 330, 140, 70])
    stat, p, dof = chi2_independence(ref, cur)
    expected = stats.chi2_contingency(np.vstack([ref, cur]), correction=False)
    assert stat == pytest.approx(expected.statistic)
    assert p == pytest.approx(expected.pvalue)
    assert dof == expected.dof == 3


def test_chi2_pools_sparse_columns_and_sees_new_categories():
    # Four columns with expected counts < 5 pool into one column that is large enough.
    _, _, dof = chi2_independence([500, 300, 200, 3, 3, 3, 2], [480, 320, 190, 3, 3, 3, 3])
    assert dof == 3
    # A pool still too small joins the smallest remaining column.
    _, _, dof = chi2_independence([500, 300, 200, 1, 0], [480, 320, 190, 2, 1])
    assert dof == 2
    # Empty on both sides: ignored entirely.
    assert chi2_independence([10, 0, 10], [10, 0, 10])[2] == 1
    # A category absent from the reference but frequent now (it sits in "other") is drift.
    _, p, _ = chi2_independence([5000, 5000, 0], [4500, 4500, 1000])
    assert p < 1e-100
    assert chi2_independence([10, 0], [0, 0]) == (0.0, 1.0, 0)


def test_psi_and_js_distance():
    p = np.array([100, 200, 300, 400])
    assert psi(p, p) == 0.0
    assert js_distance(p, 2 * p) == pytest.approx(0.0, abs=1e-12)
    q = np.array([400, 300, 200, 100])
    assert js_distance(p, q) == pytest.approx(jensenshannon(p / p.sum(), q / q.sum(), base=2))
    pp, qq = p / p.sum(), q / q.sum()
    assert psi(p * 1000, q * 1000) == pytest.approx(np.sum((qq - pp) * np.log(qq / pp)), rel=1e-3)
    # Empty bins give a finite PSI thanks to the pseudocount; bins empty on both sides are ignored.
    assert math.isfinite(psi([100, 0, 0], [50, 50, 0]))
    assert math.isnan(psi([1, 2], [0, 0]))
    assert js_distance([1, 0], [0, 1]) == pytest.approx(1.0)


def test_holm_and_benjamini_hochberg_by_hand():
    p = [0.01, 0.04, 0.03, 0.005]
    assert holm(p).tolist() == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert benjamini_hochberg(p).tolist() == pytest.approx([0.02, 0.04, 0.04, 0.02])
    assert holm([0.9, 0.8]).tolist() == [1.0, 1.0]
    assert holm([]).size == 0


@pytest.fixture(scope="module")
def reference():
    rng = np.random.default_rng(21)
    n = 5000
    return build_profile(
        {
            "x": rng.normal(size=n),
            "z": rng.normal(size=n),
            "c": rng.choice(["a", "b", "c"], n),
        }
    )


def _current(rng, n, shift=0.0):
    return {
        "x": rng.normal(shift, 1, n),
        "z": rng.normal(size=n),
        "c": rng.choice(["a", "b", "c"], n),
    }


def test_result_rows_report_every_field(reference):
    rng = np.random.default_rng(5)
    window = sketch_once(reference, _current(rng, 4000, shift=0.5), 60.0, 120.0)
    rows = {r.feature: r for r in evaluate(reference, window)}
    x = rows["x"]
    assert (x.kind, x.method, x.drifted) == ("numeric", "ks", True)
    assert (x.n_reference, x.n_current) == (5000, 4000)
    assert (x.window_start, x.window_end) == (60.0, 120.0)
    assert x.statistic > 0.15
    assert x.psi > 0.1
    assert x.js > 0.1
    assert x.p_value <= x.p_value_adjusted < 0.01
    assert rows["c"].method == "chi2"
    assert rows["z"].drifted is False
    assert rows["z"].reason.startswith("not significant")
    assert summarize(list(rows.values()))["drifted"] == ["x"]
    assert set(x.to_dict()) >= {"feature", "psi", "js", "p_value", "p_value_adjusted", "drifted"}


def test_no_verdict_below_min_samples(reference):
    rng = np.random.default_rng(6)
    window = sketch_once(reference, _current(rng, 400, shift=2.0))
    rows = evaluate(reference, window, DriftConfig(min_samples=500))
    assert all(r.drifted is None and r.p_value is None for r in rows)
    assert all(r.p_value_adjusted is None and "min_samples" in r.reason for r in rows)
    assert rows[0].psi is not None  # effect sizes are still reported
    rows = evaluate(reference, window, DriftConfig(min_samples=100))
    assert all(r.drifted is not None for r in rows)
    smallest = min(rows, key=lambda r: r.p_value)
    assert smallest.p_value_adjusted == pytest.approx(min(1.0, 3 * smallest.p_value))


def test_effect_floor_gates_a_significant_but_tiny_shift(reference):
    rng = np.random.default_rng(8)
    window = sketch_once(reference, _current(rng, 5000, shift=0.15))
    plain = {r.feature: r for r in evaluate(reference, window)}
    assert plain["x"].drifted is True
    gated = {r.feature: r for r in evaluate(reference, window, DriftConfig(psi_threshold=0.2))}
    assert gated["x"].drifted is False
    assert gated["x"].reason.startswith("significant but below effect floor")
    assert gated["x"].p_value_adjusted == plain["x"].p_value_adjusted


def test_a_surge_of_missing_values_is_drift_even_when_values_look_the_same(reference):
    rng = np.random.default_rng(9)
    batch = _current(rng, 5000)
    batch["z"][:250] = np.nan  # 5 % missing, none in the reference
    rows = {r.feature: r for r in evaluate(reference, sketch_once(reference, batch))}
    assert rows["z"].method == "ks+missing"
    assert rows["z"].drifted is True
    assert rows["z"].missing_fraction_current == pytest.approx(0.05)
    # An absent column is missing on every row.
    del batch["x"]
    rows = {r.feature: r for r in evaluate(reference, sketch_once(reference, batch))}
    assert rows["x"].missing_fraction_current == 1.0
    assert rows["x"].drifted is True


def test_current_profile_must_share_the_reference_bins(reference):
    rng = np.random.default_rng(10)
    other = build_profile(_current(rng, 3000))
    with pytest.raises(ValueError, match="like=reference"):
        evaluate(reference, other)
    same = build_profile(_current(rng, 3000), like=reference)
    assert len(evaluate(reference, same)) == 3


def test_config_is_validated():
    with pytest.raises(ValueError, match="alpha"):
        DriftConfig(alpha=0.0)
    with pytest.raises(ValueError, match="correction"):
        DriftConfig(correction="bonferroni")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="min_samples"):
        DriftConfig(min_samples=0)
