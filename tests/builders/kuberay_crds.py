"""KubeRay's v1.7.0 CRD schemas as a strict validator for what the builders generate.

The API server prunes unknown fields silently, so a typo in a generated RayJob would vanish
without a trace. Here every object node that declares properties (and does not preserve
unknown fields) gets ``additionalProperties: false``, so an unknown field is an error; types,
enums, patterns, required fields and ``format: int32/int64`` ranges are checked by jsonschema.
``metadata`` (a bare ``type: object`` in CRDs) is checked against the ObjectMeta subset the
builders write. CEL rules cannot be evaluated here; :func:`cel_nodes_reached` lets tests assert
that no generated object reaches a schema node carrying one.
"""

from __future__ import annotations

import copy
import os
import re
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

ENV = "MLPLANE_KUBERAY_CRDS"
#: The copy the repository carries (``scripts/vendor_kuberay_crds.py`` made it; see SOURCE.md).
DEFAULT_DIR = Path(__file__).resolve().parents[1] / "fixtures" / "kuberay"
FILES = {"RayJob": "ray.io_rayjobs.yaml", "RayService": "ray.io_rayservices.yaml"}

_LABEL_VALUE = r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$"
_QUALIFIED_NAME = re.compile(
    r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
    r"([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$"
)

#: The part of ObjectMeta the builders write; anything else is a mistake.
OBJECT_META: dict[str, Any] = {
    "type": "object",
    "required": ["name", "namespace"],
    "additionalProperties": False,
    "properties": {
        "name": {"type": "string", "pattern": r"^[a-z]([-a-z0-9]*[a-z0-9])?$", "maxLength": 47},
        "namespace": {"type": "string", "pattern": r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"},
        "labels": {
            "type": "object",
            "additionalProperties": {"type": "string", "maxLength": 63, "pattern": _LABEL_VALUE},
        },
        "annotations": {"type": "object", "additionalProperties": {"type": "string"}},
        "ownerReferences": {
            "type": "array",
            "items": {
                "type": "object",
                "additionalProperties": False,
                "required": ["apiVersion", "kind", "name", "uid"],
                "properties": {
                    "apiVersion": {"type": "string", "minLength": 1},
                    "kind": {"type": "string", "minLength": 1},
                    "name": {"type": "string", "minLength": 1},
                    "uid": {"type": "string", "minLength": 1},
                    "controller": {"type": "boolean"},
                    "blockOwnerDeletion": {"type": "boolean"},
                },
            },
        },
    },
}


def crd_dir() -> Path:
    """Where the CRDs are: ``$MLPLANE_KUBERAY_CRDS`` (another KubeRay, upstream files or a
    vendored folder) or the repository's own copy."""
    return Path(os.environ.get(ENV) or DEFAULT_DIR)


def strict(node: Any) -> Any:
    """A copy of a schema with unknown fields forbidden and int-or-string spelled out."""
    if isinstance(node, list):
        return [strict(item) for item in node]
    if not isinstance(node, dict):
        return node
    out = {key: strict(value) for key, value in node.items()}
    if (
        "properties" in out
        and not out.get("x-kubernetes-preserve-unknown-fields")
        and "additionalProperties" not in out
    ):
        out["additionalProperties"] = False
    if out.get("x-kubernetes-int-or-string") and "anyOf" not in out and "type" not in out:
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    return out


@cache
def crd_schema(kind: str) -> dict[str, Any]:
    """The strict ``openAPIV3Schema`` of version ``v1`` of KubeRay's CRD for ``kind``."""
    path = crd_dir() / FILES[kind]
    if not path.is_file():
        pytest.fail(
            f"KubeRay CRD {path} is missing. The repository carries it in {DEFAULT_DIR} "
            f"(scripts/vendor_kuberay_crds.py); {ENV} overrides that folder.",
            pytrace=False,
        )
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    document = yaml.load(path.read_text(), Loader=loader)
    versions = {v["name"]: v for v in document["spec"]["versions"]}
    if document["spec"]["names"]["kind"] != kind or "v1" not in versions:
        pytest.fail(f"{path} is not KubeRay's {kind} CRD with version v1", pytrace=False)
    schema = strict(copy.deepcopy(versions["v1"]["schema"]["openAPIV3Schema"]))
    schema["properties"]["metadata"] = OBJECT_META
    schema["required"] = sorted({*schema.get("required", ()), "apiVersion", "kind", "spec"})
    schema["properties"]["apiVersion"] = {"const": "ray.io/v1"}
    schema["properties"]["kind"] = {"const": kind}
    return schema


_FORMATS = jsonschema.FormatChecker()


@_FORMATS.checks("int32")
def _int32(value: object) -> bool:
    return not isinstance(value, int) or -(2**31) <= value < 2**31


@_FORMATS.checks("int64")
def _int64(value: object) -> bool:
    return not isinstance(value, int) or -(2**63) <= value < 2**63


@cache
def validator(kind: str) -> jsonschema.Draft7Validator:
    """A cached validator for ``kind`` (building one walks a ~1 MB schema)."""
    return jsonschema.Draft7Validator(crd_schema(kind), format_checker=_FORMATS)


def cel_nodes_reached(schema: dict[str, Any], value: Any, path: str = "") -> list[str]:
    """Paths of ``value`` whose schema node has CEL rules (which nothing here evaluates)."""
    found = [path or "."] if "x-kubernetes-validations" in schema else []
    if isinstance(value, dict):
        for key, item in value.items():
            sub = (schema.get("properties") or {}).get(key)
            if sub is None and isinstance(schema.get("additionalProperties"), dict):
                sub = schema["additionalProperties"]
            if sub is not None:
                found += cel_nodes_reached(sub, item, f"{path}.{key}")
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for index, item in enumerate(value):
            found += cel_nodes_reached(schema["items"], item, f"{path}[{index}]")
    return found


def nulls(value: Any, path: str = "") -> list[str]:
    """Paths holding ``None`` (YAML null): the API server would drop or reject them."""
    if value is None:
        return [path or "."]
    if isinstance(value, dict):
        return [p for k, v in value.items() for p in nulls(v, f"{path}.{k}")]
    if isinstance(value, list):
        return [p for i, v in enumerate(value) for p in nulls(v, f"{path}[{i}]")]
    return []


def label_maps(value: Any, path: str = "") -> list[tuple[str, dict[str, str]]]:
    """Every ``labels`` and ``nodeSelector`` map in an object, with its path."""
    out = []
    if isinstance(value, dict):
        for key, item in value.items():
            if key in ("labels", "nodeSelector", "matchLabels") and isinstance(item, dict):
                out.append((f"{path}.{key}", item))
            out += label_maps(item, f"{path}.{key}")
    elif isinstance(value, list):
        for index, item in enumerate(value):
            out += label_maps(item, f"{path}[{index}]")
    return out


def _kuberay_rules(obj: dict[str, Any]) -> list[str]:
    """What KubeRay's controller validates beyond the schema (ray-operator utils/validation.go)."""
    spec = obj["spec"]
    cluster = spec.get("rayClusterSpec") or spec.get("rayClusterConfig")
    errors = []
    if obj["kind"] == "RayJob":
        if spec.get("suspend") and not spec.get("shutdownAfterJobFinishes"):
            errors.append("suspend needs shutdownAfterJobFinishes")
        if spec.get("ttlSecondsAfterFinished", 0) > 0 and not spec.get("shutdownAfterJobFinishes"):
            errors.append("ttlSecondsAfterFinished needs shutdownAfterJobFinishes")
        if spec.get("activeDeadlineSeconds") is not None and spec["activeDeadlineSeconds"] <= 0:
            errors.append("activeDeadlineSeconds must be positive")
        try:
            runtime = yaml.safe_load(spec.get("runtimeEnvYAML", "")) or {}
        except yaml.YAMLError as exc:
            errors.append(f"runtimeEnvYAML is not YAML: {exc}")
        else:
            if not isinstance(runtime, dict):
                errors.append("runtimeEnvYAML must be a mapping")
            elif not all(isinstance(v, str) for v in runtime.get("env_vars", {}).values()):
                errors.append("runtime env_vars must be strings")
    if cluster is None:
        return [*errors, "no Ray cluster spec"]
    groups = [("head", cluster["headGroupSpec"])] + [
        (w["groupName"], w) for w in cluster.get("workerGroupSpecs", ())
    ]
    for name, group in groups:
        containers = group["template"]["spec"].get("containers") or []
        if not containers:
            errors.append(f"{name}: no container")
        params = group.get("rayStartParams") or {}
        if "labels" in params:
            errors.append(f"{name}: rayStartParams.labels is not supported")
        if group.get("resources") and any(
            params.get(k) for k in ("num-cpus", "num-gpus", "memory", "resources")
        ):
            errors.append(f"{name}: resources in both rayStartParams and resources")
    names = [w["groupName"] for w in cluster.get("workerGroupSpecs", ())]
    if len(set(names)) != len(names):
        errors.append(f"duplicate worker group names {names}")
    for worker in cluster.get("workerGroupSpecs", ()):
        low, high = worker.get("minReplicas"), worker.get("maxReplicas")
        if low is None or high is None:
            errors.append(f"{worker['groupName']}: minReplicas and maxReplicas are required")
        elif not low <= worker.get("replicas", low) <= high:
            errors.append(f"{worker['groupName']}: replicas outside [minReplicas, maxReplicas]")
    return errors


def problems(obj: dict[str, Any]) -> list[str]:
    """Everything wrong with a generated KubeRay object; empty when it would be accepted."""
    kind = obj.get("kind")
    if kind not in FILES:
        return [f"unexpected kind {kind!r}"]
    errors = [
        f"{'/'.join(str(p) for p in e.absolute_path) or '.'}: {e.message}"
        for e in validator(kind).iter_errors(obj)
    ]
    errors += [f"{p}: null value" for p in nulls(obj)]
    errors += [f"{p}: reaches a CEL rule" for p in cel_nodes_reached(crd_schema(kind), obj)]
    for path, mapping in label_maps(obj):
        for key, value in mapping.items():
            if not _QUALIFIED_NAME.match(key) or len(key.split("/")[-1]) > 63:
                errors.append(f"{path}: {key!r} is not a valid label key")
            if not isinstance(value, str) or len(value) > 63 or not re.match(_LABEL_VALUE, value):
                errors.append(f"{path}.{key}: {value!r} is not a valid label value")
    if not errors:
        errors += _kuberay_rules(obj)
    return errors


def assert_valid(obj: dict[str, Any]) -> None:
    """Fail with every problem listed."""
    found = problems(obj)
    assert not found, "\n".join(found)
