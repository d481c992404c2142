"""Evaluate the CRDs' CEL rules (``x-kubernetes-validations``) here, as the API server does.

The rule text is the one in the generated CRD, so a rule is written once and enforced by the
API server on Kubernetes and by this module on the local platform, in ``mlplane validate`` and
in the operator. ``cel-python`` implements standard CEL; the Kubernetes list library function
our rules use (``sum()``) is added here, and only that: a rule using another Kubernetes-only
function fails loudly in the tests rather than silently passing.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import celpy
import celpy.celtypes as celtypes


def _k8s_sum(values: Any) -> Any:
    """Kubernetes' ``list.sum()``: the sum of a list of numbers (0 for an empty list)."""
    total: Any = celtypes.IntType(0)
    for value in values:
        total = total + value
    return total


_FUNCTIONS = {"sum": _k8s_sum}
_ENV = celpy.Environment()


@lru_cache(maxsize=512)
def _program(rule: str) -> Any:
    return _ENV.program(_ENV.compile(rule), functions=_FUNCTIONS)


def evaluate(rule: str, value: Any) -> bool:
    """Evaluate one rule with ``self`` bound to ``value`` (a JSON-like object).

    Raises ``ValueError`` when the rule cannot be evaluated (the API server reports such a
    rule as a validation error too).
    """
    try:
        result = _program(rule).evaluate({"self": celpy.json_to_cel(value)})
    except celpy.CELEvalError as exc:
        raise ValueError(f"rule {rule!r} could not be evaluated: {exc.args[0]}") from None
    if isinstance(result, celpy.CELEvalError):
        raise ValueError(f"rule {rule!r} could not be evaluated: {result.args[0]}")
    return bool(result)


@dataclass(frozen=True)
class CelFailure:
    """A rule that did not hold: where, and the rule's message."""

    path: str
    message: str
    rule: str


def check(schema: dict[str, Any], value: Any, path: str = "") -> Iterator[CelFailure]:
    """Every CEL rule in ``schema`` that fails on ``value``, depth first, parents first."""
    for spec in schema.get("x-kubernetes-validations", ()):
        field = path + spec.get("fieldPath", "")
        try:
            ok = evaluate(spec["rule"], value)
        except ValueError as exc:
            yield CelFailure(field.lstrip("."), str(exc), spec["rule"])
            continue
        if not ok:
            yield CelFailure(field.lstrip("."), spec["message"], spec["rule"])
    if isinstance(value, dict):
        for name, sub in schema.get("properties", {}).items():
            if name in value and value[name] is not None:
                yield from check(sub, value[name], f"{path}.{name}")
        extra = schema.get("additionalProperties")
        if isinstance(extra, dict):
            for key, item in value.items():
                yield from check(extra, item, f"{path}.{key}")
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for index, item in enumerate(value):
            yield from check(schema["items"], item, f"{path}[{index}]")


def rules(schema: dict[str, Any]) -> Iterator[str]:
    """Every rule text in a schema (for tests that compile them all)."""
    for spec in schema.get("x-kubernetes-validations", ()):
        yield spec["rule"]
    for sub in schema.get("properties", {}).values():
        yield from rules(sub)
    for key in ("items", "additionalProperties"):
        if isinstance(schema.get(key), dict):
            yield from rules(schema[key])
