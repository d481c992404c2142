"""What the Kopf adapter keeps in memory, and where: nothing per object at module level.

- Per operator: :class:`OperatorState`, put into Kopf's operator-level ``memo`` by the startup
  handler (``handlers.configure``): the :class:`~mlplane.operator.config.Settings` read once at
  start, the disruption ledger (fed by pod and node events of any object), the reclaim history
  keeper, the cache of parsed index bodies. Kopf makes each object's ``memo`` a shallow copy
  of the operator's, so every handler reaches the same :class:`OperatorState` through its own
  ``memo`` (:func:`operator_state`); two operators in one process share nothing.
- Per object: :class:`ObjectState` in the object's own ``memo`` (:func:`object_state`): the
  lock its change handlers and timer take turns with, the status this process last wrote,
  and the kinds' small caches. Kopf drops an object's memo when the object is gone, and keys
  it by uid: a new object of the same name starts clean.

The status this process last wrote (:attr:`ObjectState.written`) exists because the body a
handler gets may predate our own write (Kopf applies its patch after a handler returns; the
watch lags). It is trusted only while the resourceVersion our write returned is newer than
the body's (:meth:`ObjectState.ahead_of`): a newer body has seen our write, and if its status
differs, someone else wrote after us (another replica, a restore): the body wins.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from mlplane.crds import Resource
from mlplane.crds.validate import parse
from mlplane.operator.config import Settings
from mlplane.operator.handlers.ledger import DisruptionLedger
from mlplane.operator.platforms.reclaim_history import (
    ConfigMapHistoryStore,
    ReclaimHistoryKeeper,
)

#: Where the operator-level state lives in Kopf's memo.
MEMO_KEY = "mlplane"
#: Where an object's own state lives in its memo.
OBJECT_KEY = "mlplane_object"
#: Parsed index bodies kept at most (the cache starts over beyond).
MAX_PARSED = 4096


def _revision(version: Any) -> int | None:
    try:
        return int(str(version))
    except ValueError:
        return None


def newer(ours: Any, theirs: Any, *, or_same: bool = False) -> bool:
    """Whether resourceVersion ``ours`` is newer than ``theirs`` (``or_same``: or the same).

    Kubernetes' resourceVersions are etcd revisions (the API server's and the emulator's are
    increasing integers). When either is not a number, nothing can be said: False, so the body
    (what the API server showed) wins.
    """
    a, b = _revision(ours), _revision(theirs)
    if a is None or b is None:
        return False
    return a >= b if or_same else a > b


@dataclass(frozen=True)
class Written:
    """A status this process wrote, and the resourceVersion the API server gave that write;
    or (``stored`` False) a status it means to write, computed from the body at
    ``resource_version``, whose write failed or has not happened yet."""

    status: dict[str, Any]
    resource_version: str
    stored: bool = True


class Remembered:
    """The last answer to a question (MLflow's, a drift report) and when it came (monotonic)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._seen: tuple[float, tuple[Any, ...], Any] | None = None

    def get(self, question: tuple[Any, ...]) -> tuple[float, Any] | None:
        """``(when, answer)`` if the last question was ``question``; None otherwise."""
        with self._lock:
            found = self._seen
        if found is None or found[1] != question:
            return None
        return found[0], found[2]

    def put(self, question: tuple[Any, ...], answer: Any, at: float) -> None:
        with self._lock:
            self._seen = (at, question, answer)


@dataclass
class ObjectState:
    """One object's state in this process (its Kopf memo)."""

    #: Its change handlers and its timer take turns (Kopf runs them concurrently, in threads).
    lock: threading.Lock = field(default_factory=threading.Lock)
    #: The status this process last wrote (see the module docstring).
    written: Written | None = None
    #: ABTest: when a running test is due for its next evaluation (``time.monotonic()``).
    due: float = 0.0
    #: TrainingJob: when its daemon runs the next round (``time.monotonic()``; None: not set
    #: yet). Each round sets it from the plan's ``requeue_after`` capped by the resync.
    next_round: float | None = None
    #: ModelDeployment: the split it was last reconciled with (``routed_known``: there was one).
    routed: Any = None
    routed_known: bool = False
    #: ModelDeployment: MLflow's last answer and the last drift report.
    resolution: Remembered = field(default_factory=Remembered)
    drift: Remembered = field(default_factory=Remembered)

    def ahead_of(self, body: Mapping[str, Any]) -> dict[str, Any] | None:
        """The status we last wrote if ``body`` predates it; None when the body is as new.

        Trusted only when our write's resourceVersion is newer than the body's: a body at or
        after our write already holds it, or a later write of someone else, which wins.
        """
        written = self.written
        if written is None:
            return None
        theirs = (body.get("metadata") or {}).get("resourceVersion")
        # Not stored: trusted while nobody has written since the body it was computed from.
        trusted = newer(written.resource_version, theirs, or_same=not written.stored)
        return written.status if trusted else None

    def wrote(self, status: dict[str, Any], resource_version: str | None) -> None:
        """Remember a status written (``resource_version`` None: nothing was written)."""
        if resource_version is not None:
            self.written = Written(status, resource_version)

    def hold(self, status: dict[str, Any], body: Mapping[str, Any]) -> None:
        """Remember a status about to be written, computed from ``body``: until it is written,
        it is trusted over bodies no newer than that one (a refused write is written again)."""
        version = (body.get("metadata") or {}).get("resourceVersion")
        self.written = Written(status, str(version), stored=False)


class Waker:
    """What wakes one object's daemon: a thread-safe "look again now" and "see when".

    Set from any thread (Kopf runs sync event handlers in its executor): the asyncio event is
    set on the daemon's own loop. ``pending`` says a round is wanted (something changed);
    :meth:`nudge` only makes the daemon look at its deadline again (a change handler moved it).
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._event = asyncio.Event()
        self.pending = False

    def wake(self) -> None:
        """Something the object depends on changed: run a round as soon as the daemon can."""
        self.pending = True
        self.nudge()

    def nudge(self) -> None:
        # RuntimeError: the loop is closed (the operator is exiting): nothing to wake.
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(self._event.set)

    async def wait(self, timeout: float, stopped: Any = None) -> None:
        """Until :meth:`wake` or :meth:`nudge`, ``stopped`` (Kopf's daemon stop flag) is set,
        or ``timeout`` seconds: a daemon told to stop leaves at once, not at its deadline."""
        waits = {asyncio.ensure_future(self._event.wait())}
        if stopped is not None:
            waits.add(asyncio.ensure_future(stopped.wait()))
        try:
            await asyncio.wait(waits, timeout=max(0.0, timeout),
                               return_when=asyncio.FIRST_COMPLETED)  # fmt: skip
        finally:
            for task in waits:
                task.cancel()
        self._event.clear()


class Wakers:
    """Each followed object's :class:`Waker`, by ``(kind, namespace, name)``: how a child's
    event, disruption evidence or a change handler reaches the object's daemon."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_key: dict[tuple[str, str, str], Waker] = {}

    def register(self, key: tuple[str, str, str], waker: Waker) -> None:
        with self._lock:
            self._by_key[key] = waker

    def unregister(self, key: tuple[str, str, str], waker: Waker) -> None:
        with self._lock:
            if self._by_key.get(key) is waker:
                del self._by_key[key]

    def wake(self, key: tuple[str, str, str]) -> bool:
        """Wake the object's daemon; False when it has none (not followed, or gone)."""
        with self._lock:
            waker = self._by_key.get(key)
        if waker is None:
            return False
        waker.wake()
        return True

    def nudge(self, key: tuple[str, str, str]) -> None:
        with self._lock:
            waker = self._by_key.get(key)
        if waker is not None:
            waker.nudge()


def schedule(mine: ObjectState, after: float | None, resync: float) -> float:
    """Set ``mine.next_round`` ``after`` seconds from now, never later than ``resync``
    (None: nothing time-bound is pending, only the resync); returns the delay set."""
    # Spread the resyncs of objects created together (a burst of 1,000 jobs) over a tenth.
    delay = resync * random.uniform(0.9, 1.0) if after is None else max(0.0, min(after, resync))
    mine.next_round = time.monotonic() + delay
    return delay


class OperatorState:
    """What one operator shares across its objects (Kopf's operator-level memo)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        #: Preemption evidence from pod and node events, until status records it.
        self.ledger = DisruptionLedger()
        #: Each followed object's daemon waker (TrainingJob: RayJob and evidence events).
        self.wakers = Wakers()
        #: Set when the operator exits: a daemon Kopf spawns after that (an event still in its
        #: queue) leaves at once instead of holding the exit.
        self.stopping = False
        #: The last RayJob state that woke a TrainingJob, per RayJob (wake only on a change).
        self.rayjob_seen: dict[tuple[str, str], tuple[Any, ...]] = {}
        self._guard = threading.Lock()
        self._reclaims: ReclaimHistoryKeeper | None = None
        self._platform: Any = None
        self._parsed: dict[tuple[str, str], Resource | None] = {}

    def platform(self) -> Any:
        """One :class:`KubeRayPlatform` (one API client, its connection pool) for every round:
        building a client per round reads the kubeconfig and opens new connections each time."""
        from mlplane.operator.platforms.kuberay import KubeRayPlatform

        with self._guard:
            if self._platform is None:
                self._platform = KubeRayPlatform()
            return self._platform

    def reclaims(self) -> ReclaimHistoryKeeper:
        """The keeper of the reclaim history (M of Auto checkpoint intervals), in a ConfigMap of
        the operator's namespace; made on first use (loaded once, written when worth it)."""
        from mlplane.operator.platforms.kuberay import KubeRayPlatform

        with self._guard:
            if self._reclaims is None:
                self._reclaims = ReclaimHistoryKeeper(
                    ConfigMapHistoryStore(
                        lambda: KubeRayPlatform().core_api(),
                        self.settings.config.operator_namespace,
                    )
                )
            return self._reclaims

    def parsed(self, body: Mapping[str, Any]) -> Resource | None:
        """The typed resource of an indexed body (None when invalid: its own handler says so).

        Parsed once per ``(uid, resourceVersion)``: timers look at the same bodies every tick.
        """
        from mlplane.operator.handlers.trainingjob import plain

        meta = body.get("metadata") or {}
        key = (str(meta.get("uid")), str(meta.get("resourceVersion")))
        with self._guard:
            if key in self._parsed:
                return self._parsed[key]
        try:
            found: Resource | None = parse(plain(body))
        except (ValueError, KeyError):  # InvalidResource and pydantic's errors are ValueErrors
            found = None
        with self._guard:
            if len(self._parsed) > MAX_PARSED:
                self._parsed.clear()
            self._parsed[key] = found
        return found


def operator_state(memo: Any) -> OperatorState:
    """The operator's state from a handler's ``memo`` (per-object memos copy the operator's)."""
    try:
        state = memo[MEMO_KEY]
    except (KeyError, TypeError):
        state = None
    if not isinstance(state, OperatorState):
        raise RuntimeError(
            "the mlplane operator's state is not in Kopf's memo: its startup handler "
            "(mlplane.operator.handlers.configure) did not run"
        )
    return state


def object_state(memo: Any) -> ObjectState:
    """This object's own state, made on first use (``setdefault`` is atomic on a dict)."""
    state: ObjectState = memo.setdefault(OBJECT_KEY, ObjectState())
    return state
