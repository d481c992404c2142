"""TrainingJob: what to do next, from the resource, what was observed, and the time.

Pure: no I/O, no clock. The handler (Kubernetes) or the runner (local platform) observes the
attempts' Ray jobs, the preemption evidence of their pods and nodes, and the MLflow run; this
function returns the whole next status and the few actions to carry out. Calling it again
with the same inputs returns the same plan, so a restart or a retried handler never creates a
second attempt or counts a preemption twice:

- attempt *n*'s Ray job has the deterministic name ``<name>-a<n>``; creating it again is a no-op;
- each counted preemption is kept in ``status.disruptions`` and recognised when seen again;
- the MLflow run and the registered version are found by the TrainingJob's uid, not remembered.

Budgets: a failed attempt is a *preemption* when its pods or nodes show capacity loss in the
minutes before it ended (``PREEMPTION_WINDOW``), otherwise a *code failure*. Preemptions spend
``preemption.maxPreemptions`` (and every counted worker loss inside a running attempt spends
it too); code failures spend ``backoffLimit``; neither spends the other. Once the preemption
budget is spent, ``SpotWithFallback`` workers move to on-demand for the next attempt and pure
``Spot`` jobs fail with reason ``PreemptionBudgetExhausted``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Literal

from mlplane.crds import TrainingJob
from mlplane.operator import conditions
from mlplane.operator.builders.labels import ATTEMPT, CAPACITY, rayjob_name
from mlplane.operator.builders.rayjob import build_rayjob, checkpoint_uri, first_attempt_capacity
from mlplane.operator.conditions import Event
from mlplane.operator.config import OperatorConfig

AttemptCapacity = Literal["OnDemand", "Spot"]
#: Capacity loss seen at most this long before an attempt ended explains its failure.
PREEMPTION_WINDOW = timedelta(minutes=15)
#: How many counted disruptions the status keeps (the count itself is never truncated).
MAX_DISRUPTIONS = 50
#: How often to look again while an attempt runs (watch events come sooner).
POLL_SECONDS = 30.0

_FAILED_JOB = frozenset({"FAILED", "STOPPED"})
_FAILED_DEPLOYMENT = frozenset({"Failed", "ValidationFailed"})


@dataclass(frozen=True)
class ObservedAttempt:
    """One attempt's Ray job as the platform reports it (KubeRay RayJob status fields)."""

    number: int
    capacity: AttemptCapacity
    job_status: str | None = None
    deployment_status: str | None = None
    reason: str | None = None
    message: str | None = None
    start_time: str | None = None
    end_time: str | None = None

    @classmethod
    def from_rayjob(cls, rayjob: dict[str, Any]) -> ObservedAttempt:
        """Read a RayJob object (its labels say which attempt and capacity)."""
        labels = rayjob.get("metadata", {}).get("labels", {})
        status = rayjob.get("status") or {}
        capacity = labels.get(CAPACITY, "OnDemand")
        return cls(
            number=int(labels[ATTEMPT]),
            capacity="Spot" if capacity == "Spot" else "OnDemand",
            job_status=status.get("jobStatus"),
            deployment_status=status.get("jobDeploymentStatus"),
            reason=status.get("reason"),
            message=status.get("message"),
            start_time=status.get("startTime"),
            end_time=status.get("endTime"),
        )

    @property
    def succeeded(self) -> bool:
        return self.job_status == "SUCCEEDED"

    @property
    def failed(self) -> bool:
        return not self.succeeded and (
            self.job_status in _FAILED_JOB or self.deployment_status in _FAILED_DEPLOYMENT
        )

    @property
    def running(self) -> bool:
        return self.job_status == "RUNNING" and not self.failed

    @property
    def suspended(self) -> bool:
        return self.deployment_status in ("Suspended", "Suspending")


@dataclass(frozen=True)
class ObservedDisruption:
    """Capacity loss seen on a pod or node of an attempt (see ``builders/evidence.py``)."""

    attempt: int
    reason: str
    pod: str | None = None
    node: str | None = None
    time: str | None = None

    def key(self) -> tuple[int, str | None, str | None]:
        """Identity: the same pod (or node) of the same attempt is one preemption."""
        return (self.attempt, self.pod, None if self.pod else self.node)


@dataclass(frozen=True)
class ObservedRun:
    """The TrainingJob's MLflow run (found by its uid tag) and what training reported to it."""

    run_id: str
    checkpoint_uri: str | None = None
    checkpoint_step: int | None = None
    checkpoint_time: str | None = None
    #: The model version already registered for this TrainingJob, if any.
    registered_version: str | None = None


@dataclass(frozen=True)
class Observed:
    attempts: tuple[ObservedAttempt, ...] = ()
    disruptions: tuple[ObservedDisruption, ...] = ()
    run: ObservedRun | None = None
    #: Why MLflow could not be read or written, when it could not.
    registry_error: str | None = None


@dataclass(frozen=True)
class Registration:
    """Register ``source`` as a new version of ``model`` tagged with the TrainingJob's uid."""

    run_id: str
    model: str
    alias: str | None
    source: str
    trainingjob_uid: str


@dataclass
class Plan:
    status: dict[str, Any]
    #: Ray jobs to create (KubeRay RayJob objects; the local platform submits their entrypoint).
    create: list[dict[str, Any]] = field(default_factory=list)
    #: (attempt Ray job name, desired ``spec.suspend``) to patch.
    suspend: tuple[str, bool] | None = None
    #: Create (or find) the MLflow run before anything else.
    ensure_run: bool = False
    register: Registration | None = None
    events: list[Event] = field(default_factory=list)
    #: Seconds until the next look, or None when the job is finished.
    requeue_after: float | None = POLL_SECONDS


def _parse_time(text: str | None) -> datetime | None:
    if not text:
        return None
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None


def _explains(disruption: dict[str, Any], attempt: ObservedAttempt) -> bool:
    """Whether a counted disruption explains the attempt's failure."""
    if disruption.get("attempt") != attempt.number:
        return False
    seen, ended = _parse_time(disruption.get("time")), _parse_time(attempt.end_time)
    if seen is None or ended is None:
        return True
    return ended - PREEMPTION_WINDOW <= seen <= ended + timedelta(minutes=1)


def _generation(tj: TrainingJob) -> int | None:
    generation = (tj.metadata.model_extra or {}).get("generation")
    return int(generation) if generation is not None else None


class _Status(conditions.StatusDraft):
    """The TrainingJob's next status (counters and the disruption ledger always present)."""

    def __init__(self, tj: TrainingJob, now: datetime) -> None:
        old = tj.status.model_dump(by_alias=True, exclude_none=True) if tj.status else {}
        super().__init__(old, now, _generation(tj))
        if self.generation is not None:
            self.new["observedGeneration"] = self.generation
        for key in ("attempts", "preemptions", "failures"):
            self.new.setdefault(key, 0)
        self.new.setdefault("disruptions", [])

    @property
    def now_text(self) -> str:
        return conditions.timestamp(self.now)


def reconcile(
    tj: TrainingJob, observed: Observed, now: datetime, config: OperatorConfig, *, uid: str
) -> Plan:
    """The next status and actions for a validated TrainingJob."""
    s = _Status(tj, now)
    st = s.new
    if st.get("phase") in ("Succeeded", "Failed"):
        return Plan(status=st, requeue_after=None)
    st.setdefault("startTime", s.now_text)
    _checkpoint_status(st, tj, config, uid)

    # MLflow first: every attempt joins the one run, so it must exist before attempt 1.
    if observed.registry_error:
        s.condition("RegistryAvailable", "False", "MLflowUnreachable", observed.registry_error)
        st.setdefault("phase", "Pending")
        return Plan(status=st, events=s.events, requeue_after=POLL_SECONDS)
    if observed.run is None:
        st.setdefault("phase", "Pending")
        return Plan(status=st, ensure_run=True, events=s.events)
    s.condition("RegistryAvailable", "True", "MLflowReachable", "MLflow answers")
    run = observed.run
    st["mlflow"] = {**st.get("mlflow", {}), "runId": run.run_id}
    if run.checkpoint_uri:
        checkpoint: dict[str, Any] = {"uri": run.checkpoint_uri}
        if run.checkpoint_step is not None:
            checkpoint["step"] = run.checkpoint_step
        if run.checkpoint_time:
            checkpoint["time"] = run.checkpoint_time
        st["lastCheckpoint"] = checkpoint

    _count_disruptions(s, observed.disruptions)

    plan = Plan(status=st)
    current = (st.get("currentAttempt") or {}).get("number", 0)
    attempts = {a.number: a for a in observed.attempts}
    if current == 0:
        _start_attempt(s, plan, tj, config, uid, 1, first_attempt_capacity(tj), run.run_id)
    elif current not in attempts:
        # Recorded but not there: the create did not land, or someone deleted it. Same name,
        # so creating it again can never make two.
        capacity = st["currentAttempt"]["capacity"]
        plan.create.append(
            build_rayjob(tj, current, capacity, config, run_id=run.run_id, owner_uid=uid)
        )
    else:
        _follow_attempt(s, plan, tj, config, uid, attempts[current], run)
    plan.events = s.events
    return plan


def _checkpoint_status(
    st: dict[str, Any], tj: TrainingJob, config: OperatorConfig, uid: str
) -> None:
    """Where this job checkpoints (its uid's own folder) and the warm start it was given."""
    uri = checkpoint_uri(tj, config, uid)
    if uri:
        st["checkpointUri"] = uri
    resume_from = tj.spec.checkpoint.resume_from if tj.spec.checkpoint else None
    if resume_from:
        st["warmStart"] = {"uri": resume_from}


def _count_disruptions(s: _Status, seen: tuple[ObservedDisruption, ...]) -> None:
    st = s.new
    known = {
        ObservedDisruption(
            d["attempt"], d["reason"], d.get("pod"), d.get("node"), d.get("time")
        ).key()
        for d in st["disruptions"]
    }
    for disruption in seen:
        if disruption.key() in known:
            continue
        known.add(disruption.key())
        st["preemptions"] += 1
        record = {"attempt": disruption.attempt, "reason": disruption.reason,
                  "time": disruption.time or s.now_text}  # fmt: skip
        where = []
        if disruption.pod:
            record["pod"] = disruption.pod
            where.append(f"pod {disruption.pod}")
        if disruption.node:
            record["node"] = disruption.node
            where.append(f"node {disruption.node}")
        st["disruptions"] = (st["disruptions"] + [record])[-MAX_DISRUPTIONS:]
        message = (
            f"attempt {disruption.attempt}: {' on '.join(where) or 'capacity'} lost "
            f"({disruption.reason}); {st['preemptions']} preemption(s) so far"
        )
        s.condition("Preempted", "True", "CapacityPreempted", message)
        s.event("Warning", "Preempted", message)


def _start_attempt(
    s: _Status,
    plan: Plan,
    tj: TrainingJob,
    config: OperatorConfig,
    uid: str,
    number: int,
    capacity: AttemptCapacity,
    run_id: str,
) -> None:
    st = s.new
    name = rayjob_name(tj.metadata.name or "", number)
    plan.create.append(build_rayjob(tj, number, capacity, config, run_id=run_id, owner_uid=uid))
    st["attempts"] = number
    st["currentAttempt"] = {"number": number, "rayJob": name, "capacity": capacity,
                            "startTime": s.now_text}  # fmt: skip
    resumes = f", resuming from {st['lastCheckpoint']['uri']}" if st.get("lastCheckpoint") else ""
    if number == 1:
        st["phase"] = "Suspended" if tj.spec.suspend else "Pending"
        warm = f", warm start from {st['warmStart']['uri']}" if st.get("warmStart") else ""
        s.condition("Succeeded", "Unknown", "Started", f"attempt 1 created{warm}")
        s.event("Normal", "AttemptCreated", f"attempt 1 ({name}) on {capacity} capacity")
    else:
        st["phase"] = "Retrying"
        s.condition("Retrying", "True", "AttemptCreated",
                    f"attempt {number} ({name}) on {capacity} capacity{resumes}")  # fmt: skip
        s.event("Normal", "Retrying", f"attempt {number} ({name}) on {capacity} capacity{resumes}")
    s.condition("Running", "False", "Starting", f"attempt {number} is starting")


def _follow_attempt(
    s: _Status,
    plan: Plan,
    tj: TrainingJob,
    config: OperatorConfig,
    uid: str,
    attempt: ObservedAttempt,
    run: ObservedRun,
) -> None:
    st = s.new
    name = st["currentAttempt"]["rayJob"]
    if attempt.suspended != tj.spec.suspend and not attempt.succeeded and not attempt.failed:
        plan.suspend = (name, tj.spec.suspend)
    if attempt.succeeded:
        _succeed(s, plan, tj, attempt, run, uid)
    elif attempt.failed:
        _after_failure(s, plan, tj, config, uid, attempt, run)
    elif tj.spec.suspend or attempt.suspended:
        st["phase"] = "Suspended"
        s.condition("Running", "False", "Suspended", f"attempt {attempt.number} is suspended")
    elif attempt.running:
        if st.get("phase") != "Running":
            s.event("Normal", "Running", f"attempt {attempt.number} ({name}) is running")
        st["phase"] = "Running"
        s.condition("Running", "True", "AttemptRunning", f"attempt {attempt.number} is running")
        if conditions.find(st.get("conditions"), "Retrying"):
            s.condition("Retrying", "False", "AttemptRunning",
                        f"attempt {attempt.number} is running")  # fmt: skip
    else:
        state = attempt.deployment_status or attempt.job_status or "created"
        s.condition("Running", "False", "Starting", f"attempt {attempt.number}: {state}")


def _succeed(
    s: _Status,
    plan: Plan,
    tj: TrainingJob,
    attempt: ObservedAttempt,
    run: ObservedRun,
    uid: str,
) -> None:
    st = s.new
    model = tj.spec.mlflow.registered_model
    s.condition("Running", "False", "AttemptSucceeded", f"attempt {attempt.number} succeeded")
    if conditions.find(st.get("conditions"), "Retrying"):
        s.condition("Retrying", "False", "AttemptSucceeded", f"attempt {attempt.number} succeeded")
    if model and not run.registered_version:
        st["phase"] = "Registering"
        plan.register = Registration(
            run_id=run.run_id, model=model, alias=tj.spec.mlflow.alias,
            source=f"runs:/{run.run_id}/model", trainingjob_uid=uid,
        )  # fmt: skip
        plan.requeue_after = 5.0
        return
    message = f"attempt {attempt.number} succeeded"
    if model and run.registered_version:
        st["mlflow"].update(
            modelVersion=run.registered_version,
            modelUri=f"models:/{model}/{run.registered_version}",
        )
        alias = f" with alias {tj.spec.mlflow.alias}" if tj.spec.mlflow.alias else ""
        message += f"; registered {model} version {run.registered_version}{alias}"
        s.event("Normal", "ModelRegistered",
                f"{model} version {run.registered_version}{alias}")  # fmt: skip
    st["phase"] = "Succeeded"
    st["completionTime"] = attempt.end_time or s.now_text
    s.condition("Succeeded", "True", "Succeeded", message)
    s.event("Normal", "Succeeded", message)
    plan.requeue_after = None


def _after_failure(
    s: _Status,
    plan: Plan,
    tj: TrainingJob,
    config: OperatorConfig,
    uid: str,
    attempt: ObservedAttempt,
    run: ObservedRun,
) -> None:
    st = s.new
    why = attempt.message or attempt.reason or attempt.deployment_status or "failed"
    preempted = any(_explains(d, attempt) for d in st["disruptions"])
    capacity: AttemptCapacity = attempt.capacity
    if preempted:
        budget = tj.spec.preemption.max_preemptions
        s.event("Warning", "AttemptPreempted",
                f"attempt {attempt.number} lost to preemption ({st['preemptions']} of "
                f"{budget} allowed): {why}")  # fmt: skip
        if st["preemptions"] >= budget and attempt.capacity == "Spot":
            if any(w.capacity == "Spot" for w in tj.spec.workers):
                _fail(s, plan, "PreemptionBudgetExhausted",
                      f"{st['preemptions']} preemptions reached preemption.maxPreemptions "
                      f"({budget}) and Spot workers have no on-demand fallback")  # fmt: skip
                return
            capacity = "OnDemand"
            s.event("Warning", "FallbackToOnDemand",
                    f"preemption budget spent ({st['preemptions']} of {budget}): the next "
                    f"attempt runs its SpotWithFallback workers on on-demand capacity")  # fmt: skip
        elif st["preemptions"] > budget:
            _fail(
                s,
                plan,
                "PreemptionBudgetExhausted",
                f"{st['preemptions']} preemptions exceed preemption.maxPreemptions ({budget})",
            )
            return
    else:
        st["failures"] += 1
        s.event("Warning", "AttemptFailed",
                f"attempt {attempt.number} failed ({st['failures']} of "
                f"{tj.spec.backoff_limit + 1} allowed): {why}")  # fmt: skip
        if st["failures"] > tj.spec.backoff_limit:
            _fail(s, plan, "BackoffLimitExceeded",
                  f"{st['failures']} failed attempt(s) exceed backoffLimit "
                  f"({tj.spec.backoff_limit}); last: {why}")  # fmt: skip
            return
    _start_attempt(s, plan, tj, config, uid, attempt.number + 1, capacity, run.run_id)


def _fail(s: _Status, plan: Plan, reason: str, message: str) -> None:
    st = s.new
    st["phase"] = "Failed"
    st["completionTime"] = s.now_text
    s.condition("Succeeded", "False", reason, message)
    s.condition("Running", "False", reason, message)
    if conditions.find(st.get("conditions"), "Retrying"):
        s.condition("Retrying", "False", reason, message)
    s.event("Warning", reason, message)
    plan.requeue_after = None
