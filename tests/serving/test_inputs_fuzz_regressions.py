"""Request bodies the fuzz (``tests/fuzz/test_fuzz_serving.py``) found answered with a 500."""

from __future__ import annotations

import json

import pytest

from mlplane.serving.inputs import InputError, InputSchema, parse_payload, to_frame


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b'{"inputs": {"x": "\\ud800"}}', "column 'x' row 0: a string holds a lone UTF-16"),
        (b'{"records": [{"x": 1}, {"x": ["a", "\\udfff"]}]}', "column 'x' row 1: a string"),
        (b'{"columns": ["\\ud800"], "data": [[1]]}', "column name '\\ud800' is not text"),
        (b'{"inputs": {"x": {"\\ud800": 1}}}', "column 'x' row 0: a string holds"),
    ],
    ids=["value", "nested", "column-name", "key"],
)
def test_a_lone_surrogate_is_a_400_naming_the_column(body, message):
    """Was accepted, then pandas (arrow strings) raised UnicodeEncodeError building the frame
    for a model without a signature: the router answered 500 "internal error"."""
    with pytest.raises(InputError) as caught:
        parse_payload(json.loads(body))
    assert caught.value.status == 400
    assert caught.value.message.startswith(message), caught.value.message


def test_a_surrogate_pair_is_text():
    columns, n = parse_payload(json.loads(b'{"inputs": {"x": "\\ud83d\\ude00"}}'))
    assert columns == {"x": ["\U0001f600"]}
    assert len(to_frame(columns, n, InputSchema(None))) == 1
