"""The one MLflow run of a TrainingJob: resumed by id, progress as tags, model and profile.

MLflow is the operator's only window into a job running on Kubernetes, so everything it needs
is written here in a fixed shape (the package docstring lists it). Design points:

* :class:`RunReporter` is a tiny picklable value (tracking URI + run id) that builds its
  ``MlflowClient`` lazily in whatever process uses it: the driver, a Ray task on a spot node, or
  Ray Train's controller. No process relies on MLflow's global "active run", which does not
  cross process boundaries and whose ``end_run`` would flip the run's status behind our back.
* Each report is one ``log_batch`` call (metrics + the ``mlplane.step`` tag), so progress costs
  one request per step whatever the number of metrics.
* The runtime never registers a model: the operator registers ``runs:/<run_id>/model`` once the
  RayJob succeeded, exactly once per TrainingJob.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from typing import TYPE_CHECKING, Any

from mlplane.monitoring.profile import PROFILE_ARTIFACT_PATH, Profile, build_profile
from mlplane.training.context import TrainingContext, rfc3339

if TYPE_CHECKING:
    from mlflow import MlflowClient

log = logging.getLogger(__name__)

MODEL_ARTIFACT_PATH = "model"
TAG_ATTEMPT = "mlplane.attempt"
TAG_TRAININGJOB = "mlplane.trainingjob"
TAG_TRAININGJOB_UID = "mlplane.trainingjob.uid"
TAG_CHECKPOINT_URI = "mlplane.checkpoint.uri"
TAG_CHECKPOINT_STEP = "mlplane.checkpoint.step"
TAG_CHECKPOINT_TIME = "mlplane.checkpoint.time"
#: C (running mean of the checkpoint write time) and the interval in use, with its attempt.
TAG_CHECKPOINT_WRITE_SECONDS = "mlplane.checkpoint.write_seconds"
TAG_CHECKPOINT_INTERVAL_SECONDS = "mlplane.checkpoint.interval_seconds"
TAG_CHECKPOINT_INTERVAL_ATTEMPT = "mlplane.checkpoint.interval_attempt"
TAG_STEP = "mlplane.step"
TAG_RESUMED_FROM = "mlplane.resumed_from_step"
#: Metric (one point per restore) recording the step each (re)start resumed from: its history
#: tells how many steps were repeated after a worker loss or a new attempt.
METRIC_RESUMED_FROM = "mlplane.resumed_from_step"
DEFAULT_EXPERIMENT = "Default"
#: MLflow rejects tag values beyond 8000 characters (5000 in older stores); stay well below.
_MAX_TAG = 4000


@lru_cache(maxsize=8)
def _client(tracking_uri: str | None) -> MlflowClient:
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=tracking_uri)


def _finite_metrics(metrics: Mapping[str, Any]) -> dict[str, float]:
    """Numbers only (bools and NaN/inf dropped: MLflow stores NaN but plots it as a gap)."""
    out: dict[str, float] = {}
    for key, value in metrics.items():
        if isinstance(value, bool) or getattr(getattr(value, "dtype", None), "kind", "") == "b":
            continue
        if not isinstance(value, int | float):
            try:
                value = float(value)  # numpy and torch scalars
            except (TypeError, ValueError):
                continue
        if math.isfinite(value):
            out[str(key)] = float(value)
    return out


@dataclass(frozen=True)
class RunReporter:
    """Writes to one MLflow run from any process (picklable: it holds two strings)."""

    run_id: str
    tracking_uri: str | None = None

    @property
    def client(self) -> MlflowClient:
        return _client(self.tracking_uri)

    def log_metrics(
        self, step: int, metrics: Mapping[str, Any], *, timestamp_ms: int | None = None
    ) -> None:
        """Metrics of one step, plus the ``mlplane.step`` progress tag, in one request."""
        from mlflow.entities import Metric, RunTag

        ts = timestamp_ms if timestamp_ms is not None else int(time.time() * 1000)
        values = _finite_metrics(metrics)
        self.client.log_batch(
            self.run_id,
            metrics=[Metric(k, v, ts, int(step)) for k, v in values.items()],
            tags=[RunTag(TAG_STEP, str(int(step)))],
        )

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        from mlflow.entities import RunTag

        self.client.log_batch(
            self.run_id, tags=[RunTag(str(k), str(v)[:_MAX_TAG]) for k, v in tags.items()]
        )

    def log_params(self, params: Mapping[str, Any]) -> None:
        """Log params; a value that differs from an earlier attempt's is kept as it was.

        MLflow params are immutable. A later attempt re-logging the same values is a no-op;
        one whose values changed (someone edited the entrypoint between attempts) keeps the
        first attempt's values and says so in the log instead of failing the attempt.
        """
        from mlflow.entities import Param
        from mlflow.exceptions import MlflowException

        existing = self.client.get_run(self.run_id).data.params
        fresh = []
        for key, value in params.items():
            text = str(value)[:_MAX_TAG]
            if key in existing:
                if existing[key] != text:
                    log.warning(
                        "param %s=%r differs from the run's %r; keeping the first value",
                        key, text, existing[key],
                    )  # fmt: skip
                continue
            fresh.append(Param(str(key), text))
        if fresh:
            try:
                self.client.log_batch(self.run_id, params=fresh)
            except MlflowException as exc:  # a concurrent writer logged one first
                log.warning("some params were not logged: %s", exc)

    def checkpoint_saved(
        self,
        uri: str,
        step: int,
        when: str | datetime | None = None,
        *,
        extra: Mapping[str, str] | None = None,
    ) -> None:
        """The progress tags the operator polls: where the newest checkpoint is, its step, time
        (and ``extra``, e.g. the write time and interval, in the same request)."""
        stamp = when if isinstance(when, str) else rfc3339(when)
        self.set_tags(
            {
                TAG_CHECKPOINT_URI: uri,
                TAG_CHECKPOINT_STEP: str(int(step)),
                TAG_CHECKPOINT_TIME: stamp,
                **(extra or {}),
            }
        )

    def resumed(self, step: int) -> None:
        """Record a restore: the tag (latest) and a metric point (every restore)."""
        ts = int(time.time() * 1000)
        from mlflow.entities import Metric, RunTag

        self.client.log_batch(
            self.run_id,
            metrics=[Metric(METRIC_RESUMED_FROM, float(step), ts, int(step))],
            tags=[RunTag(TAG_RESUMED_FROM, str(int(step)))],
        )

    def log_reference_profile(
        self, frame: Any, *, metadata: Mapping[str, Any] | None = None, **options: Any
    ) -> Profile:
        """Profile the training features and log it at ``mlplane/reference_profile.json``.

        ``frame`` holds the model's input features only (no label): the serving drift tap
        compares live requests, which carry no label, against it. ``options`` go to
        :func:`mlplane.monitoring.profile.build_profile` (``bins``, ``categorical``, ...).
        """
        meta = {"run_id": self.run_id, "created": rfc3339(), **dict(metadata or {})}
        profile = build_profile(frame, metadata=meta, **options)
        self.client.log_text(self.run_id, profile.to_json(indent=1), PROFILE_ARTIFACT_PATH)
        return profile

    def log_model(
        self,
        flavor: Any,
        model: Any,
        *,
        input_example: Any,
        predict: Any | None = None,
        **kwargs: Any,
    ) -> Any:
        """Log ``model`` with a signature at the run's ``model`` path; returns MLflow's ModelInfo.

        ``flavor`` is an MLflow flavor module (``mlflow.sklearn``, ``mlflow.pytorch``). The
        signature is inferred from ``input_example`` and ``predict(input_example)`` (default:
        ``model.predict``). In MLflow 3 the files live in a LoggedModel linked to this run
        (``source_run_id``) and ``runs:/<run_id>/model`` resolves to it, which is what the
        operator registers. Pass ``pip_requirements`` to skip MLflow's slow requirement
        inference, which imports the model in a subprocess.
        """
        import mlflow
        from mlflow.models import infer_signature

        if self.tracking_uri:
            mlflow.set_tracking_uri(self.tracking_uri)
        # MLflow 3 creates the LoggedModel in the *active* experiment, not the run's, unless a
        # run is active; ``runs:/<id>/model`` only resolves when they match. Activating the
        # run's experiment (rather than the run, whose ``end_run`` would set its status) does it.
        mlflow.set_experiment(experiment_id=self.client.get_run(self.run_id).info.experiment_id)
        predict = predict or model.predict
        signature = kwargs.pop("signature", None) or infer_signature(
            input_example, predict(input_example)
        )
        return flavor.log_model(
            model,
            name=MODEL_ARTIFACT_PATH,
            signature=signature,
            input_example=input_example,
            run_id=self.run_id,
            **kwargs,
        )

    def finish(self, status: str = "FINISHED") -> None:
        """Mark the run FINISHED (or FAILED); a later attempt sets it RUNNING again."""
        self.client.set_terminated(self.run_id, status=status)


def _experiment_id(client: MlflowClient, name: str) -> str:
    from mlflow.exceptions import MlflowException

    found = client.get_experiment_by_name(name)
    if found is not None:
        if found.lifecycle_stage == "deleted":
            client.restore_experiment(found.experiment_id)
        return found.experiment_id
    try:
        return client.create_experiment(name)
    except MlflowException:  # created concurrently by another process
        again = client.get_experiment_by_name(name)
        if again is None:
            raise
        return again.experiment_id


def open_run(ctx: TrainingContext) -> RunReporter:
    """Resume the TrainingJob's run (``MLFLOW_RUN_ID``), or create one for a hand-run script.

    Either way the run is set RUNNING and tagged with the attempt number, so the operator (and
    a human in the MLflow UI) sees which attempt is writing.
    """
    client = _client(ctx.tracking_uri)
    if ctx.run_id:
        run = client.get_run(ctx.run_id)  # fails loudly when the operator's run is gone
        run_id = run.info.run_id
        if run.info.status != "RUNNING":
            client.update_run(run_id, status="RUNNING")
    else:
        experiment = ctx.experiment or DEFAULT_EXPERIMENT
        run = client.create_run(_experiment_id(client, experiment), run_name=ctx.run_name)
        run_id = run.info.run_id
    tags: dict[str, str] = {TAG_ATTEMPT: str(ctx.attempt)}
    if ctx.trainingjob:
        tags[TAG_TRAININGJOB] = ctx.trainingjob
    if ctx.trainingjob_uid:
        tags[TAG_TRAININGJOB_UID] = ctx.trainingjob_uid
    reporter = RunReporter(run_id=run_id, tracking_uri=ctx.tracking_uri)
    reporter.set_tags(tags)
    return reporter
