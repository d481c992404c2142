"""Ray Train wiring: storage, restore, failure budget and MLflow progress from the contract.

Ray 2.60 runs Ray Train V2 by default (``RAY_TRAIN_V2_ENABLED`` unset means on). How V2
restores, and why these settings give both kinds of resume the design asks for:

* **Worker loss inside an attempt** (a spot node preempted while the RayJob's head lives on):
  the controller sees the worker group fail, and while ``FailureConfig(max_failures)`` allows
  it, starts a new group; every worker's ``ray.train.get_checkpoint()`` then returns the newest
  checkpoint reported so far. KubeRay meanwhile replaces the pod.
* **A new attempt** (a new RayJob, hence a new Ray cluster and controller): V2's checkpoint
  manager writes a snapshot of the reported checkpoints under ``<storage_path>/<name>/`` after
  every report, and a controller started with the same ``storage_path`` and ``name`` loads it,
  so ``get_checkpoint()`` again returns the newest checkpoint. Hence ``name`` is stable per
  TrainingJob (:attr:`TrainingContext.run_name`) and ``storage_path`` is the TrainingJob's
  checkpoint URI. A checkpoint is in the snapshot only once its upload finished, so an upload
  cut by a preemption is never the one resumed from. The operator scopes that URI by the
  TrainingJob's uid (``<checkpoint.uri>/<uid>``), so a new TrainingJob of the same name
  (deleted and applied again, or a retraining from the same template) finds no snapshot and
  starts fresh.
* **A warm start** (``spec.checkpoint.resumeFrom``, :func:`warm_start_checkpoint`): Ray Train
  V2 dropped ``resume_from_checkpoint``, so the loop restores it itself when
  ``ray.train.get_checkpoint()`` returns None (the job has no checkpoint of its own yet).
* ``CheckpointConfig(num_to_keep=keep)``: Ray deletes older checkpoints, after writing the
  snapshot that no longer lists them.

Progress reaches MLflow through :class:`MlflowProgressCallback`, a Ray Train ``UserCallback``
run by the controller (on the driver's node, i.e. the on-demand head) after each report; the
checkpoint manager processes the same report first, so the ``mlplane.checkpoint.*`` tags are
written only after the snapshot lists that checkpoint.
"""

from __future__ import annotations

import logging
import posixpath
from collections.abc import Sequence
from typing import Any

from ray.train import Checkpoint, CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
from ray.train.v2._internal.constants import is_v2_enabled
from ray.train.v2.api.callback import UserCallback

from mlplane.training.context import TrainingContext, rfc3339
from mlplane.training.mlflow_run import RunReporter

log = logging.getLogger(__name__)

#: Key of the step number in the metrics dict a training loop passes to ``ray.train.report``.
STEP_KEY = "step"
TAG_LAST_WORKER_FAILURE = "mlplane.last_worker_failure"


class MlflowProgressCallback(UserCallback):
    """Rank 0's metrics of each report to MLflow; the checkpoint tags when one was persisted.

    MLflow being unreachable must not fail the training run, so errors are logged and skipped:
    the next report writes fresh values.
    """

    def __init__(self, reporter: RunReporter, storage_uri: str | None) -> None:
        self.reporter = reporter
        self.storage_uri = storage_uri.rstrip("/") if storage_uri else None
        self._reports = 0

    def checkpoint_uri(self, checkpoint: Any) -> str:
        """The persisted checkpoint as a URI (``s3://...`` or an absolute path)."""
        if self.storage_uri:
            return f"{self.storage_uri}/{posixpath.basename(str(checkpoint.path).rstrip('/'))}"
        return str(checkpoint.path)

    def after_report(
        self, run_context: Any, metrics: list[dict[str, Any]], checkpoint: Any | None
    ) -> None:
        self._reports += 1
        first = dict(metrics[0]) if metrics else {}
        step = int(first.pop(STEP_KEY, self._reports))
        try:
            self.reporter.log_metrics(step, first)
            if checkpoint is not None:
                self.reporter.checkpoint_saved(self.checkpoint_uri(checkpoint), step, rfc3339())
        except Exception as exc:  # MLflow down: keep training, report again next step
            log.warning("could not report step %d to MLflow: %s", step, exc)

    def after_exception(self, run_context: Any, worker_exceptions: dict[int, Exception]) -> None:
        ranks = ", ".join(str(r) for r in sorted(worker_exceptions))
        first = next(iter(worker_exceptions.values()), None)
        message = (str(first).strip().splitlines() or [""])[0][:300]
        detail = f"{rfc3339()} ranks {ranks}: {type(first).__name__}: {message}"
        try:
            self.reporter.set_tags({TAG_LAST_WORKER_FAILURE: detail})
        except Exception as exc:
            log.warning("could not record a worker failure in MLflow: %s", exc)


def run_config(
    ctx: TrainingContext,
    reporter: RunReporter | None = None,
    *,
    storage_path: str | None = None,
    name: str | None = None,
    callbacks: Sequence[Any] = (),
) -> RunConfig:
    """``RunConfig`` from the contract: storage = checkpoint URI, stable name, keep, failures.

    Without a checkpoint URI Ray's default storage (``~/ray_results``) is used: restores inside
    the attempt still work on one machine, but a new attempt starts over.
    """
    if not is_v2_enabled():
        raise RuntimeError(
            "mlplane.training.ray_train needs Ray Train V2 (the default): unset "
            "RAY_TRAIN_V2_ENABLED=0 in the job's runtime_env"
        )
    storage = storage_path or ctx.checkpoint_uri
    run_name = name or ctx.run_name
    extra: list[Any] = list(callbacks)
    if reporter is not None:
        base = f"{storage.rstrip('/')}/{run_name}" if storage else None
        extra.insert(0, MlflowProgressCallback(reporter, base))
    return RunConfig(
        name=run_name,
        storage_path=storage,
        checkpoint_config=CheckpointConfig(num_to_keep=ctx.checkpoint_keep),
        failure_config=FailureConfig(max_failures=ctx.max_worker_failures),
        callbacks=extra or None,
    )


def warm_start_checkpoint(ctx: TrainingContext) -> Checkpoint | None:
    """``MLPLANE_RESUME_FROM`` as a Ray Train checkpoint (a folder Ray Train reported), or None.

    Pass it to the loop (``train_loop_config``) and restore it only when
    ``ray.train.get_checkpoint()`` is None: the job's own checkpoints always win, so an attempt
    after the first resumes its own progress, not the warm start again.
    """
    return Checkpoint(ctx.resume_from) if ctx.resume_from else None


def scaling_config(
    ctx: TrainingContext,
    *,
    num_workers: int | None = None,
    use_gpu: bool | None = None,
    cpus_per_worker: float = 1.0,
) -> ScalingConfig:
    """Workers from arguments, else ``MLPLANE_NUM_WORKERS``/``MLPLANE_USE_GPU``, else 2 on CPU.

    ``MLPLANE_WORKER_RESOURCES`` (e.g. ``{"spot": 0.1}``) is added to every worker's request,
    which pins training workers to the nodes that advertise it.
    """
    gpu = ctx.use_gpu if use_gpu is None else use_gpu
    resources: dict[str, float] = {"CPU": cpus_per_worker, **ctx.worker_resources}
    if gpu:
        resources.setdefault("GPU", 1.0)
    return ScalingConfig(
        num_workers=num_workers or ctx.num_workers or 2,
        use_gpu=gpu,
        resources_per_worker=resources,
    )
