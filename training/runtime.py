"""The training loop's companion: resume, report, checkpoint every K steps, log the model.

A loop written against :class:`TrainingSession` survives a spot preemption without knowing
about it: on (re)start it asks :meth:`TrainingSession.restore` for the newest complete
checkpoint of *its own TrainingJob* (a previous attempt's, or the same attempt's before a
worker was lost) and carries on from its step; :meth:`TrainingSession.checkpoint` writes,
prunes to ``keep`` and publishes the ``mlplane.checkpoint.*`` tags in that order, so the tags
never point at a checkpoint that is not complete yet.

The session is picklable (context, reporter and store are plain values whose clients are built
lazily), so the driver can open it and ship it to the Ray task or actor that trains::

    session = TrainingSession.start(params={"lr": 0.1})

    @ray.remote(max_retries=session.context.max_worker_failures, resources=...)
    def train(session):
        state = session.restore()
        step0, model = (state.step, pickle.loads(state.files["model.pkl"])) if state else (0, new())
        for step in range(step0 + 1, steps + 1):
            ...
            session.report(step, {"loss": loss})
            if session.checkpoint_due(step, last_step=steps):  # or session.due(step, every=10)
                session.checkpoint(step, {"model.pkl": pickle.dumps(model)})
        return model

``checkpoint_due`` follows ``spec.checkpoint.interval``: a duration, or ``Auto``, which the
session recomputes after every checkpoint as ``sqrt(2*C*M)`` (``mlplane.monitoring.spot``) from
its own running mean of the write time C and the M the operator gave the attempt. C and the
interval in use go to the run with the checkpoint tags (one request), where the operator reads
them into ``status.checkpoint``.

For Ray Train (data-parallel workers, restarts inside an attempt) see
:mod:`mlplane.training.ray_train`: Ray Train keeps its own checkpoints, and its callback writes
the same tags.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from mlplane.monitoring import spot
from mlplane.monitoring.notice import (
    METADATA_NOTICE,
    NOTICE_FILE,
    NOTICE_PENDING_FILE,
    TAG_NOTICE_CHECKPOINT_STEP,
    TAG_NOTICE_CHECKPOINT_URI,
    TAG_NOTICE_ID,
    NoticeDoc,
    parse_notice,
)
from mlplane.monitoring.profile import Profile
from mlplane.training.checkpoints import (
    CheckpointInfo,
    CheckpointStore,
    find_checkpoint,
    open_store,
)
from mlplane.training.context import TrainingContext
from mlplane.training.mlflow_run import (
    TAG_CHECKPOINT_INTERVAL_ATTEMPT,
    TAG_CHECKPOINT_INTERVAL_SECONDS,
    TAG_CHECKPOINT_WRITE_SECONDS,
    RunReporter,
    open_run,
)

log = logging.getLogger(__name__)

#: The most often :meth:`TrainingSession.notice_due` reads the notice object (seconds): an
#: S3 GET per two seconds at most, and the runtime learns of a notice within 2 s plus a step.
NOTICE_POLL_SECONDS = 2.0
#: How long steps keep checkpointing after a notice that gives no deadline (the AWS window).
NOTICE_DEFAULT_WINDOW_SECONDS = 120.0
#: Steps keep checkpointing this long past a notice's deadline: deadlines are approximate
#: (whole seconds, clocks of different machines), and a step lost is a step repeated.
NOTICE_DEADLINE_MARGIN_SECONDS = 10.0

#: Run tags of an explicit warm start (``spec.checkpoint.resumeFrom``): what was restored.
TAG_WARM_START_URI = "mlplane.warm_start.uri"
TAG_WARM_START_STEP = "mlplane.warm_start.step"


def _best_effort(fn: Any, *args: Any, **kwargs: Any) -> None:
    try:
        fn(*args, **kwargs)
    except Exception as exc:
        log.warning("MLflow progress update %s failed: %s", getattr(fn, "__name__", fn), exc)


@dataclass(frozen=True)
class Restored:
    """The state a loop resumes from: the checkpoint's step, its files, and where it was.

    ``warm_start`` is True when the files are another job's (``spec.checkpoint.resumeFrom``)
    rather than this TrainingJob's own: the loop takes the weights and decides whether the
    step count carries on (the examples train their full ``--steps`` from them).
    """

    step: int
    files: Mapping[str, bytes]
    info: CheckpointInfo
    warm_start: bool = False


class TrainingSession:
    """Context + MLflow run + checkpoint store of one attempt (see the module docstring)."""

    def __init__(
        self,
        context: TrainingContext,
        reporter: RunReporter | None,
        store: CheckpointStore | None,
    ) -> None:
        self.context = context
        self.reporter = reporter
        self.store = store
        #: Seconds on a monotonic clock (replaced in tests); read where the loop runs.
        self.clock: Callable[[], float] = time.monotonic
        self.write_seconds: float | None = context.checkpoint_write_seconds
        self._interval: float | None = context.checkpoint_interval_seconds
        #: When the interval started counting (the first ``checkpoint_due`` call or the last
        #: checkpoint), on this process's clock: None until the loop runs, so a session
        #: pickled to a Ray worker never compares clocks of two machines.
        self._since: float | None = None
        #: The reclaim notice: when it was last read, the one to answer, the last answered.
        self._notice_read: float | None = None
        self._notice: NoticeDoc | None = None
        self._notice_answered: str | None = None
        #: After the notice checkpoint, every step boundary checkpoints until the capacity is
        #: due to go (wall-clock seconds), so the loss repeats at most one step.
        self._window_until: float | None = None
        self._window_id: str | None = None
        #: Wall-clock seconds (notice deadlines are wall-clock times); replaced in tests.
        self.wall: Callable[[], float] = time.time
        #: Marked while a notice checkpoint is pending: the pod's preStop hook waits for it.
        self.notice_pending_file: Path | None = Path(NOTICE_PENDING_FILE)

    @classmethod
    def start(
        cls,
        context: TrainingContext | None = None,
        *,
        params: Mapping[str, Any] | None = None,
        mlflow: bool = True,
    ) -> TrainingSession:
        """Read the environment, resume (or create) the MLflow run, open the checkpoint store.

        ``mlflow=False`` gives a session that only checkpoints (a quick local experiment).
        """
        ctx = context or TrainingContext.from_env()
        reporter = open_run(ctx) if mlflow else None
        store = open_store(ctx.checkpoint_uri) if ctx.checkpoint_uri else None
        session = cls(ctx, reporter, store)
        if params and reporter is not None:
            reporter.log_params(params)
        return session

    @property
    def run_id(self) -> str | None:
        return self.reporter.run_id if self.reporter else None

    # --- resume and checkpoint ----------------------------------------------------------------

    def restore(self) -> Restored | None:
        """This TrainingJob's newest complete checkpoint, else the warm start, else None.

        Called at every (re)start of the loop: attempt > 1 resumes from the previous attempt,
        and a retried task inside an attempt resumes from what the lost worker saved. Only the
        job's own checkpoints count (:meth:`TrainingContext.owns`): one written under another
        TrainingJob uid is skipped with a warning, so a new job never resumes its
        predecessor's final step. When the job has none yet and ``MLPLANE_RESUME_FROM`` is set,
        that checkpoint is restored instead (``warm_start=True``) and recorded on the run
        (``mlplane.warm_start.*`` tags); if it does not exist, this raises
        ``FileNotFoundError`` rather than silently starting from scratch.

        The files are read into memory; for large checkpoints use ``store.latest()`` and
        ``store.download(info, folder)`` instead.
        """
        info = self._own_latest()
        if info is not None:
            assert self.store is not None
            files = self.store.read_all(info)
            # A checkpoint that answered a notice: the retried task does not answer it again.
            self._notice_answered = info.metadata.get(METADATA_NOTICE) or self._notice_answered
            log.info("resuming from checkpoint %s (step %d)", info.uri, info.step)
            if self.reporter is not None:
                _best_effort(self.reporter.resumed, info.step)
            return Restored(info.step, files, info)
        if self.context.resume_from is None:
            return None
        store, info = find_checkpoint(self.context.resume_from)
        files = store.read_all(info)
        log.info("warm start from checkpoint %s (step %d)", info.uri, info.step)
        if self.reporter is not None:
            _best_effort(
                self.reporter.set_tags,
                {TAG_WARM_START_URI: info.uri, TAG_WARM_START_STEP: str(info.step)},
            )
        return Restored(info.step, files, info, warm_start=True)

    def _own_latest(self) -> CheckpointInfo | None:
        if self.store is None:
            return None
        for info in reversed(self.store.checkpoints()):
            if self.context.owns(info.trainingjob_uid):
                return info
            log.warning(
                "not resuming from %s: it was written by TrainingJob uid %s, this is %s",
                info.uri, info.trainingjob_uid, self.context.trainingjob_uid,
            )  # fmt: skip
        return None

    @staticmethod
    def due(step: int, every: int, *, last_step: int | None = None) -> bool:
        """True every ``every`` steps, and at ``last_step`` so the final state is always saved."""
        return (every > 0 and step % every == 0) or (last_step is not None and step == last_step)

    @property
    def checkpoint_interval(self) -> float | None:
        """Seconds between checkpoints for :meth:`checkpoint_due` (None: no interval set)."""
        return self._interval

    def checkpoint_due(self, step: int, *, last_step: int | None = None) -> bool:
        """True once the checkpoint interval has passed since the last checkpoint (or since the
        loop began), and at ``last_step``. Always False without ``spec.checkpoint.interval``
        (use :meth:`due` for a step cadence); checked at step boundaries by the loop.
        """
        if last_step is not None and step == last_step:
            return True
        if self.notice_due():
            return True
        if self._interval is None:
            return False
        now = self.clock()
        if self._since is None:
            self._since = now
            return False
        return now - self._since >= self._interval

    def notice_due(self) -> bool:
        """True when a reclaim notice for this attempt waits for its checkpoint, and at every
        step boundary after it until the notice's deadline (without one,
        :data:`NOTICE_DEFAULT_WINDOW_SECONDS`): the node may go at any of them, and each
        checkpoint then bounds the loss to one step.

        Reads the notice object the operator writes in the checkpoint folder
        (``mlplane.monitoring.notice``) at most every :data:`NOTICE_POLL_SECONDS`; a notice of
        another attempt, or one already answered, is ignored. :meth:`checkpoint_due` asks this
        first; a loop with its own cadence (:meth:`due`) should ask it too at each step. A read
        that fails is logged and counts as no notice: the loop is never stopped by it.
        """
        if self._notice is not None:
            return True
        if self._window_until is not None:
            if self.wall() < self._window_until:
                return True
            self._window_until = self._window_id = None
        if self.store is None:
            return False
        now = self.wall()  # not ``clock``: the interval's clock is the loop's alone
        if self._notice_read is not None and now - self._notice_read < NOTICE_POLL_SECONDS:
            return False
        self._notice_read = now
        try:
            data = self.store.read_side(NOTICE_FILE)
        except Exception as exc:  # S3 or disk trouble: the regular cadence goes on
            log.warning("reading the reclaim notice failed: %s", exc)
            return False
        doc = parse_notice(data) if data is not None else None
        if doc is None or doc.attempt != self.context.attempt or doc.id == self._notice_answered:
            return False
        log.warning("reclaim notice %s (%s, deadline %s): checkpointing at this step",
                    doc.id, doc.signal, doc.deadline or "unknown")  # fmt: skip
        self._notice = doc
        self._mark_pending(True)
        return True

    def _notice_end(self, notice: NoticeDoc) -> float:
        """Until when steps checkpoint after a notice: its deadline, else a default window
        (at most an hour either way: a notice that never ends must not checkpoint forever)."""
        now = self.wall()
        end = now + NOTICE_DEFAULT_WINDOW_SECONDS
        if notice.deadline:
            try:
                end = datetime.fromisoformat(notice.deadline.replace("Z", "+00:00")).timestamp()
                end += NOTICE_DEADLINE_MARGIN_SECONDS
            except ValueError:
                pass
        return min(end, now + 3600.0)

    def _mark_pending(self, pending: bool) -> None:
        path = self.notice_pending_file
        if path is None:
            return
        try:
            if pending:
                path.write_text(self._notice.id if self._notice else "")
            else:
                path.unlink(missing_ok=True)
        except OSError as exc:  # best effort: only the preStop hook's wait depends on it
            log.warning("notice marker %s: %s", path, exc)

    def _measured(self, seconds: float) -> None:
        """A checkpoint took ``seconds`` to write: update C and, when Auto, the interval."""
        self.write_seconds = spot.update_write_seconds(self.write_seconds, seconds)
        ctx = self.context
        if ctx.checkpoint_interval != "Auto":
            return
        low = ctx.checkpoint_interval_min or spot.DEFAULT_MIN_INTERVAL_SECONDS
        high = ctx.checkpoint_interval_max or spot.DEFAULT_MAX_INTERVAL_SECONDS
        if ctx.reclaim_mtbr_seconds is None:  # no spot workers: nothing is reclaimed
            self._interval = high
            return
        self._interval = spot.young_daly(
            self.write_seconds, ctx.reclaim_mtbr_seconds, min_seconds=low, max_seconds=high
        )

    def checkpoint(
        self,
        step: int,
        files: Mapping[str, bytes],
        *,
        metadata: Mapping[str, Any] | None = None,
    ) -> CheckpointInfo | None:
        """Save, prune to ``keep``, then publish the checkpoint tags (None without a store)."""
        if self.store is None:
            return None
        notice = self._notice
        answers = notice.id if notice is not None else self._window_id
        if answers is not None:  # it answers a notice: marked, so a retried task does not
            metadata = {**(metadata or {}), METADATA_NOTICE: answers}
        began = self.clock()
        info = self.store.save(
            step,
            files,
            attempt=self.context.attempt,
            metadata=metadata,
            trainingjob_uid=self.context.trainingjob_uid,
        )
        if notice is not None:
            self._notice, self._notice_answered = None, notice.id
            self._window_until, self._window_id = self._notice_end(notice), notice.id
            self._mark_pending(False)
            log.warning("notice checkpoint %s taken for %s", info.uri, notice.id)
        done = self.clock()
        self._measured(done - began)
        self._since = done
        try:
            self.store.prune(self.context.checkpoint_keep)
        except OSError as exc:  # cleanup is best effort: the next prune retries it
            log.warning("pruning old checkpoints failed: %s", exc)
        if self.reporter is not None:
            extra = {TAG_CHECKPOINT_WRITE_SECONDS: f"{self.write_seconds:.3f}"}
            if self._interval is not None:
                extra[TAG_CHECKPOINT_INTERVAL_SECONDS] = f"{self._interval:.3f}"
                extra[TAG_CHECKPOINT_INTERVAL_ATTEMPT] = str(self.context.attempt)
            if notice is not None:
                extra.update({TAG_NOTICE_ID: notice.id, TAG_NOTICE_CHECKPOINT_URI: info.uri,
                              TAG_NOTICE_CHECKPOINT_STEP: str(info.step)})  # fmt: skip
            _best_effort(self.reporter.checkpoint_saved, info.uri, info.step, info.time,
                         extra=extra)  # fmt: skip
        return info

    # --- MLflow ---------------------------------------------------------------------------------

    def report(self, step: int, metrics: Mapping[str, Any]) -> None:
        """Metrics of one step (no-op without MLflow).

        Best effort, like the checkpoint tags: MLflow's client already retries for a while, and
        an MLflow outage must not cost hours of training; the next report writes fresh values.
        """
        if self.reporter is not None:
            _best_effort(self.reporter.log_metrics, step, metrics)

    def log_model(self, flavor: Any, model: Any, *, input_example: Any, **kwargs: Any) -> Any:
        """See :meth:`RunReporter.log_model`; requires MLflow."""
        if self.reporter is None:
            raise RuntimeError("this session has no MLflow run (started with mlflow=False)")
        return self.reporter.log_model(flavor, model, input_example=input_example, **kwargs)

    def log_reference_profile(self, frame: Any, **options: Any) -> Profile:
        """See :meth:`RunReporter.log_reference_profile`; requires MLflow."""
        if self.reporter is None:
            raise RuntimeError("this session has no MLflow run (started with mlflow=False)")
        meta = {"attempt": self.context.attempt}
        if self.context.trainingjob:
            meta["trainingjob"] = self.context.trainingjob
        meta.update(options.pop("metadata", None) or {})
        return self.reporter.log_reference_profile(frame, metadata=meta, **options)

    def finish(self, status: str = "FINISHED") -> None:
        if self.reporter is not None:
            self.reporter.finish(status)
