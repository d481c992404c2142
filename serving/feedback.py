"""Outcome feedback: the request body, and exactly-once acceptance (pure; time is an argument).

``POST /v1/feedback {"requestId": "...", "outcome": 1}`` credits a business outcome to the
variant that served the request. Attribution comes from the signed request id
(:mod:`mlplane.serving.request_id`); this module checks the body and decides whether the id may
still be counted.

Exactly once: the decision lives in ONE place, the app's single ``monitor`` replica, which keeps
a :class:`FeedbackLedger` of the ids it has counted — every router replica asks it, so a
duplicate is caught whichever router replica it reaches (a per-router seen-set would only catch
duplicates that happen to land on the same replica). The ledger is bounded:

- ids are accepted for ``ttl_s`` after their request was served (default 24 h); older ones are
  refused as expired (410), so entries older than that can be forgotten;
- at most ``max_ids`` entries are kept; when full, the entries of the oldest *requests* are
  evicted and the acceptance floor rises to their issue time: ids issued at or before the floor
  are refused as expired too. So an id is never counted twice — whatever could have been
  forgotten is also refused — at the price of refusing very late feedback under heavy load;
- a restarted monitor with a state directory (:mod:`mlplane.serving.journal`) takes the ledger
  back from its snapshot and journal: an id counted before the restart is still refused, and
  feedback for requests served before it is still accepted once. Without saved state it starts
  with an empty ledger and a floor at its start time: feedback for requests served before it
  started is refused (410) rather than risked twice (and its counts start a new epoch).

Outcomes are bounded by the objective, so that no single client can swamp a variant's mean and
the sums stay finite: under ``Conversion`` only 0 and 1 (``true``/``false``); under ``Mean`` the
ABTest's declared ``objective.outcomeRange`` (required for Mean; the CRD caps it at 1e12, so
sums and sums of squares cannot overflow); otherwise finite numbers >= 0
(``mlplane_abtest_outcome_sum`` is a counter read with ``rate()``, which a negative value would
turn into a false counter reset). Anything else is a 400 naming the field.

Optional authentication (:class:`FeedbackToken`): when the app has a token file, feedback must
carry ``Authorization: Bearer <token>``, compared in constant time; for deployments whose
feedback comes from a backend that can hold a secret (see docs/security.md).
"""

from __future__ import annotations

import heapq
import hmac
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from mlplane.serving.request_id import RequestInfo

__all__ = [
    "DEFAULT_MAX_IDS",
    "DEFAULT_TTL_S",
    "MAX_OUTCOME",
    "FeedbackError",
    "FeedbackLedger",
    "FeedbackToken",
    "Verdict",
    "parse_feedback",
]

#: Feedback is accepted up to a day after the request (conversions are rarely later; longer
#: would need proportionally more ledger memory).
DEFAULT_TTL_S = 86_400.0
#: ~100 bytes per entry: 500k ids ≈ 50 MB, a day of feedback at ~6/s without any eviction.
DEFAULT_MAX_IDS = 500_000

#: Largest outcome accepted under any objective (the ABTest CRD caps ``outcomeRange`` at the
#: same): with it sums and sums of squares stay finite for ~1e284 outcomes, where one 1e200
#: or 1e308 would overflow the sum of squares at once.
MAX_OUTCOME = 1e12

Verdict = Literal["accepted", "duplicate", "expired"]


class FeedbackError(ValueError):
    """A malformed feedback body: answer ``status`` with ``message`` (it names the field)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class Feedback:
    request_id: str
    outcome: float


def parse_feedback(
    body: Any,
    objective: str | None = None,
    outcome_range: tuple[float, float] | None = None,
) -> Feedback:
    """The checked body; ``objective`` ``"Conversion"`` restricts outcomes to 0/1,
    ``outcome_range`` (a Mean objective's) to ``[min, max]``."""
    if not isinstance(body, Mapping):
        raise FeedbackError(400, "the body must be a JSON object {requestId, outcome}")
    unknown = sorted(set(body) - {"requestId", "outcome"})
    if unknown:
        raise FeedbackError(
            422, f"unknown field {unknown[0]!r}: the body is {{requestId, outcome}}"
        )
    if "requestId" not in body:
        raise FeedbackError(422, "missing field 'requestId'")
    if "outcome" not in body:
        raise FeedbackError(422, "missing field 'outcome'")
    request_id = body["requestId"]
    if not isinstance(request_id, str) or not request_id:
        raise FeedbackError(422, "field 'requestId' must be a non-empty string")
    raw = body["outcome"]
    if isinstance(raw, bool):
        value = 1.0 if raw else 0.0
    elif isinstance(raw, int | float):
        try:
            value = float(raw)
        except OverflowError:  # an integer beyond the float range (JSON allows any length)
            raise FeedbackError(
                400,
                f"field 'outcome' must be at most {MAX_OUTCOME:g} (got a {len(str(raw))}-digit "
                "integer)",
            ) from None
    else:
        raise FeedbackError(400, f"field 'outcome' must be a number or a boolean, not {raw!r}")
    if not math.isfinite(value) or value < 0:
        raise FeedbackError(400, f"field 'outcome' must be a finite number >= 0 (got {raw!r})")
    if value > MAX_OUTCOME:
        raise FeedbackError(400, f"field 'outcome' must be at most {MAX_OUTCOME:g} (got {raw!r})")
    if objective == "Conversion" and value not in (0.0, 1.0):
        raise FeedbackError(
            400, f"field 'outcome' must be 0 or 1 for a Conversion objective (got {raw!r})"
        )
    if outcome_range is not None and not outcome_range[0] <= value <= outcome_range[1]:
        low, high = outcome_range
        raise FeedbackError(
            400,
            f"field 'outcome' must be within the ABTest's objective.outcomeRange "
            f"[{low:g}, {high:g}] (got {raw!r})",
        )
    return Feedback(request_id, value)


class FeedbackToken:
    """The token ``POST /v1/feedback`` requires, read from a file (a mounted Secret key),
    reread when the file changes (rotation without a restart)."""

    def __init__(
        self,
        path: str | Path,
        *,
        recheck_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.path = Path(path)
        self._recheck_s = recheck_s
        self._clock = clock
        self._token = self._read()
        if not self._token:
            raise ValueError(f"the feedback token file {self.path} is empty")
        self._checked = clock()

    def _read(self) -> bytes:
        return self.path.read_bytes().strip()

    def token(self) -> bytes:
        now = self._clock()
        if now - self._checked >= self._recheck_s:
            self._checked = now
            try:
                fresh = self._read()
            except OSError:
                fresh = b""
            if fresh:  # an unreadable or emptied file keeps the last token
                self._token = fresh
        return self._token

    def allows(self, authorization: str | None) -> bool:
        """Whether an ``Authorization`` header value carries the token (constant time)."""
        scheme, _, given = (authorization or "").strip().partition(" ")
        if scheme.lower() != "bearer":
            return False
        return hmac.compare_digest(given.strip().encode("utf-8", "replace"), self.token())


class FeedbackLedger:
    """Ids already counted, bounded by age and number (see the module doc)."""

    def __init__(
        self,
        started_at: float,
        *,
        ttl_s: float = DEFAULT_TTL_S,
        max_ids: int = DEFAULT_MAX_IDS,
    ) -> None:
        if ttl_s <= 0 or max_ids < 1:
            raise ValueError("ttl_s must be > 0 and max_ids >= 1")
        self.ttl_s = ttl_s
        self.max_ids = max_ids
        #: Ids issued at or before this time are refused (start time, then eviction).
        self.floor = started_at
        self._seen: set[str] = set()
        self._by_age: list[tuple[float, str]] = []

    def __len__(self) -> int:
        return len(self._seen)

    def _forget_before(self, cutoff: float) -> None:
        # Forgetting raises the floor too, so exactness never depends on the clock only moving
        # forward.
        while self._by_age and self._by_age[0][0] < cutoff:
            issued, nonce = heapq.heappop(self._by_age)
            self._seen.discard(nonce)
            self.floor = max(self.floor, issued)

    def discard(self, nonce: str) -> None:
        """Forget an id just recorded whose outcome could not be saved (it may come again)."""
        self._seen.discard(nonce)

    def to_state(self) -> dict[str, Any]:
        """The ledger as plain JSON (the monitor's snapshot: dedup survives its restart)."""
        ids = [[issued, nonce] for issued, nonce in self._by_age if nonce in self._seen]
        return {"floor": self.floor, "ids": ids}

    def restore(self, state: Mapping[str, Any]) -> None:
        """Take back a saved ledger (replaces this one's ids and floor)."""
        self.floor = float(state["floor"])
        self._by_age = [(float(issued), str(nonce)) for issued, nonce in state["ids"]]
        heapq.heapify(self._by_age)
        self._seen = {nonce for _, nonce in self._by_age}

    def record(self, info: RequestInfo, now: float) -> tuple[Verdict, str]:
        """Count ``info`` once: ``("accepted", "")`` or a refusal with its reason."""
        if info.issued_at <= self.floor:
            return "expired", (
                "the request was served before the feedback ledger's horizon "
                f"({self.floor:.3f}); it can no longer be counted exactly once"
            )
        if now - info.issued_at > self.ttl_s:
            return "expired", f"feedback is accepted for {self.ttl_s:g} s after the request"
        if info.nonce in self._seen:
            return "duplicate", "an outcome was already recorded for this request"
        self._forget_before(now - self.ttl_s)
        self._seen.add(info.nonce)
        heapq.heappush(self._by_age, (info.issued_at, info.nonce))
        while len(self._seen) > self.max_ids:
            issued, nonce = heapq.heappop(self._by_age)
            self._seen.discard(nonce)
            self.floor = max(self.floor, issued)
        return "accepted", ""
