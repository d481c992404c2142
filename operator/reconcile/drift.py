"""Drift: the serving app's verdicts into ``status.drift``, a ``Drifted`` condition, and retrains.

Pure: no I/O, no clock. The caller (the Kopf handler, the local runner) fetches ``GET
/admin/v1/drift`` from the deployment's endpoint
(:func:`mlplane.operator.platforms.serving_client.fetch_drift`)
and lists the retraining TrainingJobs this ModelDeployment created
(``builders.labels.retrain_selector``); :func:`reconcile_drift` returns the next status, the
TrainingJob to create if any, and the events. Same inputs, same plan.

**Counting windows.** The serving app's drift tap closes a window every ``window`` (aligned to
the epoch, so a window is identified by its end time) and keeps the last few closed windows'
verdicts in ``history``. The status remembers the end of the last window it counted
(``lastWindowEnd``) and the reference version the windows were compared with
(``referenceVersion``); only windows ending after ``lastWindowEnd`` are counted, so a repeated
call, a timer tick or a restarted operator never counts a window twice. A drifted window adds one
to ``consecutiveDriftedWindows``, a window with a no-drift verdict resets it, a window without a
verdict (fewer rows than ``minSamples``) leaves it as it is -- the tap counts the same way. A new
reference version (a new model served) starts over at zero: windows compared with another
reference are not the same evidence. When no window of the report was seen before (the
operator was away longer than the tap's history, or the tap restarted), windows may have gone
unseen, and carrying the old streak over them could bridge a reset it never saw: the streak is
then the tap's own count (exact over the tap's lifetime), which may count less, never more.

**Score.** The largest effect size over the features in the latest window: Jensen-Shannon
distance for ``method: JensenShannon``, PSI otherwise (as the tap's own summary and the
dashboards: the statistical test's statistics are not comparable across numeric and categorical
features, and a p-value is not a score that grows with drift).

**Condition ``Drifted``**, from the latest closed window: ``True``/``Drifted``; ``False``/
``NoDrift``; ``Unknown`` with ``NotEnoughSamples`` (no window closed yet, or the latest had fewer
rows than ``minSamples``), ``NoReference`` (the served version has no reference profile),
``DriftUnavailable`` (nothing serves yet, the app did not answer, or it has not applied the
drift settings yet) or ``Disabled``. While unavailable the last known values stay.

**``onDrift: Retrain``.** When a call counts a new drifted window and the streak has reached
``consecutiveWindows``, a TrainingJob is built from ``retrain.trainingJobTemplate`` unless one
of this deployment's retraining jobs is not finished yet (at most one at a time) or the last
one was created less than ``retrain.minInterval`` ago. Only a newly counted drifted window
triggers, so the same evidence never starts two jobs. The job's name is
``<deployment>-r<k>`` where *k* is one more than the retrains recorded in ``status.drift.retrains``
or seen in the listed jobs' ``mlplane.dev/retrain`` label, whichever is larger: after a crash
between creating the job and writing the status, the retry computes the same name (409 means
already done) or sees the job and does not create another.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from mlplane.crds import ModelDeployment
from mlplane.crds.common import parse_duration
from mlplane.operator import conditions
from mlplane.operator.builders import labels as lbl
from mlplane.operator.builders.rayservice import DEFAULT_DRIFT_THRESHOLD
from mlplane.operator.builders.retrain import build_retrain_trainingjob, retrain_name
from mlplane.operator.conditions import Event

__all__ = [
    "CONDITION",
    "DriftPlan",
    "ObservedRetrain",
    "Unavailable",
    "reconcile_drift",
]

CONDITION = "Drifted"
#: Seconds until the next look when the serving app did not answer.
RETRY_SECONDS = 30.0
#: Looking this long after a window boundary leaves the monitor's timer (every <= 5 s) time
#: to close and evaluate the window.
WINDOW_SLACK_SECONDS = 10.0
MIN_REQUEUE_SECONDS = 5.0
#: Two window ends closer than this are the same window (windows are at least a minute long;
#: the status keeps window ends to the millisecond).
SAME_WINDOW_SECONDS = 0.5
#: Annotations on a retraining TrainingJob: why it was created.
TRIGGER_ANNOTATION = "mlplane.dev/drift-trigger"
WINDOW_ANNOTATION = "mlplane.dev/drift-window-end"

_FINISHED = frozenset({"Succeeded", "Failed"})


@dataclass(frozen=True)
class Unavailable:
    """The serving app's endpoint could not be read (refused, timed out, non-200, not JSON)."""

    reason: str


@dataclass(frozen=True)
class ObservedRetrain:
    """A retraining TrainingJob of this deployment, as listed by its labels."""

    name: str
    #: Its ``mlplane.dev/retrain`` label (None when missing or not a number).
    number: int | None = None
    phase: str | None = None
    creation_timestamp: str | None = None
    #: uid of its controller owner (None when it has none).
    owner_uid: str | None = None

    @classmethod
    def from_trainingjob(cls, body: Mapping[str, Any]) -> ObservedRetrain:
        """Read a TrainingJob object (metadata and status)."""
        meta = body.get("metadata") or {}
        labels = meta.get("labels") or {}
        try:
            number: int | None = int(labels[lbl.RETRAIN])
        except (KeyError, TypeError, ValueError):
            number = None
        owner = next((r for r in meta.get("ownerReferences") or () if r.get("controller")), None)
        return cls(
            name=str(meta.get("name") or ""),
            number=number,
            phase=(body.get("status") or {}).get("phase"),
            creation_timestamp=meta.get("creationTimestamp"),
            owner_uid=owner.get("uid") if owner else None,
        )

    @property
    def finished(self) -> bool:
        return self.phase in _FINISHED


@dataclass
class DriftPlan:
    """The next status (``drift`` and the ``Drifted`` condition set), and what to do."""

    status: dict[str, Any]
    #: The retraining TrainingJob to create (a 409 Conflict on it means it already exists).
    create: dict[str, Any] | None = None
    events: list[Event] = field(default_factory=list)
    #: Seconds until a new verdict can be expected (the next window boundary, or a retry).
    requeue_after: float | None = None

    @property
    def drift(self) -> dict[str, Any] | None:
        return self.status.get("drift")


# --- small readers ---------------------------------------------------------------------------


def _epoch_text(seconds: float) -> str:
    """An epoch time as RFC 3339 UTC, to the millisecond when it is not a whole second."""
    moment = datetime.fromtimestamp(seconds, UTC)
    if float(seconds).is_integer():
        return moment.strftime("%Y-%m-%dT%H:%M:%SZ")
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def _parse_time(text: Any) -> datetime | None:
    if not isinstance(text, str) or not text:
        return None
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


@dataclass(frozen=True)
class _Window:
    """One closed window of the tap's history."""

    version: int | None
    end: float
    rows: int
    drifted: bool
    has_verdict: bool

    @classmethod
    def read(cls, item: Any) -> _Window | None:
        if not isinstance(item, Mapping):
            return None
        end = _number(item.get("windowEnd"))
        if end is None:
            return None
        return cls(
            version=_int(item.get("version")),
            end=end,
            rows=_int(item.get("rows")) or 0,
            drifted=bool(item.get("anyDrifted")),
            has_verdict=bool(item.get("hasVerdict")),
        )


def _generation(md: ModelDeployment) -> int | None:
    generation = (md.metadata.model_extra or {}).get("generation")
    return int(generation) if generation is not None else None


def _threshold(md: ModelDeployment) -> float:
    drift = md.spec.monitoring.drift
    if drift.threshold is not None:
        return float(drift.threshold)
    return DEFAULT_DRIFT_THRESHOLD[drift.method]


def _features_text(names: Sequence[str], limit: int = 5) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


# --- the status being built ----------------------------------------------------------------


class _State:
    def __init__(self, md: ModelDeployment, status: Mapping[str, Any], now: datetime) -> None:
        self.md = md
        self.spec = md.spec.monitoring.drift
        self.status = copy.deepcopy(dict(status))
        self.old_condition = conditions.find(self.status.get("conditions"), CONDITION) or {}
        self.old = dict(self.status.get("drift") or {})
        self.drift = dict(self.old)
        self.now = now
        self.generation = _generation(md)
        self.events: list[Event] = []

    def condition(
        self, status: conditions.ConditionStatus, reason: str, message: str
    ) -> tuple[str, str]:
        self.status["conditions"] = conditions.set_condition(
            self.status.get("conditions"), CONDITION, status, reason, message,
            now=self.now, generation=self.generation,
        )  # fmt: skip
        return status, reason

    def event(self, type_: Literal["Normal", "Warning"], reason: str, message: str) -> None:
        self.events.append(Event(type_, reason, message))

    def transition_events(self, status: str, reason: str, message: str) -> None:
        """Events when the verdict changes (not on every call, not for waiting states)."""
        old_status, old_reason = self.old_condition.get("status"), self.old_condition.get("reason")
        if (old_status, old_reason) == (status, reason):
            return
        if status == "True":
            self.event("Warning", "Drifted", message)
        elif reason == "NoDrift" and old_status == "True":
            self.event("Normal", "DriftCleared", message)
        elif reason in ("DriftUnavailable", "NoReference"):
            self.event("Warning", reason, message)

    def finish(
        self, requeue_after: float | None, create: dict[str, Any] | None = None
    ) -> DriftPlan:
        drift = {k: v for k, v in self.drift.items() if v is not None}
        if drift:
            self.status["drift"] = drift
        else:
            self.status.pop("drift", None)
        return DriftPlan(self.status, create, self.events, requeue_after)


def _bookkeeping(s: _State, retrains: Sequence[ObservedRetrain], uid: str) -> None:
    """Retrains recorded in the status or seen in the cluster, whichever says more."""
    numbers = [r.number for r in retrains if r.number is not None]
    count = max([_int(s.old.get("retrains")) or 0, *numbers])
    if count:
        s.drift["retrains"] = count
    owned = [r for r in retrains if r.owner_uid in (None, uid)]
    last = _parse_time(s.old.get("lastRetrain"))
    for retrain in owned:
        created = _parse_time(retrain.creation_timestamp)
        if created is not None and (last is None or created > last):
            last = created
    if last is not None:
        s.drift["lastRetrain"] = conditions.timestamp(last)
    newest = max(
        (r for r in owned if r.number is not None), key=lambda r: r.number or 0, default=None
    )
    if newest is not None and newest.number == count:
        s.drift["lastRetrainJob"] = newest.name


def _next_boundary(s: _State) -> float:
    """Seconds until the window open now has closed and been evaluated."""
    window = parse_duration(s.spec.window)
    now = s.now.timestamp()
    boundary = (math.floor(now / window) + 1) * window
    return max(MIN_REQUEUE_SECONDS, boundary + WINDOW_SLACK_SECONDS - now)


# --- the entry point -----------------------------------------------------------------------


def reconcile_drift(
    md: ModelDeployment,
    status: Mapping[str, Any],
    report: Mapping[str, Any] | Unavailable | None,
    retrains: Sequence[ObservedRetrain],
    now: datetime,
    *,
    uid: str,
) -> DriftPlan:
    """The next status (``drift``, condition ``Drifted``) and the retrain to create, if any.

    ``status`` is the status being built (e.g. the ModelDeployment core's plan status); it is
    not changed: :attr:`DriftPlan.status` is a new one. ``report`` is the JSON of
    ``GET /admin/v1/drift``, an :class:`Unavailable`, or None when nothing serves yet (no endpoint).
    ``retrains`` are the TrainingJobs labelled as this deployment's retrains.
    """
    s = _State(md, status, now)
    _bookkeeping(s, retrains, uid)
    if not s.spec.enabled:
        for key in ("score", "driftedFeatures", "consecutiveDriftedWindows", "lastEvaluated",
                    "lastWindowEnd", "referenceVersion"):  # fmt: skip
            s.drift.pop(key, None)
        s.condition("Unknown", "Disabled", "drift monitoring is off (monitoring.drift.enabled)")
        return s.finish(None)

    s.drift.setdefault("consecutiveDriftedWindows", 0)
    s.drift.setdefault("driftedFeatures", [])
    if report is None:
        s.condition("Unknown", "DriftUnavailable", "nothing serves yet: no drift verdict")
        return s.finish(RETRY_SECONDS)
    if isinstance(report, Unavailable) or not isinstance(report, Mapping):
        reason = report.reason if isinstance(report, Unavailable) else "not a JSON object"
        message = f"the serving app's drift report could not be read: {reason}"
        s.transition_events(*s.condition("Unknown", "DriftUnavailable", message), message)
        return s.finish(RETRY_SECONDS)
    if report.get("enabled") is False or report.get("status") == "Disabled":
        message = "the serving app has drift monitoring off: it has not applied the spec yet"
        s.condition("Unknown", "DriftUnavailable", message)
        return s.finish(RETRY_SECONDS)

    reference = _int(report.get("referenceVersion"))
    if reference is not None and reference != _int(s.old.get("referenceVersion")):
        s.drift["referenceVersion"] = reference
        s.drift["consecutiveDriftedWindows"] = 0
        s.drift.pop("lastWindowEnd", None)
    tap_status = report.get("status")
    if tap_status == "NoReference":
        message = str(report.get("reason") or f"model version {reference} has no reference")
        message += ": drift cannot be measured (train with mlplane to log a reference profile)"
        s.transition_events(*s.condition("Unknown", "NoReference", message), message)
        for key in ("score", "lastEvaluated"):
            s.drift.pop(key, None)
        s.drift["driftedFeatures"] = []
        return s.finish(_next_boundary(s))
    if tap_status != "Ok":
        reason = report.get("reason") or "no reference profile loaded yet"
        s.condition("Unknown", "NotEnoughSamples", f"waiting: {reason}")
        return s.finish(_next_boundary(s))
    return _evaluate(s, report, reference, retrains, uid)


def _evaluate(
    s: _State,
    report: Mapping[str, Any],
    reference: int | None,
    retrains: Sequence[ObservedRetrain],
    uid: str,
) -> DriftPlan:
    """Count the new windows, set the verdict, and decide on a retrain."""
    found = report.get("history")
    history: list[Any] = found if isinstance(found, list) else []
    windows = sorted(
        (w for w in map(_Window.read, history) if w is not None and w.version == reference),
        key=lambda w: w.end,
    )
    last_end = _parse_time(s.drift.get("lastWindowEnd"))
    seen = last_end.timestamp() + SAME_WINDOW_SECONDS if last_end is not None else -math.inf
    new = [w for w in windows if w.end > seen]
    streak = (_int(s.drift.get("consecutiveDriftedWindows")) or 0) if last_end else 0
    if new and last_end is not None and new[0] is windows[0]:
        # No window of the report was seen before: some may never have been (the tap's
        # history overflowed, or it restarted). Its own count never bridges a reset it saw.
        streak = _int(report.get("consecutiveDriftedWindows")) or 0
    else:
        for window in new:
            if window.drifted:
                streak += 1
            elif window.has_verdict:
                streak = 0
    if new:
        s.drift["lastWindowEnd"] = _epoch_text(new[-1].end)
    s.drift["consecutiveDriftedWindows"] = streak
    needed = s.spec.consecutive_windows

    latest = report.get("lastEvaluation")
    if not isinstance(latest, Mapping) or _Window.read(latest) is None or not windows:
        current = report.get("currentWindow") or {}
        rows = _int(current.get("rows")) if isinstance(current, Mapping) else None
        message = (
            f"no window has closed yet (the current one has {rows or 0} rows; a verdict needs "
            f"{s.spec.min_samples})"
        )
        s.condition("Unknown", "NotEnoughSamples", message)
        return s.finish(_next_boundary(s))

    read = _Window.read(latest)
    assert read is not None
    window = read
    drifted = [str(f) for f in latest.get("drifted") or () if isinstance(f, str)]
    s.drift["driftedFeatures"] = drifted
    key = "js" if s.spec.method == "JensenShannon" else "psi"
    scores = [
        v
        for f in latest.get("features") or ()
        if isinstance(f, Mapping) and (v := _number(f.get(key))) is not None
    ]
    s.drift["score"] = max(scores) if scores else None
    evaluated = _number(latest.get("evaluatedAt"))
    if evaluated is not None:
        s.drift["lastEvaluated"] = _epoch_text(math.floor(evaluated))
    ended = _epoch_text(window.end)
    method = f"{s.spec.method} at {_threshold(s.md):g}"
    if window.has_verdict and drifted:
        message = (
            f"{_features_text(drifted)} drifted in the window ending {ended} ({window.rows} rows, "
            f"{method}); {streak} of {needed} consecutive drifted windows"
        )
        s.transition_events(*s.condition("True", "Drifted", message), message)
    elif window.has_verdict:
        message = f"no feature drifted in the window ending {ended} ({window.rows} rows, {method})"
        s.transition_events(*s.condition("False", "NoDrift", message), message)
    else:
        message = (
            f"the window ending {ended} had {window.rows} rows, fewer than minSamples "
            f"{s.spec.min_samples}: no verdict ({streak} consecutive drifted windows so far)"
        )
        s.condition("Unknown", "NotEnoughSamples", message)

    create = None
    triggered = any(w.drifted for w in new) and streak >= needed
    if triggered and s.spec.on_drift == "Retrain" and s.spec.retrain is not None:
        create = _retrain(s, retrains, uid, streak, drifted, new[-1].end)
    return s.finish(_next_boundary(s), create)


def _retrain(
    s: _State,
    retrains: Sequence[ObservedRetrain],
    uid: str,
    streak: int,
    drifted: list[str],
    window_end: float,
) -> dict[str, Any] | None:
    """The retraining TrainingJob, or None with an event saying why not."""
    retrain = s.spec.retrain
    assert retrain is not None
    why = f"drift in {streak} consecutive windows ({_features_text(drifted) or 'see history'})"
    running = sorted(r.name for r in retrains if r.owner_uid in (None, uid) and not r.finished)
    if running:
        s.event("Normal", "RetrainSuppressed",
                f"{why}; not retraining: TrainingJob {', '.join(running)} has not finished "
                "(one retrain at a time)")  # fmt: skip
        return None
    last = _parse_time(s.drift.get("lastRetrain"))
    interval = timedelta(seconds=parse_duration(retrain.min_interval))
    if last is not None and s.now < last + interval:
        allowed = conditions.timestamp(last + interval)
        s.event("Normal", "RetrainSuppressed",
                f"{why}; not retraining: the last retrain was at {conditions.timestamp(last)} and "
                f"minInterval {retrain.min_interval} allows the next from {allowed}")  # fmt: skip
        return None
    number = (_int(s.drift.get("retrains")) or 0) + 1
    name = str(s.md.metadata.name or "")
    body = build_retrain_trainingjob(
        s.md,
        number,
        owner_uid=uid,
        annotations={TRIGGER_ANNOTATION: why, WINDOW_ANNOTATION: _epoch_text(window_end)},
    )
    s.drift["retrains"] = number
    s.drift["lastRetrain"] = conditions.timestamp(s.now)
    s.drift["lastRetrainJob"] = retrain_name(name, number)
    s.event("Normal", "RetrainCreated", f"{why}: creating TrainingJob {retrain_name(name, number)}")
    return body
