"""The CRDs are generated from the types, structural, and what kubectl users expect."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from mlplane.crds import KINDS
from mlplane.crds.schema import CRD_DIR, crd, crd_filename, render_all

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("kind", KINDS, ids=lambda k: k.kind_name)
def test_committed_crds_are_what_the_types_generate(kind):
    name = crd_filename(kind)
    expected = render_all()[name]
    for folder in (CRD_DIR, REPO / "helm" / "mlplane" / "crds"):
        committed = (folder / name).read_text()
        assert committed == expected, f"{folder / name} is stale: run `mlplane crds generate`"


def _walk(node: Any, path: str = "") -> Any:
    yield path, node
    if isinstance(node, dict):
        for key, sub in node.get("properties", {}).items():
            yield from _walk(sub, f"{path}.{key}")
        for key in ("items", "additionalProperties"):
            if isinstance(node.get(key), dict):
                yield from _walk(node[key], f"{path}.{key}")


@pytest.mark.parametrize("kind", KINDS, ids=lambda k: k.kind_name)
def test_schema_is_structural(kind):
    schema = crd(kind)["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    for path, node in _walk(schema):
        assert "$ref" not in node, path
        assert "title" not in node, path
        assert "allOf" not in node and "oneOf" not in node, path
        if "anyOf" in node:
            assert node.get("x-kubernetes-int-or-string"), f"{path}: anyOf only for int-or-string"
        else:
            assert "type" in node, f"{path}: every node needs a type"
        if "properties" in node:
            assert "additionalProperties" not in node, path
        if node.get("type") == "array":
            assert "items" in node, path


@pytest.mark.parametrize("kind", KINDS, ids=lambda k: k.kind_name)
def test_no_floats_in_spec(kind):
    spec = crd(kind)["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    floats = [path for path, node in _walk(spec) if node.get("type") == "number"]
    assert floats == [], "Kubernetes convention: no floats in spec; use strings or integers"


def test_kubectl_facing_parts():
    by_kind = {k.kind_name: crd(k) for k in KINDS}
    short = {k: c["spec"]["names"]["shortNames"] for k, c in by_kind.items()}
    assert short == {"TrainingJob": ["tj"], "ModelDeployment": ["md"], "ABTest": ["abt"]}
    for name, c in by_kind.items():
        version = c["spec"]["versions"][0]
        assert c["spec"]["names"]["categories"] == ["mlplane"], name
        assert c["spec"]["scope"] == "Namespaced"
        assert version["name"] == "v1alpha1" and version["served"] and version["storage"]
        assert "status" in version["subresources"], name
        columns = [col["name"] for col in version["additionalPrinterColumns"]]
        assert "Phase" in columns and columns[-1] == "Age", name
        status = version["schema"]["openAPIV3Schema"]["properties"]["status"]["properties"]
        assert {"phase", "conditions", "observedGeneration"} <= set(status), name
        condition = status["conditions"]["items"]["properties"]
        assert set(condition) == {
            "type",
            "status",
            "reason",
            "message",
            "lastTransitionTime",
            "observedGeneration",
        }
    scale = by_kind["ModelDeployment"]["spec"]["versions"][0]["subresources"]["scale"]
    assert scale["specReplicasPath"] == ".spec.replicas.min"
    assert scale["statusReplicasPath"] == ".status.replicas"
    assert "scale" not in by_kind["TrainingJob"]["spec"]["versions"][0]["subresources"]


def test_scale_paths_point_at_integers():
    from mlplane.crds import ModelDeployment

    schema = crd(ModelDeployment)["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    spec_replicas = schema["properties"]["spec"]["properties"]["replicas"]["properties"]["min"]
    status_replicas = schema["properties"]["status"]["properties"]["replicas"]
    assert spec_replicas["type"] == "integer"
    assert status_replicas["type"] == "integer"


def test_defaults_reach_nested_fields():
    """An omitted object gets `{}` so the API server applies the defaults inside it."""
    from mlplane.crds import TrainingJob

    spec = crd(TrainingJob)["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"][
        "spec"
    ]
    assert spec["properties"]["preemption"]["default"] == {}
    assert spec["properties"]["preemption"]["properties"]["maxPreemptions"]["default"] == 3
    assert spec["properties"]["workers"]["default"] == []


def test_generated_yaml_parses_and_names_files_like_controller_gen():
    for name, text in render_all().items():
        assert name.startswith("mlplane.dev_") and name.endswith(".yaml")
        body = yaml.safe_load(text)
        assert body["metadata"]["name"] == f"{body['spec']['names']['plural']}.mlplane.dev"
