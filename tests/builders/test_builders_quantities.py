"""Kubernetes quantities as numbers (used to size serving pods)."""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mlplane.operator.builders import quantities as q


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("500m", Decimal("0.5")),
        ("2", Decimal(2)),
        (3, Decimal(3)),
        ("1.5", Decimal("1.5")),
        ("4Gi", Decimal(4 * 2**30)),
        ("1.5Gi", Decimal(3 * 2**29)),
        ("512Mi", Decimal(512 * 2**20)),
        ("16G", Decimal(16 * 10**9)),
        ("1e3", Decimal(1000)),
        ("100k", Decimal(100_000)),
        ("250u", Decimal("0.00025")),
    ],
)
def test_parse(text, value):
    assert q.parse(text) == value


@pytest.mark.parametrize("text", ["", "Gi", "4GiB", "four", "1.2.3", "4 Gi"])
def test_parse_rejects_non_quantities(text):
    with pytest.raises(ValueError, match="not a Kubernetes quantity"):
        q.parse(text)


@settings(derandomize=True)
@given(st.integers(1, 10**6))
def test_cpu_round_trip(millicores):
    assert q.millicores(q.cpu(millicores)) == millicores


@settings(derandomize=True)
@given(st.integers(1, 2**45))
def test_memory_round_trip(num_bytes):
    assert q.num_bytes(q.memory(num_bytes)) == num_bytes


def test_rounding_up():
    assert q.millicores("0.0001") == 1
    assert q.num_bytes("0.5") == 1
    assert q.cpu(2500) == "2500m"
    assert q.cpu(3000) == "3"
    assert q.memory(5 * 2**20) == "5Mi"
