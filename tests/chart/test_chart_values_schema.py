"""values.schema.json is current, closed at every level, and enforced by helm."""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Iterator
from typing import Any

import jsonschema
import pytest
import yaml
from chart_support import CHART, REPO, VALUES_ALL, HelmError, template

_spec = importlib.util.spec_from_file_location(
    "_values_schema", REPO / "helm/tools/values_schema.py"
)
assert _spec is not None and _spec.loader is not None
values_schema = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(values_schema)

SCHEMA = json.loads((CHART / "values.schema.json").read_text())


def walk(node: Any, path: str = "#") -> Iterator[tuple[str, dict[str, Any]]]:
    """Every schema node with its JSON pointer."""
    if isinstance(node, dict):
        yield path, node
        for key, value in node.items():
            yield from walk(value, f"{path}/{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from walk(value, f"{path}/{i}")


def is_object(node: dict[str, Any]) -> bool:
    kind = node.get("type")
    return kind == "object" or (isinstance(kind, list) and "object" in kind) or "properties" in node


def test_committed_schema_and_readme_table_are_current() -> None:
    assert values_schema.main(["--check"]) == 0, "run: python helm/tools/values_schema.py"


def test_every_object_level_is_closed() -> None:
    """additionalProperties: false wherever properties are named; typed maps only for maps."""
    objects = [(p, n) for p, n in walk(SCHEMA) if isinstance(n, dict) and is_object(n)]
    assert len(objects) > 40
    for path, node in objects:
        if "properties" in node:
            assert node.get("additionalProperties") is False, f"{path} is open"
        else:
            extra = node.get("additionalProperties")
            assert isinstance(extra, dict) and extra, f"{path}: a map needs a value schema"


def test_default_and_all_values_validate() -> None:
    validator = jsonschema.Draft202012Validator(SCHEMA)
    for path in (CHART / "values.yaml", VALUES_ALL):
        errors = [e.message for e in validator.iter_errors(yaml.safe_load(path.read_text()))]
        assert errors == [], path


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--set", "colour=blue"], "additional properties 'colour' not allowed"),
        (["--set", "operator.watchNamespace[0]=a"], "'watchNamespace' not allowed"),
        (["--set", "networkPolicy.egress.dns.port=53"], "'port' not allowed"),
        (["--set", "operator.capacityLabels=aws"], "capacityLabels"),
        (["--set", "image.tag=latest"], "tag"),
        (["--set", "image.digest=sha256:nothex"], "digest"),
        (["--set", "rayImage.digest=md5:0123"], "digest"),
        (["--set", "rayImage.digest=sha256:ABCDEF"], "digest"),
        (["--set", "operator.healthPort=80"], "healthPort"),
        (["--set-json", 'tolerations=[{"key":"a","efect":"NoSchedule"}]'], "'efect' not allowed"),
        (["--set-json", 'affinity={"nodeAfinity":{}}'], "'nodeAfinity' not allowed"),
        (["--set", "resources.limits=null"], "limits"),
        (["--set", "operator.watchNamespaces[0]=Not_A_Namespace"], "watchNamespaces"),
    ],
)
def test_helm_rejects_bad_values(args: list[str], message: str) -> None:
    with pytest.raises(HelmError, match=message):
        template(*args)


def test_kubernetes_types_come_from_the_oldest_supported_version() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    minimum = chart["kubeVersion"].removeprefix(">=").removesuffix("-0")
    assert minimum == values_schema.K8S_SCHEMA_VERSION
