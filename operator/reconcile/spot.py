"""TrainingJob spot economics, pure: the checkpoint interval, GPU-hours, waste and cost.

Called by ``reconcile/trainingjob.py`` each round; no I/O and no clock (``now`` is passed in).

- **Interval** (``spec.checkpoint.interval``): a duration is passed to the attempt as is;
  ``Auto`` is ``sqrt(2*C*M)`` within the operator's bounds (``monitoring/spot.py``), with C
  the checkpoint write time the runtime reported on the MLflow run (read where the operator
  already reads the run's progress tags) and M the job's mean time between reclaims from the
  operator's reclaim history (``Observed.reclaim_history``). Before any checkpoint C is
  unknown: the attempt starts at the lower bound, so its first checkpoint measures C early.
  Each attempt gets the values in its environment; the running attempt recomputes the interval
  itself as its own C estimate changes (``TrainingSession.checkpoint_due``), with M as it was
  when the attempt started (a new M reaches the next attempt).
- **Hours**: each round adds the GPU time since ``status.cost.accountedUntil`` of the current
  attempt, split by where each worker group runs (spot or on-demand); counted from the
  attempt's creation (nodes are paid while pods start) to its end.
- **Waste**: at each counted reclaim, the work since the last checkpoint (or since the attempt
  started running, when its last checkpoint is older) on all the attempt's GPUs; and for an
  attempt started after a preemption, its start-up time until it runs.
- **History**: the current spot attempt's exposure (node-seconds running on spot) and its
  reclaims, per pool, as a contribution ``<uid>/<attempt>`` the adapters store (idempotent).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from mlplane.crds import TrainingJob
from mlplane.monitoring import spot
from mlplane.operator.builders.rayjob import worker_capacity
from mlplane.operator.config import OperatorConfig

#: Variables the training runtime reads (``mlplane.training.context`` has the same names).
ENV_CHECKPOINT_INTERVAL = "MLPLANE_CHECKPOINT_INTERVAL"
ENV_CHECKPOINT_INTERVAL_SECONDS = "MLPLANE_CHECKPOINT_INTERVAL_SECONDS"
ENV_CHECKPOINT_WRITE_SECONDS = "MLPLANE_CHECKPOINT_WRITE_SECONDS"
ENV_RECLAIM_MTBR_SECONDS = "MLPLANE_RECLAIM_MTBR_SECONDS"
ENV_CHECKPOINT_INTERVAL_MIN = "MLPLANE_CHECKPOINT_INTERVAL_MIN_SECONDS"
ENV_CHECKPOINT_INTERVAL_MAX = "MLPLANE_CHECKPOINT_INTERVAL_MAX_SECONDS"
#: The node label of a zone, when the job pins one (``spec.nodeSelector``).
ZONE_LABEL = "topology.kubernetes.io/zone"
#: A running attempt's hours are added in steps this long (seconds).
ACCOUNT_EVERY = 600.0


@dataclass(frozen=True)
class ReclaimSample:
    """One contribution to the reclaim history: store it if ``spot.worth_saving`` says so."""

    pool: str
    contribution: str
    exposure: spot.Exposure


def _seconds(text: str | None) -> datetime | None:
    if not text:
        return None
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None


def spot_groups(tj: TrainingJob, capacity: str) -> list[tuple[str, int]]:
    """(pool key, nodes) of each worker group on spot in an attempt of ``capacity``.

    The zone is the one the job pins with ``spec.nodeSelector`` (else ``*``): the pool a node
    lands in is known only after scheduling, and the history is kept per pool the job can name.
    """
    zone = (tj.spec.node_selector or {}).get(ZONE_LABEL)
    return [
        (spot.pool_key(g.accelerator, zone), g.replicas)
        for g in tj.spec.workers
        if worker_capacity(g, capacity) == "Spot" and g.replicas > 0  # type: ignore[arg-type]
    ]


def mtbr(tj: TrainingJob, capacity: str, history: spot.ReclaimHistory) -> float | None:
    """M of an attempt of ``capacity``: None when none of its workers is on spot."""
    return spot.job_mtbr(
        (spot.node_mtbr(history, pool), nodes) for pool, nodes in spot_groups(tj, capacity)
    )


def interval(
    tj: TrainingJob,
    config: OperatorConfig,
    capacity: str,
    write_seconds: float | None,
    history: spot.ReclaimHistory,
) -> tuple[float | None, float | None]:
    """(interval seconds, M) for an attempt of ``capacity``; (None, M) when no interval is set.

    Auto without spot workers (M is None) checkpoints at the upper bound: nothing is reclaimed,
    a checkpoint only guards against code failures.
    """
    m = mtbr(tj, capacity, history)
    ask = tj.spec.checkpoint.interval if tj.spec.checkpoint else None
    if ask is None:
        return None, m
    fixed = tj.spec.checkpoint.interval_seconds if tj.spec.checkpoint else None
    if fixed is not None:
        return fixed, m
    low, high = config.checkpoint_interval_min, config.checkpoint_interval_max
    if m is None:
        return high, m
    if write_seconds is None:
        return low, m
    return spot.young_daly(write_seconds, m, min_seconds=low, max_seconds=high), m


def checkpoint_env(
    tj: TrainingJob,
    config: OperatorConfig,
    capacity: str,
    write_seconds: float | None,
    history: spot.ReclaimHistory,
) -> dict[str, str]:
    """The interval variables of an attempt (empty when ``spec.checkpoint.interval`` is unset)."""
    every, m = interval(tj, config, capacity, write_seconds, history)
    if every is None or tj.spec.checkpoint is None or tj.spec.checkpoint.interval is None:
        return {}
    env = {
        ENV_CHECKPOINT_INTERVAL: tj.spec.checkpoint.interval,
        ENV_CHECKPOINT_INTERVAL_SECONDS: f"{every:.3f}",
        ENV_CHECKPOINT_INTERVAL_MIN: f"{config.checkpoint_interval_min:.3f}",
        ENV_CHECKPOINT_INTERVAL_MAX: f"{config.checkpoint_interval_max:.3f}",
    }
    if m is not None:
        env[ENV_RECLAIM_MTBR_SECONDS] = f"{m:.3f}"
    if write_seconds is not None:
        env[ENV_CHECKPOINT_WRITE_SECONDS] = f"{write_seconds:.3f}"
    return env


def checkpoint_status(
    tj: TrainingJob,
    config: OperatorConfig,
    capacity: str,
    write_seconds: float | None,
    reported_interval: float | None,
    history: spot.ReclaimHistory,
) -> dict[str, Any] | None:
    """``status.checkpoint``: the interval in use, C and M (None without an interval)."""
    ask = tj.spec.checkpoint.interval if tj.spec.checkpoint else None
    if ask is None:
        return None
    every, m = interval(tj, config, capacity, write_seconds, history)
    out: dict[str, Any] = {"interval": ask}
    in_use = reported_interval if reported_interval is not None else every
    if in_use is not None:
        out["intervalSeconds"] = round(in_use, 3)
    if write_seconds is not None:
        out["writeSeconds"] = round(write_seconds, 3)
    if m is not None:
        out["meanTimeBetweenReclaimsSeconds"] = round(m, 1)
    return out


# --- hours, waste and cost ---------------------------------------------------------------------


def _groups(tj: TrainingJob, capacity: str) -> list[tuple[str | None, int, str]]:
    """(accelerator, GPUs, "Spot"/"OnDemand") of each worker group with GPUs in the attempt."""
    out = []
    for g in tj.spec.workers:
        gpus = g.replicas * g.resources.gpu
        if gpus > 0:
            where = "Spot" if worker_capacity(g, capacity) == "Spot" else "OnDemand"  # type: ignore[arg-type]
            out.append((g.accelerator, gpus, where))
    return out


def has_gpus(tj: TrainingJob) -> bool:
    """Whether the job's workers have GPUs (only then does status carry ``cost``)."""
    return any(g.replicas * g.resources.gpu > 0 for g in tj.spec.workers)


def new_cost(config: OperatorConfig) -> dict[str, Any]:
    cost: dict[str, Any] = {"spotGpuHours": 0.0, "onDemandGpuHours": 0.0, "lostGpuHours": 0.0}
    if config.gpu_prices is not None:
        cost.update(estimatedCost=0.0, lostCost=0.0, currency=config.price_currency)
    return cost


def _price(cost: dict[str, Any], config: OperatorConfig, accelerator: str | None,
           where: str, gpu_hours: float, key: str) -> None:  # fmt: skip
    if config.gpu_prices is None or gpu_hours <= 0:
        return
    price = config.gpu_price(accelerator, where)
    if price is None:
        unpriced = set(cost.get("unpriced", [])) | {f"{accelerator or 'gpu'}:{where}"}
        cost["unpriced"] = sorted(unpriced)
        return
    cost.setdefault(key, 0.0)
    cost[key] = round(cost[key] + price * gpu_hours, 4)


def add_hours(
    cost: dict[str, Any], tj: TrainingJob, config: OperatorConfig, capacity: str, seconds: float
) -> None:
    """``seconds`` of an attempt of ``capacity`` on its GPUs, by where each group runs."""
    if seconds <= 0:
        return
    for accelerator, gpus, where in _groups(tj, capacity):
        hours = gpus * seconds / 3600.0
        key = "spotGpuHours" if where == "Spot" else "onDemandGpuHours"
        cost[key] = round(cost.get(key, 0.0) + hours, 6)
        _price(cost, config, accelerator, where, hours, "estimatedCost")


def add_lost(
    cost: dict[str, Any], tj: TrainingJob, config: OperatorConfig, capacity: str, seconds: float
) -> float:
    """``seconds`` of work lost by all GPUs of an attempt; returns the GPU-hours added."""
    if seconds <= 0:
        return 0.0
    added = 0.0
    for accelerator, gpus, where in _groups(tj, capacity):
        hours = gpus * seconds / 3600.0
        added += hours
        _price(cost, config, accelerator, where, hours, "lostCost")
    cost["lostGpuHours"] = round(cost.get("lostGpuHours", 0.0) + added, 6)
    return added


def account(
    cost: dict[str, Any],
    tj: TrainingJob,
    config: OperatorConfig,
    current: dict[str, Any],
    end: datetime,
    *,
    final: bool = False,
) -> None:
    """Add the current attempt's GPU time from ``accountedUntil`` (or its start) to ``end``.

    While the attempt runs, only in steps of :data:`ACCOUNT_EVERY`: a status that changes at
    every round would be a status write every few seconds per job. ``final`` (the attempt
    ended) counts the rest at once.
    """
    start = _seconds(current.get("startTime"))
    since = _seconds(cost.get("accountedUntil"))
    begin = max(t for t in (start, since) if t is not None) if (start or since) else None
    if begin is None:
        return
    if since is None or since < begin:
        cost["accountedUntil"] = _text(begin)
    if not final and (end - begin).total_seconds() < ACCOUNT_EVERY:
        return
    if end > begin:
        add_hours(cost, tj, config, current["capacity"], (end - begin).total_seconds())
        cost["accountedUntil"] = _text(end)


def _text(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ") if moment.microsecond == 0 else (
        moment.isoformat().replace("+00:00", "Z"))  # fmt: skip


def lost_seconds(
    current: dict[str, Any], last_checkpoint: dict[str, Any] | None, at: datetime
) -> float:
    """Work repeated after a reclaim at ``at``: since the newest checkpoint before it, or since
    the attempt began running (it resumed from an older checkpoint then)."""
    marks = [_seconds(current.get("runningTime")) or _seconds(current.get("startTime"))]
    taken = _seconds((last_checkpoint or {}).get("time"))
    if taken is not None and taken <= at:
        marks.append(taken)
    known = [m for m in marks if m is not None]
    return max(0.0, (at - max(known)).total_seconds()) if known else 0.0


def reclaim_samples(
    tj: TrainingJob,
    uid: str,
    current: dict[str, Any],
    reclaims: int,
    end: datetime,
    *,
    last_reclaim: float | None = None,
) -> list[ReclaimSample]:
    """The current attempt's contribution to each spot pool it runs in.

    Exposure is running time (from ``runningTime``: pending pods have no spot nodes yet) times
    the pool's nodes. Reclaims go to the pool with the most nodes: the evidence names a node,
    not its pool (exact for the usual single spot group), with the newest one's time
    ``last_reclaim`` (Unix seconds; a return to spot waits for a quiet pool).
    """
    groups = spot_groups(tj, current["capacity"])
    running = _seconds(current.get("runningTime"))
    if not groups or running is None:
        return []
    seconds = max(0.0, (end - running).total_seconds())
    pools: dict[str, int] = {}
    for pool, nodes in groups:
        pools[pool] = pools.get(pool, 0) + nodes
    main = max(pools, key=lambda p: pools[p])
    contribution = f"{uid}/{current['number']}"
    return [
        ReclaimSample(
            pool,
            contribution,
            spot.Exposure(nodes * seconds, reclaims, last_reclaim)
            if pool == main
            else spot.Exposure(nodes * seconds, 0),
        )
        for pool, nodes in sorted(pools.items())
    ]
