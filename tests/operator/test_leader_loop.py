"""The leader election loop (``operator/leader_loop.py``) in this process, against the
emulator through the real kubernetes client: who leads, renew faults, hung calls, release."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import kmock
import pytest
from k8s.harness import wait_for

from mlplane.operator.config import LeaderElectionConfig
from mlplane.operator.leader_loop import (
    KubernetesLeases,
    LeaderElector,
    LeadershipLost,
    LeaseUnavailable,
    run_leader_elected,
)

LEASES = "coordination.k8s.io/v1/leases"
SETTINGS = LeaderElectionConfig(lease_duration=2, renew_deadline=1.0, retry_period=0.2)


def candidate(name: str, api: Any = None) -> LeaderElector:
    return LeaderElector(api or KubernetesLeases(), SETTINGS, namespace="ops", identity=name)


def holder(emulator) -> str | None:
    lease = emulator.get_object(LEASES, "ops", "mlplane-operator")
    return lease and lease["spec"].get("holderIdentity")


async def test_one_leads_the_other_waits_until_released(emulator, kubeconfig):
    a, b = candidate("a"), candidate("b")
    never = asyncio.Event()
    assert await asyncio.wait_for(a.acquire(never), timeout=5)
    assert holder(emulator) == "a"
    stop_a = asyncio.Event()
    holding = asyncio.create_task(a.hold(stop_a))
    # b looks for two lease durations while a renews: it never takes the lease.
    b_stop = asyncio.Event()
    b_trying = asyncio.create_task(b.acquire(b_stop))
    await asyncio.sleep(2 * SETTINGS.lease_duration)  # the span asserted, not a wait for a state
    assert not b_trying.done() and not b.leading
    assert holder(emulator) == "a"
    renewals = [r for r in emulator.requests_to(LEASES, method="PUT")]
    assert len(renewals) >= 10  # a renewed every retry period
    stop_a.set()
    await holding
    assert await a.release()
    released_at = time.monotonic()
    assert await asyncio.wait_for(b_trying, timeout=5)
    # Taken at b's next look, not after the lease duration.
    assert time.monotonic() - released_at < SETTINGS.lease_duration / 2
    lease = emulator.get_object(LEASES, "ops", "mlplane-operator")
    assert lease["spec"]["holderIdentity"] == "b"
    assert lease["spec"]["leaseTransitions"] == 1  # created by a (0), taken by b
    b_stop.set()


async def test_a_leader_that_cannot_renew_stops_at_the_renew_deadline(emulator, kubeconfig):
    a = candidate("a")
    assert await a.acquire(asyncio.Event())
    # From now on every Lease request fails (an API outage for the lease).
    emulator.before_request(lambda r: r.resource == kmock.resource(LEASES), lambda r: None,
                            once=False)  # fmt: skip
    renewed_at = a.renewed_at
    with pytest.raises(LeadershipLost, match="renew deadline"):
        await asyncio.wait_for(a.hold(asyncio.Event()), timeout=5)
    stopped = time.monotonic() - renewed_at
    assert SETTINGS.renew_deadline <= stopped < SETTINGS.renew_deadline + 0.5
    assert stopped < SETTINGS.lease_duration  # before anyone else could take it


class Hanging:
    """The real API, except that writes never answer (a call that blocks for minutes)."""

    def __init__(self, real: KubernetesLeases) -> None:
        self.real = real
        self.hang = False

    async def read(self, namespace: str, name: str, timeout: float) -> Any:
        return await self.real.read(namespace, name, timeout)

    async def create(self, body: dict, timeout: float) -> Any:
        return await self.real.create(body, timeout)

    async def replace(self, body: dict, timeout: float) -> Any:
        if self.hang:
            await asyncio.Event().wait()
        return await self.real.replace(body, timeout)


async def test_a_hung_renew_call_does_not_keep_a_leader_past_its_deadline(emulator, kubeconfig):
    api = Hanging(KubernetesLeases())
    a = candidate("a", api)
    assert await a.acquire(asyncio.Event())
    api.hang = True
    renewed_at = a.renewed_at
    with pytest.raises(LeadershipLost):
        await asyncio.wait_for(a.hold(asyncio.Event()), timeout=5)
    assert time.monotonic() - renewed_at < SETTINGS.renew_deadline + 0.5


async def test_a_leader_that_finds_another_holder_stops(emulator, kubeconfig):
    a = candidate("a")
    assert await a.acquire(asyncio.Event())
    lease = emulator.get_object(LEASES, "ops", "mlplane-operator")
    # Someone took it (an operator with a shorter lease duration, a human): a's next renew
    # is refused (409), its fresh read shows the other holder.
    await emulator.patch_object(LEASES, "ops", "mlplane-operator",
                                {"spec": {"holderIdentity": "intruder"}})  # fmt: skip
    assert lease["spec"]["holderIdentity"] == "a"
    with pytest.raises(LeadershipLost, match="intruder"):
        await asyncio.wait_for(a.hold(asyncio.Event()), timeout=5)


async def test_stop_then_release_in_that_order(emulator, kubeconfig):
    """Asked to stop, the leader stops its work first (renewing meanwhile), then releases."""
    a = candidate("a")
    order: list[str] = []
    started = threading.Event()

    def work(stop: threading.Event) -> None:
        started.set()
        stop.wait()
        time.sleep(2 * SETTINGS.renew_deadline)  # a slow graceful stop: still leading
        order.append(f"work stopped, holder {holder(emulator)}")

    terminating = asyncio.Event()
    running = asyncio.create_task(run_leader_elected(a, work, terminating=terminating,
                                                     on_lost=order.append))  # fmt: skip
    await wait_for(started.is_set, message="the work to start")
    terminating.set()
    assert await asyncio.wait_for(running, timeout=10) == 0
    assert order == ["work stopped, holder a"]  # renewed through the slow stop, not lost
    assert holder(emulator) is None  # released


async def test_a_lost_lease_ends_the_work(emulator, kubeconfig):
    a = candidate("a")
    lost: list[str] = []
    stopped = threading.Event()

    def work(stop: threading.Event) -> None:
        emulator.before_request(lambda r: r.resource == kmock.resource(LEASES),
                                lambda r: None, once=False)  # fmt: skip
        stop.wait()
        stopped.set()

    code = await asyncio.wait_for(run_leader_elected(a, work, on_lost=lost.append), timeout=10)
    assert code == 1
    assert lost and "renew deadline" in lost[0]
    await wait_for(stopped.is_set, message="the work to be stopped")


async def test_health_answers_for_leader_and_standby(unused_tcp_port):
    """A standby must be ready too, or a rolling update would wait for it forever."""
    import aiohttp

    from mlplane.operator.leader_loop import health_server

    class Offline:
        async def read(self, *_: Any) -> None:
            raise AssertionError("not called")

    elector = candidate("pod-a_1", Offline())
    runner = await health_server(f"http://127.0.0.1:{unused_tcp_port}/healthz", elector)
    try:
        async with aiohttp.ClientSession() as session:
            url = f"http://127.0.0.1:{unused_tcp_port}/healthz"
            async with session.get(url) as response:
                assert response.status == 200
                assert await response.json() == {"role": "standby", "identity": "pod-a_1"}
            elector.renewed_at = time.monotonic()  # as if it had just taken the lease
            async with session.get(url) as response:
                assert (await response.json())["role"] == "leader"
    finally:
        await runner.cleanup()


async def test_a_missing_namespace_is_said_loudly(emulator, kubeconfig, caplog):
    """Standing by because the lease cannot be written is a warning naming the lease."""

    class NoNamespace(KubernetesLeases):
        async def create(self, body: dict, timeout: float) -> Any:
            raise LeaseUnavailable("namespace 'ops' not found")

    a = candidate("a", NoNamespace())
    stop = asyncio.Event()
    trying = asyncio.create_task(a.acquire(stop))
    await wait_for(lambda: any("cannot read or take lease ops/mlplane-operator" in r.message
                               and r.levelname == "WARNING" for r in caplog.records),
                   message="the warning")  # fmt: skip
    stop.set()
    assert not await trying


async def test_kopf_work_returns_only_after_its_handler_threads(emulator, kubeconfig):
    """The release relies on it: the work returns only when nothing of Kopf's is left to
    write, even a sync handler blocked in a call (an MLflow call, say) beyond the 5 s Kopf
    gives its tasks at shutdown. (Kopf waits for the handler's thread; this guards that.)"""
    import kopf
    from k8s.harness import create

    from mlplane.operator.leader_loop import kopf_work

    registry = kopf.OperatorRegistry()
    kopf.on.login(registry=registry)(kopf.login_via_client)
    started, release, finished = threading.Event(), threading.Event(), []

    @kopf.on.create("mlplane.dev", "v1alpha1", "trainingjobs", registry=registry)
    def blocked(**_: Any) -> None:  # sync: runs in Kopf's executor
        started.set()
        release.wait(timeout=30)
        finished.append(time.monotonic())

    stop = threading.Event()
    thread = threading.Thread(target=kopf_work(registry=registry, clusterwide=True),
                              args=(stop,), daemon=True)  # fmt: skip
    thread.start()
    await create(emulator, {"apiVersion": "mlplane.dev/v1alpha1", "kind": "TrainingJob",
                            "metadata": {"name": "slow", "namespace": "ml"},
                            "spec": {"entrypoint": "python train.py"}})  # fmt: skip
    await wait_for(started.is_set, message="the handler to start")
    stop.set()
    # Longer than Kopf's 5 s grace for its tasks: Kopf itself has given up by then.
    await asyncio.sleep(6)
    assert thread.is_alive(), "the work returned while a handler thread was still running"
    release.set()
    await wait_for(lambda: not thread.is_alive(), message="the work to return")
    assert finished
