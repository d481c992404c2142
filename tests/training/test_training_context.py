"""The operator's environment contract, parsed and checked."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from mlplane.training.context import LOCAL_RUN_NAME, TrainingContext, rfc3339


def test_defaults_when_run_by_hand():
    ctx = TrainingContext.from_env({})
    assert ctx.attempt == 1 and not ctx.resuming
    assert ctx.checkpoint_uri is None and ctx.run_id is None and ctx.trainingjob is None
    assert ctx.checkpoint_keep == 3 and ctx.max_worker_failures == 3
    assert ctx.run_name == LOCAL_RUN_NAME
    assert ctx.worker_resources == {} and ctx.num_workers is None and not ctx.use_gpu


def test_full_contract(tmp_path):
    ctx = TrainingContext.from_env(
        {
            "MLPLANE_TRAININGJOB": "team-a/churn",
            "MLPLANE_TRAININGJOB_UID": "1234",
            "MLPLANE_ATTEMPT": "3",
            "MLPLANE_CHECKPOINT_URI": "s3://bucket/ckpt/team-a/churn/",
            "MLPLANE_CHECKPOINT_KEEP": "5",
            "MLPLANE_MAX_WORKER_FAILURES": "-1",
            "MLFLOW_TRACKING_URI": "http://127.0.0.1:5000",
            "MLFLOW_RUN_ID": "abc",
            "MLPLANE_MLFLOW_EXPERIMENT": "churn",
            "MLPLANE_WORKER_RESOURCES": '{"spot": 0.1}',
            "MLPLANE_NUM_WORKERS": "4",
            "MLPLANE_USE_GPU": "true",
        }
    )
    assert ctx.trainingjob == "team-a/churn" and ctx.trainingjob_uid == "1234"
    assert ctx.attempt == 3 and ctx.resuming
    assert ctx.checkpoint_uri == "s3://bucket/ckpt/team-a/churn"
    assert (ctx.checkpoint_keep, ctx.max_worker_failures) == (5, -1)
    assert (ctx.tracking_uri, ctx.run_id, ctx.experiment) == (
        "http://127.0.0.1:5000",
        "abc",
        "churn",
    )
    assert ctx.worker_resources == {"spot": 0.1}
    assert ctx.num_workers == 4 and ctx.use_gpu
    assert ctx.run_name == "team-a--churn"


def test_local_paths_become_absolute(tmp_path):
    ctx = TrainingContext.from_env({"MLPLANE_CHECKPOINT_URI": "rel/ckpt"})
    assert ctx.checkpoint_uri == str(tmp_path / "rel" / "ckpt")
    ctx = TrainingContext.from_env({"MLPLANE_CHECKPOINT_URI": f"file://{tmp_path}/x/"})
    assert ctx.checkpoint_uri == str(tmp_path / "x")


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("MLPLANE_ATTEMPT", "0", "MLPLANE_ATTEMPT must be >= 1"),
        ("MLPLANE_ATTEMPT", "two", "MLPLANE_ATTEMPT must be an integer"),
        ("MLPLANE_CHECKPOINT_KEEP", "0", "MLPLANE_CHECKPOINT_KEEP must be >= 1"),
        ("MLPLANE_MAX_WORKER_FAILURES", "-2", "MLPLANE_MAX_WORKER_FAILURES must be >= -1"),
        ("MLPLANE_CHECKPOINT_URI", "gs://b/p", "unsupported scheme 'gs'"),
        ("MLPLANE_CHECKPOINT_URI", "s3://", "no bucket"),
        ("MLPLANE_WORKER_RESOURCES", "spot", "must be a JSON object"),
        ("MLPLANE_WORKER_RESOURCES", '{"spot": -1}', "non-negative numbers"),
        ("MLPLANE_WORKER_RESOURCES", '["spot"]', "non-negative numbers"),
        ("MLPLANE_USE_GPU", "maybe", "MLPLANE_USE_GPU must be true or false"),
        ("MLPLANE_NUM_WORKERS", "0", "MLPLANE_NUM_WORKERS must be >= 1"),
    ],
)
def test_bad_values_name_the_variable(name, value, message):
    with pytest.raises(ValueError, match=message):
        TrainingContext.from_env({name: value})


def test_run_name_is_a_safe_folder_name():
    ctx = TrainingContext.from_env({"MLPLANE_TRAININGJOB": "ns/a b:c"})
    assert ctx.run_name == "ns--a-b-c"


def test_rfc3339_is_utc_with_z():
    moment = datetime(2026, 1, 2, 4, 5, 6, 789000, tzinfo=timezone(timedelta(hours=2)))
    assert rfc3339(moment) == "2026-01-02T02:05:06.789Z"
    now = rfc3339()
    assert now.endswith("Z")
    assert datetime.fromisoformat(now.replace("Z", "+00:00")).tzinfo == UTC
