"""Sticky, weighted assignment of requests to A/B variants (pure; no I/O, no clock).

A request carrying a bucketing key (the value of the ABTest's ``bucketing.header``, e.g. a user
id) is assigned by **weighted rendezvous hashing** (highest random weight): every variant ``i``
draws a pseudo-random ``u_i = H(salt, name_i, key)`` uniform in (0, 1) and scores
``w_i / -ln(u_i)``; the highest score wins. ``-ln(u_i)/w_i`` is an exponential variable with rate
``w_i``, so the winner is variant ``i`` with probability exactly ``w_i / sum(w)``.

Why this and not ``hash(key) % 100`` against cumulative weights:

- **Sticky**: the assignment is a pure function of (salt, variant names, weights, key), so the
  same key meets the same variant on every replica, after any restart, for as long as the
  weights stand.
- **Minimal movement on a weight change**: for two variants, key ``k`` goes to the control iff
  ``E_t/E_c > w_t/w_c`` (``E`` the exponentials above). Raising the treatment from 10 % to 20 %
  lowers that threshold from 1/9 to 1/4: exactly the keys with a ratio in between (10 % of all
  keys) move, all of them from control to treatment, and no key goes the other way. With more
  variants a key only ever moves *to* a variant whose weight grew relative to its own.
  ``hash % 100`` moves the same share only if the bucket ranges happen to line up, and adding a
  variant in the middle of the list reshuffles everyone after it.
- **Adding or removing a variant** only moves keys to or from that variant: the others' scores
  do not change (hashes depend on the variant *name*, not its position).
- **Salted by the experiment**: the salt (the ABTest's name) makes assignments of different
  experiments independent, so the users who got the treatment in one test are not the same
  users in the next.

Without a key (no bucketing header configured, or a request lacking it) assignment is random
per request with the same probabilities (:func:`choose_random`).
"""

from __future__ import annotations

import hashlib
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["Weighted", "assign", "choose", "choose_random", "unit_hash"]

_TWO_64 = float(2**64)


@dataclass(frozen=True)
class Weighted:
    """A variant's name (hashed) and its weight (any non-negative number; percent in practice)."""

    name: str
    weight: float


def unit_hash(salt: str, name: str, key: str) -> float:
    """A uniform number in the open interval (0, 1) from (salt, variant name, key).

    blake2b is used for its quality and speed (it is not a security boundary here: a user who
    could pick keys could as well pick a variant). The three parts are length-prefixed so that
    no two different triples hash the same input.
    """
    parts = (salt.encode(), name.encode(), key.encode())
    data = b"".join(len(p).to_bytes(4, "big") + p for p in parts)
    digest = hashlib.blake2b(data, digest_size=8).digest()
    return (int.from_bytes(digest, "big") + 0.5) / _TWO_64


def _check(variants: Sequence[Weighted]) -> None:
    if not variants:
        raise ValueError("no variants to assign to")
    if any(not (v.weight >= 0 and math.isfinite(v.weight)) for v in variants):
        raise ValueError("variant weights must be finite and >= 0")
    if not any(v.weight > 0 for v in variants):
        raise ValueError("at least one variant needs a positive weight")


def assign(key: str, variants: Sequence[Weighted], salt: str = "") -> int:
    """Index of the variant ``key`` is assigned to (weighted rendezvous hashing; see above).

    Variants with weight 0 are never chosen. Ties (probability ~2^-64) go to the first variant.
    """
    _check(variants)
    best, best_score = -1, -math.inf
    for i, v in enumerate(variants):
        if v.weight <= 0:
            continue
        score = v.weight / -math.log(unit_hash(salt, v.name, key))
        if score > best_score:
            best, best_score = i, score
    return best


def choose_random(variants: Sequence[Weighted], rng: random.Random) -> int:
    """Index of a variant drawn at random with probability proportional to its weight."""
    _check(variants)
    total = sum(v.weight for v in variants)
    x = rng.random() * total
    last = 0
    for i, v in enumerate(variants):
        if v.weight <= 0:
            continue
        last = i
        x -= v.weight
        if x < 0:
            return i
    return last  # rounding left x a hair above 0: the last positive-weight variant


def choose(key: str | None, variants: Sequence[Weighted], *, salt: str, rng: random.Random) -> int:
    """Sticky assignment when there is a key (non-empty), random per request otherwise."""
    if key:
        return assign(key, variants, salt)
    return choose_random(variants, rng)
