"""mlplane.monitoring.replay: CSV histories replayed through the sequential test."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest

from mlplane.monitoring.abtest_analysis import VariantObservation, decide
from mlplane.monitoring.replay import replay


def stream(rng, experiment, rates, rows, *, kind="conversion"):
    """Rows of one experiment: the first variant (the control) comes first, then variants are
    drawn at random; outcomes follow each variant's parameter."""
    names = list(rates)
    picks = rng.integers(0, len(names), size=rows)
    picks[0] = 0
    params = np.array([rates[n] for n in names])[picks]
    if kind == "conversion":
        outcome = (rng.random(rows) < params).astype(int)
    else:  # integer latencies in ms: exact sums, so every way of adding them agrees
        outcome = np.rint(rng.normal(params, 20.0)).astype(int)
    return [(experiment, names[p], int(y)) for p, y in zip(picks, outcome, strict=True)]


def interleave(rng, *streams):
    """Merge streams at random, keeping each stream's own order."""
    tags = np.concatenate([np.full(len(s), i) for i, s in enumerate(streams)])
    rng.shuffle(tags)
    its = [iter(s) for s in streams]
    return [next(its[t]) for t in tags]


def write(path, rows, header="experiment,variant,outcome"):
    path.write_text(header + "\n" + "".join(f"{e},{v},{y}\n" for e, v, y in rows))
    return path


def decide_after_every_observation(rows, *, alpha, min_samples, kind, direction):
    """The reference: call decide() after each row, carrying the running bounds."""
    names = list(dict.fromkeys(v for _, v, _ in rows))
    n = dict.fromkeys(names, 0)
    s = dict.fromkeys(names, 0)
    q = dict.fromkeys(names, 0)
    previous = None
    for i, (_, v, y) in enumerate(rows):
        n[v] += 1
        s[v] += y
        q[v] += y * y
        obs = [
            VariantObservation(nm, n[nm], s[nm], q[nm] if kind == "mean" else None) for nm in names
        ]
        r = decide(
            obs,
            alpha=alpha,
            min_samples_per_variant=min_samples,
            kind="mean" if kind == "mean" else "proportion",
            direction=direction,
            previous=previous,
        )
        previous = r.running_bounds()
        if r.decision != "Continue":
            return i, r
    return len(rows) - 1, r


@pytest.fixture
def history(tmp_path):
    rng = np.random.default_rng(42)
    rows = interleave(
        rng,
        stream(rng, "win", {"ctl": 0.10, "new": 0.25}, 4000),
        stream(rng, "lose", {"ctl": 0.15, "new": 0.02}, 4000),
        stream(rng, "same", {"a": 0.10, "b": 0.10}, 600),
        stream(rng, "three", {"ctl": 0.10, "x": 0.10, "y": 0.30}, 6000),
    )
    return write(tmp_path / "observations.csv", rows), rows


def test_replay_decides_each_experiment_in_order_of_appearance(history):
    path, rows = history
    results = {r["experiment"]: r for r in replay(path, min_samples=100)}
    order = list(dict.fromkeys(e for e, _, _ in rows))
    assert list(results) == order

    win, lose, same, three = (results[k] for k in ("win", "lose", "same", "three"))
    assert (win["decision"], win["winner"], win["control"]) == ("Promote", "new", "ctl")
    assert win["pValue"] <= 0.05
    assert sum(win["samplesPerVariant"].values()) < 4000  # stopped early
    assert min(win["samplesPerVariant"].values()) >= 100  # not before min_samples

    assert (lose["decision"], lose["winner"]) == ("Rollback", None)
    assert lose["pValue"] <= 0.05

    assert same["decision"] == "Continue"
    assert sum(same["samplesPerVariant"].values()) == 600  # ran out of data
    assert same["pValue"] > 0.05

    assert (three["decision"], three["winner"]) == ("Promote", "y")
    assert set(three["pValues"]) == {"x", "y"}
    assert three["pValue"] == three["pValues"]["y"]
    json.dumps(list(results.values()))  # JSON-ready for the CLI


@pytest.mark.parametrize(
    ("metric", "rates", "direction"),
    [
        ("conversion", {"ctl": 0.10, "new": 0.16}, "Increase"),
        ("conversion", {"ctl": 0.12, "new": 0.08}, "Increase"),
        ("mean", {"ctl": 200.0, "new": 196.0}, "Decrease"),
    ],
)
def test_stops_exactly_where_deciding_after_every_observation_would(
    tmp_path, metric, rates, direction
):
    rng = np.random.default_rng(7)
    rows = stream(rng, "e", rates, 3000, kind=metric)
    path = write(tmp_path / "e.csv", rows)
    at, expected = decide_after_every_observation(
        rows, alpha=0.05, min_samples=100, kind=metric, direction=direction
    )
    assert expected.decision != "Continue"  # the fixture does conclude
    for chunk_rows in (1 << 16, 37):  # carrying state across blocks changes nothing
        (got,) = replay(
            path, metric=metric, min_samples=100, direction=direction, chunk_rows=chunk_rows
        )
        assert got["decision"] == expected.decision
        assert got["winner"] == expected.winner
        assert sum(got["samplesPerVariant"].values()) == at + 1
        assert got["samplesPerVariant"] == {v.name: v.n for v in expected.variants}
        assert got["pValue"] == pytest.approx(expected.variants[1].p_value_adjusted, rel=1e-9)


def test_control_is_the_first_variant_seen_and_names_stay_strings(tmp_path):
    rows = [("007", "zeta", 0), ("007", "alpha", 1)] * 60
    (r,) = replay(write(tmp_path / "o.csv", rows), min_samples=10)
    assert r["experiment"] == "007"
    assert r["control"] == "zeta"
    assert list(r["samplesPerVariant"]) == ["zeta", "alpha"]
    assert (r["decision"], r["winner"]) == ("Promote", "alpha")


def test_continue_before_min_samples_has_no_p_value(tmp_path):
    rows = [("e", "a", 0), ("e", "b", 1)] * 20
    (r,) = replay(write(tmp_path / "o.csv", rows), min_samples=1000)
    assert r["decision"] == "Continue"
    assert r["pValue"] is None
    assert r["pValues"] == {"b": None}


def test_accepts_paths_text_and_binary_files(tmp_path):
    text = "experiment,variant,outcome,extra\n" + "e,a,0,x\ne,b,1,y\n" * 30
    path = tmp_path / "o.csv"
    path.write_text(text)
    results = [
        list(replay(src, min_samples=10))
        for src in (path, str(path), io.StringIO(text), io.BytesIO(text.encode()))
    ]
    assert all(r == results[0] for r in results)
    assert results[0][0]["decision"] == "Promote"


def test_header_only_yields_nothing(tmp_path):
    assert list(replay(write(tmp_path / "o.csv", []))) == []


@pytest.mark.parametrize(
    ("text", "kwargs", "message"),
    [
        ("experiment,variant,value\ne,a,1\n", {}, r"missing column\(s\) 'outcome'"),
        ("experiment,outcome\ne,1\n", {}, r"missing column\(s\) 'variant'"),
        ("experiment,variant,outcome\ne,a,1\ne,b,yes\n", {}, r"line 3: column 'outcome'.*'yes'"),
        ("experiment,variant,outcome\ne,a,1\ne,b,\n", {}, r"line 3: column 'outcome'.*empty"),
        ("experiment,variant,outcome\ne,a,1.5\ne,b,inf\n", {"metric": "mean"}, r"line 3.*finite"),
        ("experiment,variant,outcome\ne,a,1\ne,b,0\ne,b,2\n", {}, r"line 4.*0 or 1"),
        ("experiment,variant,outcome\ne,a,1\n,b,0\n", {}, r"line 3: column 'experiment' is empty"),
        ("experiment,variant,outcome\ne,a,1\ne,b,0\nsolo,a,1\n", {}, "experiment 'solo'"),
        ("experiment,variant,outcome\ne,a,1\ne,b\n", {}, "cannot parse"),
        ("experiment,variant,outcome\ne,a,1\ne,b,0\n", {"metric": "median"}, "metric"),
        ("experiment,variant,outcome\ne,a,1\ne,b,0\n", {"alpha": 1.0}, "alpha"),
    ],
)
def test_bad_input_is_a_value_error_that_says_where(tmp_path, text, kwargs, message):
    path = tmp_path / "bad.csv"
    path.write_text(text)
    with pytest.raises(ValueError, match=message):
        replay(path, **kwargs)  # eagerly: before the caller has printed anything


def test_mean_metric_accepts_any_numbers(tmp_path):
    rng = np.random.default_rng(3)
    rows = [("lat", v, f"{rng.normal(200 if v == 'a' else 150, 10):.3f}") for v in "ab" * 300]
    path = write(tmp_path / "o.csv", rows)
    (up,) = replay(path, metric="mean", min_samples=50)
    assert (up["decision"], up["winner"]) == ("Rollback", None)  # b is lower: worse if higher wins
    (down,) = replay(path, metric="mean", min_samples=50, direction="Decrease")
    assert (down["decision"], down["winner"]) == ("Promote", "b")
    assert up["samplesPerVariant"] == down["samplesPerVariant"]


def _assigned(rng, experiment, shares, rows, rates):
    """Rows whose variants are drawn with ``shares`` (the router's real split)."""
    names = list(shares)
    picks = rng.choice(len(names), size=rows, p=np.array([shares[n] for n in names]))
    picks[0] = 0
    outcome = rng.random(rows) < np.array([rates[n] for n in names])[picks]
    return [(experiment, names[p], int(y)) for p, y in zip(picks, outcome, strict=True)]


def test_a_60_40_router_under_50_50_weights_stops_with_sample_ratio_mismatch(tmp_path):
    """The candidate converts better, so without the weights the replay promotes it; with the
    configured 50/50 the broken 60/40 split is found first and nothing is promoted."""
    rng = np.random.default_rng(15)
    rates = {"control": 0.10, "candidate": 0.14}
    broken = _assigned(rng, "broken", {"control": 0.6, "candidate": 0.4}, 40_000, rates)
    healthy = _assigned(rng, "healthy", {"control": 0.5, "candidate": 0.5}, 40_000, rates)
    path = write(tmp_path / "obs.csv", broken + healthy)
    weights = {"control": 50, "candidate": 50}
    plain = {r["experiment"]: r for r in replay(path, min_samples=200)}
    checked = {r["experiment"]: r for r in replay(path, min_samples=200, weights=weights)}
    assert plain["broken"]["decision"] == "Promote"
    srm = checked["broken"]
    assert (srm["decision"], srm["winner"]) == ("SampleRatioMismatch", None)
    n = srm["samplesPerVariant"]
    assert n["control"] / (n["control"] + n["candidate"]) > 0.55
    assert sum(n.values()) < sum(plain["broken"]["samplesPerVariant"].values())
    assert checked["healthy"] == plain["healthy"]  # a healthy split decides as without


def test_replay_weights_must_name_every_variant(tmp_path):
    path = write(tmp_path / "obs.csv", [("e", "a", 1), ("e", "b", 0)])
    with pytest.raises(ValueError, match="variant 'b' has no weight"):
        replay(path, weights={"a": 50})
