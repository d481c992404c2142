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
- the MLflow run is found by the TrainingJob's uid (``status.mlflow.runId``, verified, or a search
  in the job's own experiment); the registered version by its run.

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

Infrastructure is not the code's fault. An attempt whose driver exited because MLflow or S3
could not be reached says so with :data:`OUTAGE_MARKER` in its Ray job message (the training
runtime prints it, see ``mlplane.training.failure``): it spends no budget at all, is counted in
``status.infrastructureFailures``, and the next attempt starts after a backoff (30 s doubling
to 10 min, ``status.retryAfter``) rather than at once, since the outage is probably still on
and every attempt costs a Ray cluster. Retries are unlimited: an outage ends, and the
``InfrastructureAvailable`` condition says what is being waited for.

MLflow's answers are of three kinds (``Observed``): unreachable (``registry_error``: wait,
condition ``RegistryAvailable=False``), a permanent refusal (``registry_refused``: the job can
make no progress until someone fixes it; phase ``Stalled``, condition ``Stalled=True`` with
MLflow's message, asked again every round), or an answer. Success needs every step the spec
asks for: the version registered *and* ``spec.mlflow.alias`` pointing at it (condition
``Registered`` says which is done), checked every round until ``Succeeded``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Literal

from mlplane.crds import TrainingJob
from mlplane.crds.validate import warnings_for
from mlplane.monitoring.spot import PoolHistory
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
from mlplane.operator.reconcile import spot as spot_core
from mlplane.operator.reconcile import spot_return
from mlplane.operator.reconcile.notice import (
    NoticeCheckpoint,
    NoticeDelivery,
    ObservedNotice,
    follow_notice,
)

AttemptCapacity = Literal["OnDemand", "Spot"]
#: Capacity loss seen at most this long before an attempt ended explains its failure.
PREEMPTION_WINDOW = timedelta(minutes=15)
#: How many counted disruptions the status keeps (the count itself is never truncated).
MAX_DISRUPTIONS = 50
#: How soon to ask MLflow again when it failed or said no, or for a checkpoint a decided
#: return to spot waits for (what no Kubernetes event announces).
POLL_SECONDS = 30.0
#: What the training runtime prints (last) when its attempt ended because MLflow or S3 could
#: not be reached; the Ray job's message carries the driver's last log lines. The same text is
#: ``mlplane.training.failure.OUTAGE_MARKER`` (the training image has no operator code).
OUTAGE_MARKER = "mlplane.failure=infrastructure"
#: Wait before the attempt after one lost to an outage: doubling from this, at most the max.
OUTAGE_BACKOFF = timedelta(seconds=30)
OUTAGE_BACKOFF_MAX = timedelta(minutes=10)

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

    @property
    def outage(self) -> str | None:
        """Why the attempt could not reach MLflow or S3, when its driver said so; else None.

        The runtime prints ``<OUTAGE_MARKER>: <what>`` as its last line and Ray puts the
        driver's last log lines in the job message; the last marker line found is the answer.
        """
        text = self.message or ""
        if OUTAGE_MARKER not in text:
            return None
        line = [ln for ln in text.splitlines() if OUTAGE_MARKER in ln][-1]
        detail = line.split(OUTAGE_MARKER, 1)[1].lstrip(": ").strip()
        return detail or "MLflow or S3 could not be reached"


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
    #: The version ``spec.mlflow.alias`` points at now (looked up once a version is registered;
    #: None: the alias is not set).
    alias_version: str | None = None
    #: C: the runtime's running mean of its checkpoint write time (seconds).
    checkpoint_write_seconds: float | None = None
    #: The checkpoint interval the runtime uses, and the attempt that reported it.
    checkpoint_interval_seconds: float | None = None
    checkpoint_interval_attempt: int | None = None
    #: The checkpoint the runtime took on a reclaim notice: the notice's id, where, which step.
    notice_id: str | None = None
    notice_checkpoint_uri: str | None = None
    notice_checkpoint_step: int | None = None


@dataclass(frozen=True)
class Observed:
    attempts: tuple[ObservedAttempt, ...] = ()
    disruptions: tuple[ObservedDisruption, ...] = ()
    run: ObservedRun | None = None
    #: Why MLflow could not be read or written, when it could not (an outage: try again).
    registry_error: str | None = None
    #: MLflow's permanent "no" to a read or to the last action (400/401/403/404): the job is
    #: stalled until someone fixes what MLflow says.
    registry_refused: str | None = None
    #: The operator's reclaim history (``monitoring/spot.py``), for M; empty: the prior.
    reclaim_history: Mapping[str, PoolHistory] = field(default_factory=dict)
    #: Reclaim notices seen on the attempts' pods and nodes (``reconcile/notice.py``).
    notices: tuple[ObservedNotice, ...] = ()
    #: The notice the edge wrote to the attempt this pass (its id), or why it could not.
    notice_delivered: str | None = None
    notice_error: str | None = None


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
    #: An attempt's Ray job to end now (a return to spot): deleted on Kubernetes, stopped
    #: through the Jobs API locally. Idempotent: one already gone is no error.
    stop: str | None = None
    #: Create (or find) the MLflow run before anything else.
    ensure_run: bool = False
    register: Registration | None = None
    events: list[Event] = field(default_factory=list)
    #: Seconds until the next look when something time-bound is pending (an evidence grace,
    #: an outage backoff, MLflow to ask again, a registration to see, a return to spot
    #: waiting for a checkpoint or its time). None: nothing is; the job's own changes, its
    #: RayJobs' events, new disruption evidence (and a slow resync) bring it back.
    requeue_after: float | None = None
    #: The current spot attempt's contributions to the reclaim history (store when worth it).
    reclaim_samples: list[spot_core.ReclaimSample] = field(default_factory=list)
    #: A reclaim notice to write where the running attempt reads it (idempotent).
    notice: NoticeDelivery | None = None


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


def experiment_name(tj: TrainingJob) -> str:
    """The MLflow experiment of the job's run: ``spec.mlflow.experiment``, else ``<ns>/<name>``."""
    return tj.spec.mlflow.experiment or f"{tj.metadata.namespace or 'default'}/{tj.metadata.name}"


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
        #: The checkpoint interval variables of a new attempt of a capacity (set by reconcile).
        self.attempt_env: Callable[[str], dict[str, str]] = lambda capacity: {}
        self.tj = tj
        self.config: OperatorConfig | None = None

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
        s.condition("RegistryAvailable", "False", "MLflowUnreachable",
                    f"{observed.registry_error}; nothing is started or registered until MLflow "
                    "answers (retried automatically; check the MLflow server and the network "
                    "path from the operator)")  # fmt: skip
        st.setdefault("phase", "Pending")
        return Plan(status=st, events=s.events, requeue_after=POLL_SECONDS)
    if observed.registry_refused:
        _stall(s, observed.registry_refused)
        return Plan(status=st, events=s.events, requeue_after=POLL_SECONDS)
    if observed.run is None:
        st.setdefault("phase", "Pending")
        return Plan(status=st, ensure_run=True, events=s.events)
    run = observed.run
    st["mlflow"] = {**st.get("mlflow", {}), "runId": run.run_id}
    if run.checkpoint_uri:
        checkpoint: dict[str, Any] = {"uri": run.checkpoint_uri}
        if run.checkpoint_step is not None:
            checkpoint["step"] = run.checkpoint_step
        if run.checkpoint_time:
            checkpoint["time"] = run.checkpoint_time
        st["lastCheckpoint"] = checkpoint

    s.config = config
    s.attempt_env = lambda capacity: spot_core.checkpoint_env(
        tj, config, capacity, run.checkpoint_write_seconds, observed.reclaim_history
    )
    if spot_core.has_gpus(tj):
        st.setdefault("cost", spot_core.new_cost(config))
    _count_disruptions(s, observed.disruptions)

    plan = Plan(status=st)
    current = (st.get("currentAttempt") or {}).get("number", 0)
    attempts = {a.number: a for a in observed.attempts if a.owned_by(uid)}
    plan.reclaim_samples = _account(s, tj, config, uid, attempts.get(current))
    # A Ray job of this name controlled by another uid (an earlier TrainingJob of the same
    # name, not yet garbage-collected) is never adopted: its result is not this job's.
    others = {a.number: a for a in observed.attempts if not a.owned_by(uid)}
    if _spot_return(s, plan, tj, config, uid, attempts.get(current), run, observed):
        pass  # the round's step is the move back to spot (the attempt is not followed)
    elif current == 0 and 1 in others:
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
                build_rayjob(
                    tj,
                    current,
                    capacity,
                    config,
                    run_id=run.run_id,
                    owner_uid=uid,
                    checkpoint_env=s.attempt_env(capacity),
                )
            )
    else:
        _follow_attempt(s, plan, tj, config, uid, attempts[current], run)
    plan.notice = _notice(s, attempts.get((st.get("currentAttempt") or {}).get("number", 0)),
                          run, observed)  # fmt: skip
    _checkpoint_interval_status(s, tj, config, run, observed)
    if plan.requeue_after is None:
        plan.requeue_after = _come_back(st, s.now)
    if plan.register is None:
        # A round that asks MLflow for nothing has seen MLflow answer every question: only then
        # are "reachable" and "not stalled" claims true (a round that plans an MLflow write
        # leaves both as they were; the write's outcome decides them).
        s.condition("RegistryAvailable", "True", "MLflowReachable", "MLflow answers")
        _unstall(s)
    plan.events = s.events
    return plan


def _come_back(st: dict[str, Any], now: datetime) -> float | None:
    """When a round must look again though no event may come: a return to spot decided and
    waiting for a checkpoint (reported to MLflow only), or one not allowed before a time."""
    state = st.get("spotReturn") or {}
    if state.get("decidedAt"):
        return POLL_SECONDS
    not_before = _parse_time(state.get("notBefore"))
    if not_before is not None:
        return max(1.0, (not_before - now).total_seconds())
    return None


def _account(
    s: _Status, tj: TrainingJob, config: OperatorConfig, uid: str, attempt: ObservedAttempt | None
) -> list[spot_core.ReclaimSample]:
    """GPU-hours of the current attempt up to now (or its end), and its reclaim history sample.

    Runs before the attempt is followed: a failed attempt is replaced in the same round, and
    its last stretch must be counted against it, not against its successor.
    """
    st = s.new
    current = st.get("currentAttempt")
    if not current:
        return []
    end = s.now
    final = attempt is not None and (attempt.succeeded or attempt.failed)
    if final:
        end = min(_parse_time(attempt.end_time) or s.now, s.now)  # type: ignore[union-attr]
    if "cost" in st:
        spot_core.account(st["cost"], tj, config, current, end, final=final)
    mine = [d for d in st["disruptions"] if d.get("attempt") == current["number"]]
    times = [t for t in (_parse_time(d.get("time")) for d in mine) if t is not None]
    last = max(times).timestamp() if times else None
    return spot_core.reclaim_samples(tj, uid, current, len(mine), end, last_reclaim=last)


def _spot_return(
    s: _Status,
    plan: Plan,
    tj: TrainingJob,
    config: OperatorConfig,
    uid: str,
    attempt: ObservedAttempt | None,
    run: ObservedRun,
    observed: Observed,
) -> bool:
    """``spec.preemption.returnToSpot`` (``reconcile/spot_return.py`` says when): True when
    this round's step is the move itself (end the on-demand attempt, or start the spot one).

    The decision is recorded first (``status.spotReturn.decidedAt`` with the newest checkpoint
    then); the move goes on only once a newer checkpoint is reported. From then on it is
    derived from status and observations alone, so a restart anywhere finishes it: the
    on-demand attempt is ended (again) while it runs, and the spot attempt is started once it
    has ended or is gone, never both at once.
    """
    st = s.new
    current = st.get("currentAttempt")
    if not spot_return.enabled(tj):
        if "spotReturn" in st or conditions.find(st.get("conditions"), "SpotReturn"):
            st.pop("spotReturn", None)
            st["conditions"] = conditions.remove(st.get("conditions"), "SpotReturn")
        return False
    if not current or current["capacity"] != "OnDemand":
        return False
    state = st.setdefault("spotReturn", {})
    state.setdefault("onDemandSince", current.get("startTime") or s.now_text)
    state.setdefault("backoff", 0)
    number, name = current["number"], current["rayJob"]
    if attempt is not None and attempt.succeeded:
        for key in ("decidedAt", "checkpointAtDecision", "endingAttempt", "notBefore"):
            state.pop(key, None)
        return False
    if state.get("decidedAt") and spot_return.newer_checkpoint(state, st.get("lastCheckpoint")):
        return _move_to_spot(s, plan, tj, config, uid, attempt, run, state)
    if state.get("decidedAt"):
        if attempt is None or attempt.failed:
            # Ended on its own before the checkpoint: judged as usual; a later attempt decides
            # again (with the same minimum time behind it, at its own next checkpoint).
            for key in ("decidedAt", "checkpointAtDecision"):
                state.pop(key, None)
            return False
        s.condition("SpotReturn", "Unknown", "WaitingForCheckpoint",
                    f"returning to spot: waiting for attempt {number}'s next checkpoint (newer "
                    f"than {state.get('checkpointAtDecision') or 'none'}) to end the attempt "
                    "there and resume on spot from it; a loop that never checkpoints never "
                    "returns")  # fmt: skip
        return False
    verdict = spot_return.due(tj, state, observed.reclaim_history, st["disruptions"], s.now)
    if verdict.until is not None and not verdict.due:
        state["notBefore"] = conditions.timestamp(verdict.until)
    if not verdict.due:
        s.condition("SpotReturn", "False", verdict.reason, verdict.message)
        return False
    state.pop("notBefore", None)
    if attempt is None or not attempt.running:
        s.condition("SpotReturn", "False", "WaitingForRunningAttempt",
                    f"a return to spot is due ({verdict.message}): it is decided once attempt "
                    f"{number} runs, and made at its next checkpoint")  # fmt: skip
        return False
    state["decidedAt"] = s.now_text
    checkpoint = (st.get("lastCheckpoint") or {}).get("uri")
    if checkpoint:
        state["checkpointAtDecision"] = checkpoint
    message = (
        f"returning to spot ({verdict.message}): attempt {number} ({name}) ends at its next "
        f"checkpoint (newer than {checkpoint or 'none'}) and the next attempt resumes on spot"
    )
    s.condition("SpotReturn", "Unknown", "WaitingForCheckpoint", message)
    s.event("Normal", "ReturningToSpot", message)
    return False


def _move_to_spot(
    s: _Status,
    plan: Plan,
    tj: TrainingJob,
    config: OperatorConfig,
    uid: str,
    attempt: ObservedAttempt | None,
    run: ObservedRun,
    state: dict[str, Any],
) -> bool:
    """A checkpoint newer than the decision is there: end the on-demand attempt, then (once it
    has ended or is gone) start the next one on spot from that checkpoint."""
    st = s.new
    current = st["currentAttempt"]
    number, name = current["number"], current["rayJob"]
    checkpoint = st["lastCheckpoint"]["uri"]
    if attempt is not None and not attempt.failed:
        if state.get("endingAttempt") != number:
            s.event("Normal", "EndingOnDemandAttempt",
                    f"checkpoint {checkpoint} was taken after the decision to return to spot: "
                    f"ending attempt {number} ({name}) to resume on spot from it")  # fmt: skip
        state["endingAttempt"] = number
        plan.stop = name
        s.condition("SpotReturn", "Unknown", "EndingOnDemandAttempt",
                    f"ending attempt {number} ({name}) at checkpoint {checkpoint}; the next "
                    "attempt resumes from it on spot once it has ended")  # fmt: skip
        st["phase"] = "Retrying"  # the next attempt is on its way, as after any attempt
        s.condition("Running", "False", "ReturningToSpot",
                    f"attempt {number} is being ended to move back to spot")  # fmt: skip
        plan.requeue_after = 5.0
        return True
    since = state.get("onDemandSince")
    if "cost" in st:  # the ended attempt's last stretch is its own, not its successor's
        ended = _parse_time(attempt.end_time) if attempt is not None else None
        end = min(ended or s.now, s.now)
        spot_core.account(st["cost"], tj, config, current, end, final=True)
    _start_attempt(s, plan, tj, config, uid, number + 1, "Spot", run.run_id)
    st["returnsToSpot"] = st.get("returnsToSpot", 0) + 1
    for key in ("decidedAt", "checkpointAtDecision", "endingAttempt", "onDemandSince",
                "notBefore"):  # fmt: skip
        state.pop(key, None)
    state["lastReturnTime"] = s.now_text
    state["lastReturnAttempt"] = number + 1
    message = (
        f"attempt {number + 1} runs the SpotWithFallback workers on spot again, resuming from "
        f"{checkpoint} (on on-demand since {since}): a planned move, counted in "
        f"status.returnsToSpot ({st['returnsToSpot']}), not as a preemption or a failure"
    )
    s.condition("SpotReturn", "True", "ReturnedToSpot", message)
    s.event("Normal", "ReturnedToSpot", message)
    return True


def _fell_back(s: _Status, tj: TrainingJob) -> None:
    """A fallback to on-demand: when it happened, and the flapping back-off it leaves."""
    if not spot_return.enabled(tj):
        return
    state = s.new.setdefault("spotReturn", {})
    state["backoff"] = spot_return.backoff_after_fallback(tj, state, s.now)
    state["onDemandSince"] = s.now_text
    for key in ("decidedAt", "checkpointAtDecision", "endingAttempt", "notBefore"):
        state.pop(key, None)
    wait = spot_return.human(spot_return.min_on_demand(tj, state["backoff"]))
    s.condition("SpotReturn", "False", "FellBack",
                f"the SpotWithFallback workers moved to on-demand at {s.now_text}; they return "
                f"to spot after minOnDemand ({wait} with the back-off) with no reclaim seen "
                "as long, at a checkpoint")  # fmt: skip


def _notice(
    s: _Status, attempt: ObservedAttempt | None, run: ObservedRun, observed: Observed
) -> NoticeDelivery | None:
    """A reclaim notice for the current attempt: tell it, then record its checkpoint."""
    taken = None
    if run.notice_id:
        taken = NoticeCheckpoint(run.notice_id, run.notice_checkpoint_uri,
                                 run.notice_checkpoint_step)  # fmt: skip
    return follow_notice(
        s, observed.notices, running=attempt is not None and attempt.running,
        checkpoint_uri=s.new.get("checkpointUri"), taken=taken,
        delivered=observed.notice_delivered, delivery_error=observed.notice_error,
    )  # fmt: skip


def _checkpoint_interval_status(
    s: _Status, tj: TrainingJob, config: OperatorConfig, run: ObservedRun, observed: Observed
) -> None:
    """``status.checkpoint``: the interval in use with the C and M it follows."""
    st = s.new
    current = st.get("currentAttempt")
    capacity = current["capacity"] if current else "Spot"
    reported = None
    if current and run.checkpoint_interval_attempt == current["number"]:
        reported = run.checkpoint_interval_seconds
    found = spot_core.checkpoint_status(
        tj, config, capacity, run.checkpoint_write_seconds, reported, observed.reclaim_history
    )
    if found is None:
        st.pop("checkpoint", None)
    else:
        st["checkpoint"] = found


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


def _stall(s: _Status, refused: str) -> None:
    """MLflow said no for good: say so (phase ``Stalled``) and what to do; ask again later."""
    st = s.new
    st["phase"] = "Stalled"
    message = (
        f"MLflow refused: {refused}. The job cannot go on until this is fixed in MLflow or in "
        "spec.mlflow (permissions, experiment or model name, the run's logged model); the "
        "operator asks again every round and goes on by itself once MLflow accepts"
    )
    if not conditions.is_true(s.old.get("conditions"), "Stalled"):
        s.event("Warning", "MLflowRefused", message)
    s.condition("Stalled", "True", "MLflowRefused", message)
    registered = conditions.find(st.get("conditions"), "Registered")
    if registered is not None and registered.get("status") != "True":
        s.condition("Registered", "False", "RegistrationRefused", message)


def _unstall(s: _Status) -> None:
    """MLflow accepted what it refused: the stall is over.

    Called after the attempt was followed, which sets the phase of a running, suspended or
    finished attempt; one still starting is ``Pending`` again.
    """
    st = s.new
    if st.get("phase") == "Stalled":
        st["phase"] = "Pending"
    if conditions.is_true(st.get("conditions"), "Stalled"):
        s.condition("Stalled", "False", "MLflowAccepted", "MLflow accepts the job's requests")
        s.event("Normal", "MLflowAccepted", "MLflow accepts the job's requests again")


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
        if "cost" in st and s.config is not None:  # the work since the last checkpoint is lost
            at = _parse_time(disruption.time) or s.now
            lost = spot_core.lost_seconds(st["currentAttempt"], st.get("lastCheckpoint"), at)
            spot_core.add_lost(st["cost"], s.tj, s.config, st["currentAttempt"]["capacity"], lost)
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
    *,
    after_preemption: bool = False,
) -> None:
    st = s.new
    name = rayjob_name(tj.metadata.name or "", number)
    held = _held_out_of_queue(tj)
    if not held:
        env = s.attempt_env(capacity)
        plan.create.append(build_rayjob(tj, number, capacity, config, run_id=run_id,
                                        owner_uid=uid, checkpoint_env=env))  # fmt: skip
    st.pop("retryAfter", None)  # whatever was awaited (a backoff, evidence) is over
    st["attempts"] = number
    st["currentAttempt"] = {"number": number, "rayJob": name, "capacity": capacity,
                            "startTime": s.now_text}  # fmt: skip
    if after_preemption:
        st["currentAttempt"]["afterPreemption"] = True
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
        _first_seen_running(s, tj, config)
        st["phase"] = "Running"
        s.condition("Running", "True", "AttemptRunning", f"attempt {attempt.number} is running")
        _outage_over(s, f"attempt {attempt.number} is running")
        if conditions.find(st.get("conditions"), "Retrying"):
            s.condition("Retrying", "False", "AttemptRunning",
                        f"attempt {attempt.number} is running")  # fmt: skip
    else:
        state = attempt.deployment_status or attempt.job_status or "created"
        s.condition("Running", "False", "Starting", f"attempt {attempt.number}: {state}")


def _first_seen_running(s: _Status, tj: TrainingJob, config: OperatorConfig) -> None:
    """Record when the attempt began running; after a preemption its start-up was waste."""
    current = s.new["currentAttempt"]
    if "runningTime" in current:
        return
    current["runningTime"] = s.now_text
    started = _parse_time(current.get("startTime"))
    if current.get("afterPreemption") and "cost" in s.new and started is not None:
        restart = (s.now - started).total_seconds()
        spot_core.add_lost(s.new["cost"], tj, config, current["capacity"], restart)


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
    """Register, point the alias, and only then ``Succeeded``.

    Registration and the alias are two MLflow writes; either may fail alone. Every round until
    ``Succeeded`` compares what MLflow holds (``run.registered_version``, ``run.alias_version``)
    with what the spec asks and plans the registration again (it finds the version and only
    sets the alias) until both hold, so a job never succeeds with its alias left behind.
    """
    st = s.new
    model, alias = tj.spec.mlflow.registered_model, tj.spec.mlflow.alias
    s.condition("Running", "False", "AttemptSucceeded", f"attempt {attempt.number} succeeded")
    if conditions.find(st.get("conditions"), "Retrying"):
        s.condition("Retrying", "False", "AttemptSucceeded", f"attempt {attempt.number} succeeded")
    _outage_over(s, f"attempt {attempt.number} succeeded")
    message = f"attempt {attempt.number} succeeded"
    version = run.registered_version
    if model and version:
        st["mlflow"].update(modelVersion=version, modelUri=f"models:/{model}/{version}")
    if model and (not version or (alias and run.alias_version != version)):
        st["phase"] = "Registering"
        if not version:
            s.condition("Registered", "Unknown", "Registering",
                        f"registering the run's model as a new version of {model}")  # fmt: skip
        else:
            now = f"points at version {run.alias_version}" if run.alias_version else "is not set"
            s.condition("Registered", "False", "AliasPending",
                        f"{model} version {version} is registered; alias {alias} {now}: setting "
                        f"it (the job succeeds once it points at version {version})")  # fmt: skip
        plan.register = Registration(
            run_id=run.run_id, model=model, alias=alias,
            source=f"runs:/{run.run_id}/model", trainingjob_uid=uid,
        )  # fmt: skip
        plan.requeue_after = 5.0
        return
    if model and version:
        with_alias = f" with alias {alias}" if alias else ""
        message += f"; registered {model} version {version}{with_alias}"
        s.condition("Registered", "True", "VersionRegistered",
                    f"{model} version {version}{with_alias}")  # fmt: skip
        s.event("Normal", "ModelRegistered", f"{model} version {version}{with_alias}")
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
            _fell_back(s, tj)
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
    elif attempt.outage is not None:
        if not _outage_waited(s, plan, attempt, attempt.outage):
            return
    else:
        if not _evidence_waited(s, plan, config, attempt):
            return
        st["failures"] += 1
        s.event("Warning", "AttemptFailed",
                f"attempt {attempt.number} failed ({st['failures']} of "
                f"{tj.spec.backoff_limit + 1} allowed): {why}")  # fmt: skip
        if st["failures"] > tj.spec.backoff_limit:
            _fail(s, plan, "BackoffLimitExceeded",
                  f"{st['failures']} failed attempt(s) exceed backoffLimit "
                  f"({tj.spec.backoff_limit}); last: {why}")  # fmt: skip
            return
    _start_attempt(s, plan, tj, config, uid, attempt.number + 1, capacity, run.run_id,
                   after_preemption=preempted)  # fmt: skip


def _evidence_waited(
    s: _Status, plan: Plan, config: OperatorConfig, attempt: ObservedAttempt
) -> bool:
    """A spot attempt failed and no preemption explains it yet: True once it may be judged a
    code failure.

    The RayJob's status and the pod and node watch events that prove a spot reclaim arrive
    on separate streams, in either order: judging at once would spend ``backoffLimit`` on a
    preemption whose evidence is a second late, and evidence of an attempt no longer current
    is never counted. So the verdict waits ``preemption_evidence_grace`` seconds from the
    failure (``status.retryAfter``); evidence counted meanwhile makes it a preemption.
    """
    st = s.new
    grace = timedelta(seconds=config.preemption_evidence_grace)
    if attempt.capacity != "Spot" or not grace:
        return True
    if "retryAfter" not in st:
        ended = _parse_time(attempt.end_time) or s.now
        st["retryAfter"] = conditions.timestamp(max(ended + grace, s.now))
    judge_at = _parse_time(st["retryAfter"]) or s.now
    if s.now < judge_at:
        st["phase"] = "Retrying"
        s.condition("Running", "False", "AwaitingPreemptionEvidence",
                    f"attempt {attempt.number} failed on spot capacity: waiting until "
                    f"{st['retryAfter']} for evidence of a spot reclaim (a pod's "
                    f"DisruptionTarget, a node's taint or deletion) before counting it "
                    f"against backoffLimit")  # fmt: skip
        plan.requeue_after = max(1.0, (judge_at - s.now).total_seconds())
        return False
    del st["retryAfter"]
    return True


def _outage_waited(s: _Status, plan: Plan, attempt: ObservedAttempt, what: str) -> bool:
    """An attempt lost to an MLflow/S3 outage: counted once, no budget; True once the backoff
    is over and the next attempt may start.

    ``status.retryAfter`` is set in the round that first sees the failure (that is also what
    keeps it from being counted twice) and removed when the next attempt starts.
    """
    st = s.new
    if "retryAfter" not in st:
        st["infrastructureFailures"] = st.get("infrastructureFailures", 0) + 1
        lost = st["infrastructureFailures"]
        wait = min(OUTAGE_BACKOFF * 2 ** (lost - 1), OUTAGE_BACKOFF_MAX)
        ended = _parse_time(attempt.end_time) or s.now
        st["retryAfter"] = conditions.timestamp(ended + wait)
        s.event("Warning", "AttemptLostToOutage",
                f"attempt {attempt.number} could not reach its infrastructure ({what}); this "
                f"spends no backoffLimit ({lost} attempt(s) lost to outages so far)")  # fmt: skip
    retry_at = _parse_time(st["retryAfter"]) or s.now
    message = (
        f"attempt {attempt.number} ended because MLflow or S3 could not be reached: {what}. "
        f"Outages spend no backoffLimit ({st['infrastructureFailures']} attempt(s) lost so "
        f"far); attempt {attempt.number + 1} starts at {st['retryAfter']} (backoff doubling "
        "to 10 min). Check MLflow and the object store from the training pods"
    )
    s.condition("InfrastructureAvailable", "False", "AttemptLostToOutage", message)
    if s.now < retry_at:
        st["phase"] = "Retrying"
        s.condition("Running", "False", "WaitingForInfrastructure", message)
        plan.requeue_after = max(1.0, (retry_at - s.now).total_seconds())
        return False
    del st["retryAfter"]
    return True


def _outage_over(s: _Status, why: str) -> None:
    """A later attempt ran or succeeded: the outage that cost an earlier one is over."""
    found = conditions.find(s.new.get("conditions"), "InfrastructureAvailable")
    if found is not None and found.get("status") != "True":
        s.condition("InfrastructureAvailable", "True", "AttemptRunning", why)


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
