"""Hypothesis strategies for the three kinds, generated from the API types, and their mutations.

Valid objects come from the CRD schemas the pydantic types generate (``schema_by_kind``): every
field the schema declares may appear, with values drawn from its type, bounds, enum and pattern;
:func:`repair` then makes the cross-field (CEL) rules hold. The tests assert that everything
:func:`valid` draws passes ``check``, so a strategy that drifts from the API fails loudly.

A :class:`Mutation` breaks one field of a valid object in a way the API must refuse (wrong type,
out of range, missing required, unknown field, huge string or list, deep nesting, unicode that
breaks a pattern, wrong enum value, a CEL rule broken) and says which field the refusal must
name: ``path`` or a parent of it.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from hypothesis import strategies as st

from mlplane.crds.common import DECIMAL_PATTERN, DURATION_PATTERN, INTERVAL_PATTERN
from mlplane.crds.schema import schema_by_kind

KINDS = ("TrainingJob", "ModelDeployment", "ABTest")
API_VERSION = "mlplane.dev/v1alpha1"

NAMES = st.from_regex(r"[a-z][a-z0-9-]{0,20}[a-z0-9]", fullmatch=True)
NAMESPACES = st.sampled_from(["default", "ml-team", "fuzz", "a"])
LABEL_KEYS = st.from_regex(r"([a-z0-9]{1,8}\.)?[a-z0-9]{1,8}/?[a-z][a-z0-9-]{0,8}[a-z0-9]",
                           fullmatch=True).filter(lambda k: k.count("/") <= 1)  # fmt: skip
LABEL_VALUES = st.from_regex(r"[a-z0-9]([-a-z0-9]{0,10}[a-z0-9])?", fullmatch=True)
QUANTITIES = st.one_of(
    st.integers(0, 64), st.sampled_from(["1", "500m", "2.5", "16Gi", "512Mi", "1e3", "100k"])
)
#: Durations inside every duration field's bounds (the narrowest: 60 s to 1 d).
DURATIONS = st.sampled_from(["60s", "5m", "1h", "90m", "1h30m", "1d", "2m30s"])
#: Decimal fields by name, inside their bounds.
DECIMALS = {
    "availability": st.sampled_from(["99.9", "99", "95.5", "50"]),
    "threshold": st.sampled_from(["0.01", "0.2", "0.5"]),
    "alpha": st.sampled_from(["0.05", "0.01", "0.1"]),
}
#: Free text: printable, and some non-ASCII (the API takes any UTF-8 in free-form strings).
TEXT = st.text(st.characters(codec="utf-8", exclude_categories=("Cs", "Cc")), min_size=1,
               max_size=12)  # fmt: skip
JSON_LEAVES = st.none() | st.booleans() | st.integers(-(10**6), 10**6) | TEXT
JSON = st.recursive(
    JSON_LEAVES,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(TEXT, inner, max_size=3),
    max_leaves=6,
)


@lru_cache(maxsize=1)
def schemas() -> dict[str, dict[str, Any]]:
    return schema_by_kind()


def _string(schema: dict[str, Any], name: str) -> st.SearchStrategy[Any]:
    pattern = schema.get("pattern")
    low, high = schema.get("minLength", 0), schema.get("maxLength", 40)
    if pattern in (DURATION_PATTERN,):
        return DURATIONS
    if pattern == INTERVAL_PATTERN:
        return st.just("Auto") | DURATIONS
    if pattern == DECIMAL_PATTERN:
        return DECIMALS.get(name, st.sampled_from(["0.05", "1"]))
    if pattern:
        return st.from_regex(pattern.removeprefix("^").removesuffix("$"), fullmatch=True).filter(
            lambda s: low <= len(s) <= high
        )
    return st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=max(low, 0),
                   max_size=min(high, 24))  # fmt: skip


def from_schema(schema: dict[str, Any], name: str = "") -> st.SearchStrategy[Any]:
    """Values the schema node accepts (the CEL rules and the models may still refuse some:
    :func:`repair` makes those hold)."""
    if "enum" in schema:
        return st.sampled_from(schema["enum"])
    if schema.get("x-kubernetes-int-or-string"):
        return QUANTITIES
    kind = schema.get("type")
    if kind == "string":
        return _string(schema, name)
    if kind == "integer":
        low = schema.get("minimum", 0)
        return st.integers(low, schema.get("maximum", max(low, 0) + 10_000))
    if kind == "number":
        return st.floats(0, 100)
    if kind == "boolean":
        return st.booleans()
    if kind == "array":
        high = min(schema.get("maxItems", 3), 3)
        return st.lists(from_schema(schema["items"], name), min_size=schema.get("minItems", 0),
                        max_size=max(high, schema.get("minItems", 0)))  # fmt: skip
    if kind == "object" or "properties" in schema:
        if schema.get("x-kubernetes-preserve-unknown-fields"):
            return st.dictionaries(TEXT, JSON, max_size=3)
        props = schema.get("properties")
        if props is None:
            extra = schema.get("additionalProperties")
            if isinstance(extra, dict):
                values = LABEL_VALUES if extra.get("type") == "string" else from_schema(extra)
                return st.dictionaries(LABEL_KEYS, values, max_size=3)
            return st.fixed_dictionaries({})
        required = set(schema.get("required", ()))
        props = {k: v for k, v in props.items() if k != "status"}
        return st.fixed_dictionaries(
            {k: from_schema(v, k) for k, v in props.items() if k in required},
            optional={k: from_schema(v, k) for k, v in props.items() if k not in required},
        )
    return JSON


# --- repair: make the cross-field rules hold ------------------------------------------------------


def _repair_training_spec(spec: dict[str, Any]) -> None:
    seen: set[str] = set()
    workers = []
    for group in spec.get("workers", []):
        if group["name"] in seen:
            continue
        seen.add(group["name"])
        replicas = group.get("replicas", 1)
        if group.get("minReplicas", 0) > replicas:
            group["minReplicas"] = replicas
        if "maxReplicas" in group and group["maxReplicas"] < replicas:
            group["maxReplicas"] = max(replicas, 1)
        if "accelerator" in group:
            resources = group.setdefault("resources", {})
            resources["gpu"] = max(resources.get("gpu", 0), 1)
        workers.append(group)
    if "workers" in spec:
        spec["workers"] = workers
    fallback = any(w.get("capacity") == "SpotWithFallback" for w in workers)
    if not fallback and "returnToSpot" in spec.get("preemption", {}):
        del spec["preemption"]["returnToSpot"]
    if any(w.get("capacity") in ("Spot", "SpotWithFallback") for w in workers):
        spec.setdefault("checkpoint", {}).setdefault("uri", "s3://fuzz-ckpt/jobs")
    mlflow = spec.get("mlflow", {})
    if "alias" in mlflow:
        mlflow.setdefault("registeredModel", "fuzz-model")
    for toleration in spec.get("tolerations", []):
        _repair_toleration(toleration)


def _repair_toleration(toleration: dict[str, Any]) -> None:
    if "key" not in toleration:
        toleration["operator"] = "Exists"
    if toleration.get("operator") == "Exists":
        toleration.pop("value", None)


def _repair_model_ref(model: dict[str, Any]) -> None:
    if "alias" in model and "version" in model:
        del model["version"]
    if "alias" not in model and "version" not in model:
        model["alias"] = "champion"


def _repair_deployment_spec(spec: dict[str, Any]) -> None:
    _repair_model_ref(spec["model"])
    replicas = spec.get("replicas", {})
    if replicas.get("min", 1) > replicas.get("max", 1):
        replicas["min"] = replicas.get("max", 1)
    if "accelerator" in spec:
        resources = spec.setdefault("resources", {})
        resources["gpu"] = max(resources.get("gpu", 0), 1)
    for toleration in spec.get("tolerations", []):
        _repair_toleration(toleration)
    drift = spec.get("monitoring", {}).get("drift", {})
    retrain = drift.get("retrain")
    if drift.get("onDrift") == "Retrain" and retrain is None:
        drift["onDrift"] = "Alert"
    if retrain is not None:
        template = retrain["trainingJobTemplate"]
        if "metadata" in template:
            template["metadata"] = {
                k: v for k, v in template["metadata"].items() if k in ("labels", "annotations")
            }
        _repair_training_spec(template["spec"])


def _repair_abtest_spec(spec: dict[str, Any]) -> None:
    variants, seen = [], set()
    for variant in spec["variants"]:
        if variant["name"] not in seen:
            seen.add(variant["name"])
            _repair_model_ref(variant["model"])
            variants.append(variant)
    while len(variants) < 2:
        variants.append({"name": f"v{len(variants)}-fill", "model": {"version": 1}, "weight": 0})
    total = 0
    for variant in variants[:-1]:
        variant["weight"] = min(variant["weight"], 100 - total)
        total += variant["weight"]
    variants[-1]["weight"] = 100 - total
    spec["variants"] = variants
    if "guardrails" in spec:
        metrics: dict[str, dict[str, Any]] = {}
        for guardrail in spec["guardrails"]:
            metrics.setdefault(guardrail["metric"], guardrail)
        for guardrail in metrics.values():
            if guardrail["metric"] == "ErrorRate":
                guardrail["threshold"] = "0.01"
        spec["guardrails"] = list(metrics.values())
    objective = spec.get("objective", {})
    if objective.get("metric") == "Mean":
        objective["outcomeRange"] = {"min": "0", "max": "100"}
    else:
        objective.pop("outcomeRange", None)


REPAIRS = {
    "TrainingJob": _repair_training_spec,
    "ModelDeployment": _repair_deployment_spec,
    "ABTest": _repair_abtest_spec,
}


def repair(obj: dict[str, Any]) -> dict[str, Any]:
    """Make the kind's CEL rules hold on a schema-valid object (in place; returns it)."""
    REPAIRS[obj["kind"]](obj["spec"])
    return obj


@st.composite
def valid(draw: st.DrawFn, kind: str, namespace: str | None = None) -> dict[str, Any]:
    """A valid object of ``kind`` (any field of the API may appear)."""
    spec = draw(from_schema(schemas()[kind]["properties"]["spec"], "spec"))
    metadata: dict[str, Any] = {"name": draw(NAMES)}
    ns = namespace or draw(st.none() | NAMESPACES)
    if ns:
        metadata["namespace"] = ns
    labels = draw(st.none() | st.dictionaries(LABEL_KEYS, LABEL_VALUES, max_size=2))
    if labels:
        metadata["labels"] = labels
    obj = {"apiVersion": API_VERSION, "kind": kind, "metadata": metadata, "spec": spec}
    return repair(obj)


# --- mutations ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Mutation:
    """One field broken: what was done, and the field a refusal must name (or a parent of)."""

    kind: str
    path: str

    def __str__(self) -> str:
        return f"{self.kind} at {self.path or '<root>'}"


def _join(path: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else key


@dataclass
class _Site:
    path: str
    schema: dict[str, Any]
    parent: Any
    key: str | int


def _sites(schema: dict[str, Any], value: Any, path: str = "") -> list[_Site]:
    """Every field present in ``value`` that the schema types (free-form content excluded)."""
    out: list[_Site] = []
    if schema.get("x-kubernetes-preserve-unknown-fields"):
        return out
    if isinstance(value, dict) and "properties" in schema:
        for key, item in value.items():
            sub = schema["properties"].get(key)
            if sub is not None and key != "status":
                out.append(_Site(_join(path, key), sub, value, key))
                out.extend(_sites(sub, item, _join(path, key)))
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for index, item in enumerate(value):
            out.append(_Site(_join(path, index), schema["items"], value, index))
            out.extend(_sites(schema["items"], item, _join(path, index)))
    return out


#: Values of each JSON type, for "wrong type" mutations.
WRONG = {
    "string": [12, True, ["x"], {"a": "b"}, 1.5],
    "integer": ["12", "ten", 1.5, True, [1], {"n": 1}, None],
    "boolean": ["true", 1, "yes", [True]],
    "array": ["x", {"a": 1}, 3],
    "object": ["x", 3, ["a"], True],
    "int-or-string": [1.5, True, ["1"], {"cpu": 1}],
}
#: Strings no pattern of the API accepts whole: unicode, control characters, a trailing
#: newline (Python's ``$`` matches before one; Kubernetes' RE2 does not).
BAD_PATTERN_SUFFIXES = ["\n", " ", "É", "\u0000", "/..", "💥", "\u202e"]


def _deep(depth: int) -> Any:
    value: Any = "x"
    for i in range(depth):
        value = [value] if i % 2 else {"k": value}
    return value


def _type_of(schema: dict[str, Any]) -> str | None:
    if schema.get("x-kubernetes-int-or-string"):
        return "int-or-string"
    return schema.get("type") or ("object" if "properties" in schema else None)


@st.composite
def mutated(draw: st.DrawFn, kind: str) -> tuple[dict[str, Any], Mutation]:
    """A valid object of ``kind`` with one field broken, and what was broken."""
    obj = draw(valid(kind))
    root = schemas()[kind]
    sites = [s for s in _sites(root, obj) if s.path != "metadata"]
    choice = draw(st.sampled_from(MUTATIONS))
    return choice(draw, obj, sites)


def _pick(draw: st.DrawFn, sites: list[_Site], want: Any) -> _Site | None:
    found = [s for s in sites if want(s)]
    return draw(st.sampled_from(found)) if found else None


def wrong_type(draw: st.DrawFn, obj: dict, sites: list[_Site]) -> tuple[dict, Mutation]:
    site = _pick(draw, sites, lambda s: _type_of(s.schema) in WRONG)
    assert site is not None
    site.parent[site.key] = draw(st.sampled_from(WRONG[_type_of(site.schema)]))  # type: ignore[index]
    return obj, Mutation("wrong type", site.path)


def out_of_range(draw: st.DrawFn, obj: dict, sites: list[_Site]) -> tuple[dict, Mutation]:
    """A number below its minimum or above its maximum (or beyond any machine integer)."""
    site = _pick(draw, sites, lambda s: s.schema.get("type") == "integer")
    if site is None:
        return wrong_type(draw, obj, sites)
    low, high = site.schema.get("minimum"), site.schema.get("maximum")
    options = [2**63, 10**30, -(2**63) - 1]
    if low is not None:
        options.append(low - 1)
    if high is not None:
        options.append(high + 1)
    value = draw(st.sampled_from(options).filter(lambda v: not (low or 0) <= v <= (high or 0)
                                                 or low is None or high is None))  # fmt: skip
    if low is not None and high is not None and low <= value <= high:
        value = high + 1
    site.parent[site.key] = value
    return obj, Mutation(f"out of range ({value})", site.path)


def missing_required(draw: st.DrawFn, obj: dict, sites: list[_Site]) -> tuple[dict, Mutation]:
    candidates = [(s, r) for s in sites for r in s.schema.get("required", ())
                  if isinstance(s.parent[s.key], dict) and r in s.parent[s.key]]  # fmt: skip
    candidates.append((None, "spec"))  # type: ignore[arg-type]
    site, field = draw(st.sampled_from(candidates))
    if site is None:
        del obj["spec"]
        return obj, Mutation("missing required", "spec")
    del site.parent[site.key][field]
    return obj, Mutation("missing required", _join(site.path, field))


def unknown_field(draw: st.DrawFn, obj: dict, sites: list[_Site]) -> tuple[dict, Mutation]:
    nodes = [s for s in sites if "properties" in s.schema and isinstance(s.parent[s.key], dict)]
    name = draw(
        st.sampled_from(
            ["bogus", "replica", "Entrypoint", "ünknown", "spec", "a.b", "[/bogus]", "[bold]x"]
        )
    )  # rich markup in a field name
    if not nodes or draw(st.booleans()):
        if name in obj:
            name = "bogus"
        obj[name] = draw(JSON)
        return obj, Mutation("unknown field", name)
    site = draw(st.sampled_from(nodes))
    target = site.parent[site.key]
    if name in site.schema["properties"]:
        name = "bogusField"
    target[name] = draw(JSON)
    return obj, Mutation("unknown field", _join(site.path, name))


def huge(draw: st.DrawFn, obj: dict, sites: list[_Site]) -> tuple[dict, Mutation]:
    """A string past its maxLength, or a list past its maxItems (a megabyte at most)."""
    site = _pick(draw, sites, lambda s: "maxLength" in s.schema or "maxItems" in s.schema)
    assert site is not None
    if "maxLength" in site.schema:
        size = draw(st.sampled_from([site.schema["maxLength"] + 1, 100_000, 1_000_000]))
        site.parent[site.key] = draw(st.sampled_from(["a", "é", "9"])) * size
    else:
        items = site.parent[site.key]
        item = items[0] if isinstance(items, list) and items else "x"
        site.parent[site.key] = [copy.deepcopy(item) for _ in range(site.schema["maxItems"] + 1)]
    return obj, Mutation("too long", site.path)


def deep(draw: st.DrawFn, obj: dict, sites: list[_Site]) -> tuple[dict, Mutation]:
    """A typed field replaced by deeply nested lists and objects."""
    site = _pick(draw, sites, lambda s: _type_of(s.schema) in ("string", "integer", "boolean"))
    assert site is not None
    site.parent[site.key] = _deep(draw(st.sampled_from([50, 500, 5000])))
    return obj, Mutation("deep nesting", site.path)


def bad_pattern(draw: st.DrawFn, obj: dict, sites: list[_Site]) -> tuple[dict, Mutation]:
    """A patterned string (names, durations, quantities, decimals...) with a character added."""
    site = _pick(draw, sites, lambda s: "pattern" in s.schema
                 and isinstance(s.parent[s.key], str))  # fmt: skip
    if site is None:
        return wrong_type(draw, obj, sites)
    value = site.parent[site.key]
    suffix = draw(st.sampled_from(BAD_PATTERN_SUFFIXES))
    mutated = draw(st.sampled_from([value + suffix, suffix + value]))
    pattern = site.schema["pattern"].removeprefix("^").removesuffix("$")
    if re.fullmatch(pattern, mutated):
        mutated = value + "\n"
    if re.fullmatch(pattern, mutated, flags=re.DOTALL):  # e.g. ``[^:]+`` takes a newline too
        return wrong_type(draw, obj, sites)
    site.parent[site.key] = mutated
    return obj, Mutation(f"pattern broken ({mutated[-12:]!r})", site.path)


def bad_enum(draw: st.DrawFn, obj: dict, sites: list[_Site]) -> tuple[dict, Mutation]:
    site = _pick(draw, sites, lambda s: "enum" in s.schema)
    if site is None:
        return wrong_type(draw, obj, sites)
    value = site.parent[site.key]
    site.parent[site.key] = draw(st.sampled_from([
        str(value).lower(), str(value).upper(), str(value) + " ", "Ünknown", ""
    ]).filter(lambda v: v not in site.schema["enum"]))  # fmt: skip
    return obj, Mutation("wrong enum value", site.path)


def bad_metadata(draw: st.DrawFn, obj: dict, sites: list[_Site]) -> tuple[dict, Mutation]:
    """The parts of ``metadata`` the API server checks: name, namespace, labels, annotations."""
    meta = obj["metadata"]
    field = draw(st.sampled_from(["name", "namespace", "labels", "annotations"]))
    if field == "name":
        meta["name"] = draw(st.sampled_from(["Upper", "a" * 41, "-a", "1abc", "a_b", "ab\n",
                                             "é", "../x", "", 7, "[/x]"]))  # fmt: skip
    elif field == "namespace":
        meta["namespace"] = draw(st.sampled_from(["../../etc", "a/b", "UPPER", "x" * 64,
                                                  "ns\n", "é", 5, ["a"]]))  # fmt: skip
    else:
        meta[field] = draw(st.sampled_from(["x", 3, ["a"], {"k": 1}, {"k": None}, {"k": ["v"]},
                                            {"k": {"n": "v"}}, {"k": True}]))  # fmt: skip
    return obj, Mutation(f"bad metadata.{field}", f"metadata.{field}")


def cel_violation(draw: st.DrawFn, obj: dict, sites: list[_Site]) -> tuple[dict, Mutation]:
    """One of the kind's cross-field rules broken on purpose (the rule names its field)."""
    spec = obj["spec"]
    kind = obj["kind"]
    if kind == "TrainingJob":
        choice = draw(st.sampled_from(["min", "max", "accelerator", "unique", "return", "alias"]))
        group = {"name": "g", "replicas": 2}
        if choice == "unique":
            spec["workers"] = [group, dict(group)]
            return obj, Mutation("CEL: duplicate worker names", "spec.workers")
        if choice == "return":
            spec["workers"] = [{**group, "capacity": "OnDemand"}]
            spec["preemption"] = {"returnToSpot": {"minOnDemand": "30m"}}
            return obj, Mutation("CEL: returnToSpot without fallback",
                                 "spec.preemption.returnToSpot")  # fmt: skip
        if choice == "alias":
            spec["mlflow"] = {"alias": "champion"}
            return obj, Mutation("CEL: alias without registeredModel", "spec.mlflow.alias")
        field = {"min": "minReplicas", "max": "maxReplicas", "accelerator": "accelerator"}[choice]
        value = {"min": 3, "max": 1, "accelerator": "nvidia-l4"}[choice]
        spec["workers"] = [{**group, field: value, "resources": {"gpu": 0}}]
        return obj, Mutation(f"CEL: {field}", f"spec.workers[0].{field}")
    if kind == "ModelDeployment":
        choice = draw(st.sampled_from(["both", "neither", "replicas", "retrain", "accelerator"]))
        if choice in ("both", "neither"):
            spec["model"] = {"name": "m", **({"alias": "a", "version": 1} if choice == "both"
                                             else {})}  # fmt: skip
            return obj, Mutation("CEL: alias xor version", "spec.model.alias")
        if choice == "replicas":
            spec["replicas"] = {"min": 5, "max": 2}
            return obj, Mutation("CEL: replicas.min > max", "spec.replicas.min")
        if choice == "retrain":
            spec["monitoring"] = {"drift": {"onDrift": "Retrain"}}
            return obj, Mutation("CEL: Retrain without retrain", "spec.monitoring.drift.retrain")
        spec["accelerator"], spec["resources"] = "nvidia-l4", {"gpu": 0}
        return obj, Mutation("CEL: accelerator without gpu", "spec.accelerator")
    choice = draw(st.sampled_from(["sum", "unique", "guardrails", "mean", "range", "errorrate"]))
    variant = {"name": "a", "model": {"version": 1}, "weight": 50}
    if choice == "sum":
        spec["variants"] = [variant, {**variant, "name": "b", "weight": 49}]
        return obj, Mutation("CEL: weights sum", "spec.variants")
    if choice == "unique":
        spec["variants"] = [variant, dict(variant)]
        return obj, Mutation("CEL: duplicate variants", "spec.variants")
    if choice == "guardrails":
        spec["guardrails"] = [{"metric": "LatencyP99Ms", "threshold": "100"}] * 2
        return obj, Mutation("CEL: duplicate guardrails", "spec.guardrails")
    if choice == "mean":
        spec["objective"] = {"metric": "Mean"}
        return obj, Mutation("CEL: Mean without range", "spec.objective.outcomeRange")
    if choice == "range":
        spec["objective"] = {"metric": "Mean", "outcomeRange": {"min": "5", "max": "5"}}
        return obj, Mutation("CEL: empty range", "spec.objective.outcomeRange.min")
    spec["guardrails"] = [{"metric": "ErrorRate", "threshold": "1.5"}]
    return obj, Mutation("CEL: ErrorRate >= 1", "spec.guardrails[0].threshold")


MUTATIONS = (
    wrong_type,
    out_of_range,
    missing_required,
    unknown_field,
    huge,
    deep,
    bad_pattern,
    bad_enum,
    bad_metadata,
    cel_violation,
)


def names_field(problem_path: str, message: str, mutation_path: str) -> bool:
    """Whether a refusal names the mutated field: its path is that field, a parent of it, or
    inside the value put there (a rule on the whole object must name the field in its
    message)."""
    if not problem_path:
        return mutation_path in message
    if problem_path == mutation_path:
        return True
    if mutation_path.startswith(problem_path) and mutation_path[len(problem_path)] in ".[":
        return True
    return problem_path.startswith(mutation_path) and problem_path[len(mutation_path)] in ".["
