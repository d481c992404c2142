"""Feedback bodies the fuzz (``tests/fuzz/test_fuzz_serving.py``) found answered with a 500."""

from __future__ import annotations

import json

import pytest

from mlplane.serving.feedback import FeedbackError, parse_feedback


@pytest.mark.parametrize("objective", [None, "Conversion", "Mean"])
def test_an_outcome_beyond_the_float_range_is_a_400_naming_the_field(objective):
    """Was OverflowError (int too large to convert to float) out of the router: a 500."""
    body = json.loads(b'{"requestId": "r", "outcome": 1' + b"0" * 400 + b"}")
    with pytest.raises(FeedbackError) as caught:
        parse_feedback(body, objective, (0.0, 100.0) if objective == "Mean" else None)
    assert caught.value.status == 400
    assert caught.value.message == "field 'outcome' must be at most 1e+12 (got a 401-digit integer)"
