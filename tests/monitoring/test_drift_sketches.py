"""Live sketches: counts on the reference bins, bounded memory, vectorised adds, rolling windows."""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest

from mlplane.monitoring.profile import build_profile
from mlplane.monitoring.sketches import DriftSketch, SketchLayout, Window, sketch_once


@pytest.fixture(scope="module")
def profile():
    rng = np.random.default_rng(3)
    n = 20_000
    return build_profile(
        {
            "x": rng.normal(size=n),
            "y": rng.exponential(size=n),
            "c": rng.choice(["a", "b", "c", "d"], n),
        }
    )


def _batch(rng, n, cats=("a", "b", "c", "d")):
    return {
        "x": rng.normal(size=n),
        "y": rng.exponential(size=n),
        "c": rng.choice(list(cats), n),
    }


def _histogram_by_masks(values, edges):
    """Independent count on right-closed bins, one boolean mask per bin."""
    bounds = np.concatenate([[-np.inf], edges, [np.inf]])
    return np.array(
        [np.sum((values > lo) & (values <= hi)) for lo, hi in itertools.pairwise(bounds)]
    )


def test_one_million_rows_in_one_call_are_counted_exactly(profile):
    rng = np.random.default_rng(11)
    n = 1_000_000
    batch = _batch(rng, n)
    batch["x"][:1000] = np.nan
    sketch = DriftSketch(profile, window_seconds=60)
    assert sketch.add(batch, timestamp=5.0) == []
    window = sketch.current
    assert window.rows == n
    assert np.array_equal(
        window.histogram("x"), _histogram_by_masks(batch["x"], profile["x"].edges)
    )
    assert window.nulls("x") == 1000
    assert np.array_equal(
        window.histogram("y"), _histogram_by_masks(batch["y"], profile["y"].edges)
    )
    cats = profile["c"].categories
    expected_c = [np.sum(batch["c"] == c) for c in cats] + [0]
    assert window.histogram("c").tolist() == expected_c


def test_memory_does_not_grow_with_traffic(profile):
    rng = np.random.default_rng(5)
    sketch = DriftSketch(profile, window_seconds=60, keep_closed=3)
    sketch.add(_batch(rng, 10), timestamp=0.0)
    one_window = sketch.nbytes
    layout = SketchLayout.from_profile(profile)
    # One int64 per bin, plus missing and absent slots, per feature.
    assert one_window == 8 * sum(f.n_bins + 2 for f in profile.features) == 8 * layout.size
    for k in range(20):
        sketch.add(_batch(rng, 50_000), timestamp=1.0 + k)
    assert sketch.nbytes == one_window  # 1M more rows, same window, same bytes
    for k in range(10):  # more windows than kept: bounded by keep_closed + 1
        sketch.add(_batch(rng, 1000), timestamp=60.0 * (k + 1))
    assert len(sketch.closed) == 3
    assert sketch.nbytes == 4 * one_window


def test_windows_roll_on_explicit_timestamps(profile):
    rng = np.random.default_rng(2)
    sketch = DriftSketch(profile, window_seconds=300, origin=1000.0)
    assert sketch.add(_batch(rng, 10), timestamp=1000.0) == []
    assert sketch.add(_batch(rng, 20), timestamp=1299.9) == []
    assert sketch.current.rows == 30
    closed = sketch.add(_batch(rng, 5), timestamp=1300.0)
    assert [(w.start, w.end, w.rows) for w in closed] == [(1000.0, 1300.0, 30)]
    assert closed[0].closed
    assert not sketch.current.closed
    assert (sketch.current.start, sketch.current.rows) == (1300.0, 5)
    with pytest.raises(ValueError, match="read-only"):
        closed[0].counts[0] = 1
    # A tick without traffic closes the window; nothing is open until the next row.
    assert sketch.advance(1599.0) == []
    closed = sketch.advance(1600.0)
    assert [(w.start, w.rows) for w in closed] == [(1300.0, 5)]
    assert sketch.current is None
    # A quiet period makes no empty windows: the next row opens the window it falls in.
    sketch.add(_batch(rng, 7), timestamp=3000.0)
    assert sketch.current.start == 2800.0
    assert [w.start for w in sketch.closed] == [1000.0, 1300.0]


def test_per_row_timestamps_split_a_batch_across_windows_and_drop_late_rows(profile):
    rng = np.random.default_rng(4)
    sketch = DriftSketch(profile, window_seconds=10)
    sketch.add(_batch(rng, 3), timestamp=25.0)  # opens [20, 30)
    n = 12
    batch = _batch(rng, n)
    ts = np.array([5, 21, 29, 31, 35, 45, 47, 49, 12, 22, 33, 41], dtype=float)
    closed = sketch.add(batch, timestamp=ts)
    assert sketch.late_rows == 2  # 5 and 12 are before the open window
    assert [(w.start, w.rows) for w in closed] == [(20.0, 3 + 3), (30.0, 3)]
    assert (sketch.current.start, sketch.current.rows) == (40.0, 4)
    in_40 = (ts >= 40) & (ts < 50)
    expected = _histogram_by_masks(batch["x"][in_40], profile["x"].edges)
    assert np.array_equal(sketch.current.histogram("x"), expected)
    # A whole batch in the past is dropped and counted.
    assert sketch.add(_batch(rng, 4), timestamp=0.0) == []
    assert sketch.late_rows == 6


def test_unknown_categories_nulls_and_absent_features(profile):
    sketch = DriftSketch(profile)
    k = len(profile["c"].categories)
    sketch.add(
        pd.DataFrame({"x": [0.0, np.nan, None], "c": ["a", "never-seen", None]}), timestamp=0.0
    )
    w = sketch.current
    assert w.histogram("c")[k] == 1  # "never-seen" -> other
    assert (w.nulls("c"), w.absent("c")) == (1, 0)
    assert (w.nulls("x"), w.histogram("x").sum()) == (2, 1)
    assert (w.absent("y"), w.nulls("y"), w.missing("y")) == (3, 0, 3)
    # A single record as a mapping of scalars.
    sketch.add({"x": 0.5, "y": 1.0, "c": "b"}, timestamp=1.0)
    assert sketch.current.rows == 4


def test_bad_batches_are_rejected_with_the_feature_named(profile):
    sketch = DriftSketch(profile)
    with pytest.raises(ValueError, match="'x'"):
        sketch.add({"x": np.array(["a", "b"], dtype=object)}, timestamp=0.0)
    with pytest.raises(ValueError, match="timestamps"):
        sketch.add({"x": np.zeros(3)}, timestamp=np.zeros(2))
    with pytest.raises(ValueError, match="finite"):
        sketch.add({"x": np.zeros(3)}, timestamp=np.nan)


def test_windows_from_replicas_merge_and_round_trip(profile):
    rng = np.random.default_rng(9)
    a, b = _batch(rng, 1000), _batch(rng, 2000)
    wa = sketch_once(profile, a, 0.0, 60.0)
    wb = sketch_once(profile, b, 0.0, 60.0)
    both = wa.merge(wb)
    together = sketch_once(profile, [a, b], 0.0, 60.0)
    assert both.rows == 3000
    assert np.array_equal(both.counts, together.counts)
    again = Window.from_dict(both.to_dict(), profile)
    assert np.array_equal(again.counts, both.counts)
    assert (again.start, again.end, again.rows) == (0.0, 60.0, 3000)
    with pytest.raises(ValueError, match="merge window"):
        wa.merge(sketch_once(profile, b, 60.0, 120.0))
