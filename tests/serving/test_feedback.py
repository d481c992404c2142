"""Feedback bodies and the exactly-once ledger."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mlplane.serving.feedback import FeedbackError, FeedbackLedger, parse_feedback
from mlplane.serving.request_id import RequestInfo

START = 1_800_000_000.0


def info(nonce: str, issued_at: float) -> RequestInfo:
    return RequestInfo("control", 3, "ns/churn", "ab1", issued_at, nonce)


@pytest.mark.parametrize(
    ("body", "value"),
    [({"requestId": "x", "outcome": 1}, 1.0), ({"requestId": "x", "outcome": 2.5}, 2.5),
     ({"requestId": "x", "outcome": True}, 1.0), ({"requestId": "x", "outcome": False}, 0.0)],
)  # fmt: skip
def test_valid_bodies(body, value):
    assert parse_feedback(body).outcome == value


@pytest.mark.parametrize(
    ("body", "status", "needle"),
    [
        ([], 400, "JSON object"),
        ({"outcome": 1}, 422, "missing field 'requestId'"),
        ({"requestId": "x"}, 422, "missing field 'outcome'"),
        ({"requestId": "x", "outcome": 1, "outcom": 1}, 422, "unknown field 'outcom'"),
        ({"requestId": 5, "outcome": 1}, 422, "field 'requestId'"),
        ({"requestId": "", "outcome": 1}, 422, "field 'requestId'"),
        ({"requestId": "x", "outcome": "1"}, 400, "field 'outcome' must be a number"),
        ({"requestId": "x", "outcome": None}, 400, "field 'outcome' must be a number"),
        ({"requestId": "x", "outcome": -1}, 400, "field 'outcome' must be a finite number >= 0"),
        ({"requestId": "x", "outcome": math.inf}, 400, "field 'outcome' must be a finite"),
    ],
)
def test_malformed_bodies_name_the_field(body, status, needle):
    with pytest.raises(FeedbackError) as err:
        parse_feedback(body)
    assert (err.value.status, needle in err.value.message) == (status, True), err.value.message


def test_conversion_outcomes_are_zero_or_one():
    assert parse_feedback({"requestId": "x", "outcome": 1}, "Conversion").outcome == 1.0
    with pytest.raises(FeedbackError, match="0 or 1 for a Conversion"):
        parse_feedback({"requestId": "x", "outcome": 2}, "Conversion")
    assert parse_feedback({"requestId": "x", "outcome": 2}, "Mean").outcome == 2.0


def test_accepted_once_then_duplicate():
    ledger = FeedbackLedger(START)
    assert ledger.record(info("a", START + 1), START + 2) == ("accepted", "")
    verdict, reason = ledger.record(info("a", START + 1), START + 3)
    assert verdict == "duplicate" and "already" in reason
    assert ledger.record(info("b", START + 1), START + 3)[0] == "accepted"


def test_requests_before_the_ledger_started_or_too_old_are_refused():
    ledger = FeedbackLedger(START, ttl_s=60)
    assert ledger.record(info("early", START - 1), START + 1)[0] == "expired"
    verdict, reason = ledger.record(info("old", START + 1), START + 100)
    assert verdict == "expired" and "60 s" in reason


def test_eviction_raises_the_floor_so_nothing_counts_twice():
    ledger = FeedbackLedger(START, max_ids=3)
    for i in range(5):
        assert ledger.record(info(f"n{i}", START + i + 1), START + 10)[0] == "accepted"
    assert len(ledger) == 3
    assert ledger.floor == START + 2  # n0, n1 evicted
    assert ledger.record(info("n0", START + 1), START + 11)[0] == "expired"
    assert ledger.record(info("n4", START + 5), START + 11)[0] == "duplicate"


@settings(max_examples=100, derandomize=True)
@given(
    events=st.lists(st.tuples(st.integers(0, 30), st.floats(0, 50), st.floats(0, 5)), max_size=120),
    max_ids=st.integers(1, 10),
    ttl=st.floats(1, 40),
)
def test_no_id_is_ever_accepted_twice(events, max_ids, ttl):
    """Whatever the order, clock jitter, eviction and expiry: at most one acceptance per id."""
    ledger = FeedbackLedger(START, ttl_s=ttl, max_ids=max_ids)
    accepted: set[str] = set()
    for nonce, issued, delay in events:
        request = info(f"n{nonce}", START + 1 + nonce)  # an id always has one issue time
        verdict, _ = ledger.record(request, START + 1 + issued + delay)
        if verdict == "accepted":
            assert request.nonce not in accepted
            accepted.add(request.nonce)
        assert len(ledger) <= max_ids
