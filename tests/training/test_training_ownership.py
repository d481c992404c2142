"""A TrainingJob restores only its own checkpoints; a warm start only when asked for.

Against real checkpoint stores: a local folder and S3 (moto). The scenario of defect 3: a
TrainingJob is deleted and applied again (new uid), or a retraining reuses a template's
``checkpoint.uri``; the old job's checkpoints are still there. The new job must train from
step 0, not resume the old final step and hand back the old weights.
"""

from __future__ import annotations

import pickle

import pytest
from mlflow import MlflowClient

from mlplane.training import TrainingContext, TrainingSession, find_checkpoint, open_store
from mlplane.training.checkpoints import step_dir
from mlplane.training.examples import sklearn_tabular as ex
from mlplane.training.runtime import TAG_WARM_START_STEP, TAG_WARM_START_URI


@pytest.fixture(params=["local", "s3"])
def checkpoint_uri(request, tmp_path) -> str:
    if request.param == "local":
        return str(tmp_path / "ckpt" / "churn")
    bucket = request.getfixturevalue("s3_bucket")
    return f"s3://{bucket}/ckpt/churn"


def session(uri: str, uid: str | None, attempt: int = 1, resume_from: str | None = None):
    ctx = TrainingContext(trainingjob="ns/churn", trainingjob_uid=uid, attempt=attempt,
                          checkpoint_uri=uri, resume_from=resume_from)  # fmt: skip
    return TrainingSession.start(ctx, mlflow=False)


def coefficients(model) -> list[float]:
    return [float(x) for x in model.named_steps["clf"].coef_.ravel()]


def test_new_uid_with_the_same_uri_starts_at_step_zero(checkpoint_uri):
    """The old job's final checkpoint sits at the same URI; the new job trains all its steps."""
    old_cfg = ex.Config(steps=20, checkpoint_every=10, rows=200)
    old_model = ex.train(session(checkpoint_uri, "uid-old"), old_cfg)
    assert [c.step for c in open_store(checkpoint_uri).checkpoints()] == [10, 20]

    # Applied again with other data (a retraining): same name, same checkpoint.uri, new uid.
    new_cfg = ex.Config(steps=20, checkpoint_every=10, rows=200, seed=8)
    new = session(checkpoint_uri, "uid-new")
    assert new.restore() is None, "a new TrainingJob must not resume another uid's checkpoint"
    new_model = ex.train(new, new_cfg)

    fresh = ex.train(TrainingSession.start(TrainingContext(), mlflow=False), new_cfg)
    assert coefficients(new_model) == coefficients(fresh)  # trained from step 0, all 20 steps
    assert coefficients(new_model) != coefficients(old_model)  # not the old weights
    newest = open_store(checkpoint_uri).latest()
    assert newest is not None and newest.trainingjob_uid == "uid-new" and newest.attempt == 1


def test_a_later_attempt_and_a_retried_task_resume_their_own_uid(checkpoint_uri):
    store = open_store(checkpoint_uri)
    store.save(90, {"m": b"foreign"}, attempt=3, trainingjob_uid="uid-old")
    mine = session(checkpoint_uri, "uid-new")
    mine.checkpoint(10, {"m": b"ten"})
    # attempt 1 again (a task retried after a worker loss) and attempt 2 both resume step 10,
    # never the other uid's higher step
    for attempt in (1, 2):
        restored = session(checkpoint_uri, "uid-new", attempt).restore()
        assert restored is not None
        assert (restored.step, dict(restored.files), restored.warm_start) == (
            10, {"m": b"ten"}, False,
        )  # fmt: skip
        assert restored.info.trainingjob_uid == "uid-new"


def test_a_script_run_by_hand_resumes_whatever_is_there(checkpoint_uri):
    open_store(checkpoint_uri).save(30, {"m": b"x"}, attempt=1, trainingjob_uid="uid-old")
    restored = session(checkpoint_uri, None).restore()
    assert restored is not None and restored.step == 30


def test_resume_from_one_checkpoint_is_a_warm_start(checkpoint_uri, tmp_path):
    old = open_store(f"{checkpoint_uri}-old/uid-old")
    old.save(40, {"m": b"forty"}, attempt=2, trainingjob_uid="uid-old")
    old.save(50, {"m": b"fifty"}, attempt=2, trainingjob_uid="uid-old")
    target = f"{checkpoint_uri}-old/uid-old/{step_dir(40)}"

    new = session(f"{checkpoint_uri}/uid-new", "uid-new", resume_from=target)
    restored = new.restore()
    assert restored is not None
    assert (restored.step, dict(restored.files), restored.warm_start) == (40, {"m": b"forty"}, True)

    # A folder of checkpoints: its newest.
    folder = session(
        f"{checkpoint_uri}/uid-2", "uid-2", resume_from=f"{checkpoint_uri}-old/uid-old"
    )
    assert folder.restore().step == 50

    # Once the job has a checkpoint of its own, that wins over the warm start.
    new.checkpoint(5, {"m": b"own"})
    again = session(f"{checkpoint_uri}/uid-new", "uid-new", attempt=2, resume_from=target)
    assert (again.restore().step, again.restore().warm_start) == (5, False)


def test_resume_from_nothing_fails_instead_of_training_from_scratch(checkpoint_uri):
    missing = f"{checkpoint_uri}-nowhere/{step_dir(40)}"
    with pytest.raises(FileNotFoundError, match="resumeFrom"):
        session(f"{checkpoint_uri}/uid-new", "uid-new", resume_from=missing).restore()
    with pytest.raises(FileNotFoundError):
        find_checkpoint(f"{checkpoint_uri}-empty")


def test_warm_start_is_recorded_on_the_run_and_trains_the_full_schedule(
    mlflow_uri, operator_run, tmp_path
):
    cfg = ex.Config(steps=20, checkpoint_every=10, rows=200)
    old_uri = str(tmp_path / "old" / "uid-old")
    old_model = ex.train(session(old_uri, "uid-old"), cfg)
    warm_from = f"{old_uri}/{step_dir(20)}"
    ctx = TrainingContext(tracking_uri=mlflow_uri, run_id=operator_run, trainingjob="ns/churn",
                          trainingjob_uid="uid-new", checkpoint_uri=str(tmp_path / "uid-new"),
                          resume_from=warm_from)  # fmt: skip
    warm = TrainingSession.start(ctx)
    model = ex.train(warm, cfg)
    client = MlflowClient(mlflow_uri)
    tags = client.get_run(operator_run).data.tags
    assert tags[TAG_WARM_START_URI] == warm_from and tags[TAG_WARM_START_STEP] == "20"
    steps = [m.step for m in client.get_metric_history(operator_run, "val_accuracy")]
    assert steps == list(range(1, 21))  # the full schedule, from the old weights
    assert coefficients(model) != coefficients(old_model)
    restored = pickle.loads(open_store(old_uri).read(open_store(old_uri).latest(), "model.pkl"))
    assert coefficients(restored) == coefficients(old_model)


def test_context_reads_resume_from(tmp_path):
    ctx = TrainingContext.from_env({"MLPLANE_RESUME_FROM": "s3://b/old/u/step-000000000040/"})
    assert ctx.resume_from == "s3://b/old/u/step-000000000040"
    with pytest.raises(ValueError, match="MLPLANE_RESUME_FROM"):
        TrainingContext.from_env({"MLPLANE_RESUME_FROM": "gs://b/x"})
