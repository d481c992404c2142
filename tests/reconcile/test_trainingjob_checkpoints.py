"""Where a TrainingJob checkpoints: its uid's own folder, the default base, the warm start.

Pure: the reconcile core and the handlers' verdict (``assess``), no Kopf, no I/O. The same
verdict runs in the local runner (``Runner._invalid`` with its config).
"""

from __future__ import annotations

import copy
from datetime import UTC, datetime
from typing import Any

import yaml

from mlplane.crds.validate import parse
from mlplane.operator import conditions, handlers
from mlplane.operator.builders.rayjob import config_problems
from mlplane.operator.config import OperatorConfig
from mlplane.operator.reconcile.trainingjob import Observed, ObservedRun, reconcile

T0 = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)
NO_BASE = OperatorConfig()
BASE = OperatorConfig(checkpoint_base_uri="s3://ckpt-base/mlplane/")


def spot_job(uid: str = "uid-1", **checkpoint: Any) -> dict[str, Any]:
    body = {
        "apiVersion": "mlplane.dev/v1alpha1", "kind": "TrainingJob",
        "metadata": {"name": "churn", "namespace": "ml", "uid": uid, "generation": 1},
        "spec": {
            "entrypoint": "python train.py",
            "workers": [{"name": "gpu", "replicas": 2, "capacity": "Spot",
                         "resources": {"gpu": 1}}],
            "mlflow": {"registeredModel": "churn"},
        },
    }  # fmt: skip
    if checkpoint:
        body["spec"]["checkpoint"] = checkpoint
    return body


def first_attempt(body: dict[str, Any], config: OperatorConfig) -> tuple[dict, dict[str, str]]:
    """Status and attempt-1 env after the run exists (what a handler's second round sees)."""
    uid = body["metadata"]["uid"]
    plan = reconcile(parse(body), Observed(run=ObservedRun("run-1")), T0, config, uid=uid)
    (rayjob,) = plan.create
    env = yaml.safe_load(rayjob["spec"]["runtimeEnvYAML"])["env_vars"]
    return plan.status, env


def test_a_job_applied_again_gets_a_fresh_checkpoint_folder():
    """Defect 3 at the core: same name and checkpoint.uri, new uid → another folder."""
    _, old_env = first_attempt(spot_job("uid-old", uri="s3://ckpt/churn"), NO_BASE)
    new_status, new_env = first_attempt(spot_job("uid-new", uri="s3://ckpt/churn"), NO_BASE)
    assert old_env["MLPLANE_CHECKPOINT_URI"] == "s3://ckpt/churn/uid-old"
    assert new_env["MLPLANE_CHECKPOINT_URI"] == "s3://ckpt/churn/uid-new"
    assert new_status["checkpointUri"] == "s3://ckpt/churn/uid-new"
    assert "warmStart" not in new_status and "MLPLANE_RESUME_FROM" not in new_env


def test_spot_job_without_checkpoint_uri_uses_the_default_base():
    status, env = first_attempt(spot_job(), BASE)
    assert env["MLPLANE_CHECKPOINT_URI"] == "s3://ckpt-base/mlplane/ml/churn/uid-1"
    assert status["checkpointUri"] == env["MLPLANE_CHECKPOINT_URI"]
    assert config_problems(parse(spot_job()), BASE) == []


def test_artifacts_uri_gives_a_default_base_too():
    config = OperatorConfig(artifacts_uri="s3://art")
    assert config.checkpoint_base == "s3://art/checkpoints"
    _, env = first_attempt(spot_job(), config)
    assert env["MLPLANE_CHECKPOINT_URI"] == "s3://art/checkpoints/ml/churn/uid-1"


def test_warm_start_is_passed_on_and_shown_in_status():
    old = "s3://ckpt/churn/uid-old/step-000000000040"
    status, env = first_attempt(spot_job("uid-new", uri="s3://ckpt/churn", resumeFrom=old), BASE)
    assert env["MLPLANE_RESUME_FROM"] == old
    assert status["warmStart"] == {"uri": old}
    started = conditions.find(status["conditions"], "Succeeded")
    assert started is not None and old in started["message"]


def test_spot_without_any_checkpoint_location_is_invalid_saying_how_to_fix_it():
    body = spot_job()
    (problem,) = config_problems(parse(body), NO_BASE)
    assert problem.path == "spec.checkpoint.uri"
    for hint in ("operator.checkpointBaseUri", "MLPLANE_CHECKPOINT_BASE_URI", "checkpoint.uri"):
        assert hint in problem.message
    verdict = handlers.assess("TrainingJob", body, T0, NO_BASE)
    assert not verdict.valid
    assert verdict.status["phase"] == "Failed"
    invalid = conditions.find(verdict.status["conditions"], "InvalidSpec")
    assert invalid is not None and invalid["status"] == "True"
    assert "MLPLANE_CHECKPOINT_BASE_URI" in invalid["message"]
    assert verdict.warning and "operator.checkpointBaseUri" in verdict.warning
    # Without a config (what `mlplane validate` checks), the API accepts it.
    assert handlers.assess("TrainingJob", body, T0).valid


def test_configuring_a_base_lifts_the_verdict():
    """An operator restarted with a base re-assesses (resume): InvalidSpec goes, Pending."""
    body = spot_job()
    rejected = handlers.assess("TrainingJob", body, T0, NO_BASE)
    again = copy.deepcopy(body)
    again["status"] = rejected.status
    verdict = handlers.assess("TrainingJob", again, T0, BASE)
    assert verdict.valid
    assert verdict.status["phase"] == "Pending"
    assert conditions.find(verdict.status["conditions"], "InvalidSpec") is None


def test_on_demand_jobs_need_no_checkpoint_location():
    body = spot_job()
    body["spec"]["workers"][0]["capacity"] = "OnDemand"
    assert config_problems(parse(body), NO_BASE) == []
    status, env = first_attempt(body, NO_BASE)
    assert "MLPLANE_CHECKPOINT_URI" not in env and "checkpointUri" not in status
