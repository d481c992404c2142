"""Detection power and error rates of the drift verdicts, on seeded generated data.

* Power: with the *defaults*, a 0.1-sd mean shift, a categorical share change and a variance
  change at 200k rows per side are all found, and nothing else is.
* Error rates: over 100 seeded repetitions without drift, the share of repetitions with any
  false alarm stays within what Holm promises (FWER <= alpha); with Benjamini-Hochberg and some
  real drift, the average false discovery proportion stays within alpha.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from mlplane.monitoring.drift import DriftConfig, evaluate
from mlplane.monitoring.profile import build_profile
from mlplane.monitoring.sketches import DriftSketch, sketch_once

ROWS = 200_000


def _frame(rng: np.random.Generator, n: int, *, drift: bool) -> pd.DataFrame:
    return pd.DataFrame(
        {
            # shifted by 0.1 standard deviation
            "mean_shift": rng.normal(5.0 + (0.1 * 2.0 if drift else 0.0), 2.0, n),
            # standard deviation 1 -> 1.1, same mean
            "variance": rng.normal(0.0, 1.1 if drift else 1.0, n),
            # share of "a" 30 % -> 32 %, taken from "b"
            "share": rng.choice(
                ["a", "b", "c", "d"], n, p=[0.32, 0.28, 0.2, 0.2] if drift else [0.3, 0.3, 0.2, 0.2]
            ),
            "steady_normal": rng.normal(0.0, 1.0, n),
            "steady_skewed": rng.lognormal(0.0, 1.0, n),
            "steady_int": rng.integers(0, 7, n),
            "steady_cat": rng.choice([f"k{i}" for i in range(30)], n),
            "steady_bool": rng.random(n) < 0.1,
        }
    )


SHIFTED = {"mean_shift", "variance", "share"}


def test_defaults_find_small_shifts_at_200k_rows_and_nothing_else():
    rng = np.random.default_rng(2026)
    reference = build_profile(_frame(rng, ROWS, drift=False))
    current = _frame(rng, ROWS, drift=True)
    sketch = DriftSketch(reference, window_seconds=300)
    for start in range(0, ROWS, 50_000):  # streamed in batches like the serving tap does
        sketch.add(current.iloc[start : start + 50_000], timestamp=10.0)
    (window,) = sketch.advance(300.0)
    rows = {r.feature: r for r in evaluate(reference, window)}
    assert {name for name, r in rows.items() if r.drifted} == SHIFTED
    assert all(r.drifted is False for name, r in rows.items() if name not in SHIFTED)
    assert all(r.n_current == ROWS for r in rows.values())
    # Why the defaults do not gate on PSI: the folklore "PSI > 0.1 / 0.2" never fires for it.
    assert rows["mean_shift"].psi < 0.02
    assert rows["mean_shift"].js < 0.06


def _null_frame(rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
    normal = rng.normal(size=(n, 4))
    data = {f"n{i}": normal[:, i] for i in range(4)}
    data |= {
        "exp": rng.exponential(size=n),
        "lognormal": rng.lognormal(size=n),
        "ints": rng.integers(0, 5, n).astype(float),
        "zero_inflated": np.where(rng.random(n) < 0.6, 0.0, rng.exponential(size=n)),
        "uniform": rng.random(n),
        "with_nulls": np.where(rng.random(n) < 0.05, np.nan, rng.normal(size=n)),
        "cat3": rng.choice(["a", "b", "c"], n),
        "cat_skewed": rng.choice(["a", "b", "c", "d"], n, p=[0.7, 0.2, 0.07, 0.03]),
        "cat30": rng.choice([f"k{i}" for i in range(30)], n),
        "flag": rng.random(n) < 0.2,
        "cat_nulls": np.where(rng.random(n) < 0.1, None, rng.choice(["x", "y"], n)),
    }
    return data


REPETITIONS = 100


def test_family_wise_false_alarms_stay_within_alpha_under_holm():
    alpha = 0.05
    config = DriftConfig(alpha=alpha, correction="holm", min_samples=500)
    any_alarm = 0
    rejections = tests = 0
    for seed in range(REPETITIONS):
        rng = np.random.default_rng(10_000 + seed)
        reference = build_profile(_null_frame(rng, 2000))
        rows = evaluate(reference, sketch_once(reference, _null_frame(rng, 1500)), config)
        any_alarm += any(r.drifted for r in rows)
        rejections += sum(r.p_value < alpha for r in rows)
        tests += len(rows)
    # FWER <= 0.05: 100 repetitions give at most 11 alarms unless the promise is broken
    # (P[Binomial(100, 0.05) >= 12] ~ 0.004).
    assert any_alarm <= 11, f"{any_alarm} of {REPETITIONS} repetitions raised a false alarm"
    # Each test on its own is valid (at most alpha) but not vacuous (p-values do go small):
    # binned KS is conservative, chi-square about exact.
    rate = rejections / tests
    assert 0.01 <= rate <= 0.065, f"uncorrected rejection rate {rate:.3f}"


def test_false_discovery_proportion_stays_within_alpha_under_bh():
    alpha = 0.05
    config = DriftConfig(alpha=alpha, correction="bh", min_samples=500)
    fdp, power = [], []
    for seed in range(REPETITIONS):
        rng = np.random.default_rng(20_000 + seed)
        reference = build_profile(_null_frame(rng, 2000))
        current = _null_frame(rng, 1500)
        drifting = ["n0", "n1", "exp", "cat3"]
        current["n0"] = current["n0"] + 0.15
        current["n1"] = current["n1"] * 1.25
        current["exp"] = current["exp"] * 1.15
        current["cat3"] = rng.choice(["a", "b", "c"], 1500, p=[0.40, 0.30, 0.30])
        rows = evaluate(reference, sketch_once(reference, current), config)
        found = {r.feature for r in rows if r.drifted}
        false = len(found - set(drifting))
        fdp.append(false / max(1, len(found)))
        power.append(len(found & set(drifting)) / len(drifting))
    # E[FDP] <= alpha * m0/m; allow for 100 repetitions' sampling error.
    assert np.mean(fdp) <= 0.06, f"mean FDP {np.mean(fdp):.3f}"
    assert np.mean(power) >= 0.5, f"power {np.mean(power):.2f}"


@pytest.mark.parametrize("correction", ["holm", "bh"])
def test_no_correction_would_raise_many_more_alarms(correction):
    """The comparison that shows why a correction is needed at all (15 features, alpha 0.05)."""
    alpha = 0.05
    corrected = uncorrected = 0
    for seed in range(40):
        rng = np.random.default_rng(30_000 + seed)
        reference = build_profile(_null_frame(rng, 1000))
        window = sketch_once(reference, _null_frame(rng, 1000))
        corrected += any(
            r.drifted
            for r in evaluate(reference, window, DriftConfig(alpha=alpha, correction=correction))
        )
        uncorrected += any(
            r.drifted
            for r in evaluate(reference, window, DriftConfig(alpha=alpha, correction="none"))
        )
    assert corrected < uncorrected
