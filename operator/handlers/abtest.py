"""ABTest on Kubernetes: observe, call the pure reconcile, move the alias, write status.

What a round looks at, and where from:

- the ModelDeployment named by ``spec.deployment``, from a Kopf index by ``(namespace, name)``
  (:func:`modeldeployments_by_name`), status included: its ``endpoint`` and readiness;
- the other ABTests on the same deployment, from the ModelDeployment handlers' index
  (``abtests_by_deployment``), for who splits its traffic;
- the variants' versions, resolved in MLflow (:func:`~.modeldeployment.resolve_model` on the
  deployment's registered model) until the split is frozen in status;
- the router's cumulative counts, ``GET <endpoint>/admin/v1/stats?abtest=<ABTest name>`` with
  the admin token (the router keys its A/B counts by the ``abtest`` of its ``user_config``,
  which is the ABTest's name: :func:`read_stats`). ``MLPLANE_ABTEST_STATS_URL`` replaces every
  deployment's endpoint (tests
  point it at a stub on 127.0.0.1; also handy when the operator runs outside the cluster).

The change handler (create, update, resume) evaluates at once. A timer per ABTest ticks every
``MLPLANE_RECONCILE_INTERVAL`` seconds: while Pending it looks at every tick; while Running it
evaluates every ``spec.analysis.interval`` (``MLPLANE_ABTEST_INTERVAL`` seconds overrides it for
every test); a concluded or failed test costs nothing.

A promotion takes three steps (the pure core's ``status.promotion``): the round that decides
Promote only writes the decision and the alias move (``promotion.phase: Pending``); a later
round that *reads that status back from the API server* moves the alias
(:meth:`~mlplane.operator.registry.Registry.set_alias`, skipped when the alias already points
there) and only then writes Concluded. If MLflow cannot be reached, nothing is written and the
next round tries again; if the operator dies or a status write fails anywhere in between, the
next round finishes the recorded promotion instead of deciding again. A status this process
wrote but does not read back yet (Kopf applies the patch after the handler returns; a PATCH
may fail) is written again rather than acted on, unless the body is newer than that write
(someone else wrote after us: the body wins). The operator writes only the ABTest's status,
never a spec; the ModelDeployment's handlers pick the split (or its end) up from the index.

Each test's lock, last written status and next due time are in its Kopf memo; settings come
from the operator's memo, read once at start (:mod:`mlplane.operator.handlers.state`).
"""

from __future__ import annotations

import logging
import math
import time
from datetime import UTC, datetime
from typing import Any

import kopf

from mlplane.crds import GROUP, VERSION, ABTest, ABTestStatus, ModelDeployment
from mlplane.crds.modeldeployment import ModelRef
from mlplane.operator import conditions, metrics
from mlplane.operator.config import OperatorConfig, Settings
from mlplane.operator.handlers import assess, paced_timer, post_event, reconciler, write_status
from mlplane.operator.handlers.modeldeployment import (
    abtests_of,
    registry_for,
    resolve_model,
)
from mlplane.operator.handlers.signing import admin_token
from mlplane.operator.handlers.state import (
    ObjectState,
    OperatorState,
    object_state,
    operator_state,
)
from mlplane.operator.handlers.trainingjob import plain
from mlplane.operator.platforms.kuberay import KubeRayPlatform
from mlplane.operator.platforms.serving_client import Unavailable, fetch_stats
from mlplane.operator.reconcile.abtest import (
    FINAL_PHASES,
    Observed,
    Plan,
    StatsUnavailable,
    VariantStats,
    analysis_interval,
    pending_promotion,
    reconcile,
    stats_from_response,
)
from mlplane.operator.reconcile.modeldeployment import Unresolved
from mlplane.operator.registry import RegistryError, RegistryUnavailable

log = logging.getLogger(__name__)

#: Seconds to wait for the router's /admin/v1/stats.
STATS_TIMEOUT = 10.0


def evaluation_interval(test: ABTest, settings: Settings) -> float:
    """Seconds between evaluations: ``MLPLANE_ABTEST_INTERVAL`` if set, else the spec's."""
    return settings.abtest_interval or analysis_interval(test)


def stats_base_url(endpoint: str | None, settings: Settings) -> str | None:
    """Where the router answers: ``MLPLANE_ABTEST_STATS_URL`` if set, else ``endpoint``."""
    return settings.abtest_stats_url or endpoint


def read_stats(
    endpoint: str, abtest: str, timeout: float = STATS_TIMEOUT, token: str | None = None
) -> tuple[VariantStats, ...] | StatsUnavailable:
    """The router's cumulative per-variant counts of ``abtest`` (``GET /admin/v1/stats`` with
    the deployment's admin ``token``), or why they could not be read. Never raises."""
    answer = fetch_stats(endpoint, abtest, timeout=timeout, token=token)
    if isinstance(answer, Unavailable):
        return StatsUnavailable(answer.reason)
    return stats_from_response(answer, abtest)


@kopf.index(GROUP, VERSION, "modeldeployments")
def modeldeployments_by_name(
    body: kopf.Body, namespace: str | None, name: str, **_: Any
) -> dict[tuple[str, str], dict[str, Any]]:
    """Each ModelDeployment, whole (status included), under its namespace and name."""
    namespace = namespace or "default"
    md = plain(body)
    md.get("metadata", {}).pop("managedFields", None)
    return {(namespace, name): md}


@kopf.on.event(GROUP, VERSION, "abtests")
def forget_deleted(type: str | None, name: str, namespace: str | None, **_: Any) -> None:
    """Drop its metric series once it is gone (Kopf drops its memo, what else is kept)."""
    if type == "DELETED":
        metrics.forget("ABTest", namespace or "default", name)


def _deployment(
    index: Any, namespace: str, name: str, state: OperatorState
) -> ModelDeployment | None:
    """The ModelDeployment from the index (None when absent, being deleted or invalid)."""
    if index is None:
        return None
    for body in index.get((namespace, name), ()):
        if (body.get("metadata") or {}).get("deletionTimestamp"):
            continue
        md = state.parsed(body)
        return md if isinstance(md, ModelDeployment) else None
    return None


def _deployment_uid(index: Any, namespace: str, name: str) -> str | None:
    """The ModelDeployment's uid from the index (whose signing Secret holds the admin key)."""
    for body in (index or {}).get((namespace, name), ()):
        return (body.get("metadata") or {}).get("uid")
    return None


def _versions(test: ABTest, md: ModelDeployment, config: OperatorConfig) -> dict[str, Any]:
    """Each variant's version in MLflow now (or why not), on the deployment's model."""
    registry = registry_for(config.mlflow_tracking_uri, timeout=config.mlflow_timeout)
    out: dict[str, int | Unresolved] = {}
    for v in test.spec.variants:
        ref = ModelRef(name=md.spec.model.name, alias=v.model.alias, version=v.model.version)
        found = resolve_model(registry, ref)
        out[v.name] = found if isinstance(found, Unresolved) else found.version
    return out


def _promote(plan: Plan, settings: Settings, name: str) -> None:
    """Move the alias, unless it already points at the winner; TemporaryError if MLflow fails."""
    move = plan.set_alias
    if move is None:
        return
    config = settings.config
    registry = registry_for(config.mlflow_tracking_uri, timeout=config.mlflow_timeout)
    try:
        try:
            current: int | None = registry.resolve(move.model, alias=move.alias).version
        except RegistryError:
            current = None  # no such alias yet: set it
        if current != move.version:
            registry.set_alias(move.model, move.alias, move.version)
            log.info("ABTest %s: %s alias %s -> version %s (was %s)",
                     name, move.model, move.alias, move.version, current)  # fmt: skip
    except (RegistryError, RegistryUnavailable) as exc:
        raise kopf.TemporaryError(
            f"promotion pending: moving {move.model} alias {move.alias} to version "
            f"{move.version} failed: {exc}",
            delay=settings.retry_delay,
        ) from None


def _write(body: kopf.Body, old: dict[str, Any], new: dict[str, Any], mine: ObjectState) -> None:
    """Write the status fields that differ from the observed ones (``write_status``), and
    remember the write with its resourceVersion."""
    mine.wrote(new, write_status(body, conditions.status_patch(old, new)))


def run_reconcile(
    test: ABTest,
    body: kopf.Body,
    patch: kopf.Patch,
    now: datetime,
    *,
    memo: kopf.Memo,
    deployments: Any,
    abtests: Any,
    due_only: bool = False,
) -> Plan | None:
    """Observe, reconcile, promote, write status and events (None: not due, nothing done)."""
    mine = object_state(memo)
    with mine.lock:
        return _run(test, body, patch, now, operator_state(memo), mine, deployments, abtests,
                    due_only)  # fmt: skip


def _run(
    test: ABTest,
    body: kopf.Body,
    patch: kopf.Patch,
    now: datetime,
    state: OperatorState,
    mine: ObjectState,
    deployments: Any,
    abtests: Any,
    due_only: bool,
) -> Plan | None:
    settings = state.settings
    old = plain(body.get("status"))
    # What this process wrote last, while the body predates that write (else the body wins).
    written = mine.ahead_of(body)
    ahead = written is not None and written != old
    if ahead:
        test = test.model_copy(update={"status": ABTestStatus.model_validate(written)})
    phase = test.status.phase if test.status else None
    if due_only and (phase in FINAL_PHASES or time.monotonic() < mine.due):
        if ahead and written is not None:  # not read back (a failed PATCH?): write it again
            _write(body, old, written, mine)
        return None
    namespace, name = test.metadata.namespace or "default", test.metadata.name or ""
    config = settings.config
    md = _deployment(deployments, namespace, test.spec.deployment, state)
    status = test.status
    started = bool(status and status.start_time)
    final = phase in FINAL_PHASES
    versions: dict[str, Any] = {}
    stats = None
    promoting = pending_promotion(written if ahead else old) is not None
    if md is not None and not final and not promoting:  # a decided promotion reads nothing
        if not started:
            versions = _versions(test, md, config)
        base = stats_base_url(md.status.endpoint if md.status else None, settings)
        if base and (started or (status is not None and status.variants)):
            md_uid = _deployment_uid(deployments, namespace, test.spec.deployment)
            token = admin_token(KubeRayPlatform(), namespace, test.spec.deployment, md_uid)
            stats = read_stats(base, name, token=token)
    competitors = abtests_of(abtests, namespace, test.spec.deployment, state)
    plan = reconcile(test, Observed(md, versions, stats, competitors), now)
    if plan.set_alias is not None and pending_promotion(old) != plan.set_alias:
        # The promotion is in the status this process wrote, not yet in the one it reads: the
        # alias moves only once the decision is stored. Write it (again) and come back.
        if written is not None:
            _write(body, old, written, mine)
        mine.due = 0.0
        return None
    _promote(plan, settings, f"{namespace}/{name}")
    # Kept before the write: a refused write is written again, not decided again (unless
    # someone else writes meanwhile: a newer body wins).
    mine.hold(plan.status, body)
    metrics.abtest(namespace, name, plan.status)
    for event in plan.events:
        post_event(body, event.type, event.reason, event.message)
    _write(body, old, plan.status, mine)  # after the events that explain it
    if pending_promotion(plan.status) is not None:
        mine.due = 0.0  # decided: finish the promotion at the next tick
    elif plan.status.get("phase") == "Running":
        mine.due = time.monotonic() + evaluation_interval(test, settings)
    elif plan.requeue_after is None:
        mine.due = math.inf
    else:
        mine.due = 0.0  # pending: look at every tick
    return plan


@reconciler("ABTest")
def on_change(
    resource: ABTest,
    *,
    body: kopf.Body,
    patch: kopf.Patch,
    now: datetime,
    memo: kopf.Memo,
    modeldeployments_by_name: Any = None,
    abtests_by_deployment: Any = None,
    **_: Any,
) -> None:
    """Create, update, resume: evaluate at once rather than at the next tick."""
    run_reconcile(
        resource,
        body,
        patch,
        now,
        memo=memo,
        deployments=modeldeployments_by_name,
        abtests=abtests_by_deployment,
    )


@paced_timer(GROUP, VERSION, "abtests", id="evaluate")
def on_timer(
    body: kopf.Body,
    patch: kopf.Patch,
    memo: kopf.Memo,
    modeldeployments_by_name: Any = None,
    abtests_by_deployment: Any = None,
    **_: Any,
) -> None:
    """Evaluate when due. Invalid objects are the change handlers' to report, not ours."""
    if body.get("metadata", {}).get("deletionTimestamp"):
        return
    if (body.get("status") or {}).get("phase") in FINAL_PHASES:
        return
    now = datetime.now(UTC)
    verdict = assess("ABTest", body, now)
    if verdict.resource is None or verdict.status:
        return  # invalid, or a verdict change pending: the change handler writes it
    with metrics.reconciling("ABTest"):
        run_reconcile(
            verdict.resource,  # type: ignore[arg-type]
            body,
            patch,
            now,
            memo=memo,
            deployments=modeldeployments_by_name,
            abtests=abtests_by_deployment,
            due_only=True,
        )
