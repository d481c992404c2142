"""MLflow, as the operator uses it: one run per TrainingJob, registration, alias lookups.

Everything here is found by what it is, never trusted from memory alone: the run by the
TrainingJob's uid tag (the ``runId`` the status remembers is verified with one ``get_run``;
without it, the search is in the job's own experiment, never across "all" experiments, which
MLflow pages), the registered version by its run. So a restart or a retry after any partial
failure finds what exists instead of creating a second run or version. MLflow errors surface
as :class:`RegistryUnavailable` (worth retrying) or :class:`RegistryError` (a clear, permanent
answer such as an unknown alias or a refused permission).

:func:`observe_trainingjob`, :func:`act_trainingjob` and :func:`trainingjob_rounds` are the
TrainingJob's MLflow port and rounds for both platforms (the Kopf handler and the local
runner): what to read each round, and carrying out the plan's MLflow step with its outcome fed
back to the pure core, so an outage or a refusal is written to status instead of being raised
past it.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from mlplane.crds import TrainingJob, TrainingJobStatus
from mlplane.monitoring.notice import (
    TAG_NOTICE_CHECKPOINT_STEP,
    TAG_NOTICE_CHECKPOINT_URI,
    TAG_NOTICE_ID,
)
from mlplane.operator.config import OperatorConfig
from mlplane.operator.reconcile.modeldeployment import Unresolved
from mlplane.operator.reconcile.notice import NoticeDelivery
from mlplane.operator.reconcile.trainingjob import (
    Observed,
    ObservedRun,
    Plan,
    Registration,
    experiment_name,
    reconcile,
)

#: Tags mlplane writes on runs and model versions.
TAG_UID = "mlplane.trainingjob.uid"
TAG_TRAININGJOB = "mlplane.trainingjob"
#: Tags the training runtime writes as it checkpoints (see ``mlplane.training``).
TAG_CHECKPOINT_URI = "mlplane.checkpoint.uri"
TAG_CHECKPOINT_STEP = "mlplane.checkpoint.step"
TAG_CHECKPOINT_TIME = "mlplane.checkpoint.time"
#: Written with the checkpoint tags (same call): C, and the interval the attempt uses.
TAG_CHECKPOINT_WRITE_SECONDS = "mlplane.checkpoint.write_seconds"
TAG_CHECKPOINT_INTERVAL_SECONDS = "mlplane.checkpoint.interval_seconds"
TAG_CHECKPOINT_INTERVAL_ATTEMPT = "mlplane.checkpoint.interval_attempt"

# mlflow.register_model resolves `runs:/` URIs (MLflow 3 logged models included) but only
# through the process-wide tracking URI; registrations are rare, so they take turns.
_GLOBAL_URI = threading.Lock()


@contextmanager
def process_uris(uri: str) -> Iterator[None]:
    """MLflow's process-wide tracking and registry URIs set to ``uri``, then exactly as before
    (the active experiment too).

    Also for tests and tools that log through MLflow's fluent API: restoring by hand with
    ``set_registry_uri(get_registry_uri())`` pins a stale registry for every later caller.

    ``set_*_uri(get_*_uri())`` would not restore them: it pins the resolved defaults, and
    exports them as ``MLFLOW_TRACKING_URI``/``MLFLOW_REGISTRY_URI`` to every later client and
    subprocess of this process. So the module globals and the two variables are put back as
    they were (``mlflow`` is pinned to 3.17 in pyproject.toml; these are its names).
    """
    import mlflow
    from mlflow.tracking import fluent
    from mlflow.tracking._model_registry import utils as registry_utils
    from mlflow.tracking._tracking_service import utils as tracking_utils

    names = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")
    with _GLOBAL_URI:
        saved = tracking_utils._tracking_uri, registry_utils._registry_uri
        # ``set_experiment`` inside the block is about that server: it must not outlive it.
        saved_experiment = fluent._active_experiment_id
        saved_env = {name: os.environ.get(name) for name in names}
        mlflow.set_tracking_uri(uri)
        mlflow.set_registry_uri(uri)
        try:
            yield
        finally:
            # None (nothing was set) is what was saved and what set_tracking_uri restores.
            mlflow.set_tracking_uri(saved[0])  # type: ignore[arg-type]
            registry_utils._registry_uri = saved[1]
            fluent._active_experiment_id = saved_experiment
            for name, value in saved_env.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value


def _number(text: str | None) -> float | None:
    """A non-negative number tag; anything else (a hand-edited tag) is as if absent."""
    try:
        value = float(text) if text else None
    except ValueError:
        return None
    return value if value is not None and value >= 0 and value == value else None


def _whole(text: str | None) -> int | None:
    return int(text) if text and text.isdigit() else None


class RegistryError(RuntimeError):
    """MLflow answered, and the answer is no (unknown model or alias, bad request)."""


class RegistryUnavailable(RuntimeError):
    """MLflow could not be reached or failed: worth trying again later."""


@dataclass(frozen=True)
class ResolvedModel:
    name: str
    version: int
    run_id: str | None
    source: str | None


#: MLflow's answers that retrying will not change: a bad request, something that does not exist,
#: no permission (401/403: an administrator must act; the operator asks again each round).
_REFUSALS = (400, 401, 403, 404)


def _classify(exc: Exception, what: str) -> Exception:
    from mlflow.exceptions import MlflowException

    if isinstance(exc, MlflowException) and exc.get_http_status_code() in _REFUSALS:
        return RegistryError(f"{what}: {exc.message}")
    return RegistryUnavailable(f"{what}: {exc}")


def bound_http_calls(timeout: float) -> None:
    """Every MLflow HTTP call of this process: one try, at most ``timeout`` seconds.

    MLflow's client retries for minutes by default (7 retries, exponential backoff, 120 s per
    request), and a reconcile blocked there holds its thread: other objects wait, and the
    operator cannot stop until it returns. The operator's own loop is the retry (Kopf's
    TemporaryError, the runner's next pass), so a call fails fast instead. MLflow reads these
    settings from the environment at each call; they are process-wide, which suits the
    operator (it is the only MLflow client in its process).
    """
    os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = "0"
    os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] = str(max(1, round(timeout)))


def _no_such(exc: Exception) -> bool:
    """MLflow says the thing asked for does not exist (or the request names none)."""
    from mlflow.exceptions import MlflowException

    return isinstance(exc, MlflowException) and exc.get_http_status_code() in (400, 404)


class Registry:
    """One MLflow tracking server (and its model registry)."""

    def __init__(self, tracking_uri: str, *, timeout: float | None = None) -> None:
        from mlflow.tracking import MlflowClient

        if timeout is None:
            timeout = OperatorConfig.from_env().mlflow_timeout
        bound_http_calls(timeout)
        self.tracking_uri = tracking_uri
        self.client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
        self._flavors: dict[tuple[str, int], dict[str, Any] | None] = {}

    # --- TrainingJob runs ----------------------------------------------------------------------

    def _find_run(self, uid: str, experiment: str, run_id: str | None = None) -> Any | None:
        """The TrainingJob's run: ``run_id`` if it is really this uid's, else searched by the uid
        tag in ``experiment`` (one request each, however many experiments MLflow holds)."""
        if run_id:
            try:
                run = self.client.get_run(run_id)
            except Exception as exc:
                if not _no_such(exc):
                    raise
                run = None
            if (
                run is not None
                and run.data.tags.get(TAG_UID) == uid
                and run.info.lifecycle_stage == "active"
            ):
                return run
        found = self.client.get_experiment_by_name(experiment)
        if found is None:
            return None
        runs = self.client.search_runs(
            experiment_ids=[found.experiment_id],
            filter_string=f"tags.`{TAG_UID}` = '{uid}'",
            max_results=1,
        )
        return runs[0] if runs else None

    def _experiment_id(self, name: str) -> str:
        from mlflow.exceptions import MlflowException

        found = self.client.get_experiment_by_name(name)
        if found is not None:
            return str(found.experiment_id)
        try:
            return str(self.client.create_experiment(name))
        except MlflowException:
            found = self.client.get_experiment_by_name(name)  # created meanwhile by another
            if found is None:
                raise
            return str(found.experiment_id)

    def ensure_run(
        self, experiment: str, uid: str, trainingjob: str, *, run_id: str | None = None
    ) -> str:
        """The run of this TrainingJob, created (once) in ``experiment`` if there is none."""
        try:
            run = self._find_run(uid, experiment, run_id)
            if run is not None:
                return str(run.info.run_id)
            experiment_id = self._experiment_id(experiment)
            created = self.client.create_run(
                experiment_id,
                tags={TAG_UID: uid, TAG_TRAININGJOB: trainingjob},
                run_name=trainingjob.replace("/", "-"),
            )
            return str(created.info.run_id)
        except (RegistryError, RegistryUnavailable):
            raise
        except Exception as exc:  # MLflow raises many types; all mean "try again" or "no"
            raise _classify(exc, f"MLflow at {self.tracking_uri}") from None

    def observe_run(
        self,
        uid: str,
        model: str | None,
        *,
        experiment: str,
        alias: str | None = None,
        run_id: str | None = None,
    ) -> ObservedRun | None:
        """What training reported on the run, the version registered from it, and where
        ``alias`` points now (asked only once a version is registered)."""
        try:
            run = self._find_run(uid, experiment, run_id)
            if run is None:
                return None
            tags = run.data.tags
            step = tags.get(TAG_CHECKPOINT_STEP)
            registered = alias_version = None
            if model:
                versions = self.client.search_model_versions(
                    f"name = '{model}' and run_id = '{run.info.run_id}'"
                )
                if versions:
                    registered = str(min(int(v.version) for v in versions))
            if registered is not None and alias:
                alias_version = self._alias_version(model or "", alias)
            return ObservedRun(
                run_id=str(run.info.run_id),
                checkpoint_uri=tags.get(TAG_CHECKPOINT_URI),
                checkpoint_step=int(step) if step and step.isdigit() else None,
                checkpoint_time=tags.get(TAG_CHECKPOINT_TIME),
                registered_version=registered,
                alias_version=alias_version,
                checkpoint_write_seconds=_number(tags.get(TAG_CHECKPOINT_WRITE_SECONDS)),
                checkpoint_interval_seconds=_number(tags.get(TAG_CHECKPOINT_INTERVAL_SECONDS)),
                checkpoint_interval_attempt=_whole(tags.get(TAG_CHECKPOINT_INTERVAL_ATTEMPT)),
                notice_id=tags.get(TAG_NOTICE_ID),
                notice_checkpoint_uri=tags.get(TAG_NOTICE_CHECKPOINT_URI),
                notice_checkpoint_step=_whole(tags.get(TAG_NOTICE_CHECKPOINT_STEP)),
            )
        except Exception as exc:
            raise _classify(exc, f"MLflow at {self.tracking_uri}") from None

    def _alias_version(self, model: str, alias: str) -> str | None:
        """The version ``alias`` points at, None when it is not set (MLflow answers 400/404)."""
        try:
            return str(self.client.get_model_version_by_alias(model, alias).version)
        except Exception as exc:
            if _no_such(exc):
                return None
            raise

    def register(self, registration: Registration) -> str:
        """Register the run's model (once) and set the alias; return the version."""
        import mlflow

        try:
            existing = self.client.search_model_versions(
                f"name = '{registration.model}' and run_id = '{registration.run_id}'"
            )
            if existing:
                version = str(min(int(v.version) for v in existing))
            else:
                with process_uris(self.tracking_uri):
                    try:
                        created = mlflow.register_model(
                            registration.source,
                            registration.model,
                            tags={TAG_UID: registration.trainingjob_uid},
                        )
                    except Exception as exc:
                        # MLflow 3 answers a run without a logged model with a client-side
                        # INTERNAL_ERROR; it is the training code's omission, not an outage.
                        if "Unable to find a logged_model" in str(exc):
                            raise RegistryError(
                                f"registering {registration.model}: run {registration.run_id} "
                                f"has no model logged at artifact path 'model' (the training "
                                f"code must log one, e.g. TrainingSession.log_model): {exc}"
                            ) from None
                        raise
                version = str(created.version)
            if registration.alias:
                self.client.set_registered_model_alias(
                    registration.model, registration.alias, version
                )
            return version
        except RegistryError:
            raise
        except Exception as exc:
            raise _classify(exc, f"registering {registration.model}") from None

    # --- model lookups -------------------------------------------------------------------------

    def resolve(
        self, name: str, *, alias: str | None = None, version: int | None = None
    ) -> ResolvedModel:
        """The version an alias points at now (or check a pinned version exists)."""
        try:
            if alias is not None:
                found = self.client.get_model_version_by_alias(name, alias)
            else:
                found = self.client.get_model_version(name, str(version))
        except Exception as exc:
            what = f"model {name!r} " + (f"alias {alias!r}" if alias else f"version {version}")
            raise _classify(exc, what) from None
        return ResolvedModel(name, int(found.version), found.run_id, found.source)

    def model_flavors(self, name: str, version: int) -> dict[str, Any] | None:
        """The ``flavors`` of a model version's ``MLmodel`` file (None: the file has none).

        Only that small file is downloaded. Kept per version for the client's life (a
        version's files do not change in normal use; the serving app checks its own copy
        again before loading, so a file changed later is still caught).
        """
        key = (name, int(version))
        cache = self._flavors
        if key in cache:
            return cache[key]
        import tempfile
        from pathlib import Path

        import mlflow.artifacts
        import yaml

        what = f"the MLmodel file of {name!r} version {version}"
        try:
            where = self.client.get_model_version_download_uri(name, str(version))
            with tempfile.TemporaryDirectory(prefix="mlplane-mlmodel-") as tmp:
                path = mlflow.artifacts.download_artifacts(
                    artifact_uri=f"{str(where).rstrip('/')}/MLmodel",
                    dst_path=tmp,
                    tracking_uri=self.tracking_uri,
                )
                text = Path(path).read_text()
        except Exception as exc:
            raise _classify(exc, what) from None
        try:
            parsed = yaml.safe_load(text)
        except yaml.YAMLError:
            parsed = None
        flavors = parsed.get("flavors") if isinstance(parsed, dict) else None
        cache[key] = flavors if isinstance(flavors, dict) else None
        return cache[key]

    def set_alias(self, name: str, alias: str, version: int) -> None:
        """Point ``alias`` at ``version`` (what an ABTest's promotion does)."""
        try:
            self.client.set_registered_model_alias(name, alias, str(version))
        except Exception as exc:
            raise _classify(exc, f"moving alias {alias!r} of {name!r}") from None


# --- the TrainingJob's MLflow port (both platforms) ---------------------------------------------


@dataclass(frozen=True)
class RunLook:
    """One round's look at the TrainingJob's run: the run, or why MLflow gave no answer."""

    run: ObservedRun | None = None
    unavailable: str | None = None
    refused: str | None = None


def observe_trainingjob(registry: Registry | None, tj: TrainingJob, uid: str) -> RunLook:
    """Read the run of ``tj`` (a parsed TrainingJob): by the ``runId`` its status remembers,
    else in its own experiment; with the alias lookup its spec asks for.

    ``registry`` None: the registry policy holds the job (``policy_refusal``), nothing is read.
    """
    if registry is None:
        return RunLook()
    run_id = tj.status.mlflow.run_id if tj.status and tj.status.mlflow else None
    try:
        run = registry.observe_run(
            uid, tj.spec.mlflow.registered_model, experiment=experiment_name(tj),
            alias=tj.spec.mlflow.alias, run_id=run_id,
        )  # fmt: skip
    except RegistryUnavailable as exc:
        return RunLook(unavailable=str(exc))
    except RegistryError as exc:
        return RunLook(refused=str(exc))
    return RunLook(run=run)


@dataclass(frozen=True)
class Outcome:
    """What carrying out a plan's MLflow step gave: a write landed (look again), or why not."""

    wrote: bool = False
    unavailable: str | None = None
    refused: str | None = None


def act_trainingjob(registry: Registry | None, tj: TrainingJob, uid: str, plan: Plan) -> Outcome:
    """Create the run or register, as ``plan`` asks; never raises for MLflow's answers.

    The caller feeds a failed outcome into the next reconcile (``Observed.registry_error`` /
    ``registry_refused``), so the status says what happened: an exception raised here would
    leave the job with no condition at all.
    """
    namespace, name = tj.metadata.namespace or "default", tj.metadata.name
    if registry is None:  # held by the registry policy: the plan asks nothing of MLflow
        return Outcome()
    try:
        if plan.ensure_run:
            run_id = tj.status.mlflow.run_id if tj.status and tj.status.mlflow else None
            registry.ensure_run(experiment_name(tj), uid, f"{namespace}/{name}", run_id=run_id)
            return Outcome(wrote=True)
        if plan.register is not None:
            registry.register(plan.register)
            return Outcome(wrote=True)
    except RegistryUnavailable as exc:
        return Outcome(unavailable=str(exc))
    except RegistryError as exc:
        return Outcome(refused=str(exc))
    return Outcome()


def trainingjob_rounds(
    tj: TrainingJob,
    uid: str,
    now: datetime,
    config: OperatorConfig,
    registry: Registry | None,
    *,
    observe: Callable[[TrainingJob], Observed],
    act: Callable[[TrainingJob, Plan], None],
    deliver: Callable[[NoticeDelivery], str | None] | None = None,
) -> tuple[TrainingJob, Plan, Observed]:
    """Observe, reconcile, act; again after an MLflow write (to see it) or its failure (to
    write it into status). Both platforms run this; they differ only in ``observe`` (attempts,
    disruption evidence, and :func:`observe_trainingjob`) and ``act`` (children, events).

    ``deliver`` writes a reclaim notice the plan carries (``reconcile/notice.py``) where the
    attempt reads it and returns None, or why it could not; tried once per call, its outcome
    goes into one more round so the status records the delivery (or its failure) at once.

    Returns the job with its new status, the last plan and what it was planned from. At most
    five rounds: create the run, start attempt 1; or register, then see it (or its failure);
    and a notice delivery.
    """
    observed = observe(tj)
    tried_notice = False
    for _ in range(5):
        plan = reconcile(tj, observed, now, config, uid=uid)
        act(tj, plan)
        outcome = act_trainingjob(registry, tj, uid, plan)
        tj = tj.model_copy(update={"status": TrainingJobStatus.model_validate(plan.status)})
        again = True
        if outcome.unavailable or outcome.refused:
            observed = replace(
                observed, registry_error=outcome.unavailable, registry_refused=outcome.refused
            )
        elif outcome.wrote:
            observed = observe(tj)
        else:
            again = False
        if plan.notice is not None and deliver is not None and not tried_notice:
            tried_notice = again = True
            error = deliver(plan.notice)
            observed = replace(observed, notice_delivered=None if error else plan.notice.id,
                               notice_error=error)  # fmt: skip
        if not again:
            break
    return tj, plan, observed


_REGISTRIES: dict[str, Registry] = {}
_REGISTRIES_GUARD = threading.Lock()


def registry_for(tracking_uri: str, *, timeout: float | None = None) -> Registry:
    """One client per MLflow server for the process' life: a client per look is costly (with a
    SQLite store, each new client builds a SQLAlchemy engine and checks the schema).

    ``timeout``: the operator's ``MLPLANE_MLFLOW_TIMEOUT`` as read at its start (None: read
    from the environment now, for one-shot commands)."""
    with _REGISTRIES_GUARD:
        if tracking_uri not in _REGISTRIES:
            _REGISTRIES[tracking_uri] = Registry(tracking_uri, timeout=timeout)
        return _REGISTRIES[tracking_uri]


def _said_no(exc: Exception) -> bool:
    from mlflow.exceptions import MlflowException

    return isinstance(exc, MlflowException) and exc.get_http_status_code() in (400, 404)


def resolve_model(registry: Registry, ref: Any) -> ResolvedModel | Unresolved:
    """The version a ModelDeployment's ``spec.model`` (``ref``) names now, or why there is none.

    When MLflow says no, a second question (does the registered model exist?) tells
    ``ModelNotFound`` from ``AliasNotFound``/``VersionNotFound``; both platforms use this.
    """
    where = f"MLflow at {registry.tracking_uri}"
    try:
        return registry.resolve(ref.name, alias=ref.alias, version=ref.version)
    except RegistryUnavailable as exc:
        return Unresolved("RegistryUnavailable", f"{where} cannot be reached: {exc}")
    except RegistryError as exc:
        answer = str(exc)
    try:
        registry.client.get_registered_model(ref.name)
    except Exception as exc:
        if _said_no(exc):
            return Unresolved(
                "ModelNotFound", f"registered model {ref.name!r} does not exist in {where}"
            )
        return Unresolved("RegistryUnavailable", f"{where} cannot be reached: {exc}")
    if ref.alias is not None:
        return Unresolved(
            "AliasNotFound",
            f"registered model {ref.name!r} has no alias {ref.alias!r} in {where} ({answer}); "
            "set it (MlflowClient().set_registered_model_alias) and the deployment follows",
        )
    return Unresolved(
        "VersionNotFound",
        f"registered model {ref.name!r} has no version {ref.version} in {where} ({answer})",
    )


def flavors_of(
    registry: Registry, name: str, versions: tuple[int, ...]
) -> tuple[dict[int, dict[str, Any] | None], Unresolved | None]:
    """The ``MLmodel`` flavors of the versions to serve, for the policy check in the core.

    A version whose file MLflow says is not there gets None (the core refuses it: unknown is
    unsafe); MLflow unreachable gives ``RegistryUnavailable`` (retried).
    """
    found: dict[int, dict[str, Any] | None] = {}
    for version in sorted(set(versions)):
        try:
            found[version] = registry.model_flavors(name, version)
        except RegistryError:
            found[version] = None
        except RegistryUnavailable as exc:
            where = f"MLflow at {registry.tracking_uri}"
            return found, Unresolved("RegistryUnavailable", f"{where} cannot be reached: {exc}")
    return found, None
