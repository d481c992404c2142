"""TrainingJob on Kubernetes: observe, call the pure reconcile, carry out its plan.

What the operator watches, and how it reaches the reconcile without an API call per look:

- RayJobs it made (label ``app.kubernetes.io/managed-by=mlplane`` and a TrainingJob label) are
  kept in a Kopf index by owner;
- pods of those Ray clusters and all nodes feed a :class:`DisruptionLedger` from watch events,
  so a preempted pod that KubeRay replaces seconds later is still counted: evidence is kept
  until the TrainingJob's status has recorded it (an operator restart loses only evidence of
  pods that are gone by then);
- the MLflow run is read, and created or registered, through the registry's TrainingJob port
  (:func:`~mlplane.operator.registry.observe_trainingjob`, ``act_trainingjob``): an MLflow
  outage or refusal during an action goes back into the reconcile, so it lands in status.

No timer: each TrainingJob has a Kopf daemon (:func:`follow`) that sleeps until something
changed or a round is due, then runs the reconcile in a worker thread. It wakes on

- the job's own changes: the change handlers (create, update, resume) validate and reconcile
  at once, and set when the next round is due;
- its RayJobs' events (:func:`rayjob_event`), when the state the reconcile reads changed;
- new disruption evidence of its pods or their nodes (:func:`pod_event`, :func:`node_event`);
- the time the reconcile asks to come back (``Plan.requeue_after``: an evidence grace, an
  outage backoff, a registration to see, a return to spot waiting for a checkpoint);
- and at the latest every ``MLPLANE_RESYNC_INTERVAL`` seconds (default 300): the safety net,
  also what refreshes a running job's progress from MLflow (``status.lastCheckpoint``).

An idle job costs nothing between those: no MLflow call, no status write. Rounds are
idempotent (``reconcile/trainingjob.py`` says why), so a change handler and the daemon that
overlap can only try to create what already exists; they take turns on the object's lock.

Settings come from the operator's state in Kopf's ``memo`` (read once at start), and so do the
disruption ledger and the reclaim history; each TrainingJob's lock and last written status
are in its own memo (:mod:`mlplane.operator.handlers.state`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import kopf

from mlplane.crds import GROUP, VERSION, TrainingJob, TrainingJobStatus
from mlplane.operator import conditions, metrics
from mlplane.operator.builders import labels as lbl
from mlplane.operator.config import OperatorConfig
from mlplane.operator.handlers import (
    AccessBlocked,
    access_blocked_message,
    assess,
    post_event,
    reconciler,
    with_access,
    write_status,
)
from mlplane.operator.handlers.ledger import DisruptionLedger
from mlplane.operator.handlers.state import (
    OperatorState,
    Waker,
    object_state,
    operator_state,
    schedule,
)
from mlplane.operator.platforms.base import ChildOwnedByOther
from mlplane.operator.platforms.kuberay import KubeRayPlatform
from mlplane.operator.platforms.notice import deliver_notice
from mlplane.operator.platforms.reclaim_history import ReclaimHistoryKeeper
from mlplane.operator.reconcile.trainingjob import (
    POLL_SECONDS,
    Observed,
    ObservedAttempt,
    ObservedDisruption,
    Plan,
    policy_refusal,
)
from mlplane.operator.registry import (
    Registry,
    observe_trainingjob,
    registry_for,
    trainingjob_rounds,
)

__all__ = ["DisruptionLedger", "follow", "on_change", "plain", "round_once", "run_reconcile"]

log = logging.getLogger(__name__)
#: Why Kopf stops a daemon when the whole operator stops (or pauses: a lost leadership).
EXITING = kopf.DaemonStoppingReason.OPERATOR_EXITING | kopf.DaemonStoppingReason.OPERATOR_PAUSING
_OWNED: dict[str, Any] = {  # label filters: values or kopf.PRESENT
    lbl.MANAGED_BY: lbl.MANAGED_BY_VALUE,
    lbl.TRAININGJOB: kopf.PRESENT,
}


@kopf.index("ray.io", "v1", "rayjobs", labels=_OWNED)
def rayjobs_by_trainingjob(
    body: kopf.Body, namespace: str | None, labels: Mapping[str, str], **_: Any
) -> dict[tuple[str, str], ObservedAttempt]:
    """Each attempt's RayJob, under (namespace, TrainingJob name)."""
    return {
        (namespace or "default", labels[lbl.TRAININGJOB]): ObservedAttempt.from_rayjob(dict(body))
    }


def _rayjob_state(body: Mapping[str, Any]) -> tuple[Any, ...]:
    """What of a RayJob the reconcile reads (``ObservedAttempt``): a change here is news."""
    status = body.get("status") or {}
    spec = body.get("spec") or {}
    return (status.get("jobStatus"), status.get("jobDeploymentStatus"), status.get("message"),
            status.get("reason"), status.get("endTime"), spec.get("suspend"),
            (body.get("metadata") or {}).get("uid"))  # fmt: skip


@kopf.on.event("ray.io", "v1", "rayjobs", labels=_OWNED)
def rayjob_event(
    body: kopf.Body, type: str | None, namespace: str | None, labels: Mapping[str, str],
    memo: kopf.Memo, **_: Any,
) -> None:  # fmt: skip
    """An attempt's RayJob changed state (or went): wake its TrainingJob's daemon.

    Only a change of what the reconcile reads wakes it: the RayJob a round has just created
    (no status yet) and KubeRay's repeated writes of the same state cost no round.
    """
    state = operator_state(memo)
    namespace = namespace or "default"
    key = (namespace, str((body.get("metadata") or {}).get("name")))
    seen = _rayjob_state(body)
    if type == "DELETED":
        state.rayjob_seen.pop(key, None)
    elif state.rayjob_seen.get(key) == seen:
        return
    else:
        state.rayjob_seen[key] = seen
        if seen[:5] == (None,) * 5:
            return  # just created (suspended or not), no state yet: the round that made it knows
    state.wakers.wake(("TrainingJob", namespace, labels[lbl.TRAININGJOB]))


@kopf.on.event("", "v1", "pods", labels={lbl.TRAININGJOB: kopf.PRESENT})
def pod_event(body: kopf.Body, type: str | None, memo: kopf.Memo, **_: Any) -> None:
    """Pods of training clusters: disruption conditions and the node they run on."""
    state = operator_state(memo)
    for namespace, job in state.ledger.pod(body, deleted=type == "DELETED"):
        state.wakers.wake(("TrainingJob", namespace, job))


@kopf.on.event("", "v1", "nodes")
def node_event(body: kopf.Body, type: str | None, memo: kopf.Memo, **_: Any) -> None:
    """Nodes: spot capacity being reclaimed (taints) or gone (deleted)."""
    state = operator_state(memo)
    for namespace, job in state.ledger.node(body, deleted=type == "DELETED"):
        state.wakers.wake(("TrainingJob", namespace, job))


# --- the reconcile loop ---------------------------------------------------------------------


def _registry(tj: TrainingJob, config: OperatorConfig) -> Registry:
    uri = tj.spec.mlflow.tracking_uri or config.mlflow_tracking_uri
    return registry_for(uri, timeout=config.mlflow_timeout)


def _observe(
    tj: TrainingJob,
    uid: str,
    index: Any,
    registry: Registry | None,
    platform: KubeRayPlatform,
    reclaims: ReclaimHistoryKeeper,
    ledger: DisruptionLedger,
) -> Observed:
    namespace, name = tj.metadata.namespace or "default", tj.metadata.name or ""
    attempts = tuple(index.get((namespace, name), ())) if index is not None else ()
    current = tj.status.current_attempt if tj.status else None
    if current is not None and all(a.number != current.number for a in attempts):
        # The index lags behind the watch on a busy operator: ask the API server once rather
        # than planning the attempt's RayJob again (a 409, and a status flapping meanwhile).
        rayjob = lbl.rayjob_name(name, current.number)
        found = platform.get("ray.io/v1", "RayJob", namespace, rayjob)
        if found is not None:
            attempts = (*attempts, ObservedAttempt.from_rayjob(found))
    look = observe_trainingjob(registry, tj, uid)
    disruptions = ledger.take(namespace, name)
    # Any capacity: an on-demand attempt is judged as soon as it fails (no grace), so its
    # eviction must be read now if the pod watch has not delivered it (the local runner reads
    # its evidence from Ray at each pass, whatever the capacity).
    failed = next((a for a in attempts if current is not None and a.number == current.number
                   and a.failed), None)  # fmt: skip
    recorded = {d.attempt for d in tj.status.disruptions} if tj.status else set()
    if (failed is not None and failed.number not in recorded
            and all(d.attempt != failed.number for d in disruptions)):  # fmt: skip
        disruptions = _read_evidence(namespace, name, failed.number, platform, ledger)
    return Observed(attempts, disruptions, look.run, look.unavailable, look.refused,
                    reclaim_history=reclaims.history(),
                    notices=ledger.notices(namespace, name))  # fmt: skip


def _read_evidence(
    namespace: str, name: str, attempt: int, platform: KubeRayPlatform, ledger: DisruptionLedger
) -> tuple[ObservedDisruption, ...]:
    """A failed attempt the watches hold no reclaim for: read its pods and their nodes.

    The pod and node watches are the cheap path, but after a restart (or a watch cut) they
    may not have delivered what the API already holds, and the core would then count a
    reclaim against ``backoffLimit`` once the grace is over. Read here, fed through the same
    ledger; an API error propagates, so the attempt is not judged on a read that failed.
    Not covered: a node already deleted (a 404 does not say whether it was spot).
    """
    selector = f"{lbl.TRAININGJOB}={name},{lbl.ATTEMPT}={attempt}"
    pods = platform.pods(namespace, selector)
    for pod in pods:
        ledger.pod(pod)
    nodes = {str((p.get("spec") or {}).get("nodeName") or "") for p in pods} - {""}
    for node_name in sorted(nodes):
        node = platform.node(node_name)
        if node is not None:
            ledger.node(node)
    return ledger.take(namespace, name)


def _execute(
    tj: TrainingJob,
    uid: str,
    plan: Plan,
    body: kopf.Body,
    platform: KubeRayPlatform,
    config: OperatorConfig,
) -> None:
    """Carry out the plan's Kubernetes actions (the MLflow step is ``trainingjob_rounds``').

    Raises :class:`AccessBlocked` when the cluster's token Secret or NetworkPolicy is another
    owner's (no RayJob is created then).
    """
    for obj in plan.create:
        try:
            if obj["kind"] == "RayJob":
                # Its token Secret and NetworkPolicy first: a cluster is never up unclosed.
                platform.ensure_cluster_access(
                    "TrainingJob", tj.metadata.name or "", obj["metadata"]["namespace"], uid,
                    config,
                )  # fmt: skip
            created = platform.create(obj, check_owner=True)
        except ChildOwnedByOther as exc:
            if exc.kind != "RayJob":
                # The token Secret or NetworkPolicy is someone else's: no cluster without ours.
                raise AccessBlocked(access_blocked_message(exc)) from None
            # The index had not shown it yet: the next observation does, and the reconcile then
            # waits for it to go, saying so (this plan assumed it was not there).
            log.warning("%s", exc)
            return
        log.info("%s %s", "created" if created else "found existing", obj["metadata"]["name"])
    if plan.stop is not None:  # a return to spot ends the on-demand attempt: its RayJob goes
        from kubernetes.client.exceptions import ApiException

        try:
            platform.delete_owned("ray.io/v1", "RayJob", tj.metadata.namespace or "default",
                                  plan.stop, uid)  # fmt: skip
        except ChildOwnedByOther as exc:
            log.warning("%s", exc)
        except ApiException as exc:  # e.g. 403 (a chart without delete on rayjobs): status
            # still says the attempt is being ended; the next round asks again
            log.error("RayJob %s not deleted for the return to spot: %s %s", plan.stop,
                      exc.status, exc.reason)  # fmt: skip
    if plan.suspend is not None:
        name, suspend = plan.suspend
        platform.patch("ray.io/v1", "RayJob", tj.metadata.namespace or "default", name,
                       {"spec": {"suspend": suspend}})  # fmt: skip
    for event in plan.events:
        post_event(body, event.type, event.reason, event.message, platform)


def run_reconcile(
    tj: TrainingJob,
    body: kopf.Body,
    patch: kopf.Patch,
    now: datetime,
    index: Any,
    memo: kopf.Memo,
    platform: KubeRayPlatform | None = None,
) -> Plan:
    """Observe, reconcile, act (``trainingjob_rounds``), then patch the status once; then set
    when the daemon runs the next round (the plan's ``requeue_after``, at most the resync)."""
    state, mine = operator_state(memo), object_state(memo)
    with mine.lock:
        try:
            plan = _run_reconcile(tj, body, patch, now, index, memo, platform)
        except kopf.TemporaryError as exc:
            schedule(mine, exc.delay, state.settings.resync_interval)
            raise
        except Exception:
            schedule(mine, state.settings.retry_delay, state.settings.resync_interval)
            raise
    schedule(mine, plan.requeue_after, state.settings.resync_interval)
    meta = body.get("metadata") or {}
    state.wakers.nudge(("TrainingJob", str(meta.get("namespace") or "default"),
                        str(meta.get("name"))))  # fmt: skip
    return plan


def _run_reconcile(
    tj: TrainingJob,
    body: kopf.Body,
    patch: kopf.Patch,
    now: datetime,
    index: Any,
    memo: kopf.Memo,
    platform: KubeRayPlatform | None,
) -> Plan:
    state: OperatorState = operator_state(memo)
    mine = object_state(memo)
    config = state.settings.config
    platform = platform or state.platform()
    uid = body["metadata"]["uid"]
    old = plain(body.get("status"))
    # The body a timer or handler gets may predate the status the previous round wrote (Kopf
    # applies a patch after the handler returns): start from what this process last wrote,
    # unless the body is newer than that write (someone else wrote after us: the body wins).
    written = mine.ahead_of(body)
    current = (
        tj.model_copy(update={"status": TrainingJobStatus.model_validate(written)})
        if written is not None and written != old
        else tj
    )
    # A tracking URI or model name the registry policy refuses: MLflow is never contacted.
    registry = None if policy_refusal(current, config) is not None else _registry(current, config)
    blocked: list[str] = []

    def act(tj: TrainingJob, plan: Plan) -> None:
        try:
            _execute(tj, uid, plan, body, platform, config)
        except AccessBlocked as exc:
            blocked.append(str(exc))

    reclaims, ledger = state.reclaims(), state.ledger
    current, plan, observed = trainingjob_rounds(
        current, uid, now, config, registry,
        observe=lambda tj: _observe(tj, uid, index, registry, platform, reclaims, ledger),
        act=act, deliver=lambda notice: deliver_notice(notice, local_paths=False),
    )  # fmt: skip
    why = blocked[-1] if blocked else None
    status, new = with_access(plan.status, why, now, body["metadata"].get("generation"))
    if new:
        post_event(body, "Warning", "RayClusterAccessBlocked", str(why), platform)
    plan = replace(plan, status=status)
    if why is not None:  # no watch on Secrets and NetworkPolicies: look again for them to go
        plan = replace(plan, requeue_after=min(plan.requeue_after or POLL_SECONDS, POLL_SECONDS))
    # The patch is the change from what the API server holds: our last write when the body
    # predates it (a diff against the older body would not remove what that write added).
    stored = written if written is not None else old
    version = write_status(body, conditions.status_patch(stored, plan.status), platform)
    mine.wrote(plan.status, version)  # only once written: a refused write is tried again
    metrics.trainingjob(current.metadata.namespace or "default", current.metadata.name or "",
                        plan.status)  # fmt: skip
    ledger.forget(current.metadata.namespace or "default", current.metadata.name or "",
                  plan.status.get("disruptions", []))  # fmt: skip
    reclaims.offer(plan.reclaim_samples)
    if observed.registry_error:
        raise kopf.TemporaryError(
            f"MLflow unreachable: {observed.registry_error}", delay=state.settings.retry_delay
        )
    return plan


def plain(value: Any) -> dict[str, Any]:
    """A plain-dict deep copy of a Kopf body's status (its views are read-only)."""
    if isinstance(value, Mapping):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        # Typed for its callers (a status is a dict); nested values are lists and scalars.
        return [plain(v) for v in value]  # type: ignore[return-value]
    return value


@reconciler("TrainingJob")
def on_change(
    resource: TrainingJob,
    *,
    body: kopf.Body,
    patch: kopf.Patch,
    now: datetime,
    memo: kopf.Memo,
    rayjobs_by_trainingjob: Any = None,
    **_: Any,
) -> None:
    """Create, update, resume: act at once rather than at the next timer tick."""
    run_reconcile(resource, body, patch, now, rayjobs_by_trainingjob, memo)


def round_once(body: Any, memo: kopf.Memo, index: Any) -> None:
    """One round of the daemon: follow the attempts. Invalid objects are the change handlers'
    to report, not ours; a finished job has nothing to follow (until its spec changes)."""
    state, mine = operator_state(memo), object_state(memo)
    if (body.get("status") or {}).get("phase") in ("Succeeded", "Failed"):
        schedule(mine, None, state.settings.resync_interval)
        return
    now = datetime.now(UTC)
    verdict = assess("TrainingJob", body, now, state.settings.config)
    if verdict.resource is None or verdict.status:
        schedule(mine, None, state.settings.resync_interval)
        return  # invalid, or a verdict change pending: the change handler writes it
    with metrics.reconciling("TrainingJob"):
        run_reconcile(verdict.resource, body, kopf.Patch(), now, index, memo)  # type: ignore[arg-type]


@kopf.daemon(GROUP, VERSION, "trainingjobs", id="follow", cancellation_timeout=1.0)
async def follow(
    body: kopf.Body,
    memo: kopf.Memo,
    stopped: kopf.DaemonStopped,
    logger: logging.Logger | logging.LoggerAdapter,
    rayjobs_by_trainingjob: Any = None,
    **_: Any,
) -> None:
    """Sleep until something wakes this TrainingJob or its next round is due; run the round in
    a worker thread (its MLflow and API calls are bounded by their timeouts). Kopf cancels
    the wait at shutdown or deletion: nothing to finish, the next start resumes."""
    state, mine = operator_state(memo), object_state(memo)
    if state.stopping:
        return
    meta = body.get("metadata") or {}
    key = ("TrainingJob", meta.get("namespace") or "default", str(meta.get("name")))
    waker = Waker(asyncio.get_running_loop())
    state.wakers.register(key, waker)
    if mine.next_round is None:  # the change handlers set it when they run first
        schedule(mine, None, state.settings.resync_interval)
    try:
        while not stopped:
            if not waker.pending:
                delay = (mine.next_round or 0.0) - time.monotonic()
                if delay > 0:
                    await waker.wait(delay, stopped)
                    continue  # woken, nudged (look at the deadline again), due or stopped
            waker.pending = False
            # A daemon's body is live: Kopf replaces it as events arrive, also while the round
            # runs in its thread. The round reads one snapshot, taken here on Kopf's loop (no
            # event lands in between): a status and a resourceVersion read at two moments
            # would pair an old status with a new version, and start attempt 1 twice.
            snapshot = plain(body)
            try:
                await asyncio.to_thread(round_once, snapshot, memo, rayjobs_by_trainingjob)
            except kopf.TemporaryError as exc:
                logger.warning("%s", exc)
            except Exception:
                logger.exception("a TrainingJob round failed; tried again in %.0f s",
                                 state.settings.retry_delay)  # fmt: skip
            logger.info("Round 'follow' done.")  # what tests wait for: a round after a moment
            if (mine.next_round or 0.0) <= time.monotonic():  # a round that set no deadline
                schedule(mine, state.settings.retry_delay, state.settings.resync_interval)
    finally:
        state.wakers.unregister(key, waker)
        if stopped.reason is not None and stopped.reason & EXITING:
            state.stopping = True


@kopf.on.event(GROUP, VERSION, "trainingjobs")
def on_event(type: str | None, name: str, namespace: str | None, memo: kopf.Memo, **_: Any) -> None:
    """A deleted TrainingJob's series and evidence go (a watch event: no finalizer to retry)."""
    if type == "DELETED":
        metrics.forget("TrainingJob", namespace or "default", name)
        operator_state(memo).ledger.drop(namespace or "default", name)
