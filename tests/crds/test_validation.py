"""Validation: examples pass; every entry of the invalid corpus fails with its message."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from mlplane.crds import KINDS, ModelDeployment, TrainingJob
from mlplane.crds.schema import CRD_DIR
from mlplane.crds.validate import InvalidResource, check, load, parse

EXAMPLES = sorted((CRD_DIR / "examples").glob("*.yaml"))
INVALID = sorted((Path(__file__).parent / "invalid").glob("*.yaml"))


def expectations(path: Path) -> list[str]:
    found = [line[len("# expect: ") :] for line in path.read_text().splitlines()
             if line.startswith("# expect: ")]  # fmt: skip
    assert found, f"{path} has no '# expect: ' line"
    return found


def test_every_kind_has_an_example():
    kinds = {yaml.safe_load(p.read_text())["kind"] for p in EXAMPLES}
    assert kinds == {k.kind_name for k in KINDS}


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_examples_are_valid(path):
    for document in load(path):
        assert check(document.body) == [], document.label
        resource = parse(document.body)
        assert resource.metadata.name


@pytest.mark.parametrize("path", INVALID, ids=lambda p: p.name)
def test_invalid_corpus_fails_with_its_message(path):
    (document,) = list(load(path))
    problems = [str(p) for p in check(document.body)]
    assert problems, f"{path.name} was accepted"
    for expected in expectations(path):
        assert any(expected in p for p in problems), f"{path.name}: {expected!r} not in {problems}"
    with pytest.raises(InvalidResource):
        parse(document.body)


def test_corpus_covers_every_layer():
    """Structure, schema, CEL and model checks each reject something in the corpus."""
    messages = " ".join(" ".join(expectations(p)) for p in INVALID)
    assert "unknown field" in messages  # structure
    assert "must be one of" in messages  # schema
    assert "must sum to 100" in messages  # CEL
    assert "is out of range" in messages  # models (durations)


def _example(kind: str) -> dict:
    for path in EXAMPLES:
        body = yaml.safe_load(path.read_text())
        if body["kind"] == kind:
            return body
    raise AssertionError(kind)


def test_defaults_are_applied_on_parse():
    body = {"apiVersion": "mlplane.dev/v1alpha1", "kind": "TrainingJob",
            "metadata": {"name": "t"}, "spec": {"entrypoint": "python train.py"}}  # fmt: skip
    tj = parse(body)
    assert isinstance(tj, TrainingJob)
    assert tj.spec.preemption.max_preemptions == 3
    assert tj.spec.backoff_limit == 2
    assert tj.spec.head.resources.memory == "8Gi"


def test_status_never_rejects_a_resource():
    body = _example("ModelDeployment")
    body["status"] = {"phase": "NotAPhase", "replicas": "many"}
    md = parse(body)
    assert isinstance(md, ModelDeployment)
    assert md.status is None
    body["status"] = {"phase": "Ready", "servedVersion": "3", "newFieldFromTheFuture": 1}
    assert parse(body).status.served_version == "3"


def test_all_problems_of_a_layer_are_reported():
    body = _example("TrainingJob")
    body["spec"]["backoffLimit"] = -1
    body["spec"]["workers"][0]["capacity"] = "Cheap"
    paths = {p.path for p in check(body)}
    assert paths == {"spec.backoffLimit", "spec.workers[0].capacity"}


def test_bad_yaml_names_file_and_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("kind: TrainingJob\nspec:\n  entrypoint: [unclosed\n")
    with pytest.raises(ValueError, match=r"bad.yaml: line \d+: not valid YAML"):
        list(load(bad))


def test_non_mapping_document():
    assert "expected a mapping" in str(check(["a", "list"])[0])


def test_spec_model_round_trips_through_aliases():
    tj = parse(_example("TrainingJob"))
    dumped = tj.model_dump(by_alias=True, exclude_none=True)
    again = parse(copy.deepcopy(dumped))
    assert again == tj


def test_spot_workers_without_checkpoint_uri_are_valid_for_the_api():
    """The CRD cannot know the operator's default checkpoint base, so it accepts the job.

    The operator rejects it only where no default is configured (``config_problems``).
    """
    body = {
        "apiVersion": "mlplane.dev/v1alpha1", "kind": "TrainingJob",
        "metadata": {"name": "spot-default-checkpoints"},
        "spec": {"entrypoint": "python train.py",
                 "workers": [{"name": "gpu", "resources": {"gpu": 1}, "capacity": "Spot"}]},
    }  # fmt: skip
    assert check(body) == []
    assert parse(body).spec.checkpoint.uri is None  # the schema defaults checkpoint to {}
    body["spec"]["checkpoint"] = {"resumeFrom": "s3://old-job/ckpt/u-1/step-000000000040"}
    assert check(body) == []
    assert parse(body).spec.checkpoint.uri is None


@pytest.mark.parametrize("interval", ["Auto", "10m", "1h30m", "45s"])
def test_checkpoint_interval_is_auto_or_a_duration(interval):
    body = _example("TrainingJob")
    body["spec"].setdefault("checkpoint", {})["interval"] = interval
    assert check(body) == []
    checkpoint = parse(body).spec.checkpoint
    expected = None if interval == "Auto" else {"10m": 600, "1h30m": 5400, "45s": 45}[interval]
    assert checkpoint.interval == interval and checkpoint.interval_seconds == expected


def test_checkpoint_interval_is_in_the_crd_schema():
    from mlplane.crds.schema import schema_by_kind

    found = schema_by_kind()["TrainingJob"]["properties"]["spec"]["properties"]["checkpoint"]
    interval = found["properties"]["interval"]
    assert interval["pattern"] == "^(Auto|([0-9]+(ms|s|m|h|d))+)$"
