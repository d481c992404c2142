"""The thin loop that applies ``operator/leader.py`` through the API, and runs Kopf only while
this process holds the Lease.

It runs on the main thread's event loop, alone: Kopf runs in a thread of its own
(:func:`run_leader_elected`), so a handler that blocks Kopf's loop cannot delay a renew.
Every Lease call has a timeout (the time left before the renew deadline while leading).

- standby: read the Lease, decide, write only to take a free or expired Lease;
- leading: Kopf runs; the Lease is renewed every ``retry_period``; when it could not be renewed
  within ``renew_deadline``, or someone else holds it, the process exits at once, non-zero
  (:func:`exit_now`): Kubernetes restarts it as a standby. It exits before the Lease may
  expire, so no other replica writes while it still does;
- SIGTERM: a standby exits; a leader stops Kopf (still renewing meanwhile), then releases the
  Lease (holder cleared) so a standby takes over at its next look, then exits.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, NoReturn, Protocol

from mlplane.operator.config import LeaderElectionConfig, OperatorConfig
from mlplane.operator.leader import (
    Action,
    Decision,
    LeaseRecord,
    Observation,
    decide,
    identity,
    release,
    still_leading,
    time_left,
)

log = logging.getLogger(__name__)

#: What the log says at each change of role (tests wait for these).
BECAME_LEADER = "Leader election: became the leader"
STANDING_BY = "Leader election: standing by"
RELEASED = "Leader election: released the lease"
LOST = "Leader election: lost the lease"


class LeaseConflict(Exception):
    """The API server refused a write based on a stale read (409) or a create of an existing
    Lease: someone else wrote first."""


class LeaseUnavailable(Exception):
    """A Lease call failed (not a conflict): an outage, a 5xx, a refusal."""


class LeadershipLost(Exception):
    """This process must stop writing now."""


class LeaseApi(Protocol):
    """The three Lease calls the election needs, each bounded by ``timeout`` seconds."""

    async def read(self, namespace: str, name: str, timeout: float) -> dict[str, Any] | None: ...

    async def create(self, body: dict[str, Any], timeout: float) -> dict[str, Any]: ...

    async def replace(self, body: dict[str, Any], timeout: float) -> dict[str, Any]: ...


class KubernetesLeases:
    """:class:`LeaseApi` over the kubernetes client (in-cluster, else the kubeconfig).

    The client is synchronous: each call runs in a worker thread with the client's own socket
    timeout, and the caller stops waiting at ``timeout`` whatever the socket does."""

    def __init__(self, api_client: Any = None) -> None:
        self._api_client = api_client

    def _api(self) -> Any:
        from kubernetes import client, config

        if self._api_client is None:
            try:
                config.load_incluster_config()
            except config.ConfigException:
                config.load_kube_config()
            self._api_client = client.ApiClient()
        return client.CoordinationV1Api(self._api_client)

    async def _call(self, timeout: float, fn: Callable[[], Any]) -> Any:
        from kubernetes.client.exceptions import ApiException
        from urllib3.exceptions import HTTPError

        try:
            response = await asyncio.wait_for(asyncio.to_thread(fn), timeout=max(timeout, 0.01))
        except TimeoutError:
            raise LeaseUnavailable(f"no answer within {timeout:.1f}s") from None
        except ApiException as exc:
            if exc.status == 404:
                return None
            if exc.status == 409:
                raise LeaseConflict(f"{exc.status} {exc.reason}") from None
            raise LeaseUnavailable(f"{exc.status} {exc.reason}") from None
        except (HTTPError, OSError) as exc:
            raise LeaseUnavailable(str(exc)) from None
        return json.loads(response.data)

    async def read(self, namespace: str, name: str, timeout: float) -> dict[str, Any] | None:
        api = self._api()
        return await self._call(timeout, lambda: api.read_namespaced_lease(
            name, namespace, _preload_content=False, _request_timeout=timeout))  # fmt: skip

    async def create(self, body: dict[str, Any], timeout: float) -> dict[str, Any]:
        api = self._api()
        namespace = body["metadata"]["namespace"]
        created = await self._call(timeout, lambda: api.create_namespaced_lease(
            namespace, body, _preload_content=False, _request_timeout=timeout))  # fmt: skip
        if created is None:
            raise LeaseUnavailable(f"namespace {namespace!r} not found")
        return created

    async def replace(self, body: dict[str, Any], timeout: float) -> dict[str, Any]:
        api = self._api()
        meta = body["metadata"]
        replaced = await self._call(timeout, lambda: api.replace_namespaced_lease(
            meta["name"], meta["namespace"], body, _preload_content=False,
            _request_timeout=timeout))  # fmt: skip
        if replaced is None:  # deleted since it was read: as good as a conflict
            raise LeaseConflict("the lease is gone")
        return replaced


class LeaderElector:
    """One candidate: :meth:`acquire` until it leads, :meth:`hold` while it leads,
    :meth:`release` when it has stopped writing."""

    def __init__(
        self,
        api: LeaseApi,
        settings: LeaderElectionConfig,
        *,
        namespace: str,
        identity: str,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.api = api
        self.settings = settings
        self.namespace = namespace
        self.identity = identity
        self.clock = clock
        self.wall = wall
        self.observation: Observation | None = None
        #: The Lease as last read or written (its resourceVersion is what the next write sends).
        self.lease: dict[str, Any] | None = None
        #: When the last successful write of ours started (None: not leading).
        self.renewed_at: float | None = None
        self._said = ""

    @property
    def leading(self) -> bool:
        return self.renewed_at is not None

    def _timeout(self) -> float:
        if self.renewed_at is None:
            return self.settings.renew_deadline
        return time_left(self.renewed_at, self.clock(), self.settings)

    async def attempt(self) -> Decision:
        """One look (and write, if the decision is to write). Raises :class:`LeaseConflict`
        or :class:`LeaseUnavailable` when a call fails, :class:`LeadershipLost` when a leader
        finds another holder."""
        started = self.clock()
        lease = self.lease if self.leading and self.lease is not None else None
        if lease is None:
            lease = await self.api.read(self.namespace, self.settings.lease_name, self._timeout())
        decision = decide(lease, self.observation, now=self.clock(), wall=self.wall(),
                          me=self.identity, settings=self.settings,
                          namespace=self.namespace)  # fmt: skip
        self.observation = decision.observation
        self.lease = dict(lease) if lease is not None else None
        if self.leading and decision.action is not Action.RENEW:
            raise LeadershipLost(f"the lease is now {decision.reason}")
        if decision.action is Action.STANDBY:
            self._say(STANDING_BY, decision.reason)
            return decision
        assert decision.body is not None
        try:
            if decision.action is Action.CREATE:
                written = await self.api.create(decision.body, self._timeout())
            else:
                written = await self.api.replace(decision.body, self._timeout())
        except LeaseConflict:
            self.lease = None  # read it afresh next time
            raise
        self.lease = written
        self.observation = Observation(LeaseRecord.of(written), self.clock())
        if not self.leading:
            self._say(BECAME_LEADER, f"{self.identity}, {decision.reason}")
        self.renewed_at = started
        return decision

    def _say(self, role: str, why: str) -> None:
        if role != self._said:  # each change of role, once
            log.info("%s: %s", role, why)
        self._said = role

    async def acquire(self, stop: asyncio.Event) -> bool:
        """Look until this candidate leads (True) or ``stop`` is set (False)."""
        while not stop.is_set():
            wait = self.settings.retry_period
            try:
                decision = await self.attempt()
            except LeaseConflict as exc:
                log.info("Leader election: another candidate wrote first (%s)", exc)
            except LeaseUnavailable as exc:
                # Standing by for a reason the user must fix (RBAC, a missing namespace, an
                # outage): say it every time, loudly.
                log.warning("Leader election: cannot read or take lease %s/%s (%s)",
                            self.namespace, self.settings.lease_name, exc)  # fmt: skip
            else:
                if self.leading:
                    return True
                wait = decision.wait
            await _wait(stop, wait)
        return False

    async def hold(self, stop: asyncio.Event) -> None:
        """Renew every ``retry_period`` until ``stop`` is set; raise :class:`LeadershipLost`
        the moment the renew deadline passes or another holder shows."""
        assert self.renewed_at is not None, "hold() is for the leader"
        next_try = self.renewed_at + self.settings.retry_period
        while True:
            deadline = self.renewed_at + self.settings.renew_deadline
            await _wait(stop, min(next_try, deadline) - self.clock())
            if stop.is_set():
                return
            if not still_leading(self.renewed_at, self.clock(), self.settings):
                break
            next_try = self.clock() + self.settings.retry_period
            try:
                await asyncio.wait_for(self.attempt(), timeout=self._timeout())
            except (LeaseConflict, LeaseUnavailable, TimeoutError) as exc:
                why = str(exc) or f"no answer within {self.settings.renew_deadline:g}s"
                log.warning("Leader election: renew failed (%s)", why)
        raise LeadershipLost(
            f"not renewed for {self.settings.renew_deadline:g}s (the renew deadline)"
        )

    async def release(self) -> bool:
        """Clear the holder, if it is still us (after this process stopped writing)."""
        for _ in range(2):  # a stale copy (409) gets one fresh read
            try:
                lease = self.lease or await self.api.read(
                    self.namespace, self.settings.lease_name, self.settings.retry_period
                )
                body = release(lease, me=self.identity, wall=self.wall()) if lease else None
                if body is None:
                    return False
                self.lease = await self.api.replace(body, self.settings.retry_period)
            except LeaseConflict:
                self.lease = None
                continue
            except LeaseUnavailable as exc:
                log.warning("Leader election: release failed (%s); the lease expires", exc)
                return False
            self.renewed_at = None
            log.info(RELEASED)
            return True
        return False


async def _wait(stop: asyncio.Event, seconds: float) -> None:
    if seconds <= 0:
        return
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), timeout=seconds)


def exit_now(reason: str) -> NoReturn:
    """Stop writing at once: log, flush, and end the process (exit code 1) without running
    anything else (no handler finishes, no thread is waited for)."""
    log.critical("%s: %s; exiting so that Kubernetes restarts this pod as a standby", LOST, reason)
    for handler in logging.getLogger().handlers + logging.getLogger("mlplane").handlers:
        with contextlib.suppress(Exception):
            handler.flush()
    sys.stderr.flush()
    os._exit(1)


#: Work to run while leading: ``work(stop)`` runs until ``stop`` is set (in its own thread).
Work = Callable[[threading.Event], None]


def kopf_work(**operator_kwargs: Any) -> Work:
    """Kopf (``kopf.operator(**operator_kwargs)``, standalone) as the leader's work.

    The release after it relies on "returned" meaning "nothing of Kopf's is left to write":
    Kopf waits for a sync handler's thread even when it cancels the handler, and
    ``asyncio.run`` waits for the default executor (``asyncio.to_thread``).
    ``tests/operator/test_leader_loop.py`` checks it with a handler blocked past Kopf's
    5 s grace."""

    def work(stop: threading.Event) -> None:
        import kopf

        asyncio.run(kopf.operator(standalone=True, stop_flag=stop, **operator_kwargs))

    return work


async def run_leader_elected(
    elector: LeaderElector,
    work: Work,
    *,
    on_lost: Callable[[str], None] = exit_now,
    terminating: asyncio.Event | None = None,
) -> int:
    """Stand by until leading, then run ``work`` until SIGTERM/SIGINT (or ``terminating``);
    returns the exit code (0: stopped as asked; 1: the work ended on its own). On a lost
    lease calls ``on_lost`` (which does not return in production)."""
    terminating = terminating or asyncio.Event()
    loop = asyncio.get_running_loop()
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, terminating.set)
    if not await elector.acquire(terminating):
        return 0
    stop_work, work_done = threading.Event(), asyncio.Event()

    def run() -> None:
        try:
            work(stop_work)
        except BaseException:
            log.exception("the operator stopped on an error")
        finally:
            loop.call_soon_threadsafe(work_done.set)

    thread = threading.Thread(target=run, name="mlplane-operator-leader", daemon=True)
    thread.start()
    stop_holding = asyncio.Event()
    holding = asyncio.create_task(elector.hold(stop_holding))
    asked = asyncio.create_task(terminating.wait())
    ended = asyncio.create_task(work_done.wait())
    try:
        await asyncio.wait({holding, asked, ended}, return_when=asyncio.FIRST_COMPLETED)
        if not holding.done():
            # Stop the work; keep renewing until it has stopped (it still writes till then).
            stop_work.set()
            await asyncio.wait({holding, ended}, return_when=asyncio.FIRST_COMPLETED)
        if not holding.done():
            stop_holding.set()
        await holding
    except LeadershipLost as exc:
        on_lost(str(exc))  # production: the process ends here
        stop_work.set()
        return 1
    finally:
        for task in (asked, ended):
            task.cancel()
    await elector.release()
    return 0 if terminating.is_set() else 1


async def health_server(endpoint: str, elector: LeaderElector) -> Any:
    """``/healthz`` answering 200 while this loop runs, leader or standby (a standby must be
    ready, or a rolling update would wait for it forever). A stuck loop answers nothing."""
    from urllib.parse import urlparse

    from aiohttp import web

    url = urlparse(endpoint)

    async def healthz(_: web.Request) -> web.Response:
        role = "leader" if elector.leading else "standby"
        return web.json_response({"role": role, "identity": elector.identity})

    app = web.Application()
    app.router.add_get(url.path or "/healthz", healthz)
    runner = web.AppRunner(app, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, url.hostname or "0.0.0.0", url.port or 8080)
    await site.start()
    return runner


async def run_with_leader_election(
    config: OperatorConfig,
    work: Work,
    *,
    liveness: str | None = None,
    api: LeaseApi | None = None,
) -> int:
    """``mlplane operator --leader-elect``: the Lease from ``config.leader`` (its namespace
    defaults to the operator's), the identity from ``POD_NAME``, ``/healthz`` at ``liveness``
    for leader and standby alike; runs ``work`` (Kopf) while leading. Returns the exit code."""
    import socket

    settings = config.leader
    elector = LeaderElector(
        api or KubernetesLeases(),
        settings,
        namespace=settings.lease_namespace or config.operator_namespace,
        identity=identity(settings.pod_name or socket.gethostname()),
    )
    log.info(
        "Leader election: candidate %s for lease %s/%s", elector.identity, elector.namespace,
        settings.lease_name,
    )  # fmt: skip
    health = await health_server(liveness, elector) if liveness else None
    try:
        return await run_leader_elected(elector, work)
    finally:
        if health is not None:
            await health.cleanup()
