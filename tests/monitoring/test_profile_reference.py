"""Reference profiles: building, kinds, bins, stats, JSON round trip, merging."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mlplane.monitoring import profile as profile_module
from mlplane.monitoring.profile import (
    PROFILE_FORMAT,
    CategoricalFeature,
    NumericFeature,
    Profile,
    build_profile,
    merge_profiles,
    quantile_edges,
)


@pytest.fixture
def frame() -> pd.DataFrame:
    rng = np.random.default_rng(7)
    n = 10_000
    return pd.DataFrame(
        {
            "f": rng.normal(10.0, 2.0, n),
            "i": rng.integers(0, 1000, n),
            "s": rng.choice(["a", "b", "c"], n, p=[0.5, 0.3, 0.2]),
            "b": rng.random(n) < 0.3,
            "cat": pd.Categorical(rng.choice(["x", "y"], n)),
        }
    )


def test_kinds_are_inferred_from_dtypes_and_overridable(frame):
    prof = build_profile(frame)
    kinds = {f.name: f.kind for f in prof.features}
    assert kinds == {
        "f": "numeric",
        "i": "numeric",
        "s": "categorical",
        "b": "categorical",
        "cat": "categorical",
    }
    forced = build_profile(frame, categorical=["i"], numeric=["b"])
    assert forced["i"].kind == "categorical"
    assert forced["b"].kind == "numeric"
    assert forced["b"].mean == pytest.approx(frame["b"].mean())


def test_datetime_columns_are_refused_by_name():
    df = pd.DataFrame({"ts": pd.date_range("2026-01-01", periods=10, freq="h"), "x": range(10)})
    with pytest.raises(ValueError, match="'ts'"):
        build_profile(df)
    assert build_profile(df, exclude=["ts"]).names == ["x"]


def test_dict_of_arrays_input_and_feature_selection():
    rng = np.random.default_rng(1)
    data = {"a": rng.normal(size=500), "b": np.array(["u", "v"] * 250), "c": rng.normal(size=500)}
    prof = build_profile(data, features=["c", "b"])
    assert prof.names == ["c", "b"]
    assert prof.rows == 500
    with pytest.raises(ValueError, match="'zz'"):
        build_profile(data, features=["zz"])
    with pytest.raises(ValueError, match="different lengths"):
        build_profile({"a": np.zeros(3), "b": np.zeros(4)})


def test_numeric_bins_are_equal_frequency_with_open_outer_edges(frame):
    feature = build_profile(frame, bins=20)["f"]
    assert isinstance(feature, NumericFeature)
    assert feature.edges.size == 19
    assert np.all(np.diff(feature.edges) > 0)
    assert feature.counts.sum() == len(frame)
    # Equal frequency: every bin holds 5 % of the rows (continuous data, so up to one tie).
    assert np.all(np.abs(feature.counts - len(frame) / 20) <= 1)
    # The outer bins are open: values far outside the training range still land in a bin.
    codes = feature.codes(np.array([-1e12, 1e12]))
    assert codes.tolist() == [0, feature.n_bins - 1]


def test_tied_edges_are_deduplicated_and_bins_are_right_closed():
    x = np.concatenate([np.zeros(700), np.arange(1, 301, dtype=float)])  # zero-inflated
    edges = quantile_edges(x, 20)
    assert np.all(np.diff(edges) > 0)
    assert edges[0] == 0.0
    feature = build_profile({"x": x})["x"]
    # (-inf, 0] holds every zero: right-closed bins keep tied values together.
    assert feature.counts[0] == 700
    # Integer data: edges are data values (inverted_cdf), a value on an edge goes to the lower bin.
    ints = build_profile({"k": np.repeat(np.arange(5), 100)})["k"]
    assert ints.edges.tolist() == [0.0, 1.0, 2.0, 3.0, 4.0]
    assert ints.counts.tolist() == [100, 100, 100, 100, 100, 0]
    assert ints.codes(np.array([0.0, 0.5, 1.0, 4.0, 4.5])).tolist() == [0, 1, 1, 4, 5]


def test_summary_statistics_are_exact_and_missing_values_counted_apart():
    x = np.array([1.0, 2.0, np.nan, 4.0, np.inf, -np.inf, 10.0])
    f = build_profile({"x": x})["x"]
    finite = np.array([1.0, 2.0, 4.0, 10.0])
    assert f.null_count == 3  # NaN and both infinities
    assert f.count == 4
    assert f.mean == pytest.approx(finite.mean(), rel=1e-15)
    assert f.std == pytest.approx(finite.std(ddof=1), rel=1e-15)
    assert (f.min, f.max) == (1.0, 10.0)
    # None in a list of numbers is missing as well.
    g = build_profile({"x": [1, None, 3]}, numeric=["x"])["x"]
    assert (g.count, g.null_count, g.mean) == (2, 1, 2.0)


def test_all_missing_numeric_column_has_one_bin():
    f = build_profile({"x": np.full(10, np.nan)})["x"]
    assert f.edges.size == 0
    assert f.counts.tolist() == [0]
    assert f.null_count == 10
    assert f.mean is None


@pytest.fixture(params=["pandas", "numpy-only"])
def factorizer(request, monkeypatch):
    """Categorical columns go through pandas.factorize, or np.unique in images without pandas."""
    monkeypatch.setattr(profile_module, "_USE_PANDAS", request.param == "pandas")
    return request.param


def test_categorical_top_k_other_and_missing(factorizer):
    values = np.array(["a"] * 50 + ["b"] * 30 + ["c"] * 10 + ["d"] * 10 + [None] * 5, dtype=object)
    f = build_profile({"c": values}, top_k=2)["c"]
    assert isinstance(f, CategoricalFeature)
    assert f.categories == ("a", "b")
    assert f.counts.tolist() == [50, 30, 20]
    assert f.other_count == 20
    assert f.null_count == 5
    # Ties are broken by value, so the choice does not depend on row order.
    g = build_profile({"c": np.array(["z", "y", "y", "z", "x"])}, top_k=1)["c"]
    assert g.categories == ("y",)
    # Unknown categories map to other (K), missing to K + 1.
    codes = f.codes(np.array(["b", "zzz", None, "a", float("nan")], dtype=object))
    assert codes.tolist() == [1, 2, 3, 0, 3]


def test_categories_compare_as_strings_and_integral_floats_match_ints(factorizer):
    f = build_profile({"k": np.array([1, 2, 2, 3])}, categorical=["k"])["k"]
    assert set(f.categories) == {"1", "2", "3"}
    # Serving may send the same category as a float (JSON) or a string.
    assert f.codes(np.array([2.0, 3.0, np.nan])).tolist() == [
        f.categories.index("2"),
        f.categories.index("3"),
        4,
    ]
    assert f.codes(["1", "7"]).tolist() == [f.categories.index("1"), 3]
    s = pd.Series([1, None, 2], dtype="Int64")
    assert f.codes(s).tolist() == [f.categories.index("1"), 4, f.categories.index("2")]
    # Mixed Python objects: 3, "3" and 3.0 are one label; their counts add up.
    mixed = np.array([3, "3", 3.0, None, 2.5, "x"], dtype=object)
    g = build_profile({"m": mixed})["m"]
    assert dict(zip(g.categories, g.counts[:-1].tolist(), strict=True)) == {
        "3": 3,
        "2.5": 1,
        "x": 1,
    }
    assert g.null_count == 1
    assert g.codes(mixed).tolist() == [
        0,
        0,
        0,
        4,
        g.categories.index("2.5"),
        g.categories.index("x"),
    ]
    b = build_profile({"b": np.array([True, False, True])})["b"]
    assert b.codes(pd.Series([True, None], dtype="boolean")).tolist() == [
        b.categories.index("True"),
        3,
    ]


def test_json_round_trip_is_lossless_and_strict(frame):
    prof = build_profile(frame, metadata={"model": "churn", "run_id": "abc"})
    text = prof.to_json()

    def no_constants(name: str) -> None:
        raise AssertionError(f"non-standard JSON constant {name}")

    doc = json.loads(text, parse_constant=no_constants)
    assert doc["format"] == PROFILE_FORMAT
    assert doc["metadata"] == {"model": "churn", "run_id": "abc"}
    again = Profile.from_json(text)
    assert again.to_dict() == prof.to_dict()
    assert again.same_bins(prof)
    for a, b in zip(again.features, prof.features, strict=True):
        assert np.array_equal(a.counts, b.counts)
        if isinstance(a, NumericFeature):
            assert np.array_equal(a.edges, b.edges)  # floats survive exactly


def test_from_dict_rejects_bad_documents(frame):
    doc = build_profile(frame).to_dict()
    with pytest.raises(ValueError, match="unsupported profile format"):
        Profile.from_dict({**doc, "format": "mlplane.profile/v0"})
    broken = json.loads(json.dumps(doc))
    broken["features"][0]["counts"] = broken["features"][0]["counts"][:-1]
    with pytest.raises(ValueError, match="'f'"):
        Profile.from_dict(broken)
    lying = json.loads(json.dumps(doc))
    lying["features"][2]["count"] += 1
    with pytest.raises(ValueError, match="'s'"):
        Profile.from_dict(lying)


def test_profiles_on_the_same_bins_merge_into_the_whole(frame):
    first, second = frame.iloc[:3000], frame.iloc[3000:]
    p1 = build_profile(first)
    p2 = build_profile(second, like=p1)
    whole = build_profile(frame, like=p1)
    merged = p1.merge(p2)
    assert merged.rows == len(frame)
    assert merged.same_bins(whole)
    for m, w in zip(merged.features, whole.features, strict=True):
        assert np.array_equal(m.counts, w.counts)
        assert m.null_count == w.null_count
        if isinstance(m, NumericFeature):
            assert m.mean == pytest.approx(w.mean, rel=1e-12)
            assert m.std == pytest.approx(w.std, rel=1e-12)
            assert (m.min, m.max) == (w.min, w.max)
    assert merge_profiles([p1, p2]).to_dict() == merged.to_dict()


def test_merging_different_bins_is_refused(frame):
    p1 = build_profile(frame.iloc[:3000])
    p2 = build_profile(frame.iloc[3000:])  # its own quantiles
    with pytest.raises(ValueError, match="different"):
        p1.merge(p2)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.floats(-1e6, 1e6, allow_nan=False), min_size=1, max_size=60),
    st.lists(st.floats(-1e6, 1e6, allow_nan=False), min_size=1, max_size=60),
)
def test_merged_stats_equal_stats_of_the_union(a, b):
    pa = build_profile({"x": np.array(a)}, numeric=["x"])
    pb = build_profile({"x": np.array(b)}, like=pa)
    merged = pa.merge(pb)["x"]
    whole = np.array(a + b)
    assert merged.count == whole.size
    assert math.isclose(merged.mean, whole.mean(), rel_tol=1e-9, abs_tol=1e-6)
    expected_std = whole.std(ddof=1) if whole.size > 1 else 0.0
    assert math.isclose(merged.std, expected_std, rel_tol=1e-7, abs_tol=1e-6)
    assert (merged.min, merged.max) == (whole.min(), whole.max())
