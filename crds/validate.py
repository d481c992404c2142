"""Check an mlplane object the way the API server and then the operator would, in that order.

1. structure: apiVersion/kind known, no unknown fields (as ``kubectl --validate=strict``), no
   value nested deeper than :data:`MAX_DEPTH` below a field and no integer beyond int64 (what
   the API server cannot decode; deeper values would also exhaust Python's recursion in the
   layers below);
2. schema: types, bounds, enums and patterns of the generated CRD, after its defaults;
3. CEL: the CRD's ``x-kubernetes-validations`` (``crds/cel.py``);
4. models: what neither can express (durations, decimal bounds), by the pydantic types.

A layer runs only when the one before found nothing, so each problem is reported once, by the
earliest layer that sees it, with the field named.
"""

from __future__ import annotations

import copy
import re
import reprlib
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import jsonschema
import yaml
from pydantic import ValidationError

from mlplane.crds import API_VERSION, BY_KIND, Resource, TrainingJob
from mlplane.crds import cel as cel_rules
from mlplane.crds.common import (
    DECIMAL_PATTERN,
    DNS_LABEL,
    DURATION_PATTERN,
    INTERVAL_PATTERN,
    QUANTITY_PATTERN,
)
from mlplane.crds.schema import schema_by_kind


@dataclass(frozen=True)
class Problem:
    """One thing wrong with an object: the field (dotted path) and what is wrong with it."""

    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message


class InvalidResource(ValueError):
    """Raised by :func:`parse`; carries every problem found."""

    def __init__(self, problems: list[Problem]) -> None:
        super().__init__("; ".join(str(p) for p in problems))
        self.problems = problems


@lru_cache(maxsize=1)
def _schemas() -> dict[str, dict[str, Any]]:
    return schema_by_kind()


def _join(path: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else key


def unknown_fields(schema: dict[str, Any], value: Any, path: str = "") -> Iterator[Problem]:
    """Fields the schema does not declare (the API server would prune them silently)."""
    if schema.get("x-kubernetes-preserve-unknown-fields"):
        return
    if isinstance(value, dict) and "properties" in schema:
        for key, item in value.items():
            sub = schema["properties"].get(key)
            if sub is None:
                known = ", ".join(schema["properties"])
                yield Problem(_join(path, key), f"unknown field (known fields: {known})")
            else:
                yield from unknown_fields(sub, item, _join(path, key))
    elif isinstance(value, dict) and isinstance(schema.get("additionalProperties"), dict):
        for key, item in value.items():
            yield from unknown_fields(schema["additionalProperties"], item, _join(path, key))
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for index, item in enumerate(value):
            yield from unknown_fields(schema["items"], item, _join(path, index))


#: Levels of nesting a value may have below the field that holds it (free-form fields such as
#: ``runtimeEnv`` included): far beyond any real use, far below Python's recursion limit.
MAX_DEPTH = 32
INT64 = (-(2**63), 2**63 - 1)


_SHORT = reprlib.Repr()
_SHORT.maxlevel, _SHORT.maxstring, _SHORT.maxother, _SHORT.maxlist, _SHORT.maxdict = 3, 60, 60, 4, 4


def _shown(value: Any) -> str:
    """A value as a message shows it: short (a megabyte string or a deep list is not echoed)."""
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 10**30:
        return f"an integer of {value.bit_length()} bits"
    return _SHORT.repr(value)


def _leaf_problems(value: Any, path: str) -> Iterator[Problem]:
    """Nesting deeper than MAX_DEPTH and integers beyond int64 in a value the schema does not
    break down further (a scalar field, or free-form content), iteratively."""
    level: list[tuple[str, Any]] = [(path, value)]
    for _ in range(MAX_DEPTH + 1):
        below: list[tuple[str, Any]] = []
        for where, item in level:
            if isinstance(item, bool):
                continue
            if isinstance(item, int) and not INT64[0] <= item <= INT64[1]:
                yield Problem(where, f"must be a 64-bit integer (got {_shown(item)})")
            elif isinstance(item, dict):
                below.extend((_join(where, str(k)), v) for k, v in item.items())
            elif isinstance(item, list):
                below.extend((_join(where, i), v) for i, v in enumerate(item))
        if not below:
            return
        level = below
    yield Problem(path, f"is nested more than {MAX_DEPTH} levels deep")


def shape_problems(schema: dict[str, Any], value: Any, path: str = "") -> Iterator[Problem]:
    """What the API server cannot decode: too deep, or integers it cannot hold (see MAX_DEPTH)."""
    if isinstance(value, dict) and "properties" in schema:
        for key, item in value.items():
            sub = schema["properties"].get(key)
            if sub is None:
                yield from _leaf_problems(item, _join(path, key))
            else:
                yield from shape_problems(sub, item, _join(path, key))
    elif isinstance(value, dict) and isinstance(schema.get("additionalProperties"), dict):
        for key, item in value.items():
            yield from shape_problems(schema["additionalProperties"], item, _join(path, key))
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for index, item in enumerate(value):
            yield from shape_problems(schema["items"], item, _join(path, index))
    else:
        yield from _leaf_problems(value, path)


def apply_defaults(schema: dict[str, Any], value: Any) -> Any:
    """Fill defaults level by level, as the API server does before validating."""
    if isinstance(value, dict) and "properties" in schema:
        for key, sub in schema["properties"].items():
            if key not in value and "default" in sub:
                value[key] = copy.deepcopy(sub["default"])
            if key in value:
                value[key] = apply_defaults(sub, value[key])
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        return [apply_defaults(schema["items"], item) for item in value]
    return value


#: What a pattern means, in words, for the patterns users meet most.
PATTERN_HINTS = {
    DURATION_PATTERN: "must be a duration such as 30s, 10m, 1h30m or 14d",
    INTERVAL_PATTERN: "must be Auto or a duration such as 30s, 10m or 1h30m",
    DECIMAL_PATTERN: 'must be a decimal number written as a string, such as "0.05" or "99.9"',
    QUANTITY_PATTERN: "must be a Kubernetes quantity such as 2, 500m or 16Gi",
    DNS_LABEL: "must be a lowercase DNS label: a-z, 0-9 and '-', starting and ending "
    "with a letter or digit",
}


def _schema_message(error: jsonschema.ValidationError) -> tuple[str, str]:
    path = ""
    for key in error.absolute_path:
        path = _join(path, key)
    kind = error.validator
    if kind == "required":
        missing = str(error.message).split("'")[1]
        return _join(path, missing), "required field is missing"
    if kind == "enum":
        values = error.validator_value
        allowed = ", ".join(map(str, values)) if isinstance(values, list | tuple) else str(values)
        return path, f"must be one of: {allowed} (got {_shown(error.instance)})"
    if kind in ("minimum", "maximum"):
        word = "at least" if kind == "minimum" else "at most"
        return path, f"must be {word} {error.validator_value} (got {_shown(error.instance)})"
    if kind in ("minLength", "maxLength", "minItems", "maxItems"):
        word = "at least" if kind.startswith("min") else "at most"
        unit = "characters" if kind.endswith("Length") else "items"
        return path, f"must have {word} {error.validator_value} {unit}"
    if kind == "pattern":
        hint = PATTERN_HINTS.get(str(error.validator_value))
        if hint:
            return path, f"{hint} (got {_shown(error.instance)})"
        return path, f"{_shown(error.instance)} does not match the pattern {error.validator_value}"
    if kind in ("type", "anyOf"):
        expected = error.validator_value if kind == "type" else "an integer or a string"
        return path, f"must be {expected} (got {type(error.instance).__name__} " \
                     f"{_shown(error.instance)})"  # fmt: skip
    return path, error.message[:300]


@lru_cache(maxsize=256)
def _end_anchored(pattern: str) -> re.Pattern[str]:
    """The pattern with ``$`` meaning the end of the text, as in the API server's regular
    expressions (Go's RE2): Python's ``$`` also matches before a final newline, so ``"1h\\n"``
    passed the duration pattern here and was refused there."""
    if pattern.endswith("$") and not pattern.endswith("\\$"):
        pattern = pattern[:-1] + r"\Z"
    return re.compile(pattern)


def _pattern(
    validator: Any, pattern: str, instance: Any, schema: dict[str, Any]
) -> Iterator[jsonschema.ValidationError]:
    if isinstance(instance, str) and not _end_anchored(pattern).search(instance):
        yield jsonschema.ValidationError(f"{_shown(instance)} does not match {pattern!r}")


#: Draft 7 with the API server's ``pattern`` semantics (see :func:`_end_anchored`).
SchemaValidator = jsonschema.validators.extend(jsonschema.Draft7Validator, {"pattern": _pattern})


def _pydantic_problems(error: ValidationError) -> Iterator[Problem]:
    for item in error.errors():
        path = ""
        for key in item["loc"]:
            path = _join(path, key)
        message = item["msg"].removeprefix("Value error, ")
        yield Problem(path, message)


def check(obj: Any) -> list[Problem]:
    """Every problem with one object (a dict as read from YAML); empty when it is valid."""
    if not isinstance(obj, dict):
        return [Problem("", f"expected a mapping (an object), got {type(obj).__name__}")]
    if obj.get("apiVersion") != API_VERSION:
        got = _shown(obj.get("apiVersion"))
        return [Problem("apiVersion", f"must be {API_VERSION} (got {got})")]
    kind = obj.get("kind")
    if not isinstance(kind, str) or kind not in BY_KIND:
        known = ", ".join(BY_KIND)
        return [Problem("kind", f"unknown kind {_shown(kind)} (mlplane kinds: {known})")]
    # What users write has no status; what the API server returns does and it is ours.
    obj = {k: v for k, v in obj.items() if k != "status"}
    schema = _schemas()[kind]

    problems = list(shape_problems(schema, obj))
    if problems:
        return problems
    problems = list(unknown_fields(schema, obj))
    metadata = obj.get("metadata")
    if not isinstance(metadata, dict) or not metadata.get("name"):
        problems.append(Problem("metadata.name", "required field is missing"))
    if problems:
        return problems

    defaulted = apply_defaults(schema, copy.deepcopy(obj))
    validator = SchemaValidator(schema)
    problems = [
        Problem(*_schema_message(e))
        for e in sorted(validator.iter_errors(defaulted), key=lambda e: list(e.absolute_path))
    ]
    if problems:
        return problems

    problems = [Problem(f.path, f.message) for f in cel_rules.check(schema, defaulted)]
    if problems:
        return problems

    try:
        BY_KIND[kind].model_validate(defaulted)
    except ValidationError as exc:
        return list(_pydantic_problems(exc))
    return []


def warnings_for(resource: Resource) -> list[Problem]:
    """What a valid resource asks for that will not happen, so that it is said, not ignored.

    With ``spec.queueName`` a TrainingJob's worker groups run at exactly ``replicas``: Kueue
    reserves quota for the pods it admits and does not admit an autoscaling RayJob (unless
    elastic workload slicing is on), so the builder turns autoscaling off there.
    """
    if not isinstance(resource, TrainingJob) or resource.spec.queue_name is None:
        return []
    return [
        Problem(
            f"spec.workers[{index}]",
            f"minReplicas/maxReplicas are ignored with spec.queueName: Kueue admits a RayJob "
            f"at a fixed size, so worker group {group.name!r} runs at exactly replicas "
            f"({group.replicas})",
        )
        for index, group in enumerate(resource.spec.workers)
        if group.min_replicas is not None or group.max_replicas is not None
    ]


def parse(obj: Any) -> Resource:
    """The typed resource, or :class:`InvalidResource` naming every problem."""
    problems = check(obj)
    if problems:
        raise InvalidResource(problems)
    kind = BY_KIND[obj["kind"]]
    status = obj.get("status")
    body = apply_defaults(_schemas()[obj["kind"]], copy.deepcopy(obj))
    body.pop("status", None)
    resource = kind.model_validate(body)
    if status:
        # The status is ours: read what we can, never reject a resource for it.
        status_type = kind.model_fields["status"].annotation.__args__[0]  # type: ignore[union-attr]
        try:
            resource.status = status_type.model_validate(status)  # type: ignore[attr-defined]
        except ValidationError:
            resource.status = None  # type: ignore[attr-defined]
    return resource


@dataclass(frozen=True)
class Document:
    """One YAML document of a file: where it came from and what it holds."""

    source: str
    body: Any

    @property
    def label(self) -> str:
        """``file.yaml: Kind/name`` (or the document number when it has no name)."""
        if isinstance(self.body, dict):
            found = self.body.get("metadata")
            meta = found if isinstance(found, dict) else {}
            name, kind = str(meta.get("name") or "?"), str(self.body.get("kind", "?"))
            # One line per problem: a name with a newline (refused anyway) must not split it.
            name, kind = (v if v.isprintable() else repr(v) for v in (name, kind))
            return f"{self.source}: {kind}/{name}"
        return self.source


def load(path: Path) -> Iterator[Document]:
    """Every document in a YAML file, or in every ``*.yaml``/``*.yml`` file under a folder.

    Raises ``ValueError`` for unreadable YAML, naming the file and line.
    """
    files = (
        sorted(p for p in path.rglob("*") if p.suffix in (".yaml", ".yml"))
        if path.is_dir()
        else [path]
    )
    if not files:
        raise ValueError(f"{path}: no .yaml or .yml files found")
    for file in files:
        try:
            documents = list(yaml.safe_load_all(file.read_text()))
        except FileNotFoundError:
            raise ValueError(f"{file}: no such file") from None
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" line {mark.line + 1}" if mark is not None else ""
            problem = getattr(exc, "problem", None) or str(exc)
            raise ValueError(f"{file}:{where}: not valid YAML: {problem}") from None
        for index, body in enumerate(documents):
            if body is None:
                continue
            source = str(file) if len(documents) == 1 else f"{file}#{index + 1}"
            yield Document(source, body)
