"""Prediction payloads and signature checks: every problem is a 4xx naming the column."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from mlplane.serving.inputs import ColumnSpec, InputError, InputSchema, parse_payload, to_frame

SCHEMA = InputSchema(
    (
        ColumnSpec("tenure", "double"),
        ColumnSpec("visits", "long"),
        ColumnSpec("plan", "string"),
        ColumnSpec("active", "boolean"),
        ColumnSpec("coupon", "string", required=False),
    )
)
RECORDS = [
    {"tenure": 3.5, "visits": 2, "plan": "pro", "active": True},
    {"tenure": 10, "visits": 7.0, "plan": "free", "active": False},
]


def frame(payload, schema=SCHEMA):
    columns, n = parse_payload(payload)
    return to_frame(columns, n, schema)


def test_the_three_shapes_are_the_same_frame():
    names = list(RECORDS[0])
    records = frame({"records": RECORDS})
    split = frame({"columns": names, "data": [[r[k] for k in names] for r in RECORDS]})
    inputs = frame({"inputs": {k: [r[k] for r in RECORDS] for k in names}})
    pd.testing.assert_frame_equal(records, split)
    pd.testing.assert_frame_equal(records, inputs)
    assert list(records.columns) == ["tenure", "visits", "plan", "active"]
    dtypes = records.dtypes.to_dict()
    assert (dtypes["tenure"], dtypes["visits"], dtypes["active"]) == (
        np.dtype("float64"),
        np.dtype("int64"),
        np.dtype("bool"),
    )
    assert pd.api.types.is_string_dtype(dtypes["plan"])
    one = frame({"inputs": RECORDS[0]})  # scalars: one row
    assert len(one) == 1


@pytest.mark.parametrize(
    ("payload", "status", "needle"),
    [
        ([1, 2], 400, "JSON object"),
        ({}, 400, "exactly one of"),
        ({"rows": []}, 400, "unknown field 'rows'"),
        ({"records": RECORDS, "inputs": {}}, 400, "exactly one"),
        ({"records": {}}, 400, "'records' must be a JSON array"),
        ({"records": []}, 422, "no rows"),
        ({"records": [1]}, 400, "record 0"),
        ({"records": [RECORDS[0], {"tenure": 1}]}, 422, "record 1 lacks column 'visits'"),
        ({"records": [RECORDS[0], {**RECORDS[0], "x": 1}]}, 422, "record 1 has column 'x'"),
        ({"columns": ["a", "a"], "data": [[1, 2]]}, 422, "'a' appears twice"),
        ({"columns": ["a"], "data": [[1, 2]]}, 422, "row 0 must be an array of 1"),
        ({"columns": [1], "data": [[1]]}, 400, "column names"),
        ({"inputs": {"a": [1, 2], "b": [1]}}, 422, "column 'b' has 1 values"),
        ({"inputs": {"a": [1, 2], "b": 3}}, 422, "column 'b' has a scalar"),
        ({"inputs": []}, 400, "'inputs' must be a JSON object"),
    ],
)
def test_malformed_payloads(payload, status, needle):
    with pytest.raises(InputError) as err:
        parse_payload(payload)
    assert err.value.status == status
    assert needle in err.value.message


def test_too_many_rows_is_413():
    with pytest.raises(InputError) as err:
        parse_payload({"records": RECORDS * 3}, max_rows=5)
    assert err.value.status == 413
    assert "at most 5" in err.value.message


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        ({"tenure": "long"}, "column 'tenure' row 1: expected a number (double)"),
        ({"tenure": True}, "column 'tenure' row 1: expected a number"),
        ({"visits": 2.5}, "column 'visits' row 1: expected an integer (long)"),
        ({"visits": None}, "column 'visits' row 1: expected an integer"),
        ({"visits": 2**64}, "column 'visits' row 1: expected an integer in"),
        ({"plan": 3}, "column 'plan' row 1: expected a string"),
        ({"active": 1}, "column 'active' row 1: expected true or false"),
    ],
)
def test_wrong_types_name_the_column_and_row(change, needle):
    records = [RECORDS[0], {**RECORDS[1], **change}]
    with pytest.raises(InputError) as err:
        frame({"records": records})
    assert err.value.status == 422
    assert needle in err.value.message


def test_missing_and_unknown_columns():
    without = [{k: v for k, v in r.items() if k != "plan"} for r in RECORDS]
    with pytest.raises(InputError, match="missing column 'plan' \\(string\\)"):
        frame({"records": without})
    extra = [{**r, "colour": "red"} for r in RECORDS]
    with pytest.raises(InputError, match="unknown column 'colour': the model takes tenure"):
        frame({"records": extra})
    # Optional columns may be sent or not.
    assert "coupon" in frame({"records": [{**r, "coupon": "X"} for r in RECORDS]}).columns


def test_null_numbers_become_nan_and_integral_floats_integers():
    records = [RECORDS[0], {**RECORDS[1], "tenure": None}]
    out = frame({"records": records})
    assert math.isnan(out["tenure"][1])
    assert out["visits"].tolist() == [2, 7]


def test_integer_ranges_and_other_types():
    schema = InputSchema(
        (ColumnSpec("i", "integer"), ColumnSpec("f", "float"), ColumnSpec("t", "datetime"))
    )
    out = to_frame({"i": [2**31 - 1], "f": [1.5], "t": ["2026-11-29T10:00:00Z"]}, 1, schema)
    assert out.dtypes.astype(str).tolist() == ["int32", "float32", "datetime64[ns]"]
    with pytest.raises(InputError, match="'i' row 0: expected an integer in"):
        to_frame({"i": [2**31], "f": [1.0], "t": ["2026-11-29"]}, 1, schema)
    with pytest.raises(InputError, match="'t' row 0: expected an ISO-8601"):
        to_frame({"i": [1], "f": [1.0], "t": ["yesterday"]}, 1, schema)
    with pytest.raises(InputError, match="'b': type binary cannot be sent as JSON"):
        to_frame({"b": ["AA=="]}, 1, InputSchema((ColumnSpec("b", "binary"),)))


def test_without_a_signature_columns_pass_through():
    out = to_frame({"a": [1, 2], "b": ["x", "y"]}, 2, InputSchema(None))
    assert out.to_dict(orient="list") == {"a": [1, 2], "b": ["x", "y"]}


def test_schema_from_an_mlflow_signature():
    from mlflow.models import infer_signature

    df = pd.DataFrame({"a": [1.0], "n": [1], "s": ["x"], "b": [True]})
    schema = InputSchema.from_mlflow(infer_signature(df).inputs)
    assert schema.to_dict() == [
        {"name": "a", "type": "double", "required": True},
        {"name": "n", "type": "long", "required": True},
        {"name": "s", "type": "string", "required": True},
        {"name": "b", "type": "boolean", "required": True},
    ]
    tensor = infer_signature(np.zeros((2, 3))).inputs
    assert InputSchema.from_mlflow(tensor).columns is None
    assert InputSchema.from_mlflow(None).columns is None
