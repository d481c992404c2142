"""Checkpoint on a reclaim notice, in the runtime: the notice object in the checkpoint folder
is read at step boundaries (rate-limited), answered by one checkpoint at the next boundary,
marked as the notice checkpoint, and reported to the run where the operator reads it."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from mlflow import MlflowClient

from mlplane.monitoring.notice import METADATA_NOTICE, NOTICE_FILE, encode, notice_document
from mlplane.operator.registry import Registry
from mlplane.training import TrainingContext, TrainingSession
from mlplane.training.checkpoints import open_store
from mlplane.training.runtime import (
    NOTICE_DEADLINE_MARGIN_SECONDS,
    NOTICE_DEFAULT_WINDOW_SECONDS,
    NOTICE_POLL_SECONDS,
)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def notify(uri: str, id: str = "attempt-1-notice-1", attempt: int = 1,
           deadline: str | None = None) -> None:  # fmt: skip
    doc = notice_document(id=id, attempt=attempt, signal="aws-node-termination-handler/spot-itn",
                          time="2026-01-01T10:00:00Z", deadline=deadline)  # fmt: skip
    open_store(uri).write_side(NOTICE_FILE, encode(doc))


def session_at(uri: str, clock: Clock, attempt: int = 1, **ctx) -> TrainingSession:
    context = TrainingContext(checkpoint_uri=uri, attempt=attempt, trainingjob_uid="u-1", **ctx)
    session = TrainingSession(context, None, open_store(uri))
    session.clock = session.wall = clock  # one fake clock: monotonic and wall seconds
    session.notice_pending_file = Path(uri).parent / "notice-pending"
    return session


def run_steps(session: TrainingSession, clock: Clock, steps: range, every: int) -> list[int]:
    """A loop with a step cadence that also asks for notices; returns the steps it saved."""
    saved = []
    for step in steps:
        if session.due(step, every) or session.notice_due():
            session.checkpoint(step, {"m": str(step).encode()})
            saved.append(step)
        clock.now += 1.0  # one second a step
    return saved


def test_a_notice_is_answered_at_the_next_step_then_every_step_until_its_deadline(tmp_path):
    uri, clock = str(tmp_path / "ck"), Clock()
    session = session_at(uri, clock)
    assert run_steps(session, clock, range(1, 6), every=100) == []
    notify(uri, deadline=datetime.fromtimestamp(clock.now + 10, UTC).strftime(
        "%Y-%m-%dT%H:%M:%SZ"))  # fmt: skip
    clock.now += NOTICE_POLL_SECONDS
    assert session.notice_due()
    assert session.notice_pending_file.read_text() == "attempt-1-notice-1"  # the preStop waits
    saved = run_steps(session, clock, range(6, 30), every=100)
    assert not session.notice_pending_file.exists()  # written: the preStop lets go
    # The next boundary, then each one until the deadline (8 s later, one step a second) and
    # a margin past it: the node may go at any of them, and the loss is at most one step.
    assert saved == list(range(6, 14 + int(NOTICE_DEADLINE_MARGIN_SECONDS)))
    marked = [c for c in open_store(uri).checkpoints() if METADATA_NOTICE in c.metadata]
    assert marked and {c.metadata[METADATA_NOTICE] for c in marked} == {"attempt-1-notice-1"}


def test_a_notice_without_a_deadline_checkpoints_for_the_default_window(tmp_path):
    uri, clock = str(tmp_path / "ck"), Clock()
    session = session_at(uri, clock)
    notify(uri)
    saved = run_steps(session, clock, range(1, 400), every=1000)
    # step 1 answers it; then one a second for the window (counted from that checkpoint)
    assert saved == list(range(1, int(NOTICE_DEFAULT_WINDOW_SECONDS) + 1))


def test_the_notice_is_read_at_most_every_poll_interval(tmp_path):
    uri, clock = str(tmp_path / "ck"), Clock()
    session = session_at(uri, clock)
    reads = []
    read = session.store.read_side
    session.store.read_side = lambda name: reads.append(clock.now) or read(name)  # type: ignore[method-assign]
    for _ in range(20):  # 20 step boundaries in 2 s
        session.notice_due()
        clock.now += 0.1
    assert len(reads) == 1
    clock.now += NOTICE_POLL_SECONDS
    session.notice_due()
    assert len(reads) == 2


def test_a_notice_of_another_attempt_or_garbage_is_ignored(tmp_path):
    uri, clock = str(tmp_path / "ck"), Clock()
    session = session_at(uri, clock, attempt=2)
    notify(uri, id="attempt-1-notice-1", attempt=1)
    assert run_steps(session, clock, range(1, 10), every=100) == []
    open_store(uri).write_side(NOTICE_FILE, b"{not json")
    assert run_steps(session, clock, range(10, 15), every=100) == []
    assert open_store(uri).checkpoints() == []  # and the notice is never taken for one


def test_a_new_notice_asks_again_and_a_retried_task_does_not_answer_twice(tmp_path):
    uri, clock = str(tmp_path / "ck"), Clock()
    session = session_at(uri, clock)
    notify(uri)
    assert run_steps(session, clock, range(1, 4), every=100) == [1, 2, 3]
    # The node went; the task retried in the same attempt restores the newest checkpoint,
    # which answered the notice already: it does not start over.
    retried = session_at(uri, clock)
    assert retried.restore() is not None
    assert run_steps(retried, clock, range(4, 14), every=100) == []
    notify(uri, id="attempt-1-notice-2")
    assert run_steps(retried, clock, range(14, 17), every=100) == [14, 15, 16]


def test_checkpoint_due_answers_a_notice_before_the_interval(tmp_path):
    uri, clock = str(tmp_path / "ck"), Clock()
    session = session_at(uri, clock, checkpoint_interval="1h", checkpoint_interval_seconds=3600.0)
    assert not session.checkpoint_due(1)
    notify(uri)
    clock.now += NOTICE_POLL_SECONDS
    assert session.checkpoint_due(2)
    session.checkpoint(2, {"m": b"x"})
    assert session.checkpoint_due(3)  # within the notice window: every step


def test_without_a_notice_nothing_changes(tmp_path):
    uri, clock = str(tmp_path / "ck"), Clock()
    session = session_at(uri, clock)
    assert run_steps(session, clock, range(1, 21), every=5) == [5, 10, 15, 20]
    assert all(METADATA_NOTICE not in c.metadata for c in open_store(uri).checkpoints())


def test_the_notice_checkpoint_reaches_the_operator_through_the_run(mlflow_uri, experiment,
                                                                    tmp_path):  # fmt: skip
    client = MlflowClient(mlflow_uri)
    exp = client.get_experiment_by_name(experiment)
    run_id = client.create_run(exp.experiment_id,
                               tags={"mlplane.trainingjob.uid": "u-1"}).info.run_id  # fmt: skip
    uri = str(tmp_path / "ck")
    context = TrainingContext(checkpoint_uri=uri, tracking_uri=mlflow_uri, run_id=run_id,
                              attempt=1, trainingjob_uid="u-1")  # fmt: skip
    session = TrainingSession.start(context)
    session.notice_pending_file = tmp_path / "pending"
    notify(uri)
    assert session.notice_due()
    session.checkpoint(7, {"m": b"x"})
    session.checkpoint(9, {"m": b"y"})  # one after it: the notice tags name the first
    seen = Registry(mlflow_uri).observe_run("u-1", None, experiment=experiment, run_id=run_id)
    assert seen is not None
    assert (seen.notice_id, seen.notice_checkpoint_step) == ("attempt-1-notice-1", 7)
    assert seen.notice_checkpoint_uri == f"{uri}/step-000000000007"
    assert seen.checkpoint_step == 9
