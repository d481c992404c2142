"""The checkpoint interval in the runtime: due by time, C measured, Auto recomputed, reported."""

from __future__ import annotations

import math

import pytest
from mlflow import MlflowClient

from mlplane.monitoring import spot
from mlplane.operator.registry import Registry
from mlplane.training import TrainingContext, TrainingSession
from mlplane.training.checkpoints import open_store


class Clock:
    """A monotonic clock the test moves; ``save`` moves it by ``write`` seconds."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def session_with(tmp_path, clock: Clock, write: float, **ctx) -> TrainingSession:
    context = TrainingContext(checkpoint_uri=str(tmp_path / "ck"), **ctx)
    store = open_store(context.checkpoint_uri)
    save = store.save

    def slow_save(*args, **kwargs):
        clock.now += write
        return save(*args, **kwargs)

    store.save = slow_save  # type: ignore[method-assign]
    session = TrainingSession(context, None, store)
    session.clock = clock
    return session


def test_context_reads_the_interval_variables():
    ctx = TrainingContext.from_env({
        "MLPLANE_CHECKPOINT_INTERVAL": "Auto", "MLPLANE_CHECKPOINT_INTERVAL_SECONDS": "60.5",
        "MLPLANE_CHECKPOINT_WRITE_SECONDS": "3", "MLPLANE_RECLAIM_MTBR_SECONDS": "7200",
        "MLPLANE_CHECKPOINT_INTERVAL_MIN_SECONDS": "60",
        "MLPLANE_CHECKPOINT_INTERVAL_MAX_SECONDS": "3600",
    })  # fmt: skip
    assert (ctx.checkpoint_interval, ctx.checkpoint_interval_seconds) == ("Auto", 60.5)
    assert (ctx.checkpoint_write_seconds, ctx.reclaim_mtbr_seconds) == (3.0, 7200.0)
    assert (ctx.checkpoint_interval_min, ctx.checkpoint_interval_max) == (60.0, 3600.0)
    with pytest.raises(ValueError, match="MLPLANE_RECLAIM_MTBR_SECONDS"):
        TrainingContext.from_env({"MLPLANE_RECLAIM_MTBR_SECONDS": "soon"})


def test_without_an_interval_nothing_is_due_but_the_last_step():
    session = TrainingSession(TrainingContext(), None, None)
    assert not session.checkpoint_due(1)
    assert session.checkpoint_due(5, last_step=5)


def test_a_fixed_interval_is_due_once_it_has_passed_since_the_last_checkpoint(tmp_path):
    clock = Clock()
    session = session_with(tmp_path, clock, write=2.0, checkpoint_interval="10m",
                           checkpoint_interval_seconds=600.0)  # fmt: skip
    assert not session.checkpoint_due(1)  # the first call starts the count
    clock.now += 599
    assert not session.checkpoint_due(2)
    clock.now += 1
    assert session.checkpoint_due(3)
    session.checkpoint(3, {"m": b"x"})
    assert session.write_seconds == 2.0
    assert session.checkpoint_interval == 600.0  # a duration stays as it is
    assert not session.checkpoint_due(4)  # counted from the checkpoint's end
    clock.now += 600
    assert session.checkpoint_due(5)


def test_auto_recomputes_the_interval_from_measured_c_and_the_given_m(tmp_path):
    clock = Clock()
    bounds = {"checkpoint_interval_min": 60.0, "checkpoint_interval_max": 7200.0}
    session = session_with(tmp_path, clock, write=8.0, checkpoint_interval="Auto",
                           checkpoint_interval_seconds=60.0, reclaim_mtbr_seconds=3600.0,
                           **bounds)  # fmt: skip
    assert session.checkpoint_interval == 60.0  # the operator's start (C unknown yet)
    session.checkpoint(1, {"m": b"x"})
    assert session.checkpoint_interval == pytest.approx(math.sqrt(2 * 8.0 * 3600.0))
    session.checkpoint(2, {"m": b"y"})  # C stays 8: same interval
    assert session.checkpoint_interval == pytest.approx(math.sqrt(2 * 8.0 * 3600.0))
    clock_before = clock.now
    session2 = session_with(tmp_path, clock, write=28.0, checkpoint_interval="Auto",
                            reclaim_mtbr_seconds=3600.0, checkpoint_write_seconds=8.0)  # fmt: skip
    session2.checkpoint(3, {"m": b"z"})
    c = spot.update_write_seconds(8.0, 28.0)
    assert clock.now == clock_before + 28.0
    assert session2.write_seconds == pytest.approx(c)
    assert session2.checkpoint_interval == pytest.approx(math.sqrt(2 * c * 3600.0))


def test_auto_without_spot_workers_uses_the_upper_bound(tmp_path):
    session = session_with(tmp_path, Clock(), write=1.0, checkpoint_interval="Auto",
                           checkpoint_interval_max=1800.0)  # fmt: skip
    session.checkpoint(1, {"m": b"x"})
    assert session.checkpoint_interval == 1800.0


def test_c_and_the_interval_reach_the_operator_through_the_run(mlflow_uri, experiment, tmp_path):
    """The runtime writes them with the checkpoint tags; the operator's existing read finds them."""
    client = MlflowClient(mlflow_uri)
    exp = client.get_experiment_by_name(experiment)
    run_id = client.create_run(
        exp.experiment_id, tags={"mlplane.trainingjob.uid": "u-9"}
    ).info.run_id
    clock = Clock()
    context = TrainingContext(
        checkpoint_uri=str(tmp_path / "ck"), tracking_uri=mlflow_uri, run_id=run_id, attempt=2,
        checkpoint_interval="Auto", reclaim_mtbr_seconds=1800.0, trainingjob_uid="u-9",
    )  # fmt: skip
    session = TrainingSession.start(context)
    session.clock = clock
    save = session.store.save

    def slow_save(*args, **kwargs):
        clock.now += 4.0
        return save(*args, **kwargs)

    session.store.save = slow_save  # type: ignore[method-assign]
    session.checkpoint(7, {"m": b"x"})
    seen = Registry(mlflow_uri).observe_run("u-9", None, experiment=experiment, run_id=run_id)
    assert seen is not None
    assert seen.checkpoint_step == 7
    assert seen.checkpoint_write_seconds == 4.0
    assert seen.checkpoint_interval_seconds == pytest.approx(math.sqrt(2 * 4.0 * 1800.0), abs=1e-3)
    assert seen.checkpoint_interval_attempt == 2
