"""What the operator tells a training job, read once from the environment.

The operator (Kubernetes: through the RayJob's ``runtimeEnvYAML``; local platform: through the
Ray Jobs API's ``runtime_env``) sets these variables for the job's driver and every Ray worker.
A user running a script by hand sets none of them and still gets a working run: one attempt,
no checkpoints, a fresh MLflow run in the default experiment.

This module is pure (no I/O beyond reading the mapping it is given) so that the parsing rules
are tested on their own and an invalid value fails at start-up with the variable's name, not
halfway through training.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

ENV_TRAININGJOB = "MLPLANE_TRAININGJOB"
ENV_TRAININGJOB_UID = "MLPLANE_TRAININGJOB_UID"
ENV_ATTEMPT = "MLPLANE_ATTEMPT"
ENV_CHECKPOINT_URI = "MLPLANE_CHECKPOINT_URI"
ENV_CHECKPOINT_KEEP = "MLPLANE_CHECKPOINT_KEEP"
#: Optional: an explicit warm start (``spec.checkpoint.resumeFrom``): another job's checkpoint,
#: restored only while this TrainingJob has no checkpoint of its own.
ENV_RESUME_FROM = "MLPLANE_RESUME_FROM"
ENV_MAX_WORKER_FAILURES = "MLPLANE_MAX_WORKER_FAILURES"
ENV_TRACKING_URI = "MLFLOW_TRACKING_URI"
ENV_RUN_ID = "MLFLOW_RUN_ID"
ENV_EXPERIMENT = "MLPLANE_MLFLOW_EXPERIMENT"
#: Optional, for the examples and user code that places its own Ray tasks: extra Ray resources
#: each training worker asks for, as JSON (``{"spot": 0.1}`` pins work to nodes advertising them).
ENV_WORKER_RESOURCES = "MLPLANE_WORKER_RESOURCES"
#: Optional: number of Ray Train workers and whether they use a GPU each.
ENV_NUM_WORKERS = "MLPLANE_NUM_WORKERS"
ENV_USE_GPU = "MLPLANE_USE_GPU"
#: Optional: ``spec.checkpoint.interval`` ("Auto" or the duration as written) and the values
#: the operator computed for this attempt (seconds): the starting interval, C known from
#: earlier attempts, M for this attempt's spot workers, and the bounds of an Auto interval.
ENV_CHECKPOINT_INTERVAL = "MLPLANE_CHECKPOINT_INTERVAL"
ENV_CHECKPOINT_INTERVAL_SECONDS = "MLPLANE_CHECKPOINT_INTERVAL_SECONDS"
ENV_CHECKPOINT_WRITE_SECONDS = "MLPLANE_CHECKPOINT_WRITE_SECONDS"
ENV_RECLAIM_MTBR_SECONDS = "MLPLANE_RECLAIM_MTBR_SECONDS"
ENV_CHECKPOINT_INTERVAL_MIN = "MLPLANE_CHECKPOINT_INTERVAL_MIN_SECONDS"
ENV_CHECKPOINT_INTERVAL_MAX = "MLPLANE_CHECKPOINT_INTERVAL_MAX_SECONDS"

DEFAULT_CHECKPOINT_KEEP = 3
#: A hand-run script gets a few restarts on worker loss, as a TrainingJob with defaults would.
DEFAULT_MAX_WORKER_FAILURES = 3
#: Ray Train run name (and checkpoint folder) of a job started by hand, outside any TrainingJob.
LOCAL_RUN_NAME = "mlplane-local"

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def rfc3339(moment: datetime | None = None) -> str:
    """``2026-11-29T21:58:03.123Z``: RFC 3339 in UTC with milliseconds, as the tags carry it."""
    moment = (moment or datetime.now(UTC)).astimezone(UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _int(env: Mapping[str, str], name: str, default: int, minimum: int) -> int:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"{name} must be an integer (got {raw!r})") from None
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum} (got {value})")
    return value


def _float(env: Mapping[str, str], name: str) -> float | None:
    raw = env.get(name, "").strip()
    if not raw:
        return None
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"{name} must be a number of seconds (got {raw!r})") from None
    if not value >= 0:
        raise ValueError(f"{name} must be >= 0 (got {raw!r})")
    return value


def _bool(env: Mapping[str, str], name: str) -> bool:
    raw = env.get(name, "").strip().lower()
    if raw in _TRUE:
        return True
    if raw in _FALSE:
        return False
    raise ValueError(f"{name} must be true or false (got {env[name]!r})")


def _resources(env: Mapping[str, str]) -> dict[str, float]:
    raw = env.get(ENV_WORKER_RESOURCES, "").strip()
    if not raw:
        return {}
    try:
        parsed = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{ENV_WORKER_RESOURCES} must be a JSON object: {exc}") from None
    if not isinstance(parsed, dict) or not all(
        isinstance(v, int | float) and not isinstance(v, bool) and v >= 0 for v in parsed.values()
    ):
        raise ValueError(
            f"{ENV_WORKER_RESOURCES} must map resource names to non-negative numbers, e.g. "
            f'{{"spot": 0.1}} (got {raw!r})'
        )
    return {str(k): float(v) for k, v in parsed.items()}


def normalize_checkpoint_uri(uri: str, variable: str = ENV_CHECKPOINT_URI) -> str:
    """``s3://bucket/prefix`` unchanged (no trailing slash); paths and ``file://`` absolute.

    Ray Train needs an absolute path for local storage, and every node of a local cluster must
    name the same folder, so a relative path is resolved against the driver's directory once.
    ``variable`` names the setting in error messages.
    """
    uri = uri.strip()
    if uri.startswith("s3://"):
        rest = uri[len("s3://") :].strip("/")
        if not rest or rest.startswith("/"):
            raise ValueError(f"{variable}: no bucket in {uri!r}")
        return f"s3://{rest}"
    if "://" in uri and not uri.startswith("file://"):
        scheme = uri.split("://", 1)[0]
        raise ValueError(f"{variable}: unsupported scheme {scheme!r} (use s3:// or a local path)")
    path = uri[len("file://") :] if uri.startswith("file://") else uri
    return str(Path(path).expanduser().resolve())


def _slug(trainingjob: str) -> str:
    """``team-a/churn`` → ``team-a--churn``: a folder name, stable per TrainingJob."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", trainingjob.replace("/", "--")).strip("-") or "job"


@dataclass(frozen=True)
class TrainingContext:
    """The operator's contract with one attempt of a TrainingJob (see the package docstring)."""

    trainingjob: str | None = None
    trainingjob_uid: str | None = None
    attempt: int = 1
    checkpoint_uri: str | None = None
    checkpoint_keep: int = DEFAULT_CHECKPOINT_KEEP
    resume_from: str | None = None
    max_worker_failures: int = DEFAULT_MAX_WORKER_FAILURES
    tracking_uri: str | None = None
    run_id: str | None = None
    experiment: str | None = None
    worker_resources: Mapping[str, float] = field(default_factory=dict)
    num_workers: int | None = None
    use_gpu: bool = False
    #: ``Auto``, a duration as written, or None (the loop keeps its own cadence).
    checkpoint_interval: str | None = None
    checkpoint_interval_seconds: float | None = None
    checkpoint_write_seconds: float | None = None
    reclaim_mtbr_seconds: float | None = None
    checkpoint_interval_min: float | None = None
    checkpoint_interval_max: float | None = None

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> TrainingContext:
        """Read the ``MLPLANE_*``/``MLFLOW_*`` variables; ``ValueError`` names a bad one."""
        env = os.environ if environ is None else environ
        uri = env.get(ENV_CHECKPOINT_URI, "").strip()
        resume_from = env.get(ENV_RESUME_FROM, "").strip()
        workers = env.get(ENV_NUM_WORKERS, "").strip()
        return cls(
            trainingjob=env.get(ENV_TRAININGJOB, "").strip() or None,
            trainingjob_uid=env.get(ENV_TRAININGJOB_UID, "").strip() or None,
            attempt=_int(env, ENV_ATTEMPT, 1, 1),
            checkpoint_uri=normalize_checkpoint_uri(uri) if uri else None,
            checkpoint_keep=_int(env, ENV_CHECKPOINT_KEEP, DEFAULT_CHECKPOINT_KEEP, 1),
            resume_from=(
                normalize_checkpoint_uri(resume_from, ENV_RESUME_FROM) if resume_from else None
            ),
            max_worker_failures=_int(env, ENV_MAX_WORKER_FAILURES, DEFAULT_MAX_WORKER_FAILURES, -1),
            tracking_uri=env.get(ENV_TRACKING_URI, "").strip() or None,
            run_id=env.get(ENV_RUN_ID, "").strip() or None,
            experiment=env.get(ENV_EXPERIMENT, "").strip() or None,
            worker_resources=_resources(env),
            num_workers=_int(env, ENV_NUM_WORKERS, 0, 1) if workers else None,
            use_gpu=_bool(env, ENV_USE_GPU),
            checkpoint_interval=env.get(ENV_CHECKPOINT_INTERVAL, "").strip() or None,
            checkpoint_interval_seconds=_float(env, ENV_CHECKPOINT_INTERVAL_SECONDS),
            checkpoint_write_seconds=_float(env, ENV_CHECKPOINT_WRITE_SECONDS),
            reclaim_mtbr_seconds=_float(env, ENV_RECLAIM_MTBR_SECONDS),
            checkpoint_interval_min=_float(env, ENV_CHECKPOINT_INTERVAL_MIN),
            checkpoint_interval_max=_float(env, ENV_CHECKPOINT_INTERVAL_MAX),
        )

    @property
    def run_name(self) -> str:
        """Stable per TrainingJob: Ray Train's ``RunConfig(name=...)`` and the MLflow run name.

        Every attempt of one TrainingJob uses the same name, so Ray Train finds the previous
        attempt's checkpoints under ``<checkpoint_uri>/<run_name>`` and resumes from them.
        """
        return _slug(self.trainingjob) if self.trainingjob else LOCAL_RUN_NAME

    @property
    def resuming(self) -> bool:
        """True from the second attempt on: a previous attempt may have left checkpoints."""
        return self.attempt > 1

    def owns(self, trainingjob_uid: str | None) -> bool:
        """Whether a checkpoint written by ``trainingjob_uid`` is this TrainingJob's own.

        With a uid (every attempt the operator starts), only checkpoints that name the same uid
        are: a TrainingJob deleted and applied again, or a retraining reusing a template's
        ``checkpoint.uri``, has a new uid and must not resume its predecessor's final step. A
        script run by hand (no uid) owns whatever is under its checkpoint URI.
        """
        return self.trainingjob_uid is None or trainingjob_uid == self.trainingjob_uid
