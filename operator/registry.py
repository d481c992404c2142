"""MLflow, as the operator uses it: one run per TrainingJob, registration, alias lookups.

Everything here is found by what it is, never remembered: the run by the TrainingJob's uid tag,
the registered version by its run. So a restart or a retry after any partial failure finds
what exists instead of creating a second run or version. MLflow errors surface as
:class:`RegistryUnavailable` (worth retrying) or :class:`RegistryError` (a clear, permanent
answer such as an unknown alias).
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from typing import Any

from mlplane.operator.config import OperatorConfig
from mlplane.operator.reconcile.modeldeployment import Unresolved
from mlplane.operator.reconcile.trainingjob import ObservedRun, Registration

#: Tags mlplane writes on runs and model versions.
TAG_UID = "mlplane.trainingjob.uid"
TAG_TRAININGJOB = "mlplane.trainingjob"
#: Tags the training runtime writes as it checkpoints (see ``mlplane.training``).
TAG_CHECKPOINT_URI = "mlplane.checkpoint.uri"
TAG_CHECKPOINT_STEP = "mlplane.checkpoint.step"
TAG_CHECKPOINT_TIME = "mlplane.checkpoint.time"

# mlflow.register_model resolves `runs:/` URIs (MLflow 3 logged models included) but only
# through the process-wide tracking URI; registrations are rare, so they take turns.
_GLOBAL_URI = threading.Lock()


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


def _classify(exc: Exception, what: str) -> Exception:
    from mlflow.exceptions import MlflowException

    if isinstance(exc, MlflowException) and exc.get_http_status_code() in (400, 404):
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

    def _find_run(self, uid: str) -> Any | None:
        runs = self.client.search_runs(
            experiment_ids=[e.experiment_id for e in self.client.search_experiments()],
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

    def ensure_run(self, experiment: str, uid: str, trainingjob: str) -> str:
        """The run of this TrainingJob, created (once) in ``experiment`` if there is none."""
        try:
            run = self._find_run(uid)
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

    def observe_run(self, uid: str, model: str | None) -> ObservedRun | None:
        """What training reported on the run, and the version registered from it, if any."""
        try:
            run = self._find_run(uid)
            if run is None:
                return None
            tags = run.data.tags
            step = tags.get(TAG_CHECKPOINT_STEP)
            registered = None
            if model:
                versions = self.client.search_model_versions(
                    f"name = '{model}' and run_id = '{run.info.run_id}'"
                )
                if versions:
                    registered = str(min(int(v.version) for v in versions))
            return ObservedRun(
                run_id=str(run.info.run_id),
                checkpoint_uri=tags.get(TAG_CHECKPOINT_URI),
                checkpoint_step=int(step) if step and step.isdigit() else None,
                checkpoint_time=tags.get(TAG_CHECKPOINT_TIME),
                registered_version=registered,
            )
        except Exception as exc:
            raise _classify(exc, f"MLflow at {self.tracking_uri}") from None

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
                with _GLOBAL_URI:
                    previous = mlflow.get_tracking_uri(), mlflow.get_registry_uri()
                    mlflow.set_tracking_uri(self.tracking_uri)
                    mlflow.set_registry_uri(self.tracking_uri)
                    try:
                        created = mlflow.register_model(
                            registration.source,
                            registration.model,
                            tags={TAG_UID: registration.trainingjob_uid},
                        )
                    finally:
                        mlflow.set_tracking_uri(previous[0])
                        mlflow.set_registry_uri(previous[1])
                version = str(created.version)
            if registration.alias:
                self.client.set_registered_model_alias(
                    registration.model, registration.alias, version
                )
            return version
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


_REGISTRIES: dict[str, Registry] = {}
_REGISTRIES_GUARD = threading.Lock()


def registry_for(tracking_uri: str) -> Registry:
    """One client per MLflow server for the process' life: a client per look is costly (with a
    SQLite store, each new client builds a SQLAlchemy engine and checks the schema)."""
    with _REGISTRIES_GUARD:
        if tracking_uri not in _REGISTRIES:
            _REGISTRIES[tracking_uri] = Registry(tracking_uri)
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
