"""The Kopf layer: how Kubernetes events reach mlplane's core, and how its verdicts go back.

Importing this module registers, in Kopf's default registry (what ``kopf run`` and
``mlplane operator`` use):

- :func:`configure`, a startup handler: reads every setting once
  (:class:`~mlplane.operator.config.Settings`; a bad value fails the start naming the
  variable) into Kopf's operator-level ``memo`` (:mod:`mlplane.operator.handlers.state`: what
  the handlers share, and each object's own state in its memo; nothing per object at module
  level), sets the timers' interval (``MLPLANE_RECONCILE_INTERVAL``: ModelDeployment and
  ABTest; a TrainingJob has an event-driven daemon instead) and the timeout of every API
  call (``MLPLANE_API_TIMEOUT``); the finalizer
  ``mlplane.dev/finalizer``; Kopf's progress and last-handled configuration kept in
  ``mlplane.dev/...`` annotations — never in ``status``, which is structural and ours (Kopf
  also marks objects with ``mlplane.dev/kopf-managed``); Events for ``kopf.info``/``kopf.warn``
  only, not for log lines (Kopf cuts an Event's message to 1 KiB; the condition keeps it
  whole); standalone, no peering: with several replicas, the Lease (``operator/leader.py``) lets
  one run Kopf.
- for each kind (TrainingJob, ModelDeployment, ABTest), one handler on create, update and resume
  (id ``reconcile``): it validates the object with :func:`validated` and, when the object is
  valid, hands the typed resource to the reconcilers registered for that kind with
  :func:`reconciler`. An invalid object is settled, not retried: there is nothing to retry
  until the spec changes, and a spec change is an update that runs the handler again.
  Each run is one reconcile of its kind in ``mlplane_operator_reconcile_*``
  (:mod:`mlplane.operator.metrics`).

Validation is ``mlplane.crds.validate.check``, exactly what ``mlplane validate`` runs: the
schema, the CEL rules and the model checks; plus what this operator's configuration cannot
run (a TrainingJob with spot workers, no ``checkpoint.uri`` and no default checkpoint base).
On a cluster the API server has already applied the schema and the CEL rules, so this
catches what only the models can (and everything, when the CRDs were installed without
validation or an older CRD version is served).

The verdict in ``status``, for every kind:

- invalid: condition ``InvalidSpec`` True (reason ``InvalidSpec``, the message lists every
  problem as ``field: what is wrong`` joined by ``"; "``), ``phase: Failed`` (every kind's
  phase enum has it and it is what a human scanning ``kubectl get mlplane`` must see),
  ``observedGeneration`` = ``metadata.generation``; and one Warning Event with the same message
  when the verdict is new (a new generation, or other problems). Nothing else is created.
- valid: the ``InvalidSpec`` condition is removed if present, and a ``phase: Failed`` that it
  caused goes back to ``Pending`` (the kind's reconciler moves it on from there).
  ``observedGeneration`` of a valid object is the reconciler's to write, when it has acted.

Status is written only when it changes (:func:`mlplane.operator.conditions.status_patch`), so a
resume or a repeated event costs no write. The operator never writes ``spec``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import inspect
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar

import kopf

from mlplane.crds import BY_KIND, GROUP, KINDS, VERSION, Resource
from mlplane.crds.validate import InvalidResource, Problem, check, parse
from mlplane.operator import conditions, metrics
from mlplane.operator.builders.rayjob import config_problems
from mlplane.operator.config import OperatorConfig, Settings
from mlplane.operator.handlers.state import MEMO_KEY, OperatorState, operator_state

log = logging.getLogger(__name__)

FINALIZER = "mlplane.dev/finalizer"
#: Prefix of the annotations where Kopf keeps its progress and last-handled configuration.
ANNOTATIONS_PREFIX = "mlplane.dev"
INVALID_SPEC = "InvalidSpec"
#: The Kopf handler id (and so the progress annotation ``mlplane.dev/reconcile``).
HANDLER_ID = "reconcile"
#: Conditions have room for 32 KiB; a spec with hundreds of problems is cut to this.
MAX_MESSAGE = 8192

#: A reconciler: ``fn(resource, *, body, patch, logger, now, api_resource, **kwargs)``, sync or
#: async: the typed, valid resource first, then Kopf's keyword arguments (Kopf's own ``resource``,
#: the API reference, comes as ``api_resource``); it writes status into ``patch``.
Reconciler = Callable[..., Awaitable[None] | None]
R = TypeVar("R", bound=Reconciler)

_RECONCILERS: dict[str, list[Reconciler]] = {kind.kind_name: [] for kind in KINDS}


def reconciler(kind: str | type[Resource]) -> Callable[[R], R]:
    """Register ``fn`` to run for ``kind`` after validation passes, in registration order.

    The extension point for the per-kind logic (TrainingJob → RayJob, ...). ``fn`` is called as
    ``fn(resource, body=..., patch=..., logger=..., now=..., api_resource=..., **kopf_kwargs)``
    (see :data:`Reconciler`): raise
    ``kopf.TemporaryError`` for what may heal (the whole handler, validation included, is
    retried) and ``kopf.PermanentError`` for what will not.
    """
    name = kind if isinstance(kind, str) else kind.kind_name
    if name not in _RECONCILERS:
        raise ValueError(f"unknown kind {name!r} (mlplane kinds: {', '.join(_RECONCILERS)})")

    def register(fn: R) -> R:
        if fn not in _RECONCILERS[name]:
            _RECONCILERS[name].append(fn)
        return fn

    return register


def reconcilers(kind: str) -> tuple[Reconciler, ...]:
    """The reconcilers registered for a kind, in the order they run."""
    return tuple(_RECONCILERS.get(kind, ()))


# --- the verdict (pure: no Kopf, no I/O, no clock) ---------------------------------------------


@dataclass(frozen=True)
class Assessment:
    """What validating one body means for the object.

    ``status`` is the merge patch for ``status`` (empty when nothing changes); ``warning`` the
    message of the Warning Event to post (None when there is nothing new to say).
    """

    resource: Resource | None
    problems: tuple[Problem, ...] = ()
    status: dict[str, Any] = field(default_factory=dict)
    warning: str | None = None

    @property
    def valid(self) -> bool:
        return self.resource is not None


def _plain(value: Any) -> Any:
    """A deep copy made of dicts and lists (Kopf's bodies are read-only mapping views)."""
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def message_of(problems: list[Problem] | tuple[Problem, ...]) -> str:
    """Every problem as ``field: what is wrong``, joined by ``"; "``, cut to fit a condition."""
    text = "; ".join(str(p) for p in problems)
    if len(text) > MAX_MESSAGE:
        text = text[: MAX_MESSAGE - 20] + " … (message cut)"
    return text


def _problems(kind: str, body: Any) -> list[Problem]:
    if isinstance(body, dict) and body.get("kind") not in (None, kind):
        return [Problem("kind", f"must be {kind} (got {body.get('kind')!r})")]
    try:
        return check(body)
    except Exception as exc:  # a validator bug must not become a crash loop or a live object
        log.exception("validating a %s failed", kind)
        return [Problem("", f"the operator could not validate this object ({exc!r})")]


def assess(
    kind: str | type[Resource], body: Any, now: datetime, config: OperatorConfig | None = None
) -> Assessment:
    """Validate ``body`` (as read from the API server) and say what its status must become.

    With ``config``, what this operator's configuration cannot run counts as invalid too
    (:func:`mlplane.operator.builders.rayjob.config_problems`).
    """
    kind = kind if isinstance(kind, str) else kind.kind_name
    body = _plain(body)
    obj = body if isinstance(body, dict) else {}
    found_status, found_meta = obj.get("status"), obj.get("metadata")
    old: dict[str, Any] = found_status if isinstance(found_status, dict) else {}
    meta: dict[str, Any] = found_meta if isinstance(found_meta, dict) else {}
    generation = meta.get("generation") if isinstance(meta.get("generation"), int) else None
    found = old.get("conditions")
    current = [c for c in found if isinstance(c, dict)] if isinstance(found, list) else []

    problems = _problems(kind, body)
    resource: Resource | None = None
    if not problems:
        try:
            resource = parse(body)
        except InvalidResource as exc:  # check() and parse() disagree: trust the problems
            problems = exc.problems
        except Exception as exc:
            log.exception("parsing a %s failed", kind)
            problems = [Problem("", f"the operator could not read this object ({exc!r})")]
    if resource is not None and config is not None:
        problems = config_problems(resource, config)
        if problems:
            resource = None

    new = dict(old)
    if problems:
        message = message_of(problems)
        new["conditions"] = conditions.set_condition(
            current, INVALID_SPEC, "True", INVALID_SPEC, message, now=now, generation=generation
        )
        new["phase"] = "Failed"
        new["observedGeneration"] = generation
        patch = conditions.status_patch(old, new)
        return Assessment(None, tuple(problems), patch, message if patch else None)

    if conditions.find(current, INVALID_SPEC) is not None:
        if conditions.is_true(current, INVALID_SPEC) and old.get("phase") == "Failed":
            new["phase"] = "Pending"
        new["conditions"] = conditions.remove(current, INVALID_SPEC)
    return Assessment(resource, (), conditions.status_patch(old, new), None)


# --- the Kopf edge ------------------------------------------------------------------------------


def validated(
    kind: str | type[Resource],
    body: Any,
    patch: kopf.Patch,
    now: datetime | None = None,
    logger: logging.Logger | logging.LoggerAdapter | None = None,
    config: OperatorConfig | None = None,
) -> Resource | None:
    """The typed resource when ``body`` is valid; None when it is not (the verdict is written).

    For use inside Kopf handlers: the status change goes into ``patch`` (Kopf applies it after
    the handler) and a new verdict is posted as a Warning Event. Never raises for bad input.
    """
    result = assess(kind, body, now or datetime.now(UTC), config)
    if result.status:
        patch.setdefault("status", {}).update(result.status)
    if result.warning is not None:
        kopf.warn(body, reason=INVALID_SPEC, message=result.warning)
        (logger or log).warning("invalid spec: %s", result.warning)
    return result.resource


def post_event(body: Any, type_: str, reason: str, message: str, platform: Any = None) -> None:
    """Post a core v1 Event about ``body`` now, before the status it explains is written.

    ``kopf.info``/``kopf.warn`` queue the Event for a background poster, so a reader could see
    the new status before the Event that explains it. Best effort, as Kopf's: a refused Event
    is logged, never an error of the reconcile.
    """
    from kubernetes import client

    from mlplane.operator.platforms.kuberay import KubeRayPlatform

    meta = body["metadata"]
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    event: Any = {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"generateName": f"{meta['name']}.", "namespace": meta["namespace"]},
        "involvedObject": {
            "apiVersion": body["apiVersion"],
            "kind": body["kind"],
            "name": meta["name"],
            "namespace": meta["namespace"],
            "uid": meta.get("uid"),
        },
        "type": type_,
        "reason": reason,
        "message": message[:1024],
        "source": {"component": "mlplane"},
        "firstTimestamp": now,
        "lastTimestamp": now,
        "count": 1,
    }
    try:
        api = client.CoreV1Api((platform or KubeRayPlatform())._client())
        api.create_namespaced_event(meta["namespace"], event, _request_timeout=10)
    except Exception as exc:
        log.warning("event %s %s for %s/%s not posted: %s", type_, reason, meta["namespace"],
                    meta["name"], exc)  # fmt: skip


#: Seconds before a refused status write is tried again (the handler's own retry).
STATUS_RETRY_DELAY = 2.0


def write_status(body: Any, patch_status: Mapping[str, Any], platform: Any = None) -> str | None:
    """Write a reconcile's status change now, through the API, not through Kopf's ``patch``.

    Kopf applies a timer handler's patch after the handler returns, and a refused write there
    (409, 5xx, 429) ends that object's timer until the operator restarts: the object is never
    reconciled again. Written here, a refusal is a ``TemporaryError`` of this round and the
    timer tries again. 404 (deleted meanwhile) is not an error.

    Returns the resourceVersion the API server gave the write (None: nothing to write, or the
    object is gone), for :meth:`~mlplane.operator.handlers.state.ObjectState.wrote`.
    """
    if not patch_status:
        return None
    from kubernetes.client.exceptions import ApiException
    from urllib3.exceptions import HTTPError

    from mlplane.operator.platforms.kuberay import KubeRayPlatform

    meta = body["metadata"]
    try:
        return (platform or KubeRayPlatform()).patch_status(
            body["apiVersion"], body["kind"], meta["namespace"], meta["name"], dict(patch_status)
        )
    except ApiException as exc:
        raise kopf.TemporaryError(
            f"status not written ({exc.status} {exc.reason}); tried again",
            delay=STATUS_RETRY_DELAY,
        ) from None
    except (HTTPError, OSError) as exc:
        raise kopf.TemporaryError(
            f"status not written ({exc}); tried again", delay=STATUS_RETRY_DELAY
        ) from None


#: Kopf timers whose interval is ``MLPLANE_RECONCILE_INTERVAL`` (see :func:`paced_timer`).
_PACED: list[Callable[..., Any]] = []


def paced_timer(
    group: str, version: str, plural: str, *, id: str
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """``kopf.timer`` whose interval is the ``reconcile_interval`` setting.

    Kopf takes a timer's interval when the decorator runs (at import, before the settings are
    read): it is registered with the default and set to the setting by :func:`configure` at
    start, before any object's timer is spawned.
    """

    def register(fn: Callable[..., Any]) -> Callable[..., Any]:
        _PACED.append(fn)
        interval = Settings().reconcile_interval
        return kopf.timer(group, version, plural, id=id, interval=interval)(fn)

    return register


def pace_timers(registry: kopf.OperatorRegistry, interval: float) -> int:
    """Set the interval of the :func:`paced_timer` timers in ``registry``; how many were set."""
    from kopf._core.intents.handlers import TimerHandler

    spawning = registry._spawning
    count = 0
    for i, handler in enumerate(list(spawning._handlers)):
        if isinstance(handler, TimerHandler) and handler.fn in _PACED:
            spawning._handlers[i] = dataclasses.replace(handler, interval=interval)
            count += 1
    return count


def configure(
    settings: kopf.OperatorSettings,
    memo: kopf.Memo | None = None,
    registry: kopf.OperatorRegistry | None = None,
    **_: Any,
) -> None:
    """Start: read every setting once into ``memo``; Kopf's settings for mlplane.

    A bad setting fails the start (``kopf.PermanentError`` naming the variable).
    """
    if memo is not None:
        try:
            mine = Settings.from_env()
        except ValueError as exc:
            raise kopf.PermanentError(f"invalid operator setting: {exc}") from None
        memo[MEMO_KEY] = OperatorState(mine)
        if registry is not None:
            pace_timers(registry, mine.reconcile_interval)
        # Every API call is bounded: the kubernetes client's (handlers, platforms) and Kopf's
        # own (patches, events; its watch streams have their own timeouts).
        from mlplane.operator.platforms.kuberay import KubeRayPlatform

        KubeRayPlatform.default_timeout = mine.api_timeout
        settings.networking.request_timeout = mine.api_timeout
        settings.networking.connect_timeout = min(10.0, mine.api_timeout)
    settings.persistence.finalizer = FINALIZER
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(
        prefix=ANNOTATIONS_PREFIX
    )
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=ANNOTATIONS_PREFIX, key="last-handled-configuration"
    )
    settings.posting.level = logging.INFO
    settings.posting.loggers = False
    settings.posting.reporting_component = "mlplane-operator"
    settings.posting.event_name_prefix = "mlplane-"
    settings.peering.standalone = True
    settings.peering.mandatory = False
    # Kinds run a sync timer or daemon; a deletion waits for a running round to end, and Kopf looks
    # again only every `cancellation_polling` seconds (60 by default): look every second.
    settings.background.cancellation_polling = 1.0
    # At exit Kopf drains the events still queued (2 s by default): nothing in them is lost
    # (the next start resumes every object from the API), and the time counts against the
    # pod's grace period.
    settings.queueing.exit_timeout = 0.5


async def release_watch_waiters(logger: logging.Logger | logging.LoggerAdapter, **_: Any) -> None:
    """Exit: end the watch streams' pause-waiter tasks Kopf leaves behind.

    When Kopf stops a watcher in the middle of its stream (a busy stream at SIGTERM), the
    stream's ``pause-waiter`` task is never cancelled, and Kopf then waits 5 s for such
    leftover tasks before it exits: that alone would break the 5 s budget of a pod's stop.
    Cleanup handlers run after every watcher has stopped, so nothing still needs them.
    """
    leftovers = [t for t in asyncio.all_tasks()
                 if not t.done() and t.get_name().startswith("pause-waiter for ")]  # fmt: skip
    for task in leftovers:
        task.cancel()
    if leftovers:
        logger.debug("ended %d watch pause-waiters left by stopped watchers", len(leftovers))


async def handle(
    body: kopf.Body,
    patch: kopf.Patch,
    logger: logging.Logger | logging.LoggerAdapter,
    **kwargs: Any,
) -> None:
    """Create, update and resume of any mlplane kind: validate, then the kind's reconcilers."""
    kind = body.get("kind")
    if not isinstance(kind, str) or kind not in BY_KIND:
        kind = _kind_of(kwargs.get("resource"))  # the body's kind is garbage: trust the URL
    # One reconcile in mlplane_operator_reconcile_*: an invalid spec is a handled object (a
    # success: the user must act, not the operator); an exception (retried by Kopf) an error.
    with metrics.reconciling(kind):
        now = datetime.now(UTC)
        config = operator_state(kwargs.get("memo")).settings.config
        resource = validated(kind, body, patch, now=now, logger=logger, config=config)
        if resource is None:
            return
        api_resource = kwargs.pop("resource", None)
        for fn in reconcilers(kind):
            result = fn(
                resource,
                body=body,
                patch=patch,
                logger=logger,
                now=now,
                api_resource=api_resource,
                **kwargs,
            )
            if inspect.isawaitable(result):
                await result


def _kind_of(resource: Any) -> str:
    plural = getattr(resource, "plural", None)
    return next((k.kind_name for k in KINDS if k.plural == plural), "?")


def register_validation(registry: kopf.OperatorRegistry) -> kopf.OperatorRegistry:
    """Put the base layer into ``registry``: :func:`configure` and, per kind, :func:`handle`.

    Kopf's default registry gets it at import, followed by the kinds' own handlers (timers,
    indexes, events). A registry holding only this layer runs validation and whatever
    :func:`reconciler` functions are registered, with no timer of any kind acting beside them:
    what a test of this layer needs.
    """
    kopf.on.startup(registry=registry, id="configure")(
        functools.partial(configure, registry=registry)
    )
    kopf.on.cleanup(registry=registry, id="release-watch-waiters")(release_watch_waiters)
    for kind in KINDS:
        for on in (kopf.on.create, kopf.on.update, kopf.on.resume):
            on(group=GROUP, version=VERSION, plural=kind.plural, id=HANDLER_ID, registry=registry)(
                handle
            )
    return registry


register_validation(kopf.get_default_registry())

# --- the objects that close a Ray cluster -----------------------------------------------------

#: Condition set (False) while a Ray cluster cannot be created because its token Secret or
#: NetworkPolicy name is taken by another owner; removed once the operator's own exist.
RAY_CLUSTER_ACCESS = "RayClusterAccess"


class AccessBlocked(RuntimeError):
    """The owner's Ray token Secret or NetworkPolicy belongs to someone else: no cluster."""


def access_blocked_message(exc: Any) -> str:
    """What the condition says about a :class:`ChildOwnedByOther` Secret or NetworkPolicy."""
    return (
        f"{exc.kind} {exc.namespace}/{exc.name} exists and belongs to another owner "
        f"(uid {exc.owner_uid or 'none'}): the operator does not adopt it and creates no Ray "
        f"cluster without its own token Secret and NetworkPolicy. Delete that {exc.kind} (or "
        "rename this resource); the cluster is created at the next reconcile after it is gone"
    )


def with_access(
    status: dict[str, Any], blocked: str | None, now: datetime, generation: int | None = None
) -> tuple[dict[str, Any], bool]:
    """``status`` with :data:`RAY_CLUSTER_ACCESS` set (``blocked``) or removed (None).

    Also whether the condition is new (to send one Warning Event, not one per tick).
    """
    old = conditions.find(status.get("conditions"), RAY_CLUSTER_ACCESS)
    if blocked is None:
        if old is None:
            return status, False
        return {**status, "conditions": conditions.remove(status.get("conditions"),
                                                          RAY_CLUSTER_ACCESS)}, False  # fmt: skip
    new = conditions.set_condition(
        status.get("conditions"), RAY_CLUSTER_ACCESS, "False", "OwnedByOther", blocked,
        now=now, generation=generation,
    )  # fmt: skip
    return {**status, "conditions": new}, old is None or old.get("message") != blocked


# The kinds' own handlers register on import; they extend this module, so they come last.
from mlplane.operator.handlers import abtest as abtest  # noqa: E402
from mlplane.operator.handlers import modeldeployment as modeldeployment  # noqa: E402
from mlplane.operator.handlers import trainingjob as trainingjob  # noqa: E402
