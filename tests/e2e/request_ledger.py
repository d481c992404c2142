"""Every request an e2e client sends, counted: answered (with its status) or failed (with why).

A request loop that counts only HTTP error answers misses a connection reset or a timeout, and
a reset raised in a loop's thread kills the thread silently: the test then sees fewer answers
and no failure. :class:`RequestLedger` records each request *before* it is sent and then its
outcome, so :meth:`RequestLedger.check` can prove the totals add up; :class:`LoopThread` runs a
loop and re-raises, on :meth:`~LoopThread.stop`, whatever killed it.
"""

from __future__ import annotations

import http.client
import json
import threading
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Outcome:
    """One request: its status (None when no HTTP answer came) and its body or error."""

    url: str
    status: int | None
    body: dict[str, Any]
    error: str | None = None


@dataclass
class RequestLedger:
    """Counts sent, answered and failed requests (thread-safe; one ledger per loop or test)."""

    sent: int = 0
    #: Sent and not yet answered or failed (a loop still running has at most one per thread).
    in_flight: int = 0
    answered: list[Outcome] = field(default_factory=list)
    failed: list[Outcome] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def post(
        self, url: str, body: Any, headers: dict[str, str] | None = None, timeout: float = 60
    ) -> Outcome:
        """POST JSON; never raises for the network: a reset, a timeout, a refused connection
        or an unreadable answer is a failed request, recorded with its reason."""
        request = urllib.request.Request(
            url,
            json.dumps(body).encode(),
            {"content-type": "application/json", **(headers or {})},
            method="POST",
        )
        with self._lock:
            self.sent += 1
            self.in_flight += 1
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                outcome = Outcome(url, response.status, _json(response.read()))
        except urllib.error.HTTPError as exc:
            outcome = Outcome(url, exc.code, _json(exc.read()))
        except (OSError, http.client.HTTPException, ValueError) as exc:
            # URLError (refused), ConnectionResetError, TimeoutError, RemoteDisconnected,
            # IncompleteRead, a body that is not JSON: sent, never answered.
            outcome = Outcome(url, None, {}, f"{type(exc).__name__}: {exc}")
        with self._lock:
            (self.answered if outcome.status is not None else self.failed).append(outcome)
            self.in_flight -= 1
        return outcome

    def codes(self) -> list[int]:
        """The statuses of the answered requests, in order."""
        with self._lock:
            return [o.status for o in self.answered if o.status is not None]

    def check(self, *, ok: Callable[[Outcome], bool] | None = None) -> None:
        """Fail unless every sent request is counted once (answered, failed, or still in
        flight while a loop runs), none failed, and every answer is ``ok`` (default: status
        200); the message says how many of which."""
        with self._lock:
            answered, failed = list(self.answered), list(self.failed)
            sent, in_flight = self.sent, self.in_flight
        assert len(answered) + len(failed) + in_flight == sent, (
            f"{sent} sent but {len(answered)} answered, {len(failed)} failed and "
            f"{in_flight} in flight"
        )
        assert not failed, (
            f"{len(failed)} of {sent} requests got no answer: {[o.error for o in failed[:5]]}"
        )
        good = ok or (lambda o: o.status == 200)
        bad = [o for o in answered if not good(o)]
        assert not bad, (
            f"{len(bad)} of {sent} answers were not accepted: "
            f"{[(o.url, o.status, str(o.body)[:200]) for o in bad[:5]]}"
        )


def _json(raw: bytes) -> dict[str, Any]:
    """The answer's JSON object, or the raw text of an error page."""
    if raw.startswith(b"{"):
        return json.loads(raw)
    return {"raw": raw[:300].decode(errors="replace")}


class LoopThread:
    """A request loop in a thread: ``step()`` runs until :meth:`stop`; whatever exception ends
    the thread is raised again by :meth:`stop` (a dead loop is an error, never fewer answers)."""

    def __init__(self, step: Callable[[int], None], *, limit: int, name: str) -> None:
        self._step, self._limit = step, limit
        self._stop = threading.Event()
        self.error: BaseException | None = None
        self.steps = 0
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def _run(self) -> None:
        try:
            while not self._stop.is_set() and self.steps < self._limit:
                self._step(self.steps)
                self.steps += 1
        except BaseException as exc:  # re-raised by stop()
            self.error = exc

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def start(self) -> LoopThread:
        self._thread.start()
        return self

    def stop(self, timeout: float = 120) -> None:
        """Stop, wait, and fail if the loop died of an exception or did not stop."""
        self._stop.set()
        self._thread.join(timeout=timeout)
        if self.error is not None:
            raise AssertionError(f"the request loop died: {self.error!r}") from self.error
        assert not self._thread.is_alive(), f"the request loop did not stop within {timeout}s"
