"""Simulation: checkpoint policies on spot capacity, over reclaim processes, same run.

    .venv/bin/python bench/spot_policy.py                 # the table in bench/README.md
    .venv/bin/python bench/spot_policy.py --seeds 4 --work-hours 12   # quicker

A job needs ``--work-hours`` of compute on one spot node (M is the job's mean time between
reclaims, as the operator computes it for all its spot nodes together). Reclaims come from a
seeded process in wall-clock time; every policy meets the *same* reclaim times (common random
numbers), so the differences are the policies', not the dice's. After a reclaim the job restarts
(``--restart`` seconds, the same for every policy) from its newest complete checkpoint.

Processes: Poisson at 1/h, 1/30 min and 1/10 min; and bursty (a two-state Markov-modulated
Poisson process with the same mean rate: calm at 0.3x the mean for 4 h on average, storms at
3.8x for 1 h on average). Checkpoint write costs C: 5 s, 30 s, 2 min and 5 min.

Policies:

* **fixed**: a checkpoint every tau of compute, for 30 intervals from 30 s to 8 h (geometric);
  the *best fixed interval in hindsight* is the one with the least waste for that process and C;
* **Auto**: what the operator and the runtime do (``mlplane.monitoring.spot``): the first
  checkpoint at the lower bound (C unknown yet), then ``young_daly(C, M)`` with C the runtime's
  running mean and M the reclaim history estimate (prior 6 h worth one reclaim, each attempt a
  contribution), recomputed at each restart as a new attempt gets the new M;
* **notice + Auto**: Auto, plus a checkpoint when the reclaim notice arrives N seconds before
  the reclaim (AWS: 120 s, GCP: 30 s); it completes when C <= N (modelled: the runtime learns of
  it at once and is at a step boundary; the issue's budget is 5 s plus one step), and the work
  after it until the reclaim is lost.

Waste = work repeated after reclaims (since the newest complete checkpoint, partial writes
included) + checkpoint write time, in % of the useful work. Restart time is the same for every
policy (restarts x ``--restart``) and is left out of the comparison; the table shows it apart.

Claims checked per row, printed as they come out (nothing here is tuned to make them hold):
Auto's waste within 10 % of the best fixed interval's; notice + Auto's waste below every fixed
interval's.
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from mlplane.monitoring import spot

POOL = spot.pool_key("sim", None)
RATES = {"1/h": 3600.0, "1/30min": 1800.0, "1/10min": 600.0}
COSTS = (5.0, 30.0, 120.0, 300.0)
FIXED = tuple(float(x) for x in np.geomspace(30, 8 * 3600, 30))


def poisson(rng: np.random.Generator, mtbr: float, horizon: float) -> np.ndarray:
    """Reclaim times of a Poisson process with mean ``mtbr`` up to ``horizon``."""
    n = int(horizon / mtbr * 1.5) + 100
    times = np.cumsum(rng.exponential(mtbr, n))
    while times[-1] < horizon:
        times = np.concatenate([times, times[-1] + np.cumsum(rng.exponential(mtbr, n))])
    return times[times < horizon]


def bursty(rng: np.random.Generator, mtbr: float, horizon: float) -> np.ndarray:
    """Calm (0.3x the mean rate, 4 h mean) and storm (3.8x, 1 h mean) periods, mean rate 1/mtbr."""
    out, t, calm = [], 0.0, True
    while t < horizon:
        length = rng.exponential(4 * 3600.0 if calm else 3600.0)
        rate = (0.3 if calm else 3.8) / mtbr
        k = rng.poisson(rate * length)
        out.extend(np.sort(t + rng.uniform(0, length, k)))
        t += length
        calm = not calm
    times = np.asarray(out)
    return times[times < horizon]


@dataclass
class Result:
    lost: float = 0.0  # work repeated (and partial writes) after reclaims
    overhead: float = 0.0  # checkpoint write time
    restarts: int = 0

    @property
    def waste(self) -> float:
        return self.lost + self.overhead


class Auto:
    """The operator's and the runtime's Auto interval, learning M from its own history."""

    def __init__(self, low: float, high: float) -> None:
        self.low, self.high = low, high
        self.history: dict[str, spot.PoolHistory] = {}
        self.attempt = 1
        self.m = spot.node_mtbr(self.history, POOL)
        self.c: float | None = None

    def interval(self) -> float:
        if self.c is None:
            return self.low  # the first checkpoint measures C
        return spot.young_daly(self.c, self.m, min_seconds=self.low, max_seconds=self.high)

    def wrote(self, seconds: float) -> None:
        self.c = spot.update_write_seconds(self.c, seconds)

    def attempt_ended(self, running: float, reclaimed: bool) -> None:
        exposure = spot.Exposure(running, 1 if reclaimed else 0)
        self.history = spot.record(self.history, POOL, f"sim/{self.attempt}", exposure)
        self.attempt += 1
        self.m = spot.node_mtbr(self.history, POOL)  # the next attempt's M


def simulate(
    reclaims: np.ndarray,
    work: float,
    c: float,
    restart: float,
    interval: Callable[[], float],
    *,
    wrote: Callable[[float], None] = lambda s: None,
    attempt_ended: Callable[[float, bool], None] = lambda r, x: None,
    notice: float | None = None,
) -> Result:
    """Run the job to ``work`` seconds of compute; see the module docstring for the model."""
    res = Result()
    t, done, i = 0.0, 0.0, 0
    attempt_start = 0.0
    n = len(reclaims)
    while done < work:
        tau = interval()
        while i < n and reclaims[i] < t:  # reclaims during a restart: nothing runs yet
            i += 1
        r = reclaims[i] if i < n else math.inf
        cycle = tau + c
        remaining = work - done
        need = max(0, math.ceil(remaining / tau) - 1)  # full cycles before the last stretch
        fit = math.floor((r - t) / cycle) if r < math.inf else need
        if fit >= need and t + need * cycle + (remaining - need * tau) <= r:
            res.overhead += need * c
            for _ in range(min(need, 3)):
                wrote(c)
            t += need * cycle + (remaining - need * tau)
            done = work
            break
        k = min(fit, need)
        if k > 0:
            t += k * cycle
            done += k * tau
            res.overhead += k * c
            for _ in range(min(k, 3)):  # the running mean of a constant C is C after one
                wrote(c)
            continue
        # The reclaim at r comes before the next checkpoint completes.
        start = t
        saved = False
        if notice is not None:
            heard = r - notice
            if start <= heard < start + tau and c <= notice:  # checkpoint on notice lands
                done += heard - start
                res.overhead += c
                wrote(c)
                res.lost += r - (heard + c)
                saved = True
        if not saved:
            res.lost += r - start
        res.restarts += 1
        attempt_ended(r - attempt_start, True)
        t = r + restart
        attempt_start = t
        i += 1
    return res


def run(args: argparse.Namespace) -> None:
    work = args.work_hours * 3600.0
    horizon = work * 6 + 48 * 3600.0
    kinds = {"poisson": poisson, "bursty": bursty}
    header = (
        f"{'process':<17}{'C':>6} | {'best fixed':>10} {'waste%':>7} | {'Auto waste%':>11}"
        f" {'vs best':>8} | {'notice120':>9} {'notice30':>9} | {'restarts':>8} {'ok?':>12}"
    )
    print(f"work {args.work_hours:g} h x {args.seeds} seeds per row; restart {args.restart:g} s "
          f"(not in waste); Auto bounds {args.low:g}-{args.high:g} s")  # fmt: skip
    print(header)
    print("-" * len(header))
    began = time.perf_counter()
    failures = []
    for kind, process in kinds.items():
        for label, mtbr in RATES.items():
            streams = [process(np.random.default_rng([args.seed, s, int(mtbr)]), mtbr, horizon)
                       for s in range(args.seeds)]  # fmt: skip
            for c in COSTS:
                fixed = {tau: Result() for tau in FIXED}
                auto, n120, n30 = Result(), Result(), Result()
                restarts = 0
                for reclaims in streams:
                    for tau in FIXED:
                        got = simulate(reclaims, work, c, args.restart, lambda tau=tau: tau)
                        _add(fixed[tau], got)
                    for target, notice in ((auto, None), (n120, 120.0), (n30, 30.0)):
                        policy = Auto(args.low, args.high)
                        got = simulate(reclaims, work, c, args.restart, policy.interval,
                                       wrote=policy.wrote, attempt_ended=policy.attempt_ended,
                                       notice=notice)  # fmt: skip
                        _add(target, got)
                    restarts += got.restarts
                best_tau = min(fixed, key=lambda tau: fixed[tau].waste)
                best = fixed[best_tau].waste
                total = work * args.seeds

                def pct(x: float, total: float = total) -> str:
                    return f"{100 * x / total:.2f}"

                ratio = auto.waste / best
                ok_auto = ratio <= 1.10
                ok_notice = n120.waste < best
                verdict = ("ok" if ok_auto else "AUTO>10%") + ("" if ok_notice else " NOTICE")
                if not (ok_auto and ok_notice):
                    failures.append(f"{kind} {label} C={c:g}s")
                print(
                    f"{kind + ' ' + label:<17}{c:>5g}s | {_dur(best_tau):>10} {pct(best):>7} | "
                    f"{pct(auto.waste):>11} {ratio:>7.3f}x | {pct(n120.waste):>9} "
                    f"{pct(n30.waste):>9} | {restarts / args.seeds:>8.0f} {verdict:>12}"
                )
    print(f"\n{len(failures)} row(s) where a claim does not hold: {', '.join(failures) or 'none'}")
    print(f"simulated in {time.perf_counter() - began:.1f} s")


def _add(total: Result, one: Result) -> None:
    total.lost += one.lost
    total.overhead += one.overhead
    total.restarts += one.restarts


def _dur(seconds: float) -> str:
    if seconds >= 3600:
        return f"{seconds / 3600:.1f}h"
    if seconds >= 60:
        return f"{seconds / 60:.1f}m"
    return f"{seconds:.0f}s"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=8, help="runs per row (default 8)")
    parser.add_argument("--work-hours", type=float, default=48.0, help="compute per run")
    parser.add_argument("--restart", type=float, default=60.0, help="seconds per restart")
    parser.add_argument("--seed", type=int, default=13)
    parser.add_argument("--low", type=float, default=spot.DEFAULT_MIN_INTERVAL_SECONDS)
    parser.add_argument("--high", type=float, default=spot.DEFAULT_MAX_INTERVAL_SECONDS)
    run(parser.parse_args())


if __name__ == "__main__":
    main()
