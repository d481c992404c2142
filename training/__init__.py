"""mlplane.training: the runtime inside a TrainingJob's Ray job (checkpoints, MLflow, profile).

It imports only ``mlplane.monitoring`` of mlplane, so the training image needs no operator code.

Contract with the operator
==========================

**In: environment variables.** The operator (KubeRay builder: the RayJob's runtime env; local
platform: the Ray Jobs API's ``runtime_env``) sets them for the driver and every Ray worker.
All are optional, so a script also runs by hand (:class:`TrainingContext`):

- ``MLPLANE_TRAININGJOB``: ``namespace/name``; the stable Ray Train run name derives from it.
- ``MLPLANE_TRAININGJOB_UID``: the resource's uid, tagged on the run.
- ``MLPLANE_ATTEMPT``: 1, 2, ...; > 1 means a previous attempt may have left checkpoints.
- ``MLPLANE_CHECKPOINT_URI``: ``s3://bucket/prefix`` or a path; absent: no checkpoints. The
  operator gives each TrainingJob its own folder, scoped by uid (``<checkpoint.uri>/<uid>``,
  or ``<base>/<namespace>/<name>/<uid>`` under the operator's default base), so a new job of
  the same name never sees an old one's checkpoints; and the runtime restores only
  checkpoints whose marker names its own uid (a hand-run script, without uid, restores any).
- ``MLPLANE_RESUME_FROM`` (optional, ``spec.checkpoint.resumeFrom``): an explicit warm start
  from another job's checkpoint (one checkpoint folder, or a job's checkpoint folder: its
  newest), restored only while the job has no checkpoint of its own; missing → the attempt
  fails naming it, rather than training from scratch unasked.
- ``MLPLANE_CHECKPOINT_KEEP``: keep the newest N checkpoints (default 3).
- ``MLPLANE_MAX_WORKER_FAILURES``: worker losses survived inside one attempt (Ray Train's
  ``FailureConfig(max_failures)``, a Ray task's ``max_retries``); -1 = unlimited (default 3).
- ``MLFLOW_TRACKING_URI``: the MLflow server.
- ``MLFLOW_RUN_ID``: the TrainingJob's one run, created by the operator before attempt 1;
  every attempt resumes it. Absent (a script run by hand): a run is created in
  ``MLPLANE_MLFLOW_EXPERIMENT``, else in ``Default``.
- ``MLPLANE_MLFLOW_EXPERIMENT``: see above.
- ``MLPLANE_WORKER_RESOURCES`` (optional): JSON of extra Ray resources per training worker,
  e.g. ``{"spot": 0.1}`` to keep training on spot workers and off the head node.
- ``MLPLANE_NUM_WORKERS`` / ``MLPLANE_USE_GPU`` (optional): Ray Train workers (examples'
  default 2) and whether each takes a GPU (``true``/``false``).
- ``AWS_ENDPOINT_URL`` and the other ``AWS_*``: boto3's and pyarrow's usual S3 settings.

**In: the reclaim notice.** The operator writes ``_mlplane_notice.json`` at the root of
``MLPLANE_CHECKPOINT_URI`` when the attempt's capacity is announced to go
(:mod:`mlplane.monitoring.notice`); :meth:`TrainingSession.notice_due` reads it at step
boundaries (at most every 2 s) and asks for a checkpoint at the next one and at each one until
the notice's deadline. The checkpoint answering it carries the notice id in its marker
metadata and in the run tags ``mlplane.notice.id``, ``mlplane.notice.checkpoint_uri`` and
``mlplane.notice.checkpoint_step``.

**Out: MLflow, the operator's only channel to a job running on Kubernetes.** On the run
``MLFLOW_RUN_ID``:

* tags, polled for progress:

  - ``mlplane.attempt``: the attempt writing now (set when it starts);
  - ``mlplane.checkpoint.uri``, ``mlplane.checkpoint.step``, ``mlplane.checkpoint.time``: the
    newest *complete* checkpoint (written after the checkpoint is complete, never before);
    time is RFC 3339 UTC (``2026-11-29T21:58:03.123Z``);
  - ``mlplane.step``: the last reported step; ``mlplane.resumed_from_step``: the step the
    latest (re)start resumed from; ``mlplane.trainingjob`` (+ ``.uid``);
    ``mlplane.warm_start.uri`` / ``.step``: the checkpoint a warm start restored;
    ``mlplane.last_worker_failure``: when and why Ray Train last lost workers;

* metrics per step (whatever the loop reports, at that step), and
  ``mlplane.resumed_from_step``, one point per restore: its history and the duplicated steps
  in a metric's history show how much work each preemption cost;
* params (immutable: a later attempt cannot change them);
* the model at artifact path ``model``, logged with a signature and an input example. In
  MLflow 3 its files live in a LoggedModel linked to the run; ``runs:/<run_id>/model``
  resolves to it. **The runtime never registers it**: the operator registers
  ``runs:/<run_id>/model`` once the job succeeded;
* the reference profile of the training features (:mod:`mlplane.monitoring.profile`, JSON)
  at artifact path ``mlplane/reference_profile.json``;
* run status: RUNNING while an attempt runs, FINISHED on success, FAILED when the driver
  failed (the next attempt sets RUNNING again).

**Out: the exit.** A driver that dies because MLflow or S3 could not be reached prints
``mlplane.failure=infrastructure: <what>`` as its last line and exits 75
(:mod:`mlplane.training.failure`, ``sys.exit(exit_code(main))``): Ray puts the last log lines
in the job's message, and the operator spends no ``backoffLimit`` on such an attempt.

Checkpoints (:mod:`mlplane.training.checkpoints`) are written file by file with a completion
marker last, so one cut by a preemption is never resumed from; Ray Train's own checkpoints
(:mod:`mlplane.training.ray_train`) have the same property through its run snapshot.

Public API
==========

- :class:`TrainingContext` (``from_env()``): the variables above, parsed and checked.
- :class:`TrainingSession` (``start()``): ``restore()``, ``report()``, ``checkpoint()``,
  ``due()``, ``log_model()``, ``log_reference_profile()``, ``finish()``.
- :class:`CheckpointStore` (``open_store(uri)``): local and S3, ``save/latest/prune/...``;
  :func:`find_checkpoint` for a warm start's URI.
- :class:`RunReporter` / :func:`open_run`: the MLflow side, usable from any process.
- :func:`mlplane.training.failure.exit_code` / ``outage_of``: tell an outage from a bug.
- :mod:`mlplane.training.ray_train`: ``run_config()``, ``scaling_config()``,
  ``MlflowProgressCallback`` for Ray Train (imports Ray, hence not re-exported here).
- Examples: ``python -m mlplane.training.examples.sklearn_tabular`` and
  ``python -m mlplane.training.examples.torch_mlp``.
"""

from mlplane.training.checkpoints import (
    CheckpointInfo,
    CheckpointStore,
    LocalCheckpointStore,
    S3CheckpointStore,
    find_checkpoint,
    open_store,
)
from mlplane.training.context import TrainingContext
from mlplane.training.mlflow_run import RunReporter, open_run
from mlplane.training.runtime import Restored, TrainingSession

__all__ = [
    "CheckpointInfo",
    "CheckpointStore",
    "LocalCheckpointStore",
    "Restored",
    "RunReporter",
    "S3CheckpointStore",
    "TrainingContext",
    "TrainingSession",
    "find_checkpoint",
    "open_run",
    "open_store",
]
