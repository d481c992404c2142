"""Conditions follow the API conventions and change only when they change."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from mlplane.crds.common import Condition
from mlplane.operator import conditions as c

T0 = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)
T1 = T0 + timedelta(minutes=5)


def test_new_condition_has_every_field():
    out = c.set_condition([], "Ready", "False", "Deploying", "waiting", now=T0, generation=3)
    assert out == [{
        "type": "Ready", "status": "False", "reason": "Deploying", "message": "waiting",
        "lastTransitionTime": "2026-11-29T12:00:00Z", "observedGeneration": 3,
    }]  # fmt: skip
    Condition.model_validate(out[0])  # the schema's own shape


def test_transition_time_moves_only_when_status_flips():
    first = c.set_condition([], "Ready", "False", "Deploying", "a", now=T0)
    same_status = c.set_condition(first, "Ready", "False", "Scaling", "b", now=T1)
    assert same_status[0]["lastTransitionTime"] == "2026-11-29T12:00:00Z"
    assert same_status[0]["reason"] == "Scaling"
    flipped = c.set_condition(same_status, "Ready", "True", "Serving", "c", now=T1)
    assert flipped[0]["lastTransitionTime"] == "2026-11-29T12:05:00Z"


def test_unchanged_condition_gives_an_equal_list_and_no_patch():
    first = c.set_condition([], "Ready", "True", "Serving", "ok", now=T0, generation=1)
    again = c.set_condition(first, "Ready", "True", "Serving", "ok", now=T1, generation=1)
    assert again == first
    assert c.status_patch({"conditions": first}, {"conditions": again}) == {}


def test_order_and_other_conditions_are_kept_and_input_not_mutated():
    base = c.set_condition([], "A", "True", "R", "", now=T0)
    base = c.set_condition(base, "B", "True", "R", "", now=T0)
    snapshot = [dict(x) for x in base]
    out = c.set_condition(base, "A", "False", "R2", "", now=T1)
    assert [x["type"] for x in out] == ["A", "B"]
    assert base == snapshot
    assert c.remove(out, "A") == [base[1]]
    assert c.find(out, "B")["status"] == "True"
    assert c.is_true(out, "B") and not c.is_true(out, "A") and not c.is_true(out, "C")


def test_status_patch_sets_removed_fields_to_none():
    assert c.status_patch({"phase": "Running", "x": 1}, {"phase": "Running"}) == {"x": None}
    assert c.status_patch(None, {"phase": "Pending"}) == {"phase": "Pending"}


def test_status_patch_removes_nested_fields_too():
    """A merge patch merges objects: a field left out of a nested object must be sent as
    None, or the stored status keeps it (attempt 2's runningTime on attempt 3)."""
    old = {"currentAttempt": {"number": 2, "runningTime": "t2", "afterPreemption": True},
           "spotReturn": {"backoff": 0, "decidedAt": "t", "nested": {"a": 1, "b": 2}}}  # fmt: skip
    new = {"currentAttempt": {"number": 3, "startTime": "t3"},
           "spotReturn": {"backoff": 0, "nested": {"a": 1}}}  # fmt: skip
    assert c.status_patch(old, new) == {
        "currentAttempt": {"number": 3, "startTime": "t3", "runningTime": None,
                           "afterPreemption": None},
        "spotReturn": {"backoff": 0, "decidedAt": None, "nested": {"a": 1, "b": None}},
    }  # fmt: skip
    merged = _merge(old, c.status_patch(old, new))
    assert merged == new


def _merge(target: dict, patch: dict) -> dict:
    """RFC 7386 merge patch, as the API server applies it to a custom object's status."""
    out = dict(target)
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def test_timestamp_is_utc_rfc3339():
    local = datetime(2026, 11, 29, 13, 0, tzinfo=UTC).astimezone(
        __import__("datetime").timezone(timedelta(hours=1))
    )
    assert c.timestamp(local) == "2026-11-29T13:00:00Z"
