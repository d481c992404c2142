"""TrainingJob attempt → RayJob: names, labels, owners, runtime env, Kueue, autoscaling."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml
from builder_strategies import configs, trainingjobs
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from kuberay_crds import assert_valid, label_maps

from mlplane.crds.validate import parse
from mlplane.operator.builders import build_rayjob, first_attempt_capacity, render
from mlplane.operator.builders.rayjob import SUBMISSION_MODE
from mlplane.operator.config import OperatorConfig

EXAMPLE = Path(__file__).resolve().parents[2] / "crds" / "examples" / "trainingjob-gpu-spot.yaml"
UID = "6a1f3c2e-0000-4000-8000-000000000001"
CONFIG = OperatorConfig(mlflow_tracking_uri="http://mlflow.mlflow:5000")


def _body(**spec_changes):
    body = yaml.safe_load(EXAMPLE.read_text())
    body["spec"].update(spec_changes)
    return body


def _tj(**spec_changes):
    return parse(_body(**spec_changes))


def _build(tj=None, attempt=1, capacity="Spot", config=CONFIG, run_id=None):
    return build_rayjob(tj or _tj(), attempt, capacity, config, run_id=run_id, owner_uid=UID)


def _env(rayjob):
    return yaml.safe_load(rayjob["spec"]["runtimeEnvYAML"])["env_vars"]


def test_name_namespace_owner():
    rayjob = _build(attempt=3)
    assert rayjob["apiVersion"] == "ray.io/v1"
    assert rayjob["kind"] == "RayJob"
    assert rayjob["metadata"]["name"] == "churn-classifier-a3"
    assert rayjob["metadata"]["namespace"] == "ml-team"
    assert rayjob["metadata"]["ownerReferences"] == [
        {
            "apiVersion": "mlplane.dev/v1alpha1",
            "kind": "TrainingJob",
            "name": "churn-classifier",
            "uid": UID,
            "controller": True,
            "blockOwnerDeletion": True,
        }
    ]


def test_same_inputs_same_object():
    assert _build(attempt=2, run_id="r") == _build(attempt=2, run_id="r")
    assert _build(attempt=2)["metadata"]["name"] != _build(attempt=3)["metadata"]["name"]


def test_owner_uid_is_required():
    with pytest.raises(ValueError, match="no uid"):
        build_rayjob(_tj(), 1, "Spot", CONFIG, run_id=None, owner_uid="")


@pytest.mark.parametrize("attempt", [0, -1])
def test_attempts_start_at_one(attempt):
    with pytest.raises(ValueError, match="numbered from 1"):
        _build(attempt=attempt)


def test_capacity_must_be_an_attempt_capacity():
    with pytest.raises(ValueError, match="OnDemand or Spot"):
        _build(capacity="SpotWithFallback")


def test_names_kuberay_rejects_are_refused():
    body = _body()
    body["metadata"]["name"] = "7churn"  # the API now rejects it first (CEL), the builder too
    with pytest.raises(ValueError, match="must start with a letter"):
        parse(body)
    resource = parse(_body())
    resource.metadata.name = "7churn"  # had it got through (an older CRD), still refused
    with pytest.raises(ValueError, match="DNS-1035"):
        _build(resource)


def test_labels_are_chosen_never_copied_from_the_parent():
    body = _body()
    body["metadata"]["labels"] = {
        "app.kubernetes.io/instance": "ml-apps",
        "argocd.argoproj.io/instance": "ml-apps",
        "team": "churn",
    }
    body["metadata"]["annotations"] = {"argocd.argoproj.io/tracking-id": "x"}
    rayjob = _build(parse(body), attempt=2, capacity="OnDemand")
    expected = {
        "app.kubernetes.io/managed-by": "mlplane",
        "mlplane.dev/trainingjob": "churn-classifier",
        "mlplane.dev/attempt": "2",
        "mlplane.dev/capacity": "OnDemand",
    }
    assert rayjob["metadata"]["labels"] == expected
    assert "annotations" not in rayjob["metadata"]
    cluster = rayjob["spec"]["rayClusterSpec"]
    for template in [cluster["headGroupSpec"]["template"]] + [
        w["template"] for w in cluster["workerGroupSpecs"]
    ]:
        assert template["metadata"]["labels"] == expected


@settings(
    max_examples=60, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow]
)
@given(body=trainingjobs(), config=configs(), attempt=st.integers(1, 40))
def test_no_parent_label_reaches_any_child_label_map(body, config, attempt):
    parent = body["metadata"].get("labels", {})
    rayjob = build_rayjob(parse(body), attempt, "Spot", config, run_id=None, owner_uid="u")
    for path, mapping in label_maps(rayjob):
        if path.endswith("nodeSelector"):
            continue
        leaked = {k for k in parent if k in mapping and k != "app.kubernetes.io/managed-by"}
        assert not leaked, f"{path} carries parent labels {leaked}"
    assert rayjob["metadata"]["name"] == f"{body['metadata']['name']}-a{attempt}"


def test_runtime_env_carries_what_the_training_runtime_needs():
    tj = _tj(
        runtimeEnv={
            "env_vars": {"DATA_URI": "s3://d", "MLPLANE_ATTEMPT": "99", "N": 5},
            "pip": ["x==1"],
        }
    )
    rayjob = _build(tj, attempt=4, run_id="abc123")
    runtime = yaml.safe_load(rayjob["spec"]["runtimeEnvYAML"])
    assert runtime["pip"] == ["x==1"]
    assert runtime["env_vars"] == {
        "DATA_URI": "s3://d",
        "N": "5",
        "MLPLANE_ATTEMPT": "4",  # the operator's value wins over the user's
        "MLPLANE_CHECKPOINT_URI": f"s3://ml-team-checkpoints/churn-classifier/{UID}",
        "MLPLANE_CHECKPOINT_KEEP": "3",
        "MLPLANE_MAX_WORKER_FAILURES": "3",
        "MLFLOW_TRACKING_URI": "http://mlflow.mlflow:5000",
        "MLFLOW_RUN_ID": "abc123",
        "MLPLANE_MLFLOW_EXPERIMENT": "churn",
        "MLPLANE_TRAININGJOB": "ml-team/churn-classifier",
        "MLPLANE_TRAININGJOB_UID": UID,
    }
    assert rayjob["spec"]["entrypoint"] == "python -m churn.train --epochs 20"


def test_runtime_env_defaults():
    body = _body(workers=[], mlflow={"trackingUri": "http://own:5000"})
    del body["spec"]["checkpoint"]
    del body["spec"]["runtimeEnv"]
    env = _env(_build(parse(body), capacity="OnDemand"))
    assert "MLFLOW_RUN_ID" not in env
    assert "MLPLANE_CHECKPOINT_URI" not in env  # nowhere to put checkpoints
    assert env["MLFLOW_TRACKING_URI"] == "http://own:5000"
    assert env["MLPLANE_MLFLOW_EXPERIMENT"] == "ml-team/churn-classifier"
    config = OperatorConfig(artifacts_uri="s3://art/base/")
    env = _env(_build(parse(body), capacity="OnDemand", config=config))
    assert env["MLPLANE_CHECKPOINT_URI"] == (
        f"s3://art/base/checkpoints/ml-team/churn-classifier/{UID}"
    )


def test_checkpoints_are_scoped_by_the_trainingjobs_uid():
    """Defect 3: a job applied again (same name and checkpoint.uri, new uid) gets a new folder.

    Every attempt of one uid shares the folder (attempt 2 resumes attempt 1's progress); a
    new uid never sees the old one's checkpoints.
    """
    tj = _tj()
    first = [_env(build_rayjob(tj, n, "Spot", CONFIG, run_id="r", owner_uid="uid-old"))
             for n in (1, 2)]  # fmt: skip
    again = _env(build_rayjob(tj, 1, "Spot", CONFIG, run_id="r2", owner_uid="uid-new"))
    assert first[0]["MLPLANE_CHECKPOINT_URI"] == "s3://ml-team-checkpoints/churn-classifier/uid-old"
    assert first[1]["MLPLANE_CHECKPOINT_URI"] == first[0]["MLPLANE_CHECKPOINT_URI"]
    assert again["MLPLANE_CHECKPOINT_URI"] == "s3://ml-team-checkpoints/churn-classifier/uid-new"
    assert "MLPLANE_RESUME_FROM" not in again  # no warm start unless asked for


def test_default_checkpoint_base_for_spot_without_checkpoint_uri():
    body = _body()
    del body["spec"]["checkpoint"]
    tj = parse(body)
    explicit = OperatorConfig(checkpoint_base_uri="s3://ckpt-base/mlplane",
                              artifacts_uri="s3://art/base")  # fmt: skip
    env = _env(_build(tj, config=explicit))
    assert env["MLPLANE_CHECKPOINT_URI"] == (
        f"s3://ckpt-base/mlplane/ml-team/churn-classifier/{UID}"
    )
    with pytest.raises(
        ValueError, match=r"operator\.checkpointBaseUri.*MLPLANE_CHECKPOINT_BASE_URI"
    ):
        _build(tj, config=CONFIG)  # spot workers and nowhere to checkpoint


def test_resume_from_is_passed_to_the_attempt():
    tj = _tj(
        checkpoint={"uri": "s3://ckpt/new", "resumeFrom": "s3://ckpt/old/u-0/step-000000000040"}
    )
    env = _env(_build(tj))
    assert env["MLPLANE_RESUME_FROM"] == "s3://ckpt/old/u-0/step-000000000040"
    assert env["MLPLANE_CHECKPOINT_URI"] == f"s3://ckpt/new/{UID}"


def test_render_without_uid_shows_a_placeholder():
    from mlplane.operator.builders.rayjob import _rayjob

    rayjob = _rayjob(_tj(), 1, "Spot", CONFIG, run_id=None, owner_uid=None)
    assert (
        _env(rayjob)["MLPLANE_CHECKPOINT_URI"] == "s3://ml-team-checkpoints/churn-classifier/<uid>"
    )


def test_runtime_env_vars_must_be_scalars():
    with pytest.raises(ValueError, match=r"env_vars\.X must be a string"):
        _build(_tj(runtimeEnv={"env_vars": {"X": {"nested": 1}}}))


def test_attempt_lifecycle_fields():
    spec = _build()["spec"]
    assert spec["submissionMode"] == SUBMISSION_MODE == "SidecarMode"
    assert spec["backoffLimit"] == 0
    assert spec["shutdownAfterJobFinishes"] is True
    assert spec["ttlSecondsAfterFinished"] == 3600
    assert spec["activeDeadlineSeconds"] == 21600
    assert spec["suspend"] is False
    assert spec["rayClusterSpec"]["rayVersion"] == "2.60.0"
    body = _body()
    del body["spec"]["activeDeadlineSeconds"], body["spec"]["ttlSecondsAfterFinished"]
    spec = _build(parse(body))["spec"]
    assert "activeDeadlineSeconds" not in spec
    assert spec["ttlSecondsAfterFinished"] == 0


def test_kueue_queue_label_suspends_and_turns_autoscaling_off():
    rayjob = _build(_tj(queueName="gpu-queue"))
    assert rayjob["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "gpu-queue"
    assert rayjob["spec"]["suspend"] is True
    cluster = rayjob["spec"]["rayClusterSpec"]
    assert cluster["enableInTreeAutoscaling"] is False
    (group,) = cluster["workerGroupSpecs"]
    assert group["replicas"] == group["minReplicas"] == group["maxReplicas"] == 4
    # The queue label stays off the pods (Kueue reads it on the RayJob only).
    assert "kueue.x-k8s.io/queue-name" not in group["template"]["metadata"]["labels"]
    assert_valid(rayjob)


def test_suspend_without_queue():
    rayjob = _build(_tj(suspend=True))
    assert rayjob["spec"]["suspend"] is True
    assert "kueue.x-k8s.io/queue-name" not in rayjob["metadata"]["labels"]


def test_kueue_limits():
    group = {"name": "g", "replicas": 1}
    with pytest.raises(ValueError, match="at most 7 worker groups"):
        _build(
            _tj(queueName="q", workers=[{**group, "name": f"g{i}"} for i in range(8)]),
            capacity="OnDemand",
        )
    with pytest.raises(ValueError, match="'head'"):
        _build(_tj(queueName="q", workers=[{**group, "name": "head"}]), capacity="OnDemand")
    # Without a queue, both are fine for KubeRay.
    _build(_tj(workers=[{**group, "name": "head"}]), capacity="OnDemand")


def test_autoscaling_bounds():
    workers = [
        {"name": "fixed", "replicas": 2},
        {"name": "floor", "replicas": 3, "minReplicas": 1},
        {"name": "ceiling", "replicas": 1, "maxReplicas": 5},
    ]
    cluster = _build(_tj(workers=workers), capacity="OnDemand")["spec"]["rayClusterSpec"]
    assert cluster["enableInTreeAutoscaling"] is True
    bounds = {
        w["groupName"]: (w["minReplicas"], w["replicas"], w["maxReplicas"])
        for w in cluster["workerGroupSpecs"]
    }
    assert bounds == {"fixed": (2, 2, 2), "floor": (1, 3, 3), "ceiling": (1, 1, 5)}
    cluster = _build(_tj(workers=workers[:1]), capacity="OnDemand")["spec"]["rayClusterSpec"]
    assert cluster["enableInTreeAutoscaling"] is False


def test_head_schedules_no_work_when_workers_exist():
    cluster = _build()["spec"]["rayClusterSpec"]
    assert cluster["headGroupSpec"]["rayStartParams"] == {"num-cpus": "0"}
    alone = _build(_tj(workers=[]), capacity="OnDemand")["spec"]["rayClusterSpec"]
    assert alone["headGroupSpec"]["rayStartParams"] == {}
    idle = _build(_tj(workers=[{"name": "w", "replicas": 0}]), capacity="OnDemand")
    assert idle["spec"]["rayClusterSpec"]["headGroupSpec"]["rayStartParams"] == {}


def test_containers_images_and_gpu_limits():
    cluster = _build()["spec"]["rayClusterSpec"]
    head = cluster["headGroupSpec"]["template"]["spec"]["containers"]
    worker = cluster["workerGroupSpecs"][0]["template"]["spec"]["containers"]
    assert [c["name"] for c in head] == ["ray-head"]
    assert [c["name"] for c in worker] == ["ray-worker"]
    assert head[0]["image"] == worker[0]["image"] == "ghcr.io/example/churn-train:1.4.0"
    assert head[0]["resources"]["limits"] == {"cpu": "4", "memory": "16Gi"}
    assert worker[0]["resources"]["limits"] == {"cpu": "8", "memory": "32Gi", "nvidia.com/gpu": "1"}
    assert worker[0]["resources"]["requests"] == worker[0]["resources"]["limits"]
    body = _body()
    del body["spec"]["image"]
    config = OperatorConfig(default_training_image="registry/ray:x")
    cluster = _build(parse(body), config=config)["spec"]["rayClusterSpec"]
    assert (
        cluster["headGroupSpec"]["template"]["spec"]["containers"][0]["image"] == "registry/ray:x"
    )


def test_fallback_attempt_moves_spot_with_fallback_workers_to_on_demand():
    workers = [
        {"name": "a", "replicas": 1, "capacity": "SpotWithFallback"},
        {"name": "b", "replicas": 1, "capacity": "Spot"},
        {"name": "c", "replicas": 1, "capacity": "OnDemand"},
    ]
    tj = _tj(workers=workers)
    assert first_attempt_capacity(tj) == "Spot"
    selectors = {
        w["groupName"]: w["template"]["spec"]["nodeSelector"]["eks.amazonaws.com/capacityType"]
        for w in _build(tj, capacity="OnDemand")["spec"]["rayClusterSpec"]["workerGroupSpecs"]
    }
    assert selectors == {"a": "ON_DEMAND", "b": "SPOT", "c": "ON_DEMAND"}
    assert first_attempt_capacity(_tj(workers=workers[2:])) == "OnDemand"


def test_render_is_attempt_one_without_owner_unless_the_uid_is_known():
    body = _body()
    (rayjob,) = render(parse(body), CONFIG)
    assert rayjob == {
        **rayjob,
        "metadata": {
            "name": "churn-classifier-a1",
            "namespace": "ml-team",
            "labels": {
                "app.kubernetes.io/managed-by": "mlplane",
                "mlplane.dev/trainingjob": "churn-classifier",
                "mlplane.dev/attempt": "1",
                "mlplane.dev/capacity": "Spot",
            },
        },
    }
    assert "MLPLANE_TRAININGJOB_UID" not in _env(rayjob)
    with_uid = copy.deepcopy(body)
    with_uid["metadata"]["uid"] = UID
    (rayjob,) = render(parse(with_uid), CONFIG)
    assert rayjob == _build(capacity="Spot")
    no_namespace = copy.deepcopy(body)
    del no_namespace["metadata"]["namespace"]
    (rayjob,) = render(parse(no_namespace), CONFIG)
    assert rayjob["metadata"]["namespace"] == "default"


def test_training_pods_use_the_configured_service_account():
    config = OperatorConfig.from_env({"MLPLANE_TRAINING_SERVICE_ACCOUNT": "mlplane-training"})
    rayjob = build_rayjob(parse(_body()), 1, "Spot", config, run_id=None, owner_uid="u")
    cluster = rayjob["spec"]["rayClusterSpec"]
    templates = [cluster["headGroupSpec"]["template"]] + [
        g["template"] for g in cluster["workerGroupSpecs"]
    ]
    assert {t["spec"]["serviceAccountName"] for t in templates} == {"mlplane-training"}
    assert_valid(rayjob)
    plain = build_rayjob(parse(_body()), 1, "Spot", OperatorConfig(), run_id=None, owner_uid="u")
    head = plain["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]
    assert "serviceAccountName" not in head
