"""Every generated RayJob and RayService validates strictly against KubeRay v1.7.0's CRDs."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml
from builder_strategies import configs, modeldeployments, trainingjobs
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from kuberay_crds import ENV, assert_valid, crd_schema, problems

from mlplane.crds import ModelDeployment, TrainingJob
from mlplane.crds.validate import parse
from mlplane.operator.builders import Variant, build_rayjob, build_rayservice, render
from mlplane.operator.config import OperatorConfig

EXAMPLES = Path(__file__).resolve().parents[2] / "crds" / "examples"
SETTINGS = settings(
    max_examples=120,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def _example(name: str) -> dict:
    return yaml.safe_load((EXAMPLES / name).read_text())


@pytest.mark.parametrize("config", ["eks", "karpenter", "gke"])
def test_example_trainingjob_renders_valid_rayjob(config):
    objects = render(
        parse(_example("trainingjob-gpu-spot.yaml")), OperatorConfig(capacity_labels=config)
    )
    assert [o["kind"] for o in objects] == ["RayJob"]
    assert_valid(objects[0])


@pytest.mark.parametrize("config", ["eks", "karpenter", "gke"])
def test_example_modeldeployment_renders_valid_rayservice(config):
    md = parse(_example("modeldeployment-autoscaled-drift.yaml"))
    objects = render(md, OperatorConfig(capacity_labels=config), model_version=7)
    assert [o["kind"] for o in objects] == ["RayService"]
    assert_valid(objects[0])


@SETTINGS
@given(
    body=trainingjobs(),
    config=configs(),
    attempt=st.integers(1, 250),
    capacity=st.sampled_from(["OnDemand", "Spot"]),
    run_id=st.one_of(st.none(), st.just("0123456789abcdef0123456789abcdef")),
)
def test_every_rayjob_is_valid(body, config, attempt, capacity, run_id):
    tj = parse(body)
    assert isinstance(tj, TrainingJob)
    rayjob = build_rayjob(tj, attempt, capacity, config, run_id=run_id, owner_uid="uid-1")
    assert_valid(rayjob)


@SETTINGS
@given(
    body=modeldeployments(),
    config=configs(),
    version=st.integers(1, 10_000),
    weights=st.one_of(st.none(), st.sampled_from([(100,), (90, 10), (50, 50), (34, 33, 33)])),
)
def test_every_rayservice_is_valid(body, config, version, weights):
    md = parse(body)
    assert isinstance(md, ModelDeployment)
    variants = (
        None
        if weights is None
        else [Variant(f"v{i}", version + i, w) for i, w in enumerate(weights)]
    )
    rayservice = build_rayservice(
        md,
        version,
        config,
        owner_uid="uid-2",
        variants=variants,
        bucketing_header="x-user-id" if variants else None,
        abtest="ab" if variants else None,
    )
    assert_valid(rayservice)


# --- the validator itself must be able to fail -------------------------------------------------


@pytest.fixture(scope="module")
def good_rayjob():
    tj = parse(_example("trainingjob-gpu-spot.yaml"))
    return build_rayjob(tj, 1, "Spot", OperatorConfig(), run_id=None, owner_uid="u")


def _broken(obj, path, value):
    obj = copy.deepcopy(obj)
    *parents, last = path
    node = obj
    for key in parents:
        node = node[key]
    node[last] = value
    return obj


@pytest.mark.parametrize(
    ("path", "value", "expected"),
    [
        (
            ("spec", "rayClusterSpec", "headGroupSpec", "template", "spec", "nodeSelectr"),
            {},
            "nodeSelectr",
        ),
        (("spec", "submissionMod"), "SidecarMode", "submissionMod"),
        (("spec", "backoffLimit"), "0", "not of type 'integer'"),
        (("spec", "activeDeadlineSeconds"), 2**31, "int32"),
        (
            (
                "spec",
                "rayClusterSpec",
                "workerGroupSpecs",
                0,
                "template",
                "spec",
                "tolerations",
                0,
                "tolerationSecond",
            ),
            1,
            "tolerationSecond",
        ),
        (("metadata", "labels", "mlplane.dev/attempt"), 1, "not of type 'string'"),
        (("metadata", "labels", "bad key!"), "x", "not a valid label key"),
        (("metadata", "name"), "1-starts-with-digit", "does not match"),
        (("metadata", "ownerReferences", 0, "uid"), None, "None"),
        (("spec", "managedBy"), "ray.io/kuberay-operator", "CEL"),
        (("spec", "suspend"), None, "null"),
    ],
)
def test_strict_validator_catches_mistakes(good_rayjob, path, value, expected):
    assert problems(good_rayjob) == []
    found = problems(_broken(good_rayjob, path, value))
    assert found, f"no problem found after setting {path}"
    assert any(expected in p for p in found), found


def test_kuberay_controller_rules_are_checked(good_rayjob):
    broken = _broken(
        good_rayjob, ("spec", "rayClusterSpec", "workerGroupSpecs", 0, "minReplicas"), 9
    )
    assert any("replicas outside" in p for p in problems(broken))
    broken = _broken(good_rayjob, ("spec", "shutdownAfterJobFinishes"), False)
    broken["spec"]["suspend"] = True
    assert any("suspend needs" in p for p in problems(broken))


def test_int_or_string_quantities_accept_both(good_rayjob):
    limits = (
        "spec",
        "rayClusterSpec",
        "headGroupSpec",
        "template",
        "spec",
        "containers",
        0,
        "resources",
        "limits",
        "cpu",
    )
    assert problems(_broken(good_rayjob, limits, 4)) == []
    assert problems(_broken(good_rayjob, limits, "4")) == []
    assert problems(_broken(good_rayjob, limits, "four")) != []
    assert problems(_broken(good_rayjob, limits, 4.5)) != []


def test_missing_fixtures_fail_with_where_to_get_them(tmp_path, monkeypatch):
    monkeypatch.setenv(ENV, str(tmp_path))
    crd_schema.cache_clear()
    try:
        with pytest.raises(pytest.fail.Exception, match=r"vendor_kuberay_crds\.py.*overrides"):
            crd_schema("RayJob")
    finally:
        monkeypatch.undo()
        crd_schema.cache_clear()
