"""Prediction input: JSON payload → columns → a frame checked against the model's signature.

Pure (no I/O). Every problem is an :class:`InputError` carrying the HTTP status to answer and a
message that names the column (and row) at fault, so a client never gets a 500 or a killed
replica for bad input.

Accepted bodies (a JSON object with exactly one of these keys)::

    {"records": [{"age": 41, "plan": "pro"}, {"age": 23, "plan": "free"}]}     row-oriented
    {"columns": ["age", "plan"], "data": [[41, "pro"], [23, "free"]]}       split (as pandas)
    {"inputs": {"age": [41, 23], "plan": ["pro", "free"]}}                 column-oriented
    {"inputs": {"age": 41, "plan": "pro"}}                                 one row

``records`` is the form to use by hand; ``columns/data`` is what ``DataFrame.to_json(
orient="split")`` writes; ``inputs`` is the cheapest for large batches. All three become the
same columns, so validation and the drift tap see one shape.

Type rules against the MLflow signature (``ColSpec`` types):

==================  ===========================================================================
signature type      accepted JSON values
==================  ===========================================================================
double, float       numbers (not booleans); ``null`` → NaN (a missing value the model may
                    reject, with a 422 naming the column)
long, integer       integers; integral floats (``3.0``: JSON writers blur them); range-checked
boolean             ``true``/``false``
string              strings
datetime            ISO-8601 strings
binary              not accepted over JSON (422)
==================  ===========================================================================

Columns the signature lacks are refused (a typo'd column would otherwise be silently ignored
and the model would see a missing value). Optional columns (``required: false``) may be left
out. Without a signature every column is passed as is and the model's own checks apply.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = [
    "DEFAULT_MAX_ROWS",
    "ColumnSpec",
    "Columns",
    "InputError",
    "InputSchema",
    "check_finite",
    "check_text",
    "decode_json",
    "parse_payload",
    "to_frame",
]

#: Rows accepted in one request (more → 413): bounds a request's memory and latency so one
#: caller cannot monopolise a replica; batch jobs belong in TrainingJobs or batch inference.
DEFAULT_MAX_ROWS = 10_000

Columns = dict[str, list[Any]]

_INT_RANGES = {"long": (-(2**63), 2**63 - 1), "integer": (-(2**31), 2**31 - 1)}
_DTYPES = {
    "double": "float64",
    "float": "float32",
    "long": "int64",
    "integer": "int32",
    "boolean": "bool",
}
_SHAPES = "'records', 'columns'+'data' or 'inputs'"


class InputError(ValueError):
    """Bad input: answer ``status`` (400, 413 or 422) with ``message``."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class ColumnSpec:
    name: str
    type: str
    required: bool = True


@dataclass(frozen=True)
class InputSchema:
    """The column part of an MLflow model signature (``None`` columns: no signature)."""

    columns: tuple[ColumnSpec, ...] | None

    @classmethod
    def from_mlflow(cls, schema: Any) -> InputSchema:
        """From ``model.metadata.get_input_schema()`` (duck-typed: no MLflow import here).

        Tensor signatures and schemas without column names cannot be checked column by column;
        they give an unchecked schema and the model's own enforcement applies.
        """
        if schema is None or schema.is_tensor_spec() or not schema.has_input_names():
            return cls(None)
        return cls(
            tuple(
                ColumnSpec(
                    str(c.name),
                    getattr(c.type, "name", str(c.type)),
                    bool(getattr(c, "required", True)),
                )
                for c in schema.inputs
            )
        )

    def to_dict(self) -> list[dict[str, Any]] | None:
        if self.columns is None:
            return None
        return [{"name": c.name, "type": c.type, "required": c.required} for c in self.columns]


def _list_of_rows(name: str, value: Any) -> list[Any]:
    if not isinstance(value, list):
        raise InputError(400, f"'{name}' must be a JSON array")
    return value


def _check_rows(n: int, max_rows: int) -> None:
    if n == 0:
        raise InputError(422, "no rows to predict on")
    if n > max_rows:
        raise InputError(413, f"{n} rows in one request; at most {max_rows} are accepted")


def _from_records(records: list[Any], max_rows: int) -> tuple[Columns, int]:
    _check_rows(len(records), max_rows)
    first = records[0]
    if not isinstance(first, dict):
        raise InputError(400, "'records' must be an array of JSON objects (record 0 is not)")
    names = list(first)
    columns: Columns = {name: [] for name in names}
    for i, record in enumerate(records):
        if not isinstance(record, dict):
            raise InputError(400, f"'records' must be an array of JSON objects (record {i} is not)")
        if len(record) != len(names) or record.keys() != columns.keys():
            missing = [k for k in names if k not in record]
            extra = [k for k in record if k not in columns]
            what = f"lacks column {missing[0]!r}" if missing else f"has column {extra[0]!r}"
            raise InputError(422, f"record {i} {what} unlike record 0 (all must have the same)")
        for name in names:
            columns[name].append(record[name])
    return columns, len(records)


def _from_split(payload: Mapping[str, Any], max_rows: int) -> tuple[Columns, int]:
    names = _list_of_rows("columns", payload["columns"])
    data = _list_of_rows("data", payload.get("data"))
    if not all(isinstance(n, str) for n in names):
        raise InputError(400, "'columns' must be an array of column names (strings)")
    if len(set(names)) != len(names):
        dup = next(n for n in names if names.count(n) > 1)
        raise InputError(422, f"column {dup!r} appears twice in 'columns'")
    _check_rows(len(data), max_rows)
    columns: Columns = {name: [] for name in names}
    lists = list(columns.values())
    for i, row in enumerate(data):
        if not isinstance(row, list) or len(row) != len(names):
            raise InputError(422, f"'data' row {i} must be an array of {len(names)} values")
        for target, value in zip(lists, row, strict=True):
            target.append(value)
    return columns, len(data)


def _from_inputs(inputs: Any, max_rows: int) -> tuple[Columns, int]:
    if not isinstance(inputs, dict) or not inputs:
        raise InputError(400, "'inputs' must be a JSON object of columns")
    if not any(isinstance(v, list) for v in inputs.values()):
        return {k: [v] for k, v in inputs.items()}, 1  # one row given as scalars
    lengths = {k: len(v) if isinstance(v, list) else None for k, v in inputs.items()}
    name, n = next((k, m) for k, m in lengths.items() if m is not None)
    for k, m in lengths.items():
        if m != n:
            got = "a scalar" if m is None else f"{m} values"
            raise InputError(422, f"column {k!r} has {got} but column {name!r} has {n}")
    _check_rows(n, max_rows)
    return {k: list(v) for k, v in inputs.items()}, n


def decode_json(raw: bytes) -> Any:
    """The JSON value of a request body; any body the parser refuses is a 400 saying why.

    Python's parser raises more than ``JSONDecodeError``: ``ValueError`` for an integer of more
    than 4300 digits (the int-str conversion limit), ``RecursionError`` for deep nesting,
    ``UnicodeDecodeError`` for bytes that are not UTF-8/16/32. None of them may become a 500.
    The literals ``NaN``, ``Infinity`` and ``-Infinity`` (not JSON, but common) and numbers
    beyond the float range decode to non-finite floats; :func:`parse_payload` and the feedback
    parser decide whether they are acceptable, naming the field.
    """
    if not raw:
        raise InputError(400, "empty body: send a JSON object")
    try:
        return json.loads(raw)
    except RecursionError:
        raise InputError(400, "the body is not accepted: JSON nested too deeply") from None
    except json.JSONDecodeError as exc:
        raise InputError(400, f"the body is not valid JSON: {exc}") from None
    except UnicodeDecodeError as exc:
        raise InputError(400, f"the body is not UTF-8 text: {exc.reason}") from None
    except ValueError as exc:  # e.g. "Exceeds the limit (4300 digits) for integer string ..."
        raise InputError(400, f"the body is not accepted: {exc}") from None


def _non_finite(value: Any) -> bool:
    """Whether a non-finite float is anywhere in ``value`` (iterative: any nesting depth)."""
    stack = [value]
    while stack:
        v = stack.pop()
        if isinstance(v, float):
            if not math.isfinite(v):
                return True
        elif isinstance(v, list):
            stack.extend(v)
        elif isinstance(v, dict):
            stack.extend(v.values())
    return False


def check_finite(columns: Columns) -> None:
    """Refuse NaN/Infinity feature values (400 naming the column and row): a model that does
    not declare it takes them (``spec.model.allowNonFiniteInputs``) would answer garbage or
    fail deep inside its library. ``null`` stays the way to send a missing value."""
    for name, values in columns.items():
        for i, v in enumerate(values):
            if _non_finite(v):
                raise InputError(
                    400,
                    f"column {name!r} row {i}: NaN/Infinity is not accepted by this model "
                    "(spec.model.allowNonFiniteInputs is off); send null for a missing value",
                )


def _has_surrogate(value: Any) -> bool:
    """Whether a lone UTF-16 surrogate (JSON ``"\\ud800"``) is anywhere in ``value``'s strings
    or keys (iterative: any nesting depth)."""
    stack = [value]
    while stack:
        v = stack.pop()
        if isinstance(v, str):
            if not v.isascii() and any("\ud800" <= c <= "\udfff" for c in v):
                return True
        elif isinstance(v, list):
            stack.extend(v)
        elif isinstance(v, dict):
            stack.extend(v.keys())
            stack.extend(v.values())
    return False


def check_text(columns: Columns) -> None:
    """Refuse strings that are not text (400 naming the column and row): JSON may escape a lone
    UTF-16 surrogate (``"\\ud800"``), which no UTF-8 encoder takes, so pandas and the model
    failed deep inside (a 500) on what is bad input."""
    for name, values in columns.items():
        if _has_surrogate(name):
            raise InputError(400, f"column name {name!r} is not text: it holds a lone UTF-16 "
                             "surrogate (\\ud800-\\udfff)")  # fmt: skip
        for i, v in enumerate(values):
            if _has_surrogate(v):
                raise InputError(
                    400,
                    f"column {name!r} row {i}: a string holds a lone UTF-16 surrogate "
                    "(\\ud800-\\udfff): not text",
                )


def parse_payload(
    payload: Any, max_rows: int = DEFAULT_MAX_ROWS, *, allow_non_finite: bool = False
) -> tuple[Columns, int]:
    """``(columns, n_rows)`` from a decoded JSON body in one of the accepted shapes.

    ``allow_non_finite=False`` refuses NaN/Infinity values (:func:`check_finite`); strings
    that are not text are always refused (:func:`check_text`).
    """
    columns, n = _parse_shape(payload, max_rows)
    check_text(columns)
    if not allow_non_finite:
        check_finite(columns)
    return columns, n


def _parse_shape(payload: Any, max_rows: int) -> tuple[Columns, int]:
    if not isinstance(payload, dict):
        raise InputError(400, f"the body must be a JSON object with {_SHAPES}")
    keys = set(payload)
    if keys == {"records"}:
        return _from_records(_list_of_rows("records", payload["records"]), max_rows)
    if keys == {"columns", "data"}:
        return _from_split(payload, max_rows)
    if keys == {"inputs"}:
        return _from_inputs(payload["inputs"], max_rows)
    known = {"records", "columns", "data", "inputs"}
    unknown = sorted(keys - known)
    if unknown:
        raise InputError(400, f"unknown field {unknown[0]!r}; the body takes {_SHAPES}")
    raise InputError(400, f"the body must have exactly one of {_SHAPES} (got {sorted(keys)})")


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _convert(spec: ColumnSpec, values: list[Any]) -> Any:
    """The column as an array of the signature's dtype, or an InputError naming the column."""
    name, kind = spec.name, spec.type

    def bad(i: int, expected: str) -> InputError:
        return InputError(
            422, f"column {name!r} row {i}: expected {expected} ({kind}), got {values[i]!r}"
        )

    if kind in ("double", "float"):
        for i, v in enumerate(values):
            if v is not None and not _is_number(v):
                raise bad(i, "a number")
        return np.array([math.nan if v is None else v for v in values], dtype=_DTYPES[kind])
    if kind in ("long", "integer"):
        low, high = _INT_RANGES[kind]
        out = []
        for i, v in enumerate(values):
            if isinstance(v, float) and v.is_integer():
                v = int(v)
            if not (isinstance(v, int) and not isinstance(v, bool)):
                raise bad(i, "an integer")
            if not low <= v <= high:
                raise bad(i, f"an integer in [{low}, {high}]")
            out.append(v)
        return np.array(out, dtype=_DTYPES[kind])
    if kind == "boolean":
        for i, v in enumerate(values):
            if not isinstance(v, bool):
                raise bad(i, "true or false")
        return np.array(values, dtype=bool)
    if kind == "string":
        for i, v in enumerate(values):
            if not isinstance(v, str):
                raise bad(i, "a string")
        return np.array(values, dtype=object)
    if kind == "datetime":
        for i, v in enumerate(values):
            if not isinstance(v, str):
                raise bad(i, "an ISO-8601 date-time string")
            try:
                np.datetime64(v.rstrip("Z"))
            except ValueError:
                raise bad(i, "an ISO-8601 date-time string") from None
        return np.array([np.datetime64(v.rstrip("Z"), "ns") for v in values])
    raise InputError(422, f"column {name!r}: type {kind} cannot be sent as JSON")


def to_frame(columns: Mapping[str, Sequence[Any]], n_rows: int, schema: InputSchema) -> Any:
    """A pandas DataFrame of ``columns`` in the schema's order and dtypes (checked)."""
    import pandas as pd  # lazy: the router parses payloads without needing pandas

    if schema.columns is None:
        return pd.DataFrame({k: list(v) for k, v in columns.items()})
    known = {c.name for c in schema.columns}
    extra = [k for k in columns if k not in known]
    if extra:
        expected = ", ".join(c.name for c in schema.columns)
        raise InputError(422, f"unknown column {extra[0]!r}: the model takes {expected}")
    data: dict[str, Any] = {}
    for spec in schema.columns:
        if spec.name not in columns:
            if spec.required:
                raise InputError(422, f"missing column {spec.name!r} ({spec.type})")
            continue
        values = list(columns[spec.name])
        if len(values) != n_rows:
            raise InputError(422, f"column {spec.name!r} has {len(values)} values, not {n_rows}")
        data[spec.name] = _convert(spec, values)
    return pd.DataFrame(data, index=pd.RangeIndex(n_rows))
