"""Kubernetes resource quantities as numbers, for the few places that add them up.

Pods of a RayService hold a model replica plus the Serve router and Ray's own processes, so
their size is a sum; Ray's actor options want plain numbers (CPUs, bytes).
"""

from __future__ import annotations

import math
import re
from decimal import Decimal

_SUFFIXES = {
    "": Decimal(1),
    "n": Decimal("1e-9"),
    "u": Decimal("1e-6"),
    "m": Decimal("1e-3"),
    "k": Decimal("1e3"),
    "M": Decimal("1e6"),
    "G": Decimal("1e9"),
    "T": Decimal("1e12"),
    "P": Decimal("1e15"),
    "E": Decimal("1e18"),
    "Ki": Decimal(2**10),
    "Mi": Decimal(2**20),
    "Gi": Decimal(2**30),
    "Ti": Decimal(2**40),
    "Pi": Decimal(2**50),
    "Ei": Decimal(2**60),
}
_QUANTITY = re.compile(
    r"^([+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+))(?:([eE][+-]?[0-9]+)|(Ki|Mi|Gi|Ti|Pi|Ei|[numkMGTPE])?)$"
)
MI = 2**20


def parse(value: int | str) -> Decimal:
    """The number a quantity stands for: ``"500m"`` → 0.5, ``"4Gi"`` → 4294967296."""
    if isinstance(value, int):
        return Decimal(value)
    match = _QUANTITY.match(value.strip())
    if not match:
        raise ValueError(f"{value!r} is not a Kubernetes quantity (e.g. 2, 500m, 16Gi)")
    number, exponent, suffix = match.groups()
    if exponent:
        return Decimal(number) * Decimal(10) ** int(exponent[1:])
    return Decimal(number) * _SUFFIXES[suffix or ""]


def cpu(millicores: int) -> str:
    """A CPU quantity: whole cores when exact (``"3"``), else millicores (``"2500m"``)."""
    return str(millicores // 1000) if millicores % 1000 == 0 else f"{millicores}m"


def millicores(value: int | str) -> int:
    """CPU in millicores, rounded up (Kubernetes does not go below 1m)."""
    return math.ceil(parse(value) * 1000)


def memory(num_bytes: int) -> str:
    """A memory quantity: ``Mi`` when exact, else bytes."""
    return f"{num_bytes // MI}Mi" if num_bytes % MI == 0 else str(num_bytes)


def num_bytes(value: int | str) -> int:
    """Memory in bytes, rounded up."""
    return math.ceil(parse(value))
