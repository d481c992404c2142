"""Benchmark: mlplane's binned drift statistics vs scipy's exact per-column tests, same run.

    .venv/bin/python bench/drift_bench.py                    # 200k and 1M rows x 50 columns
    .venv/bin/python bench/drift_bench.py --rows 200000      # one size

For each size it generates a reference and a current table (40 numeric, 10 categorical columns;
a few of them drifted by small amounts), then runs

* **mlplane**: ``build_profile`` (reference) + ``DriftSketch.add`` (current, one call) +
  ``evaluate`` - the pipeline training and the serving tap run;
* **scipy (exact)**: ``scipy.stats.ks_2samp`` on the raw numeric columns and
  ``chi2_contingency`` on full category counts, Holm-adjusted the same way;

and prints wall time (best of ``--repeat``), peak traced memory (``tracemalloc``, which sees
numpy's buffers; measured in a separate run so tracing does not slow the timed one), and where
the two verdicts disagree. It also streams part of the current data through the sketch in
serving-sized batches to show per-batch throughput. Evidently and alibi-detect are compared only
if importable (they are not project dependencies). Not a test: numbers depend on the machine.
"""

from __future__ import annotations

import argparse
import gc
import time
import tracemalloc
from collections.abc import Callable
from typing import Any

import numpy as np
from scipy import stats

from mlplane.monitoring.drift import DriftConfig, adjust, evaluate
from mlplane.monitoring.profile import build_profile
from mlplane.monitoring.sketches import DriftSketch

N_NUMERIC = 40
N_CATEGORICAL = 10
ALPHA = DriftConfig().alpha


def make_data(rows: int, seed: int) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], set]:
    """Reference and current tables; returns the names of the columns that truly drift."""
    rng = np.random.default_rng(seed)
    vocab = np.array([f"cat{i:03d}" for i in range(200)], dtype=object)
    drifted: set[str] = set()

    def table(current: bool) -> dict[str, np.ndarray]:
        data: dict[str, np.ndarray] = {}
        for j in range(N_NUMERIC):
            name = f"num{j:02d}"
            shape = j % 4
            if shape == 0:
                x = rng.normal(0.0, 1.0, rows)
            elif shape == 1:
                x = rng.lognormal(0.0, 0.7, rows)
            elif shape == 2:
                x = rng.integers(0, 12, rows).astype(np.float64)
            else:
                x = rng.gamma(2.0, 1.0, rows)
            if current and j in (0, 4):  # 0.1-sd mean shift
                x = x + 0.1 * 1.0
                drifted.add(name)
            if current and j == 8:  # variance change
                x = x * 1.1
                drifted.add(name)
            data[name] = x
        for j in range(N_CATEGORICAL):
            name = f"cat{j:02d}"
            k = (5, 20, 200)[j % 3]
            weights = 1.0 / np.arange(1, k + 1)
            if current and j == 0:  # one category's share moves by 2 points
                weights = weights / weights.sum()
                weights[0] += 0.02
                weights[1] -= 0.02
                drifted.add(name)
            data[name] = vocab[rng.choice(k, rows, p=weights / weights.sum())]
        return data

    return table(False), table(True), drifted


STAGES: dict[str, float] = {}


def run_mlplane(reference: dict, current: dict) -> dict[str, bool]:
    t0 = time.perf_counter()
    profile = build_profile(reference)
    t1 = time.perf_counter()
    sketch = DriftSketch(profile, window_seconds=300.0)
    sketch.add(current, timestamp=0.0)
    t2 = time.perf_counter()
    rows = evaluate(profile, sketch.current)
    t3 = time.perf_counter()
    STAGES.update(profile=t1 - t0, sketch=t2 - t1, evaluate=t3 - t2)
    return {r.feature: bool(r.drifted) for r in rows}


def run_scipy(reference: dict, current: dict) -> dict[str, bool]:
    names, p_values = [], []
    for name, ref in reference.items():
        cur = current[name]
        if ref.dtype.kind == "f":
            p = stats.ks_2samp(ref, cur).pvalue
        else:
            cats, codes = np.unique(np.concatenate([ref, cur]), return_inverse=True)
            table = np.vstack(
                [
                    np.bincount(codes[: ref.size], minlength=cats.size),
                    np.bincount(codes[ref.size :], minlength=cats.size),
                ]
            )
            table = table[:, table.sum(axis=0) > 0]
            p = stats.chi2_contingency(table, correction=False).pvalue
        names.append(name)
        p_values.append(float(p))
    adjusted = adjust(p_values, "holm")
    return {n: bool(p < ALPHA) for n, p in zip(names, adjusted, strict=True)}


def timed(fn: Callable[[], Any], repeat: int) -> tuple[float, Any]:
    best, result = float("inf"), None
    for _ in range(repeat):
        gc.collect()
        t0 = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - t0)
    return best, result


def peak_memory(fn: Callable[[], Any]) -> int:
    gc.collect()
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def streaming_throughput(reference: dict, current: dict, batch: int, rows: int) -> float:
    """Rows per second through ``DriftSketch.add`` in serving-sized batches."""
    profile = build_profile(reference)
    sketch = DriftSketch(profile, window_seconds=300.0)
    rows = min(rows, next(iter(current.values())).size)
    batches = [{k: v[s : s + batch] for k, v in current.items()} for s in range(0, rows, batch)]
    t0 = time.perf_counter()
    for i, b in enumerate(batches):
        sketch.add(b, timestamp=float(i) * 1e-3)
    return rows / (time.perf_counter() - t0)


def optional_libraries() -> None:
    for module, label in (("evidently", "Evidently"), ("alibi_detect", "alibi-detect")):
        try:
            __import__(module)
        except ImportError:
            print(f"  {label}: not importable here, skipped (not a project dependency)")
        else:
            print(f"  {label}: importable, but no adapter is written for it in this bench; skipped")


def bench(rows: int, seed: int, repeat: int, batch: int) -> None:
    print(f"\n== {rows:,} rows per side x {N_NUMERIC + N_CATEGORICAL} columns "
          f"({N_NUMERIC} numeric, {N_CATEGORICAL} categorical) ==")  # fmt: skip
    reference, current, truth = make_data(rows, seed)
    t_ml, verdict_ml = timed(lambda: run_mlplane(reference, current), repeat)
    stages = dict(STAGES)  # of the last timed run
    t_sp, verdict_sp = timed(lambda: run_scipy(reference, current), repeat)
    m_ml = peak_memory(lambda: run_mlplane(reference, current))
    m_sp = peak_memory(lambda: run_scipy(reference, current))
    print(f"  {'method':<34}{'time [s]':>10}{'peak mem [MB]':>15}{'found':>7}")
    for label, t, m, v in (
        ("mlplane (profile+sketch+evaluate)", t_ml, m_ml, verdict_ml),
        ("scipy exact (ks_2samp, chi2)", t_sp, m_sp, verdict_sp),
    ):
        print(f"  {label:<34}{t:>10.2f}{m / 2**20:>15.1f}{sum(v.values()):>7}")
    print(f"  ratio mlplane/scipy: time {t_ml / t_sp:.2f}x, peak memory {m_ml / m_sp:.2f}x")
    print(
        "  mlplane stages (last run): "
        + ", ".join(f"{k} {v:.2f}s" for k, v in stages.items())
        + "  (profile: once, at training; sketch + evaluate: what serving pays)"
    )
    agree = sum(verdict_ml[c] == verdict_sp[c] for c in verdict_ml)
    print(f"  verdict agreement: {agree}/{len(verdict_ml)} columns")
    for c in sorted(c for c in verdict_ml if verdict_ml[c] != verdict_sp[c]):
        print(f"    differs on {c}: mlplane={verdict_ml[c]} scipy={verdict_sp[c]}")
    for label, v in (("mlplane", verdict_ml), ("scipy", verdict_sp)):
        found = {c for c, d in v.items() if d}
        print(
            f"  {label}: true drifts found {len(found & truth)}/{len(truth)}, "
            f"false alarms {len(found - truth)}"
        )
    rate = streaming_throughput(reference, current, batch, min(rows, 200_000))
    print(f"  streaming: DriftSketch.add in batches of {batch} rows: {rate:,.0f} rows/s")
    optional_libraries()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[200_000, 1_000_000])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeat", type=int, default=2, help="timed runs per method (best)")
    parser.add_argument("--batch", type=int, default=1000, help="rows per streamed batch")
    args = parser.parse_args()
    for rows in args.rows:
        bench(rows, args.seed, args.repeat, args.batch)


if __name__ == "__main__":
    main()
