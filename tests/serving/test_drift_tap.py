"""The drift tap: windows of live rows against the control's reference profile."""

from __future__ import annotations

import numpy as np
import pytest

from mlplane.monitoring.profile import build_profile
from mlplane.serving.config import DriftSettings
from mlplane.serving.drift_tap import DriftTap, drift_config

RNG = np.random.default_rng(11)
PROFILE = build_profile(
    {"age": RNG.normal(40, 10, 20_000), "plan": RNG.choice(["free", "pro"], 20_000, p=[0.7, 0.3])}
)


def settings(method="StatisticalTest", threshold=0.01, window=60.0, min_samples=200):
    return DriftSettings(True, method, threshold, window, min_samples)


def batch(n: int, shift: float = 0.0, seed: int = 0) -> dict[str, list]:
    rng = np.random.default_rng(seed)
    return {
        "age": list(rng.normal(40 + shift * 10, 10, n)),
        "plan": list(rng.choice(["free", "pro"], n, p=[0.7, 0.3])),
    }


def test_threshold_maps_onto_the_decision_settings():
    assert drift_config(settings("StatisticalTest", 0.001)).alpha == 0.001
    psi = drift_config(settings("PSI", 0.2))
    assert (psi.alpha, psi.psi_threshold, psi.js_threshold) == (0.01, 0.2, None)
    assert drift_config(settings("JensenShannon", 0.05)).js_threshold == 0.05
    assert drift_config(settings(min_samples=7)).min_samples == 7


def test_windows_close_on_time_and_consecutive_drift_counts():
    tap = DriftTap(settings())
    tap.set_reference(3, PROFILE)
    assert tap.add(3, batch(500, shift=0.5, seed=1), [10.0] * 500, now=10.0) == []
    assert tap.window_samples() == 500
    (first,) = tap.advance(61.0)
    assert (first.window_start, first.window_end, first.rows) == (0.0, 60.0, 500)
    assert first.drifted == ["age"]
    assert tap.report()["summary"]["driftedFeatures"] == ["age"]
    assert tap.report()["summary"]["score"] > 0.1
    tap.add(3, batch(500, shift=0.5, seed=2), [70.0] * 500, now=70.0)
    tap.add(3, batch(500, seed=3), [130.0] * 500, now=130.0)  # closes [60, 120): drifted again
    report = tap.report()
    assert report["consecutiveDriftedWindows"] == 2
    assert report["currentWindow"] == {"start": 120.0, "end": 180.0, "rows": 500}
    (clean,) = tap.advance(200.0)
    assert clean.drifted == []
    report = tap.report()
    assert report["consecutiveDriftedWindows"] == 0
    assert [h["anyDrifted"] for h in report["history"]] == [True, True, False]
    summary = report["summary"]  # the shape of a ModelDeployment's status.drift
    assert summary["driftedFeatures"] == [] and summary["consecutiveDriftedWindows"] == 0
    assert summary["lastEvaluated"] == "1970-01-01T00:03:20Z"
    assert summary["scoreMethod"] == "psi" and 0 <= summary["score"] < 0.1  # PSI bias at n=500
    assert report["lastEvaluation"]["features"][0]["feature"] == "age"
    assert report["status"] == "Ok" and report["referenceVersion"] == 3


def test_small_windows_get_no_verdict_and_keep_the_streak():
    tap = DriftTap(settings(min_samples=200))
    tap.set_reference(3, PROFILE)
    tap.add(3, batch(300, shift=0.6), [1.0] * 300, now=1.0)
    tap.add(3, batch(20, shift=0.6), [61.0] * 20, now=61.0)
    (small,) = tap.advance(130.0)
    assert small.rows == 20 and not small.has_verdict
    assert tap.report()["consecutiveDriftedWindows"] == 1


def test_rows_for_another_version_or_without_reference_are_dropped():
    tap = DriftTap(settings())
    assert tap.report()["status"] == "Waiting"
    tap.add(3, batch(10), [1.0] * 10, now=1.0)
    assert tap.dropped_rows == 10
    tap.set_reference(4, None)
    report = tap.report()
    assert (report["status"], report["referenceVersion"]) == ("NoReference", 4)
    assert "no reference profile" in report["reason"]
    tap.set_reference(4, PROFILE)
    tap.add(3, batch(10), [1.0] * 10, now=1.0)
    assert tap.dropped_rows == 20 and tap.window_samples() == 0
    assert DriftTap(DriftSettings(False, "PSI", 0.1, 60, 10)).report()["status"] == "Disabled"


def test_psi_floor_needs_a_large_effect():
    tap = DriftTap(settings("PSI", threshold=0.5))
    tap.set_reference(1, PROFILE)
    tap.add(1, batch(5000, shift=0.2, seed=9), [1.0] * 5000, now=1.0)
    (ev,) = tap.advance(100.0)
    (age,) = [r for r in ev.results if r.feature == "age"]
    assert age.p_value_adjusted < 0.01 and age.drifted is False  # significant, small effect
    assert "below effect floor" in age.reason


@pytest.mark.parametrize("bad", [{"age": [1.0, 2.0]}, {"age": ["x"], "plan": ["free"]}])
def test_malformed_rows_raise_for_the_monitor_to_count(bad):
    tap = DriftTap(settings())
    tap.set_reference(1, PROFILE)
    with pytest.raises(ValueError, match=r".+"):
        tap.add(1, bad, [1.0], now=1.0)
