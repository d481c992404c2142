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
try to create what already exists.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Mapping
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import kopf

from mlplane.crds import GROUP, VERSION, TrainingJob, TrainingJobStatus
from mlplane.operator import conditions, metrics
from mlplane.operator.builders import labels as lbl
from mlplane.operator.builders.evidence import node_evidence, pod_disruption
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
from mlplane.operator.platforms.base import ChildOwnedByOther
from mlplane.operator.platforms.kuberay import KubeRayPlatform
from mlplane.operator.platforms.reclaim_history import ConfigMapHistoryStore, ReclaimHistoryKeeper
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

log = logging.getLogger(__name__)
INTERVAL = float(os.environ.get("MLPLANE_RECONCILE_INTERVAL", "5"))
#: Seconds before retrying after MLflow could not be reached.
RETRY_DELAY = float(os.environ.get("MLPLANE_RETRY_DELAY", "15"))
_OWNED: dict[str, Any] = {  # label filters: values or kopf.PRESENT
    lbl.MANAGED_BY: lbl.MANAGED_BY_VALUE,
    lbl.TRAININGJOB: kopf.PRESENT,
}


class DisruptionLedger:
    """Preemption evidence per TrainingJob, kept from watch events until status records it.

    Node evidence reaches only the *live* pods on the node (running or pending, not finished,
    not deleted): a pod leaves the ledger when it finishes or is deleted, so a reclaim never
    counts pods of attempts long over. Evidence is keyed as the pure core keys it
    (:meth:`ObservedDisruption.key`: attempt and node), so one reclaim of a node running three
    pods of an attempt is one preemption, whichever of its node taint, node deletion and the
    pods' ``DisruptionTarget`` conditions is seen first.
    """

    #: Reclaimed nodes remembered (a pod event may arrive after its node's): the newest win.
    MAX_NODES = 1000

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._seen: dict[tuple[str, str], dict[tuple[Any, ...], ObservedDisruption]] = {}
        #: Live pods that have a node: (namespace, pod) → (TrainingJob, attempt, node).
        self._live: dict[tuple[str, str], tuple[str, int, str]] = {}
        #: Spot nodes being taken away (or gone) → the reason recorded for their pods.
        self._terminating_nodes: dict[str, str] = {}

    def pod(self, pod: Mapping[str, Any], *, deleted: bool = False) -> None:
        """Record a pod's own disruption, and where it runs while it is live (node evidence)."""
        meta = pod.get("metadata") or {}
        labels = meta.get("labels") or {}
        namespace, job = meta.get("namespace", ""), labels.get(lbl.TRAININGJOB)
        attempt = labels.get(lbl.ATTEMPT, "")
        if not job or not attempt.isdigit():
            return
        name = meta.get("name", "")
        node = (pod.get("spec") or {}).get("nodeName")
        over = deleted or (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed")
        with self._lock:
            found = pod_disruption(pod)
            if found is not None:
                self._add(namespace, job, ObservedDisruption(
                    int(attempt), found.reason, found.pod, found.node, found.time))  # fmt: skip
            if over or not node:
                self._live.pop((namespace, name), None)
                return
            self._live[namespace, name] = (job, int(attempt), node)
            if node in self._terminating_nodes:
                self._add(namespace, job, ObservedDisruption(
                    int(attempt), self._terminating_nodes[node], name, node))  # fmt: skip

    def node(self, node: Mapping[str, Any], *, deleted: bool = False) -> None:
        """A spot node that is going away (or went away) disrupts the live pods on it."""
        evidence = node_evidence(node)
        with self._lock:
            if not evidence.spot or not (evidence.terminating or deleted):
                # Not (or no longer) going away: a NotReady blip that healed disrupts nothing
                # scheduled there later.
                self._terminating_nodes.pop(evidence.name, None)
                return
            reason = "SpotNodeDeleted" if deleted else f"NodeTerminating:{evidence.taints[0]}"
            self._terminating_nodes.pop(evidence.name, None)
            self._terminating_nodes[evidence.name] = reason
            while len(self._terminating_nodes) > self.MAX_NODES:
                del self._terminating_nodes[next(iter(self._terminating_nodes))]
            for (namespace, pod), (job, attempt, on) in self._live.items():
                if on == evidence.name:
                    self._add(namespace, job,
                              ObservedDisruption(attempt, reason, pod, evidence.name))  # fmt: skip

    def _add(self, namespace: str, job: str, disruption: ObservedDisruption) -> None:
        self._seen.setdefault((namespace, job), {}).setdefault(disruption.key(), disruption)

    def take(self, namespace: str, job: str) -> tuple[ObservedDisruption, ...]:
        """Everything seen for a TrainingJob (kept until :meth:`forget`)."""
        with self._lock:
            return tuple(self._seen.get((namespace, job), {}).values())

    def forget(self, namespace: str, job: str, recorded: list[dict[str, Any]]) -> None:
        """Drop evidence the status now holds."""
        with self._lock:
            seen = self._seen.get((namespace, job))
            if not seen:
                return
            for item in recorded:
                seen.pop(ObservedDisruption.from_record(item).key(), None)

    def drop(self, namespace: str, job: str) -> None:
        """Everything of a deleted TrainingJob: a new one of the same name starts clean."""
        with self._lock:
            self._seen.pop((namespace, job), None)
            for key in [k for k, (j, _, _) in self._live.items() if k[0] == namespace and j == job]:
                del self._live[key]


LEDGER = DisruptionLedger()
#: The reclaim history (M of Auto checkpoint intervals), in a ConfigMap of the operator's
#: namespace; made on first use (it needs the API client).
_RECLAIMS: ReclaimHistoryKeeper | None = None


def reclaim_keeper(config: OperatorConfig) -> ReclaimHistoryKeeper:
    """The process's one keeper of the reclaim history (loaded once, written when worth it)."""
    global _RECLAIMS
    with _LOCKS_GUARD:
        if _RECLAIMS is None:
            _RECLAIMS = ReclaimHistoryKeeper(
                ConfigMapHistoryStore(
                    lambda: KubeRayPlatform().core_api(), config.operator_namespace
                )
            )
        return _RECLAIMS


#: Kopf runs a resource's change handlers and its timer concurrently (in threads): one lock per
#: TrainingJob makes them take turns, so two rounds never race to create the same MLflow run.
_LOCKS: dict[tuple[str, str], threading.Lock] = {}
#: The status this process last wrote, per uid: the operator is the only writer of status.
_LAST_STATUS: dict[str, dict[str, Any]] = {}
_LOCKS_GUARD = threading.Lock()


def _lock(namespace: str, name: str) -> threading.Lock:
    with _LOCKS_GUARD:
        return _LOCKS.setdefault((namespace, name), threading.Lock())


@kopf.index("ray.io", "v1", "rayjobs", labels=_OWNED)
def rayjobs_by_trainingjob(
    body: kopf.Body, namespace: str | None, labels: Mapping[str, str], **_: Any
) -> dict[tuple[str, str], ObservedAttempt]:
    """Each attempt's RayJob, under (namespace, TrainingJob name)."""
    return {
        (namespace or "default", labels[lbl.TRAININGJOB]): ObservedAttempt.from_rayjob(dict(body))
    }


@kopf.on.event("", "v1", "pods", labels={lbl.TRAININGJOB: kopf.PRESENT})
def pod_event(body: kopf.Body, type: str | None, **_: Any) -> None:
    """Pods of training clusters: disruption conditions and the node they run on."""
    LEDGER.pod(body, deleted=type == "DELETED")


@kopf.on.event("", "v1", "nodes")
def node_event(body: kopf.Body, type: str | None, **_: Any) -> None:
    """Nodes: spot capacity being reclaimed (taints) or gone (deleted)."""
    LEDGER.node(body, deleted=type == "DELETED")


# --- the reconcile loop ---------------------------------------------------------------------


def _registry(tj: TrainingJob, config: OperatorConfig) -> Registry:
    return registry_for(tj.spec.mlflow.tracking_uri or config.mlflow_tracking_uri)


def _observe(
    tj: TrainingJob,
    uid: str,
    index: Any,
    registry: Registry | None,
    platform: KubeRayPlatform,
    reclaims: ReclaimHistoryKeeper,
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
    disruptions = LEDGER.take(namespace, name)
    return Observed(attempts, disruptions, look.run, look.unavailable, look.refused,
                    reclaim_history=reclaims.history())  # fmt: skip


def _execute(
    tj: TrainingJob, uid: str, plan: Plan, body: kopf.Body, platform: KubeRayPlatform
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
                    OperatorConfig.from_env(),
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
    platform: KubeRayPlatform | None = None,
) -> Plan:
    """Observe, reconcile, act (``trainingjob_rounds``), then patch the status once."""
    with _lock(tj.metadata.namespace or "default", tj.metadata.name or ""):
        return _run_reconcile(tj, body, patch, now, index, platform)


def _run_reconcile(
    tj: TrainingJob,
    body: kopf.Body,
    patch: kopf.Patch,
    now: datetime,
    index: Any,
    platform: KubeRayPlatform | None,
) -> Plan:
    config = OperatorConfig.from_env()
    platform = platform or KubeRayPlatform()
    uid = body["metadata"]["uid"]
    old = plain(body.get("status"))
    # The body a timer or handler gets may predate the status the previous round wrote (Kopf
    # applies a patch after the handler returns): start from what this process last wrote.
    written = _LAST_STATUS.get(uid)
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
            _execute(tj, uid, plan, body, platform)
        except AccessBlocked as exc:
            blocked.append(str(exc))

    reclaims = reclaim_keeper(config)
    current, plan, observed = trainingjob_rounds(
        current, uid, now, config, registry,
        observe=lambda tj: _observe(tj, uid, index, registry, platform, reclaims), act=act,
    )  # fmt: skip
    why = blocked[-1] if blocked else None
    status, new = with_access(plan.status, why, now, body["metadata"].get("generation"))
    if new:
        post_event(body, "Warning", "RayClusterAccessBlocked", str(why), platform)
    plan = replace(plan, status=status)
    write_status(body, conditions.status_patch(old, plan.status), platform)
    _LAST_STATUS[uid] = plan.status  # only once written: a refused write is tried again
    metrics.trainingjob(current.metadata.namespace or "default", current.metadata.name or "",
                        plan.status)  # fmt: skip
    LEDGER.forget(current.metadata.namespace or "default", current.metadata.name or "",
                  plan.status.get("disruptions", []))  # fmt: skip
    reclaims.offer(plan.reclaim_samples)
    if observed.registry_error:
        raise kopf.TemporaryError(
            f"MLflow unreachable: {observed.registry_error}", delay=RETRY_DELAY
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
    rayjobs_by_trainingjob: Any = None,
    **_: Any,
) -> None:
    """Create, update, resume: act at once rather than at the next timer tick."""
    run_reconcile(resource, body, patch, now, rayjobs_by_trainingjob)


@kopf.timer(GROUP, VERSION, "trainingjobs", interval=INTERVAL, id="observe")
def on_timer(
    body: kopf.Body, patch: kopf.Patch, rayjobs_by_trainingjob: Any = None, **_: Any
) -> None:
    """Follow the attempts. Invalid objects are the change handlers' to report, not ours."""
    if (body.get("status") or {}).get("phase") in ("Succeeded", "Failed"):
        return
    now = datetime.now(UTC)
    verdict = assess("TrainingJob", body, now, OperatorConfig.from_env())
    if verdict.resource is None or verdict.status:
        return  # invalid, or a verdict change pending: the change handler writes it
    with metrics.reconciling("TrainingJob"):
        run_reconcile(verdict.resource, body, patch, now, rayjobs_by_trainingjob)  # type: ignore[arg-type]


@kopf.on.event(GROUP, VERSION, "trainingjobs")
def on_event(type: str | None, name: str, namespace: str | None, **_: Any) -> None:
    """A deleted TrainingJob's series and evidence go (a watch event: no finalizer to retry)."""
    if type == "DELETED":
        metrics.forget("TrainingJob", namespace or "default", name)
        LEDGER.drop(namespace or "default", name)
