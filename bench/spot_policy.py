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

``--return-to-spot``: the on-demand hours ``spec.preemption.returnToSpot`` saves after a
``SpotWithFallback`` fallback (:func:`fallback_run` has its model; bench/README.md the table).

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


# --- return to spot (spec.preemption.returnToSpot) ------------------------------------------------


@dataclass
class Fallback:
    """Hours of one SpotWithFallback job: on spot, on on-demand, lost to reclaims; returns."""

    spot: float = 0.0
    on_demand: float = 0.0
    lost: float = 0.0
    returns: int = 0

    def add(self, other: Fallback) -> None:
        self.spot += other.spot
        self.on_demand += other.on_demand
        self.lost += other.lost
        self.returns += other.returns


def quiet_from(reclaims: np.ndarray, at: float, window: float) -> float:
    """The first moment >= ``at`` with no reclaim in the ``window`` before it."""
    while True:
        k = int(np.searchsorted(reclaims, at, side="right"))
        if k == 0 or reclaims[k - 1] + window <= at:  # (not at - window: float rounding)
            return at
        at = float(reclaims[k - 1]) + window


def fallback_run(
    reclaims: np.ndarray,
    work: float,
    *,
    budget: int,
    restart: float,
    tau: float,
    min_on_demand: float | None,
    sees_pool: bool,
) -> Fallback:
    """One job to ``work`` seconds of compute; hours in seconds until the caller divides.

    A reclaim on spot loses the work since the last checkpoint (``tau / 2`` at most, the mean
    of a uniform point in an interval; less when the attempt ran less) plus ``restart``. After
    ``budget`` reclaims the job is on on-demand (nothing lost there). With ``min_on_demand``
    it returns as the operator does: once on on-demand that long (doubled per return reclaimed
    within 4x that) and, when ``sees_pool`` (other jobs of the operator run in the pool and
    report its reclaims), no reclaim for as long; then after the next checkpoint (``tau / 2``
    on average) and a restart. Back on spot, the first reclaim falls back again (the budget is
    spent).
    """
    out = Fallback()
    t, done, used, i, backoff = 0.0, 0.0, 0, 0, 0
    on_spot, since, last_return = True, 0.0, None
    n = len(reclaims)
    while done < work:
        if on_spot:
            while i < n and reclaims[i] < t:
                i += 1
            r = float(reclaims[i]) if i < n else math.inf
            if t + (work - done) <= r:
                out.spot += work - done
                break
            ran = r - t
            lost = min(ran, tau / 2)
            done += ran - lost
            out.spot += ran
            out.lost += lost
            used += 1
            i += 1
            t = r + restart
            if used >= budget:
                on_spot, since = False, t
                if last_return is not None:
                    window = 4 * min_on_demand * 2**backoff  # type: ignore[operator]
                    backoff = backoff + 1 if t - last_return < window else 0
            continue
        if min_on_demand is None:
            out.on_demand += work - done
            break
        wait = min(min_on_demand * 2**backoff, 7 * 86400.0)
        back = since + wait
        if sees_pool:
            back = quiet_from(reclaims, back, wait)
        move = back + tau / 2  # the next checkpoint after the decision
        if move - t >= work - done:
            out.on_demand += work - done
            break
        out.on_demand += move - t
        done += move - t
        t = move + restart
        on_spot, last_return = True, t
        out.returns += 1
    return out


def run_return_to_spot(args: argparse.Namespace) -> None:
    """On-demand hours a return to spot saves, against staying on on-demand after a fallback."""
    work = args.work_hours * 3600.0
    horizon = work * 6 + 48 * 3600.0
    budget, c = 3, 30.0
    policies: dict[str, tuple[float | None, bool]] = {
        "stay": (None, False),
        "30m": (1800.0, False),
        "30m+pool": (1800.0, True),
        "2h": (7200.0, False),
        "2h+pool": (7200.0, True),
    }
    print(f"\nReturn to spot: work {args.work_hours:g} h on spot x {args.seeds} seeds; "
          f"maxPreemptions {budget}; Auto interval for C = {c:g} s; on-demand hours per job "
          "(saved vs stay), returns per job, lost hours per job")  # fmt: skip
    header = f"{'process':<17}" + "".join(f" | {name:>22}" for name in policies)
    print(header)
    print("-" * len(header))
    for kind, process in {"poisson": poisson, "bursty": bursty}.items():
        for label, mtbr in RATES.items():
            streams = [process(np.random.default_rng([args.seed, s, int(mtbr)]), mtbr, horizon)
                       for s in range(args.seeds)]  # fmt: skip
            tau = spot.young_daly(c, mtbr, min_seconds=args.low, max_seconds=args.high)
            totals = {name: Fallback() for name in policies}
            for reclaims in streams:
                for name, (wait, sees) in policies.items():
                    totals[name].add(fallback_run(reclaims, work, budget=budget,
                                                  restart=args.restart, tau=tau,
                                                  min_on_demand=wait, sees_pool=sees))  # fmt: skip
            stay = totals["stay"].on_demand
            cells = []
            for name, got in totals.items():
                od = got.on_demand / 3600 / args.seeds
                saved = ""
                if stay and name != "stay":
                    saved = f"-{100 * (1 - got.on_demand / stay):.0f}%"
                cells.append(f"{od:5.1f}h {saved:>5} {got.returns / args.seeds:4.1f}r "
                             f"{got.lost / 3600 / args.seeds:4.1f}l")  # fmt: skip
            print(f"{kind + ' ' + label:<17}" + "".join(f" | {cell:>22}" for cell in cells))


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
    parser.add_argument("--return-to-spot", action="store_true",
                        help="only the return-to-spot table (on-demand hours saved)")  # fmt: skip
    args = parser.parse_args()
    if not args.return_to_spot:
        run(args)
    run_return_to_spot(args)


if __name__ == "__main__":
    main()
