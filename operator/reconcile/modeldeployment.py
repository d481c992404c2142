"""ModelDeployment: the RayService to run and the status to show, from what was observed.

Pure: no I/O, no clock. The caller (the Kopf handler on Kubernetes, the runner on the local
platform) resolves the model in MLflow and reads the existing RayService (KubeRay's status
included); :func:`reconcile` returns the whole next status, the RayService to create or the
merge patch for the existing one, and the events of the transitions. Same inputs, same plan:
a restart, a repeated event or a timer tick with nothing new writes nothing.

What it holds to:

- **The RayService is the memory.** The version being served is read back from the existing
  RayService's ``serveConfigV2`` (the ``user_config`` the builder writes), never remembered, so
  a restarted operator knows what runs.
- **A model-version change is a ``serveConfigV2`` change only.** The builder keeps the version
  out of everything else; the patch carries only the top-level spec fields whose *intent*
  changed, so moving an alias patches ``spec.serveConfigV2`` and nothing else in the spec.
- **Unresolvable never breaks what serves.** When the alias or version cannot be resolved (the
  alias was removed, MLflow is down), an existing RayService is left exactly as it is: it keeps
  serving its version, ``servedVersion`` stays, ``ModelResolved`` turns False with the reason,
  and ``Ready`` keeps saying what KubeRay says.
- **Server defaults are not drift.** The API server fills schema defaults into the stored
  RayService (KubeRay 1.7's CRD: a worker group's ``numOfHosts``, ``priority``, ...), so the
  stored spec is never byte-equal to the built one. The RayService carries, in the annotation
  :data:`APPLIED`, a short hash of each top-level spec field as mlplane last wrote it. A field
  is patched when its hash differs from the desired one (mlplane's intent changed: the whole
  field is made exactly the desired value, removals included) or when the stored value no
  longer contains the desired one (someone edited it: the desired values are put back, extra
  keys are left alone). Equal hashes and a containing stored value mean nothing to do.

Status (``ModelDeploymentStatus``):

- ``phase``: ``Pending`` (nothing deployed, waiting for MLflow), ``Deploying`` (RayService being
  created, rolled to a new version or upgraded: KubeRay has not caught up with its spec, an
  application or deployment is not running yet, or ``UpgradeInProgress``), ``Ready``,
  ``Degraded`` (serving but something is wrong: an unhealthy application, no serve endpoints
  any more, or the model can no longer be resolved for a reason the user must fix), ``Failed``
  (nothing serves and it will not heal by itself: unknown model/alias/version, failed deploy,
  KubeRay's initialisation timeout, a RayService of that name owned by someone else).
- condition ``Ready``: ``True`` (reason ``Serving``) when KubeRay says the service is ready,
  ``Unknown`` (reason ``Deploying``) while it comes up, ``False`` when broken (reasons
  ``AliasNotFound``, ``ModelNotFound``, ``VersionNotFound``, ``RegistryUnavailable``,
  ``DeployFailed``, ``InitializingTimeout``, ``NoServeEndpoints``, ``RayServiceConflict``,
  ``InvalidRayService``, ``SigningSecretConflict``: a Secret ``<name>-request-signing`` exists
  and is not this ModelDeployment's — nothing is created or changed until it is removed).
- condition ``ModelResolved``: ``True`` (reason ``Resolved``) or ``False`` with reason
  ``ModelNotFound`` / ``AliasNotFound`` / ``VersionNotFound`` (permanent until the user acts;
  still looked at every resolve interval, since an alias may be created later) or
  ``RegistryUnavailable`` (retried sooner).
- condition ``ModelAllowed`` (present only while refused): ``False`` with reason
  ``UnsafeModelFlavor`` when a version to serve (the resolved one, or an A/B variant's) has a
  serialisation the operator does not allow (``mlplane.serving.flavors``: by default only
  skops and ONNX, which execute no code on load) and ``spec.model.allowUnsafeDeserialization``
  is not set. Nothing is deployed for it: without a RayService, ``Ready=False`` with that
  reason (phase ``Failed``); an existing RayService keeps serving its version (phase
  ``Degraded``, saying why it does not follow).
- ``servedVersion`` / ``modelUri``: what the RayService's Serve config holds, once KubeRay has
  observed that spec and the application runs; during a rollout the previous value stays (the
  previous version keeps answering until Serve swaps the new one in). With an A/B split it is
  the first variant (``model-0``, the control).
- ``endpoint``: ``http://<rayservice>-serve-svc.<namespace>.svc:8000`` (KubeRay's serve
  Service), once a RayService exists or is being created.
- ``replicas``: ready serving worker pods (KubeRay's ``readyWorkerReplicas`` of the active
  cluster: one pod per model replica, the pods ``selector`` matches), else ``replicas.min``.
- ``selector``: the serving pods' label selector (scale subresource).
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any, Literal, Protocol

import yaml

from mlplane.crds import ModelDeployment
from mlplane.operator import conditions
from mlplane.operator.builders import labels as lbl
from mlplane.operator.builders.rayservice import (
    APPLICATION,
    ROUTER_DEPLOYMENT,
    Variant,
    build_rayservice,
    model_deployment_name,
)
from mlplane.operator.conditions import Event
from mlplane.operator.config import OperatorConfig
from mlplane.serving.flavors import refusal

#: Annotation on the RayService: ``{"<top-level spec field>": "<hash>"}`` as mlplane last wrote.
APPLIED = "mlplane.dev/applied-spec"
#: Port of KubeRay's serve Service (Serve's HTTP proxy).
SERVE_PORT = 8000
#: Seconds until the next look while something is in motion, and after MLflow failed.
DEPLOYING_POLL = 5.0
RETRY_SECONDS = 15.0

UnresolvedReason = Literal[
    "ModelNotFound", "AliasNotFound", "VersionNotFound", "RegistryUnavailable", "UnsafeModelFlavor"
]
Phase = Literal["Pending", "Deploying", "Ready", "Degraded", "Failed"]

_HEALTHY_DEPLOYMENT = frozenset({"HEALTHY", "UPSCALING", "DOWNSCALING"})


class Resolved(Protocol):
    """A model resolved to a version: ``mlplane.operator.registry.ResolvedModel`` is one
    (a protocol, so the pure core does not import the registry client)."""

    @property
    def name(self) -> str: ...

    @property
    def version(self) -> int: ...


@dataclass(frozen=True)
class Unresolved:
    """Why the model could not be resolved to a version (see ``resolve_model`` in the handler).

    ``RegistryUnavailable`` may heal by itself (retried soon); the others are MLflow's clear
    "no" and need the user (an alias may still be created later: it is looked at again).
    """

    reason: UnresolvedReason
    message: str

    @property
    def transient(self) -> bool:
        return self.reason == "RegistryUnavailable"


@dataclass(frozen=True)
class Observed:
    """What the caller saw: the model resolution, the RayService, and an A/B split if any.

    ``rayservice`` is the stored RayService (a plain dict with ``metadata``, ``spec`` and
    KubeRay's ``status``) or None. ``variants``, ``bucketing_header``, ``abtest`` and
    ``objective`` come from an active ABTest and go to ``build_rayservice`` unchanged.
    """

    model: Resolved | Unresolved
    rayservice: dict[str, Any] | None = None
    variants: tuple[Variant, ...] | None = None
    bucketing_header: str | None = None
    abtest: str | None = None
    objective: str | None = None
    #: The ABTest's Mean outcome bounds ``(min, max)``, to ``build_rayservice`` unchanged.
    outcome_range: tuple[float, float] | None = None
    #: Why the request-id signing Secret is not this ModelDeployment's (None: it is, or the
    #: caller has no Secrets): then nothing is created or changed.
    signing_conflict: str | None = None
    #: The ``MLmodel`` flavors of the versions to serve, by version (read from the registry).
    #: A version missing here is not deployed: closed by default.
    flavors: Mapping[int, Mapping[str, Any] | None] | None = None


def flavor_refusal(
    md: ModelDeployment,
    versions: tuple[int, ...],
    flavors: Mapping[int, Mapping[str, Any] | None] | None,
    config: OperatorConfig,
) -> Unresolved | None:
    """Why these versions must not be deployed (their serialisation), or None."""
    allow = md.spec.model.allow_unsafe_deserialization
    for version in sorted(set(versions)):
        why: str | None
        if flavors is None or version not in flavors:
            why = "its MLmodel flavors were not read"
        else:
            why = refusal(flavors[version], config.allowed_model_flavors, allow_unsafe=allow)
        if why is not None:
            return Unresolved(
                "UnsafeModelFlavor", f"version {version} of {md.spec.model.name} is refused: {why}"
            )
    return None


@dataclass
class Plan:
    """The next status, and what to do to the RayService (at most one of create and patch)."""

    status: dict[str, Any]
    #: The RayService mlplane wants (None when the model is unresolved or it cannot be built):
    #: what the local platform deploys, what :attr:`create` and :attr:`patch` lead to.
    desired: dict[str, Any] | None = None
    #: Create :attr:`desired` (no RayService of that name exists).
    create: bool = False
    #: Merge patch for the existing RayService (``metadata.resourceVersion`` included, so a
    #: concurrent change answers 409 Conflict instead of being overwritten).
    patch: dict[str, Any] | None = None
    #: What the patch changes: top-level spec fields, ``metadata.labels``, ...
    changed: tuple[str, ...] = ()
    events: list[Event] = field(default_factory=list)
    #: Seconds until the next look; None: at the next resolve interval (nothing in motion).
    requeue_after: float | None = None


# --- reading a RayService ------------------------------------------------------------------


@dataclass(frozen=True)
class ServedConfig:
    """What a RayService's ``serveConfigV2`` serves: model name, versions per variant."""

    model_name: str | None
    #: (variant name, version, model URI, weight) in order; ``[0]`` is ``model-0``.
    variants: tuple[tuple[str, int, str, int], ...]

    @property
    def version(self) -> int | None:
        return self.variants[0][1] if self.variants else None

    @property
    def model_uri(self) -> str | None:
        return self.variants[0][2] if self.variants else None


def served_config(rayservice: Mapping[str, Any] | None) -> ServedConfig | None:
    """Read back the served versions from a RayService's ``serveConfigV2`` (None if unreadable).

    The router's ``user_config.variants`` lists every variant; without it, ``model-0``'s
    ``user_config`` gives the one version.
    """
    text = ((rayservice or {}).get("spec") or {}).get("serveConfigV2")
    if not isinstance(text, str):
        return None
    try:
        config = yaml.safe_load(text)
    except yaml.YAMLError:
        return None
    apps = config.get("applications") if isinstance(config, dict) else None
    app = next(
        (a for a in apps or () if isinstance(a, dict) and a.get("name") == APPLICATION), None
    )
    if app is None:
        return None
    found_args = app.get("args")
    args = found_args if isinstance(found_args, dict) else {}
    model_name = args.get("model_name")
    deployments = {
        d.get("name"): d.get("user_config") or {}
        for d in app.get("deployments") or ()
        if isinstance(d, dict)
    }
    variants: list[tuple[str, int, str, int]] = []
    router = deployments.get(ROUTER_DEPLOYMENT) or {}
    for item in router.get("variants") or ():
        try:
            variants.append(
                (str(item["name"]), int(item["version"]), str(item["model_uri"]),
                 int(item.get("weight", 100)))
            )  # fmt: skip
        except (KeyError, TypeError, ValueError):
            return None
    if not variants:
        first = deployments.get(model_deployment_name(0)) or {}
        if "version" in first:
            try:
                version = int(first["version"])
            except (TypeError, ValueError):
                return None
            uri = str(first.get("model_uri") or f"models:/{model_name}/{version}")
            variants.append(("primary", version, uri, 100))
    return ServedConfig(model_name if isinstance(model_name, str) else None, tuple(variants))


@dataclass(frozen=True)
class ServiceHealth:
    """KubeRay's view of a RayService, boiled down to what the status needs."""

    serving: bool
    #: KubeRay has observed the RayService's current spec (its ``observedGeneration``).
    current: bool
    #: The Serve application and its deployments run (in the active cluster).
    running: bool
    upgrading: bool
    failed_reason: str | None
    problem: str | None
    ready_workers: int | None
    #: KubeRay's ``Ready`` reason (``Initializing``, ``ZeroServeEndpoints``, ...).
    kuberay_reason: str | None


def _app_status(service_status: Mapping[str, Any] | None) -> dict[str, Any]:
    apps = (service_status or {}).get("applicationStatuses") or {}
    app = apps.get(APPLICATION) if isinstance(apps, Mapping) else None
    return dict(app) if isinstance(app, Mapping) else {}


def service_health(rayservice: Mapping[str, Any]) -> ServiceHealth:
    """Read KubeRay 1.7's RayService status (also what the local runner translates into)."""
    status = rayservice.get("status") or {}
    conds = [c for c in status.get("conditions") or () if isinstance(c, dict)]
    ready = conditions.find(conds, "Ready")
    endpoints = status.get("numServeEndpoints", status.get("NumServeEndpoints"))
    if ready is not None:
        serving = ready.get("status") == "True"
    else:  # a KubeRay without conditions: its deprecated serviceStatus
        serving = status.get("serviceStatus") == "Running" and (endpoints is None or endpoints > 0)
    generation = (rayservice.get("metadata") or {}).get("generation")
    observed = status.get("observedGeneration")
    current = generation is None or (observed is not None and observed >= generation)
    active = status.get("activeServiceStatus") or {}
    app = _app_status(active)
    app_state = app.get("status")
    deployments = app.get("serveDeploymentStatuses") or {}
    unhealthy = sorted(
        name for name, d in deployments.items()
        if isinstance(d, Mapping) and d.get("status") == "UNHEALTHY"
    )  # fmt: skip
    deploying = sorted(
        name for name, d in deployments.items()
        if isinstance(d, Mapping) and d.get("status") not in _HEALTHY_DEPLOYMENT | {"UNHEALTHY"}
    )  # fmt: skip
    running = app_state == "RUNNING" and not unhealthy and not deploying
    problem = None
    failed_reason = None
    if app_state == "DEPLOY_FAILED":
        failed_reason = "DeployFailed"
        problem = f"application {APPLICATION} failed to deploy: {app.get('message') or '?'}"
    elif app_state == "UNHEALTHY" or unhealthy:
        names = ", ".join(unhealthy) or APPLICATION
        messages = "; ".join(
            str(deployments[n].get("message")) for n in unhealthy if deployments[n].get("message")
        ) or app.get("message") or "unhealthy"  # fmt: skip
        problem = f"unhealthy: {names}: {messages}"
    kuberay_reason = ready.get("reason") if ready else None
    if kuberay_reason == "InitializingTimeout":
        failed_reason = "InitializingTimeout"
        problem = (
            f"KubeRay gave up initialising the RayService: {(ready or {}).get('message') or ''}"
        )
    cluster = active.get("rayClusterStatus") or {}
    workers = cluster.get("readyWorkerReplicas", cluster.get("availableWorkerReplicas"))
    return ServiceHealth(
        serving=serving,
        current=current,
        running=running,
        upgrading=conditions.is_true(conds, "UpgradeInProgress")
        or bool(_app_status(status.get("pendingServiceStatus"))),
        failed_reason=failed_reason,
        problem=problem,
        ready_workers=workers if isinstance(workers, int) else None,
        kuberay_reason=kuberay_reason,
    )


# --- comparing specs -----------------------------------------------------------------------


def _digest(value: Any) -> str:
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def spec_hashes(spec: Mapping[str, Any]) -> dict[str, str]:
    """Per top-level spec field, a short hash of mlplane's value (the :data:`APPLIED` record)."""
    return {key: _digest(value) for key, value in spec.items()}


def _covers(stored: Any, desired: Any) -> bool:
    """Whether ``stored`` holds everything of ``desired`` (extra keys, e.g. defaults, allowed)."""
    if isinstance(desired, Mapping):
        return isinstance(stored, Mapping) and all(
            k in stored and _covers(stored[k], v) for k, v in desired.items()
        )
    if isinstance(desired, list):
        return (
            isinstance(stored, list)
            and len(stored) == len(desired)
            and all(_covers(s, d) for s, d in zip(stored, desired, strict=True))
        )
    if isinstance(desired, bool) or isinstance(stored, bool):
        return stored is desired
    return bool(stored == desired)


def _exact_patch(stored: Any, desired: Any) -> Any:
    """Merge patch making ``stored`` exactly ``desired`` (nulls remove what is not wanted)."""
    if isinstance(desired, Mapping) and isinstance(stored, Mapping):
        out: dict[str, Any] = {}
        for key, value in desired.items():
            if key not in stored:
                out[key] = copy.deepcopy(value)
            elif stored[key] != value:
                out[key] = _exact_patch(stored[key], value)
        out.update({key: None for key in stored if key not in desired})
        return out
    return copy.deepcopy(desired)


def _restore_patch(stored: Any, desired: Any) -> Any:
    """Merge patch putting ``desired`` values back into ``stored``, keeping extra keys of
    objects (a merge patch replaces a list whole: a changed list becomes the desired one)."""
    if isinstance(desired, Mapping) and isinstance(stored, Mapping):
        return {
            key: _restore_patch(stored.get(key), value)
            for key, value in desired.items()
            if not (key in stored and _covers(stored[key], value))
        }
    return copy.deepcopy(desired)


def _applied(rayservice: Mapping[str, Any]) -> dict[str, str]:
    annotations = (rayservice.get("metadata") or {}).get("annotations") or {}
    try:
        record = json.loads(annotations.get(APPLIED) or "{}")
    except (TypeError, ValueError):
        return {}
    return {str(k): str(v) for k, v in record.items()} if isinstance(record, dict) else {}


def rayservice_patch(
    stored: Mapping[str, Any], desired: Mapping[str, Any], uid: str
) -> tuple[dict[str, Any] | None, tuple[str, ...]]:
    """The merge patch taking the stored RayService to ``desired``, and what it changes.

    See the module docstring for the per-field rule (intent hashes, containment).
    """
    stored_spec = stored.get("spec") or {}
    desired_spec = desired["spec"]
    hashes = spec_hashes(desired_spec)
    applied = _applied(stored)
    spec_patch: dict[str, Any] = {}
    for key, value in desired_spec.items():
        if applied.get(key) != hashes[key]:
            if key not in stored_spec or stored_spec[key] != value:
                spec_patch[key] = _exact_patch(stored_spec.get(key), value)
        elif key not in stored_spec or not _covers(stored_spec[key], value):
            spec_patch[key] = _restore_patch(stored_spec.get(key), value)
    for key in applied:
        if key not in desired_spec and key in stored_spec:
            spec_patch[key] = None  # mlplane wrote it once and wants it no more
    changed = [f"spec.{key}" for key in spec_patch]
    meta = stored.get("metadata") or {}
    meta_patch: dict[str, Any] = {}
    labels = meta.get("labels") or {}
    missing = {k: v for k, v in desired["metadata"].get("labels", {}).items() if labels.get(k) != v}
    if missing:
        meta_patch["labels"] = missing
        changed.append("metadata.labels")
    refs = list(meta.get("ownerReferences") or [])
    if not any(r.get("uid") == uid for r in refs):
        meta_patch["ownerReferences"] = refs + desired["metadata"].get("ownerReferences", [])
        changed.append("metadata.ownerReferences")
    if applied != hashes:
        meta_patch["annotations"] = {APPLIED: json.dumps(hashes, sort_keys=True)}
    if not spec_patch and not changed:
        return (None, ()) if applied == hashes else ({"metadata": meta_patch}, ())
    if meta.get("resourceVersion"):
        meta_patch["resourceVersion"] = meta["resourceVersion"]
    patch: dict[str, Any] = {"metadata": meta_patch}
    if spec_patch:
        patch["spec"] = spec_patch
    return patch, tuple(changed)


def _ownership(rayservice: Mapping[str, Any], uid: str, name: str) -> str | None:
    """Why the RayService is not this ModelDeployment's to manage (None: it is)."""
    meta = rayservice.get("metadata") or {}
    refs = meta.get("ownerReferences") or []
    if any(r.get("uid") == uid for r in refs):
        return None
    controller = next((r for r in refs if r.get("controller")), None)
    if controller is not None:
        return (
            f"RayService {meta.get('name')} is controlled by {controller.get('kind')} "
            f"{controller.get('name')} (uid {controller.get('uid')}), not by this "
            "ModelDeployment; delete it or rename the ModelDeployment"
        )
    labels = meta.get("labels") or {}
    if (
        labels.get(lbl.MANAGED_BY) == lbl.MANAGED_BY_VALUE
        and labels.get(lbl.MODELDEPLOYMENT) == name
    ):
        return None  # mlplane made it (its owner reference was removed): adopt it back
    return (
        f"RayService {meta.get('name')} exists and was not made by mlplane for this "
        "ModelDeployment; delete it or rename the ModelDeployment"
    )


# --- the status ----------------------------------------------------------------------------


def _generation(md: ModelDeployment) -> int | None:
    generation = (md.metadata.model_extra or {}).get("generation")
    return int(generation) if generation is not None else None


class _Status(conditions.StatusDraft):
    """The ModelDeployment's next status."""

    def __init__(self, md: ModelDeployment, now: datetime) -> None:
        old = md.status.model_dump(by_alias=True, exclude_none=True) if md.status else {}
        super().__init__(old, now, _generation(md))
        # The resource is valid (the handler checked): a past verdict is not ours to keep.
        self.new["conditions"] = conditions.remove(self.new.get("conditions"), "InvalidSpec")
        if self.generation is not None:
            self.new["observedGeneration"] = self.generation


def _resolution_text(md: ModelDeployment, version: int) -> str:
    ref = md.spec.model
    if ref.alias:
        return f"{ref.name} alias {ref.alias} -> version {version}"
    return f"{ref.name} version {version}"


def _set_model_resolved(s: _Status, md: ModelDeployment, model: Resolved | Unresolved) -> None:
    old = s.old_condition("ModelResolved")
    if isinstance(model, Unresolved):
        s.condition("ModelResolved", "False", model.reason, model.message)
        if old.get("status") != "False" or old.get("reason") != model.reason:
            s.event("Warning", model.reason, model.message)
        return
    message = f"{_resolution_text(md, model.version)} (models:/{model.name}/{model.version})"
    s.condition("ModelResolved", "True", "Resolved", message)
    if old.get("status") != "True" or old.get("message") != message:
        s.event("Normal", "ModelResolved", message)


def _set_model_allowed(s: _Status, refused: Unresolved | None) -> None:
    old = s.old_condition("ModelAllowed")
    if refused is None:
        if old:
            s.new["conditions"] = conditions.remove(s.new.get("conditions"), "ModelAllowed")
        return
    s.condition("ModelAllowed", "False", refused.reason, refused.message)
    if old.get("status") != "False" or old.get("message") != refused.message:
        s.event("Warning", refused.reason, refused.message)


def _set_phase(s: _Status, phase: Phase, message: str) -> None:
    old = s.old.get("phase")
    s.new["phase"] = phase
    if old == phase:
        return
    if phase == "Ready":
        s.event("Normal", "Ready", message)
    elif phase in ("Degraded", "Failed"):
        s.event("Warning", phase, message)


def endpoint_of(name: str, namespace: str) -> str:
    """KubeRay's serve Service for a RayService, as a cluster-internal URL."""
    return f"http://{name}-serve-svc.{namespace}.svc:{SERVE_PORT}"


def reconcile(
    md: ModelDeployment,
    observed: Observed,
    now: datetime,
    config: OperatorConfig,
    *,
    uid: str,
) -> Plan:
    """The next status and the RayService action for a validated ModelDeployment."""
    s = _Status(md, now)
    st = s.new
    name = md.metadata.name or ""
    namespace = md.metadata.namespace or "default"
    st["selector"] = lbl.serving_pod_selector(name)
    _set_model_resolved(s, md, observed.model)
    refused = None
    if not isinstance(observed.model, Unresolved):
        versions = (observed.model.version, *(v.version for v in observed.variants or ()))
        refused = flavor_refusal(md, versions, observed.flavors, config)
    _set_model_allowed(s, refused)
    if refused is not None:  # nothing is deployed for it; what serves keeps serving
        observed = replace(observed, model=refused)
    plan = Plan(status=st)

    try:
        rs_name = lbl.rayservice_name(name)
    except ValueError as exc:
        return _finish(s, plan, "Failed", "False", "InvalidRayService", str(exc))
    rs = observed.rayservice
    if rs is not None and (rs.get("metadata") or {}).get("deletionTimestamp"):
        plan.requeue_after = DEPLOYING_POLL
        message = f"RayService {rs_name} is being deleted; it is recreated once gone"
        return _finish(s, plan, "Deploying", "Unknown", "Deploying", message)
    if rs is not None:
        conflict = _ownership(rs, uid, name)
        if conflict is not None:
            plan.requeue_after = RETRY_SECONDS
            return _finish(s, plan, "Failed", "False", "RayServiceConflict", conflict)
    if observed.signing_conflict is not None:
        plan.requeue_after = RETRY_SECONDS
        stop: Phase = "Failed" if rs is None else "Degraded"
        return _finish(s, plan, stop, "False", "SigningSecretConflict", observed.signing_conflict)

    # What mlplane wants, when it knows the version.
    desired = None
    build_error = None
    if not isinstance(observed.model, Unresolved):
        try:
            desired = build_rayservice(
                md,
                observed.model.version,
                config,
                owner_uid=uid,
                variants=list(observed.variants) if observed.variants else None,
                bucketing_header=observed.bucketing_header,
                abtest=observed.abtest,
                objective=observed.objective,
                outcome_range=observed.outcome_range,
            )
            drain = _draining(rs, desired)
            if drain is not None:
                desired = build_rayservice(
                    md,
                    observed.model.version,
                    config,
                    owner_uid=uid,
                    variants=drain,
                    bucketing_header=observed.bucketing_header,
                    abtest=observed.abtest,
                    objective=observed.objective,
                    outcome_range=observed.outcome_range,
                )
        except ValueError as exc:
            build_error = f"the RayService cannot be built: {exc}"
    if desired is not None:
        desired["metadata"].setdefault("annotations", {})[APPLIED] = json.dumps(
            spec_hashes(desired["spec"]), sort_keys=True
        )
        plan.desired = desired

    if rs is None:
        # Nothing serves (yet, or any more: someone deleted the RayService).
        st["replicas"] = md.spec.replicas.min
        st.pop("servedVersion", None)
        st.pop("modelUri", None)
        if desired is None:
            st.pop("endpoint", None)
            if build_error is not None:
                return _finish(s, plan, "Failed", "False", "InvalidRayService", build_error)
            model = observed.model
            assert isinstance(model, Unresolved)
            plan.requeue_after = RETRY_SECONDS if model.transient else None
            phase: Phase = "Pending" if model.transient else "Failed"
            return _finish(s, plan, phase, "False", model.reason,
                           f"nothing is served: {model.message}")  # fmt: skip
        plan.create = True
        st["endpoint"] = endpoint_of(rs_name, namespace)
        version = observed.model.version  # type: ignore[union-attr]
        message = f"creating RayService {rs_name} for {_resolution_text(md, version)}"
        s.event("Normal", "Deploying", message)
        plan.requeue_after = DEPLOYING_POLL
        return _finish(s, plan, "Deploying", "Unknown", "Deploying", message)

    # A RayService exists: change it if mlplane wants something else, then say how it is.
    st["endpoint"] = endpoint_of(rs_name, namespace)
    served = served_config(rs)
    wanted = served_config(desired) if desired is not None else None
    if desired is not None:
        plan.patch, plan.changed = rayservice_patch(rs, desired, uid)
        if plan.changed:
            _announce_update(s, served, wanted, plan.changed, rs_name)
    health = service_health(rs)
    _served_fields(s, md, served, health)
    return _follow(s, plan, md, observed.model, health, served, wanted, build_error)


def _draining(
    rayservice: Mapping[str, Any] | None, desired: Mapping[str, Any]
) -> list[Variant] | None:
    """Variants that stop traffic to model deployments before they are removed (or None).

    When an A/B split ends (or shrinks), Serve would delete the dropped ``model-<i>``
    deployments while the router replicas still pick them from their previous config: a request
    routed there in between fails. So the removal takes two steps: first the router keeps the
    dropped variants at weight 0 (a ``user_config`` change, applied in place); once Serve runs
    that config, the deployments go. Returns the first step's variants while it is needed.
    """
    if rayservice is None:
        return None
    served, wanted = served_config(rayservice), served_config(desired)
    if served is None or wanted is None or len(served.variants) <= len(wanted.variants):
        return None
    dropped = served.variants[len(wanted.variants) :]
    health = service_health(rayservice)
    if all(weight == 0 for *_, weight in dropped) and health.current and health.running:
        return None  # the router sends them nothing any more: remove them now
    names = {name for name, *_ in wanted.variants}
    out = [Variant(name, version, weight) for name, version, _, weight in wanted.variants]
    for name, version, _, _ in dropped:
        out.append(Variant(name if name not in names else f"{name}-draining", version, 0))
    return out


def _announce_update(
    s: _Status,
    served: ServedConfig | None,
    wanted: ServedConfig | None,
    changed: tuple[str, ...],
    rs_name: str,
) -> None:
    before = served.version if served else None
    after = wanted.version if wanted else None
    if before is not None and after is not None and before != after:
        s.event("Normal", "VersionChanged",
                f"version {before} -> {after}: RayService {rs_name} serveConfigV2 updated in "
                "place (the previous version serves until the new one is loaded)")  # fmt: skip
    others = [c for c in changed if c != "spec.serveConfigV2"]
    if others or (before == after and "spec.serveConfigV2" in changed):
        s.event("Normal", "Updating", f"RayService {rs_name}: updating {', '.join(changed)}")


def _served_fields(
    s: _Status, md: ModelDeployment, served: ServedConfig | None, health: ServiceHealth
) -> None:
    """``servedVersion``/``modelUri`` move to the RayService's configured version once KubeRay
    has applied that spec and the application runs; before that the previous version answers.
    Without a previous value (status lost), a serving RayService's configuration is the best
    knowledge there is."""
    st = s.new
    if served is not None and served.version is not None:
        rolled_out = health.current and health.serving and health.running
        if rolled_out or (health.serving and "servedVersion" not in st):
            st["servedVersion"] = str(served.version)
            if served.model_uri:
                st["modelUri"] = served.model_uri
    st["replicas"] = (
        health.ready_workers if health.ready_workers is not None else md.spec.replicas.min
    )


def _follow(
    s: _Status,
    plan: Plan,
    md: ModelDeployment,
    model: Resolved | Unresolved,
    health: ServiceHealth,
    served: ServedConfig | None,
    wanted: ServedConfig | None,
    build_error: str | None,
) -> Plan:
    st = s.new
    version = st.get("servedVersion") or (str(served.version) if served and served.version else "?")
    serving_text = f"serving {md.spec.model.name} version {version}"
    rolling = any(c.startswith("spec.") for c in plan.changed)
    in_motion = rolling or not health.current or health.upgrading or not health.running
    problem = health.problem
    ref = md.spec.model
    following = f"alias {ref.alias}" if ref.alias else f"version {ref.version}"
    user_problem = None
    if isinstance(model, Unresolved) and not model.transient:
        user_problem = f"not following {following}: {model.message}"
    elif build_error is not None:
        user_problem = f"the spec is not applied: {build_error}"

    if health.serving:
        notes = []
        if rolling:
            new = wanted.version if wanted else None
            if new is not None and str(new) != version:
                notes.append(f"rolling out version {new}")
            else:
                notes.append("applying " + ", ".join(plan.changed))
        elif health.upgrading:
            notes.append("zero-downtime upgrade in progress")
        elif not health.current or not health.running:
            notes.append("KubeRay is applying the latest spec")
        for extra in (problem, user_problem):
            if extra:
                notes.append(extra)
        if isinstance(model, Unresolved) and model.transient:
            notes.append(f"{following} not looked up: {model.message}")
        message = serving_text + ("; " + "; ".join(notes) if notes else "")
        s.condition("Ready", "True", "Serving", message)
        if problem or user_problem:
            phase: Phase = "Degraded"
        elif in_motion:
            phase = "Deploying"
        else:
            phase = "Ready"
        _set_phase(s, phase, message)
        plan.requeue_after = DEPLOYING_POLL if phase == "Deploying" else None
    elif health.failed_reason is not None and health.current and not rolling:
        s.condition("Ready", "False", health.failed_reason, problem or health.failed_reason)
        _set_phase(s, "Failed", problem or health.failed_reason)
        plan.requeue_after = None
    elif health.kuberay_reason == "ZeroServeEndpoints" or s.old.get("phase") in (
        "Ready",
        "Degraded",
    ):
        message = (
            f"no serve endpoints: {problem}"
            if problem
            else f"no serve endpoints answer (KubeRay: {health.kuberay_reason or 'not ready'})"
        )
        s.condition("Ready", "False", "NoServeEndpoints", message)
        _set_phase(s, "Degraded", message)
        plan.requeue_after = DEPLOYING_POLL
    else:
        message = "waiting for KubeRay to serve the application"
        if health.kuberay_reason:
            message += f" (KubeRay: {health.kuberay_reason})"
        if problem:
            message += f"; {problem}"
        if user_problem:
            message += f"; {user_problem}"
        s.condition("Ready", "Unknown", "Deploying", message)
        _set_phase(s, "Deploying", message)
        plan.requeue_after = DEPLOYING_POLL
    if isinstance(model, Unresolved) and model.transient:
        plan.requeue_after = min(plan.requeue_after or RETRY_SECONDS, RETRY_SECONDS)
    plan.events = s.events
    return plan


def _finish(s: _Status, plan: Plan, phase: Phase, ready: str, reason: str, message: str) -> Plan:
    s.condition("Ready", ready, reason, message)
    _set_phase(s, phase, message)
    plan.events = s.events
    return plan
