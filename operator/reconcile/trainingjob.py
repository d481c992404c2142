"""TrainingJob: what to do next, from the resource, what was observed, and the time.

Pure: no I/O, no clock. The handler (Kubernetes) or the runner (local platform) observes the
attempts' Ray jobs, the preemption evidence of their pods and nodes, and the MLflow run; this
function returns the whole next status and the few actions to carry out. Calling it again
with the same inputs returns the same plan, so a restart or a retried handler never creates a
second attempt or counts a preemption twice:

- attempt *n*'s Ray job has the deterministic name ``<name>-a<n>``; creating it again is a no-op;
  one of that name controlled by another uid (an earlier TrainingJob of the same name) is never
  adopted: the job waits for it to go (``Running=False``, reason ``RayJobOwnedByOther``);
- each counted preemption is kept in ``status.disruptions`` and recognised when seen again
  (one node of one attempt is one preemption; evidence of other attempts is not counted);
- with ``spec.queueName`` Kueue alone unsuspends the RayJob (``WaitingForKueue`` until then);
- the MLflow run and the registered version are found by the TrainingJob's uid, not remembered.

Registry policy (the operator's configuration, ``OperatorConfig``): a TrainingJob whose
``spec.mlflow.trackingUri`` is not an allowed MLflow, or whose namespace may not register its
``spec.mlflow.registeredModel``, is held (:func:`policy_refusal`): condition ``Admitted=False``
with reason ``TrackingUriNotAllowed`` or ``ModelNameNotAllowed``, ``Running=False`` with the
same reason, nothing created, registered or aliased, and the callers do not even contact the
named MLflow. Fixing the spec (or the configuration) lets it go on.

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
from mlplane.crds.validate import warnings_for
from mlplane.operator import conditions
from mlplane.operator.builders.labels import ATTEMPT, CAPACITY, rayjob_name
from mlplane.operator.builders.rayjob import (
    build_rayjob,
    checkpoint_uri,
    first_attempt_capacity,
    namespace_of,
)
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
    #: uid of the object that controls the Ray job ("" when nothing does; None when the
    #: platform cannot tell, as for Ray jobs submitted before owners were recorded).
    owner_uid: str | None = None

    @classmethod
    def from_rayjob(cls, rayjob: dict[str, Any]) -> ObservedAttempt:
        """Read a RayJob object (its labels say which attempt and capacity)."""
        labels = rayjob.get("metadata", {}).get("labels", {})
        status = rayjob.get("status") or {}
        capacity = labels.get(CAPACITY, "OnDemand")
        owners = rayjob.get("metadata", {}).get("ownerReferences") or ()
        controller = next((o for o in owners if o.get("controller")), None)
        return cls(
            number=int(labels[ATTEMPT]),
            capacity="Spot" if capacity == "Spot" else "OnDemand",
            job_status=status.get("jobStatus"),
            deployment_status=status.get("jobDeploymentStatus"),
            reason=status.get("reason"),
            message=status.get("message"),
            start_time=status.get("startTime"),
            end_time=status.get("endTime"),
            owner_uid=str(controller.get("uid") or "") if controller else "",
        )

    def owned_by(self, uid: str) -> bool:
        """Whether this Ray job is the TrainingJob ``uid``'s (unknown owners are assumed so)."""
        return self.owner_uid is None or self.owner_uid == uid

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

    def key(self) -> tuple[int, str, str | None]:
        """Identity: one node of one attempt is one preemption, however many of the attempt's
        pods ran there (a reclaim shows as a node taint, the node's deletion and a
        ``DisruptionTarget`` on each pod: one event). A pod without a node counts alone."""
        if self.node:
            return (self.attempt, "node", self.node)
        return (self.attempt, "pod", self.pod)

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> ObservedDisruption:
        """A disruption as ``status.disruptions`` records it."""
        return cls(record["attempt"], record.get("reason", ""), record.get("pod"),
                   record.get("node"), record.get("time"))  # fmt: skip


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


def policy_refusal(tj: TrainingJob, config: OperatorConfig) -> tuple[str, str] | None:
    """Why the registry policy holds this TrainingJob: ``(reason, message)``, or None.

    Callers ask before they contact MLflow: a refused tracking URI is never contacted.
    """
    namespace = namespace_of(tj)
    uri = tj.spec.mlflow.tracking_uri
    if not config.tracking_uri_allowed(uri):
        return (
            "TrackingUriNotAllowed",
            f"spec.mlflow.trackingUri {uri!r} is not an MLflow this operator may contact: it "
            "was not contacted and nothing runs. Remove spec.mlflow.trackingUri to use the "
            "operator's MLflow, or ask the platform team to add the URI to "
            "MLPLANE_ALLOWED_TRACKING_URIS",
        )
    model = tj.spec.mlflow.registered_model
    if model and not config.model_name_allowed(namespace, model):
        patterns = config.model_names_for(namespace) or ()
        return (
            "ModelNameNotAllowed",
            f"namespace {namespace} may not register or alias model {model!r} (allowed: "
            f"{', '.join(patterns) or 'no names'}): nothing runs and nothing is registered. "
            "Change spec.mlflow.registeredModel to an allowed name, or ask the platform team "
            "to allow it in MLPLANE_MODEL_NAME_POLICY",
        )
    return None


def _refuse(s: _Status, reason: str, message: str) -> Plan:
    """Status of a TrainingJob the registry policy holds: nothing is done, it says why."""
    st = s.new
    if not st.get("currentAttempt"):
        st["phase"] = "Pending"
    old = s.old_condition("Admitted")
    if old.get("status") != "False" or old.get("reason") != reason:
        s.event("Warning", reason, message)
    s.condition("Admitted", "False", reason, message)
    s.condition("Running", "False", reason, message)
    return Plan(status=st, events=s.events, requeue_after=POLL_SECONDS)


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
    refused = policy_refusal(tj, config)
    if refused is not None:
        return _refuse(s, *refused)
    if conditions.find(st.get("conditions"), "Admitted") is not None:
        st["conditions"] = conditions.remove(st.get("conditions"), "Admitted")

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
    attempts = {a.number: a for a in observed.attempts if a.owned_by(uid)}
    # A Ray job of this name controlled by another uid (an earlier TrainingJob of the same
    # name, not yet garbage-collected) is never adopted: its result is not this job's.
    others = {a.number: a for a in observed.attempts if not a.owned_by(uid)}
    if current == 0 and 1 in others:
        _wait_for_other(s, tj, others[1])
    elif current == 0:
        _start_attempt(s, plan, tj, config, uid, 1, first_attempt_capacity(tj), run.run_id)
    elif current not in attempts and current in others:
        _wait_for_other(s, tj, others[current])
    elif current not in attempts:
        # Recorded but not there: the create did not land, or someone deleted it. Same name,
        # so creating it again can never make two.
        capacity = st["currentAttempt"]["capacity"]
        if _held_out_of_queue(tj):
            _hold(s, tj, current)
        else:
            plan.create.append(
                build_rayjob(tj, current, capacity, config, run_id=run.run_id, owner_uid=uid)
            )
    else:
        _follow_attempt(s, plan, tj, config, uid, attempts[current], run)
    plan.events = s.events
    return plan


def _wait_for_other(s: _Status, tj: TrainingJob, other: ObservedAttempt) -> None:
    """Status while another owner's Ray job holds the name of the attempt to run."""
    name = rayjob_name(tj.metadata.name or "", other.number)
    message = (
        f"RayJob {namespace_of(tj)}/{name} exists but belongs to another owner (uid "
        f"{other.owner_uid or 'none'}), such as an earlier TrainingJob of this name that is not "
        f"garbage-collected yet: it is not adopted, and attempt {other.number} starts once it "
        f"is gone (if it stays, delete it: kubectl delete rayjob -n {namespace_of(tj)} {name})"
    )
    if s.old_condition("Running").get("reason") != "RayJobOwnedByOther":
        s.event("Warning", "RayJobOwnedByOther", message)
    s.new["phase"] = "Pending"
    s.condition("Running", "False", "RayJobOwnedByOther", message)


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
    """Count new evidence of the current attempt's capacity loss (each node once an attempt).

    Evidence of any other attempt is not counted: an earlier attempt was judged (preempted or
    failed) when it ended, and counting it now would spend a budget twice for one loss.
    """
    st = s.new
    current = (st.get("currentAttempt") or {}).get("number")
    known = {ObservedDisruption.from_record(d).key() for d in st["disruptions"]}
    for disruption in seen:
        if disruption.attempt != current or disruption.key() in known:
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
    held = _held_out_of_queue(tj)
    if not held:
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
    if held:
        _hold(s, tj, number)
    else:
        s.condition("Running", "False", "Starting", f"attempt {number} is starting")
        for warning in warnings_for(tj):  # the spec applies anew with each attempt
            s.event("Warning", "AutoscalingIgnoredUnderKueue", str(warning))


def _held_out_of_queue(tj: TrainingJob) -> bool:
    """Whether ``spec.suspend`` holds a Kueue job's next attempt by not creating its RayJob.

    Kueue owns ``spec.suspend`` of a queued RayJob: it unsuspends the job once its Workload is
    admitted, and suspends it again if anyone else unsuspends it. A RayJob created suspended
    therefore runs as soon as Kueue admits it, whatever the TrainingJob says; the one hold
    Kueue respects from outside is not to queue the job yet.
    """
    return tj.spec.queue_name is not None and tj.spec.suspend


def _hold(s: _Status, tj: TrainingJob, number: int) -> None:
    s.new["phase"] = "Suspended"
    s.condition("Running", "False", "Suspended",
                f"attempt {number} is held by spec.suspend: its RayJob is created, and queued "
                f"in Kueue (queue {tj.spec.queue_name}), once spec.suspend is false")  # fmt: skip


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
    queue = tj.spec.queue_name
    finished = attempt.succeeded or attempt.failed
    # Under Kueue the RayJob's spec.suspend is Kueue's alone (admission clears it, eviction
    # sets it): patching it either way would admit the job past Kueue or fight its admission.
    if queue is None and attempt.suspended != tj.spec.suspend and not finished:
        plan.suspend = (name, tj.spec.suspend)
    if attempt.succeeded:
        _succeed(s, plan, tj, attempt, run, uid)
    elif attempt.failed:
        _after_failure(s, plan, tj, config, uid, attempt, run)
    elif queue is not None and attempt.suspended:
        st["phase"] = "Pending"
        message = (
            f"attempt {attempt.number} ({name}) is waiting for Kueue to admit it "
            f"(queue {queue}): see `kubectl get workloads -n {namespace_of(tj)}`"
        )
        if tj.spec.suspend:
            message += _SUSPEND_UNDER_KUEUE
        s.condition("Running", "False", "WaitingForKueue", message)
    elif queue is not None and tj.spec.suspend and attempt.running:
        message = f"attempt {attempt.number} is running{_SUSPEND_UNDER_KUEUE}"
        if s.old_condition("Running").get("reason") != "SuspendIgnoredUnderKueue":
            s.event("Warning", "SuspendIgnoredUnderKueue", message)
        st["phase"] = "Running"
        s.condition("Running", "True", "SuspendIgnoredUnderKueue", message)
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


_SUSPEND_UNDER_KUEUE = (
    "; spec.suspend cannot hold an attempt already in Kueue's queue (Kueue unsuspends what it "
    "admits): to stop it, deactivate its Workload (kubectl patch workload <name> --type=merge "
    '-p \'{"spec":{"active":false}}\') or delete the TrainingJob'
)


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
