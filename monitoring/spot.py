"""Spot economics, pure: the reclaim-rate estimator and the checkpoint interval it implies.

Shared by the operator (status, the next attempt's interval), the training runtime (the
running attempt's interval as its measured checkpoint cost changes) and ``bench/spot_policy.py``
(the simulation), so all three compute the same numbers. No I/O and no clock: state in, state
out; the callers store it (the operator: a ConfigMap on Kubernetes, a file locally).

The model. Spot reclaims of one *pool* (accelerator, zone, capacity) are taken as a Poisson
process per node with mean time between reclaims ``M_node``. The estimate is the conjugate
(gamma) posterior mean with a prior worth :data:`PRIOR_RECLAIMS` reclaims at
:data:`PRIOR_NODE_MTBR_SECONDS`, so a pool with no history starts at the prior, one reclaim
does not swing it to seconds, and a long history outweighs it::

    M_node = (PRIOR_NODE_MTBR * PRIOR_RECLAIMS + node_seconds) / (PRIOR_RECLAIMS + reclaims)

A job with ``n`` spot workers loses an attempt's progress when *any* of them goes, so its mean
time between reclaims is ``1 / sum(n_g / M_node_g)`` over its pools.

The interval is Young's first-order optimum (Daly's refinement differs in second order terms)
``sqrt(2 * C * M)`` for a checkpoint that costs ``C`` seconds to write, clamped to bounds the
operator's configuration sets: below the lower bound checkpointing would dominate the run,
above the upper one an estimate of M drawn from little history risks too much.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

#: Prior mean time between reclaims of one spot node: the order of magnitude cloud providers
#: publish for GPU spot pools (AWS's "frequency of interruption" buckets), worth one reclaim.
PRIOR_NODE_MTBR_SECONDS = 6 * 3600.0
PRIOR_RECLAIMS = 1.0
#: Default bounds of an Auto interval (the operator's configuration may change them).
DEFAULT_MIN_INTERVAL_SECONDS = 60.0
DEFAULT_MAX_INTERVAL_SECONDS = 4 * 3600.0
#: Weight of the newest checkpoint write time in the running estimate of C.
WRITE_SECONDS_WEIGHT = 0.3
#: Contributions kept one by one per pool; older ones are folded into the pool's total.
KEEP_CONTRIBUTIONS = 200
#: A running contribution is stored again once its exposure grew by this much (or it reclaimed).
SAVE_EVERY_NODE_SECONDS = 600.0
#: The one key of the stored form (a ConfigMap's ``data`` or a file's JSON object).
STORED_KEY = "history.json"


@dataclass(frozen=True)
class Exposure:
    """Spot node-seconds observed and the reclaims seen in them.

    ``last_reclaim`` (Unix seconds) is when the newest of those reclaims happened, when known:
    the "is spot capacity back?" signal of a return to spot (:func:`last_reclaim`).
    """

    node_seconds: float = 0.0
    reclaims: int = 0
    last_reclaim: float | None = None

    def __add__(self, other: Exposure) -> Exposure:
        times = [t for t in (self.last_reclaim, other.last_reclaim) if t is not None]
        return Exposure(self.node_seconds + other.node_seconds, self.reclaims + other.reclaims,
                        max(times) if times else None)  # fmt: skip


@dataclass(frozen=True)
class PoolHistory:
    """One pool's history: folded old contributions plus the recent ones by id.

    A contribution is one attempt of one TrainingJob (id ``<uid>/<attempt>``): recording it
    again *replaces* it, so a retried round or an operator restart never counts it twice.
    """

    settled: Exposure = Exposure()
    recent: Mapping[str, Exposure] = field(default_factory=dict)

    def total(self) -> Exposure:
        out = self.settled
        for exposure in self.recent.values():
            out = out + exposure
        return out


ReclaimHistory = Mapping[str, PoolHistory]


def pool_key(accelerator: str | None, zone: str | None, capacity: str = "spot") -> str:
    """``nvidia-l4/us-east-1a/spot``: ``cpu`` without an accelerator, ``*`` for any zone."""
    return f"{accelerator or 'cpu'}/{zone or '*'}/{capacity.lower()}"


def record(
    history: ReclaimHistory,
    pool: str,
    contribution: str,
    exposure: Exposure,
    *,
    keep: int = KEEP_CONTRIBUTIONS,
) -> dict[str, PoolHistory]:
    """A new history with ``contribution`` of ``pool`` set to ``exposure`` (idempotent).

    Beyond ``keep`` contributions the oldest (by insertion) are folded into ``settled``: their
    ids are forgotten, so only a contribution still recent can be corrected later, which is all
    the operator needs (it rewrites only the running attempt's).
    """
    out = dict(history)
    old = out.get(pool, PoolHistory())
    recent = dict(old.recent)
    recent.pop(contribution, None)
    recent[contribution] = exposure
    settled = old.settled
    while len(recent) > keep:
        oldest = next(iter(recent))
        settled = settled + recent.pop(oldest)
    out[pool] = PoolHistory(settled, recent)
    return out


def worth_saving(history: ReclaimHistory, pool: str, contribution: str, new: Exposure) -> bool:
    """Whether storing ``new`` changes the estimate enough to pay for a write.

    A new reclaim always does; running time only every :data:`SAVE_EVERY_NODE_SECONDS`, so a
    running spot attempt costs one write per ten minutes, not one per reconcile round.
    """
    old = history.get(pool, PoolHistory()).recent.get(contribution)
    if old is None:
        return new.node_seconds > 0 or new.reclaims > 0
    return (
        new.reclaims != old.reclaims
        or abs(new.node_seconds - old.node_seconds) >= SAVE_EVERY_NODE_SECONDS
    )


def node_mtbr(
    history: ReclaimHistory,
    pool: str,
    *,
    prior_seconds: float = PRIOR_NODE_MTBR_SECONDS,
    prior_reclaims: float = PRIOR_RECLAIMS,
) -> float:
    """Mean time between reclaims of one node of ``pool`` (seconds; the prior without history)."""
    seen = history.get(pool, PoolHistory()).total()
    return (prior_seconds * prior_reclaims + seen.node_seconds) / (prior_reclaims + seen.reclaims)


def last_reclaim(history: ReclaimHistory, pool: str) -> float | None:
    """When the newest reclaim recorded for ``pool`` happened (Unix seconds); None if unknown.

    Only reclaims the operator counted on its own jobs' attempts are known: a pool no job of
    this operator ran on for a while has no recent evidence either way.
    """
    return history.get(pool, PoolHistory()).total().last_reclaim


def job_mtbr(pools: Iterable[tuple[float, int]]) -> float | None:
    """Mean time between reclaims of a job with ``count`` nodes at ``node_mtbr`` per pool.

    None when the job has no spot node (nothing to be reclaimed).
    """
    rate = sum(count / mtbr for mtbr, count in pools if count > 0 and mtbr > 0)
    return 1.0 / rate if rate > 0 else None


def young_daly(
    write_seconds: float,
    mtbr_seconds: float,
    *,
    min_seconds: float = DEFAULT_MIN_INTERVAL_SECONDS,
    max_seconds: float = DEFAULT_MAX_INTERVAL_SECONDS,
) -> float:
    """``clamp(sqrt(2 * C * M), min, max)``: the interval that minimises expected lost time."""
    raw = math.sqrt(2.0 * max(write_seconds, 0.0) * max(mtbr_seconds, 0.0))
    return min(max(raw, min_seconds), max_seconds)


def update_write_seconds(previous: float | None, sample: float) -> float:
    """Running estimate of C: an exponentially weighted mean (the first sample as is).

    A mean, not the last value: one slow write (a busy object store) should move the interval
    a little, not halve or double it.
    """
    if previous is None:
        return sample
    return (1 - WRITE_SECONDS_WEIGHT) * previous + WRITE_SECONDS_WEIGHT * sample


# --- the stored form ------------------------------------------------------------------------------


def dump_history(history: ReclaimHistory) -> dict[str, str]:
    """The stored form: ``{"history.json": "<json>"}`` (a ConfigMap's data, a file's content)."""
    doc = {
        pool: {
            "settled": _pair(h.settled),
            "recent": {k: _pair(e) for k, e in h.recent.items()},
        }
        for pool, h in sorted(history.items())
    }
    return {STORED_KEY: json.dumps(doc, sort_keys=False, separators=(",", ":"))}


def load_history(data: Mapping[str, str] | None) -> dict[str, PoolHistory]:
    """Read :func:`dump_history`'s form back; ``ValueError`` says what is wrong with it.

    Nothing stored yet (None, or no key) is an empty history: the prior answers.
    """
    raw = (data or {}).get(STORED_KEY)
    if not raw:
        return {}
    try:
        doc = json.loads(raw)
        out: dict[str, PoolHistory] = {}
        for pool, entry in doc.items():
            settled = _exposure(entry["settled"])
            recent = {str(k): _exposure(v) for k, v in entry["recent"].items()}
            out[str(pool)] = PoolHistory(settled, recent)
        return out
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ValueError(f"stored reclaim history is not readable: {exc}") from None


def _pair(e: Exposure) -> list[float]:
    """``[node_seconds, reclaims]``, plus the last reclaim's time when known."""
    out = [e.node_seconds, e.reclaims]
    return out if e.last_reclaim is None else [*out, e.last_reclaim]


def _exposure(pair: list[float]) -> Exposure:
    seconds, reclaims, *rest = pair  # a third item (the last reclaim) since returnToSpot
    if not (seconds >= 0 and int(reclaims) >= 0) or len(rest) > 1:
        raise ValueError(f"bad exposure {pair}")
    return Exposure(float(seconds), int(reclaims), float(rest[0]) if rest else None)
