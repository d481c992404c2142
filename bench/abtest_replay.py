"""Benchmark: `mlplane.monitoring.replay.replay` over 1,000,000 observations.

Generates 200 experiments x 5,000 rows (two or three variants, some with a real lift, rows of
different experiments interleaved) into a temporary CSV, then times, side by side on the same
file:

- baseline: pandas reads the CSV and takes a groupby mean per (experiment, variant), the cost
  of merely reading and summarising it once;
- replay: the sequential test evaluated after every observation, stopping at each
  experiment's first conclusive decision.

Prints rows/s for both and the ratio. Not a test: numbers depend on the machine.

    .venv/bin/python bench/abtest_replay.py [--experiments 200] [--rows 5000] [--repeat 3]
"""

from __future__ import annotations

import argparse
import collections
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from mlplane.monitoring.replay import replay


def generate(path: Path, experiments: int, rows: int, seed: int = 0) -> int:
    rng = np.random.default_rng(seed)
    frames = []
    for e in range(experiments):
        k = 2 if e % 3 else 3
        rates = np.full(k, 0.10)
        if e % 4 == 0:
            rates[-1] = 0.13  # a quarter of the experiments have a real 3-point lift
        picks = rng.integers(0, k, size=rows)
        picks[:k] = np.arange(k)  # the control is seen first
        frames.append(
            pd.DataFrame(
                {
                    "experiment": f"exp-{e:04d}",
                    "variant": np.array([f"v{i}" for i in range(k)])[picks],
                    "outcome": (rng.random(rows) < rates[picks]).astype(np.int8),
                    "t": rng.random(rows) + np.arange(rows),  # arrival time within experiment
                }
            )
        )
    df = pd.concat(frames, ignore_index=True).sort_values("t", kind="stable")  # interleave
    df[["experiment", "variant", "outcome"]].to_csv(path, index=False)
    return len(df)


def best_of(repeat: int, fn) -> tuple[float, object]:
    times, out = [], None
    for _ in range(repeat):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return min(times), out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--experiments", type=int, default=200)
    ap.add_argument("--rows", type=int, default=5000, help="rows per experiment")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "observations.csv"
        n = generate(path, args.experiments, args.rows)
        size_mb = path.stat().st_size / 1e6

        def baseline() -> object:
            df = pd.read_csv(path, engine="pyarrow")
            return df.groupby(["experiment", "variant"], sort=False)["outcome"].mean()

        def replayed() -> object:
            return list(replay(path, alpha=0.05, metric="conversion", min_samples=1000))

        t_base, _ = best_of(args.repeat, baseline)
        t_replay, results = best_of(args.repeat, replayed)

    decisions = collections.Counter(r["decision"] for r in results)  # type: ignore[union-attr]
    print(
        f"{n:,} rows ({size_mb:.1f} MB CSV), {args.experiments} experiments; best of {args.repeat}"
    )
    print(f"baseline pandas read + groupby mean : {t_base:6.2f} s  {n / t_base:12,.0f} rows/s")
    print(f"replay (sequential, every row)      : {t_replay:6.2f} s  {n / t_replay:12,.0f} rows/s")
    print(f"ratio replay / baseline             : {t_replay / t_base:6.2f}x")
    print(f"decisions: {dict(decisions)}")


if __name__ == "__main__":
    main()
