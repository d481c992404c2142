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

A timer per TrainingJob (``MLPLANE_RECONCILE_INTERVAL`` seconds, default 5) runs the reconcile;
the change handlers (create, update, resume) validate and run it too, so a new job starts at
once. Both are idempotent (``reconcile/trainingjob.py`` says why), so overlapping runs can only
try to create what already exists; they take turns on the object's lock.

Settings come from the operator's state in Kopf's ``memo`` (read once at start), and so do the
disruption ledger and the reclaim history; each TrainingJob's lock and last written status
are in its own memo (:mod:`mlplane.operator.handlers.state`).
"""

from __future__ import annotations

import logging
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
    paced_timer,
    post_event,
    reconciler,
    with_access,
    write_status,
)
from mlplane.operator.handlers.ledger import DisruptionLedger
from mlplane.operator.handlers.state import OperatorState, object_state, operator_state
from mlplane.operator.platforms.base import ChildOwnedByOther
from mlplane.operator.platforms.kuberay import KubeRayPlatform
from mlplane.operator.platforms.notice import deliver_notice
from mlplane.operator.platforms.reclaim_history import ReclaimHistoryKeeper
from mlplane.operator.reconcile.trainingjob import (
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

__all__ = ["DisruptionLedger", "on_change", "on_timer", "plain", "run_reconcile"]

log = logging.getLogger(__name__)
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


@kopf.on.event("", "v1", "pods", labels={lbl.TRAININGJOB: kopf.PRESENT})
def pod_event(body: kopf.Body, type: str | None, memo: kopf.Memo, **_: Any) -> None:
    """Pods of training clusters: disruption conditions and the node they run on."""
    operator_state(memo).ledger.pod(body, deleted=type == "DELETED")


@kopf.on.event("", "v1", "nodes")
def node_event(body: kopf.Body, type: str | None, memo: kopf.Memo, **_: Any) -> None:
    """Nodes: spot capacity being reclaimed (taints) or gone (deleted)."""
    operator_state(memo).ledger.node(body, deleted=type == "DELETED")


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
    """Observe, reconcile, act (``trainingjob_rounds``), then patch the status once."""
    with object_state(memo).lock:
        return _run_reconcile(tj, body, patch, now, index, memo, platform)


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
    platform = platform or KubeRayPlatform()
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
    version = write_status(body, conditions.status_patch(old, plan.status), platform)
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


@paced_timer(GROUP, VERSION, "trainingjobs", id="observe")
def on_timer(
    body: kopf.Body,
    patch: kopf.Patch,
    memo: kopf.Memo,
    rayjobs_by_trainingjob: Any = None,
    **_: Any,
) -> None:
    """Follow the attempts. Invalid objects are the change handlers' to report, not ours."""
    if (body.get("status") or {}).get("phase") in ("Succeeded", "Failed"):
        return
    now = datetime.now(UTC)
    verdict = assess("TrainingJob", body, now, operator_state(memo).settings.config)
    if verdict.resource is None or verdict.status:
        return  # invalid, or a verdict change pending: the change handler writes it
    with metrics.reconciling("TrainingJob"):
        run_reconcile(verdict.resource, body, patch, now, rayjobs_by_trainingjob, memo)  # type: ignore[arg-type]


@kopf.on.event(GROUP, VERSION, "trainingjobs")
def on_event(type: str | None, name: str, namespace: str | None, memo: kopf.Memo, **_: Any) -> None:
    """A deleted TrainingJob's series and evidence go (a watch event: no finalizer to retry)."""
    if type == "DELETED":
        metrics.forget("TrainingJob", namespace or "default", name)
        operator_state(memo).ledger.drop(namespace or "default", name)
