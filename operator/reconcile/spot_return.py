"""Return to spot (``spec.preemption.returnToSpot``), pure: when a fallen-back job goes back.

Called by ``reconcile/trainingjob.py`` each round; no I/O and no clock (``now`` is passed in).
A ``SpotWithFallback`` job that spent its preemption budget runs its fallback workers on
on-demand capacity. With ``returnToSpot`` set, it moves them back to spot when:

1. **time**: it has been on on-demand for at least the effective ``minOnDemand`` (the spec's,
   doubled once for each earlier return that spot reclaimed "soon", see below; at most 7 days);
2. **capacity is back**, as far as the operator can know: no reclaim was seen in the job's spot
   pools (accelerator and pinned zone, as the reclaim history keys them) for as long as the
   effective ``minOnDemand``. The evidence is the reclaims this operator counted on its own
   jobs (the reclaim history, which keeps each pool's newest reclaim time, and this job's
   ``status.disruptions``). It is not the provider's capacity: a pool nobody ran on lately
   shows no evidence either way, and a return may meet no capacity (the attempt then waits
   for nodes as any spot attempt does, and a reclaim falls back again);
3. **at a checkpoint**: the decision is recorded (``status.spotReturn.decidedAt`` with the newest
   checkpoint then); the on-demand attempt is ended only once the runtime reports a *newer*
   checkpoint, and the next attempt starts on spot from it: the work lost is what the attempt
   did between that checkpoint and its end (one reconcile round), not a checkpoint interval.

**Flapping.** After a return, the preemption budget is still spent: the first reclaim falls
back again at once (the normal fallback). A fallback within :data:`FLAP_FACTOR` times the
effective ``minOnDemand`` of the return doubles ``minOnDemand`` for the next return
(``status.spotReturn.backoff``); a return that lasted longer resets it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from mlplane.crds import TrainingJob
from mlplane.crds.common import parse_duration
from mlplane.monitoring import spot
from mlplane.operator.reconcile import spot as spot_core

#: A fallback within this many times the effective minOnDemand of a return is flapping.
FLAP_FACTOR = 4
#: The effective minOnDemand never grows past this (the spec's own maximum).
MAX_MIN_ON_DEMAND = timedelta(days=7)

Reason = Literal["MinOnDemandNotReached", "SpotReclaimedRecently", "Due"]


@dataclass(frozen=True)
class Verdict:
    """Whether a return may be decided now; if not, why and until when."""

    reason: Reason
    message: str
    #: The earliest moment the return may be decided (None: not known to come).
    until: datetime | None = None

    @property
    def due(self) -> bool:
        return self.reason == "Due"


def _time(text: str | None) -> datetime | None:
    if not text:
        return None
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None


def _text(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def enabled(tj: TrainingJob) -> bool:
    """Whether the job may return: ``returnToSpot`` set and a group that falls back."""
    return tj.spec.preemption.return_to_spot is not None and any(
        g.capacity == "SpotWithFallback" for g in tj.spec.workers
    )


def min_on_demand(tj: TrainingJob, backoff: int) -> timedelta:
    """The effective minOnDemand: the spec's, doubled ``backoff`` times, at most 7 days."""
    ask = tj.spec.preemption.return_to_spot
    base = parse_duration(ask.min_on_demand) if ask is not None else 0.0
    return min(timedelta(seconds=base * 2 ** min(backoff, 20)), MAX_MIN_ON_DEMAND)


def last_reclaim(
    tj: TrainingJob, history: spot.ReclaimHistory, disruptions: list[dict[str, Any]]
) -> tuple[datetime, str] | None:
    """The newest reclaim seen in the job's spot pools or of its own attempts, and where."""
    found: list[tuple[datetime, str]] = []
    for pool, _ in spot_core.spot_groups(tj, "Spot"):
        when = spot.last_reclaim(history, pool)
        if when is not None:
            found.append((datetime.fromtimestamp(when, UTC), f"pool {pool}"))
    for d in disruptions:
        seen = _time(d.get("time"))
        if seen is not None:
            found.append((seen, f"attempt {d.get('attempt')}"))
    return max(found, key=lambda f: f[0]) if found else None


def due(
    tj: TrainingJob,
    state: dict[str, Any],
    history: spot.ReclaimHistory,
    disruptions: list[dict[str, Any]],
    now: datetime,
) -> Verdict:
    """May the job decide to return now (``state`` is ``status.spotReturn``)?"""
    backoff = int(state.get("backoff", 0))
    wait = min_on_demand(tj, backoff)
    doubled = f", doubled {backoff}x after returns spot reclaimed soon" if backoff else ""
    since = _time(state.get("onDemandSince"))
    if since is None:
        return Verdict("MinOnDemandNotReached", "on-demand since an unknown time", None)
    not_before = since + wait
    if now < not_before:
        return Verdict(
            "MinOnDemandNotReached",
            f"SpotWithFallback workers are on on-demand since {_text(since)} (fallback); "
            f"they return to spot no earlier than {_text(not_before)} (minOnDemand "
            f"{human(wait)}{doubled}), at the running attempt's next checkpoint",
            not_before,
        )
    seen = last_reclaim(tj, history, disruptions)
    if seen is not None and now < seen[0] + wait:
        quiet = seen[0] + wait
        return Verdict(
            "SpotReclaimedRecently",
            f"spot was reclaimed at {_text(seen[0])} ({seen[1]}): returning once the job's spot "
            f"pools saw no reclaim for {human(wait)}, at {_text(quiet)} at the earliest (the "
            "signal is the reclaims this operator counted, not the provider's capacity)",
            quiet,
        )
    return Verdict("Due", f"on on-demand since {_text(since)}; no spot reclaim seen since "
                   f"{_text(seen[0]) if seen else 'ever'}", now)  # fmt: skip


def newer_checkpoint(state: dict[str, Any], last_checkpoint: dict[str, Any] | None) -> bool:
    """Whether the runtime reported a checkpoint after the decision (the move may go on).

    Compared by URI (each checkpoint has its own), so neither clock skew between the runtime
    and the operator nor a missing checkpoint time can pass an old checkpoint for a new one.
    """
    if not state.get("decidedAt") or not last_checkpoint or not last_checkpoint.get("uri"):
        return False
    return bool(last_checkpoint["uri"] != state.get("checkpointAtDecision"))


def backoff_after_fallback(tj: TrainingJob, state: dict[str, Any], now: datetime) -> int:
    """``status.spotReturn.backoff`` after a fallback at ``now``.

    A fallback within :data:`FLAP_FACTOR` times the effective minOnDemand of the last return
    is flapping (spot came back only briefly): one more doubling. Else back to the spec's.
    """
    backoff = int(state.get("backoff", 0))
    returned = _time(state.get("lastReturnTime"))
    if returned is None:
        return 0
    if now - returned < FLAP_FACTOR * min_on_demand(tj, backoff):
        return backoff + 1
    return 0


def human(delta: timedelta) -> str:
    seconds = int(delta.total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"
