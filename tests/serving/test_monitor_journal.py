"""The monitor's saved counts: a restart (even SIGKILL) loses no acknowledged request or outcome,
feedback stays once per id, and a monitor without saved state starts a new count epoch.

Faults are injected: the monitor object dropped without any shutdown, a real process killed with
SIGKILL between two calls, a torn last record, a kill between the snapshot and the journal's
truncation, a failing write."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_evidence import feedback, make_router, predict
from test_router_core import ADMIN, ARGS, Clock, body_of

from mlplane.serving.config import AppSettings
from mlplane.serving.journal import Journal
from mlplane.serving.monitor import MonitorCore
from mlplane.serving.router import RouterCore

SETTINGS = AppSettings.parse(ARGS)


def restart(router: RouterCore, state: Path | None, clock: Clock) -> MonitorCore:
    """Replace the router's monitor by a new incarnation (the old one is just dropped, as a
    killed process would be: no close, no last snapshot)."""
    journal = None if state is None else Journal(state)
    core = MonitorCore(SETTINGS, clock.t, journal=journal)
    router.monitor.core = core  # type: ignore[attr-defined]
    return core


async def stats(router: RouterCore) -> dict:
    await router.flush()
    answer = await router.handle(
        "GET", "/admin/v1/stats", "", {"authorization": f"Bearer {ADMIN}"}, body_of(b"")
    )
    return answer.json()


def totals(report: dict) -> dict[str, tuple[int, int, float]]:
    return {
        r["variant"]: (r["requests"], r["outcomes"], r["outcomeSum"]) for r in report["variants"]
    }


async def traffic(
    router: RouterCore, clock: Clock, users: range, *, outcomes: bool = True
) -> list[str]:
    """Predictions, and an outcome for every even user's request (when ``outcomes``)."""
    ids = []
    for i in users:
        clock.t += 0.01
        answer = await predict(router, f"user-{i}")
        assert answer.status == 200
        ids.append(answer.json()["requestId"])
        if outcomes and i % 2 == 0:
            assert (await feedback(router, ids[-1], outcome=1)).status == 200
    return ids


async def test_a_restarted_monitor_keeps_its_counts_its_epoch_and_exactly_once(tmp_path, clock):
    router = make_router(clock)
    restart(router, tmp_path, clock)
    ids = await traffic(router, clock, range(40))
    before = await stats(router)
    core = restart(router, tmp_path, clock)  # killed and back
    after = await stats(router)
    assert after["epoch"] == before["epoch"] and totals(after) == totals(before)
    assert core.replayed > 0
    # An outcome counted before the restart is still a duplicate...
    assert (await feedback(router, ids[0])).status == 409
    # ...one for a request served before the restart is still accepted, once.
    assert (await feedback(router, ids[1])).status == 200
    assert (await feedback(router, ids[1])).status == 409
    await traffic(router, clock, range(40, 60))
    restart(router, tmp_path, clock)
    final = totals(await stats(router))
    assert sum(r for r, _, _ in final.values()) == 60
    assert sum(o for _, o, _ in final.values()) == 30 + 1


async def test_without_saved_state_a_restart_is_a_new_epoch_from_zero(clock):
    router = make_router(clock)
    await traffic(router, clock, range(10))
    before = await stats(router)
    restart(router, None, clock)
    after = await stats(router)
    assert after["epoch"] != before["epoch"]
    assert all(r == 0 for r, _, _ in totals(after).values())


async def test_a_batch_whose_save_fails_is_resent_and_counted_once(tmp_path, clock, monkeypatch):
    router = make_router(clock)
    core = restart(router, tmp_path, clock)
    await traffic(router, clock, range(10))
    await router.flush()
    real = core.journal.append  # type: ignore[union-attr]

    def full_disk(record):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(core.journal, "append", full_disk)
    ids = await traffic(router, clock, range(10, 20), outcomes=False)
    assert await router.flush() is False  # not acknowledged: the router keeps the batch
    # An outcome that could not be saved was not counted and its id stays usable.
    answer = await feedback(router, ids[1])
    assert answer.status == 503
    monkeypatch.setattr(core.journal, "append", real)
    assert (await feedback(router, ids[1])).status == 200
    restart(router, tmp_path, clock)
    final = totals(await stats(router))
    assert sum(r for r, _, _ in final.values()) == 20
    assert sum(o for _, o, _ in final.values()) == 5 + 1


async def test_a_torn_last_record_is_dropped_and_the_journal_goes_on(tmp_path, clock):
    router = make_router(clock)
    restart(router, tmp_path, clock)
    await traffic(router, clock, range(10))
    await router.flush()
    with (tmp_path / "journal.jsonl").open("ab") as f:
        f.write(b'{"t":"push","r":"router-x","s":1,"sta')  # killed in the middle of a write
    restart(router, tmp_path, clock)
    await traffic(router, clock, range(10, 20))
    restart(router, tmp_path, clock)
    final = totals(await stats(router))
    assert sum(r for r, _, _ in final.values()) == 20


async def test_a_kill_between_snapshot_and_truncation_replays_nothing_twice(tmp_path, clock):
    router = make_router(clock)
    core = restart(router, tmp_path, clock)
    await traffic(router, clock, range(20))
    await router.flush()
    journal = (tmp_path / "journal.jsonl").read_bytes()
    assert journal
    core.journal.save_snapshot(core._snapshot())  # type: ignore[union-attr]
    # The kill came after the rename, before the truncation: the old records are still there.
    (tmp_path / "journal.jsonl").write_bytes(journal)
    before = totals(await stats(router))
    restart(router, tmp_path, clock)
    assert totals(await stats(router)) == before


async def test_compaction_keeps_everything(tmp_path, clock):
    router = make_router(clock)
    core = MonitorCore(SETTINGS, clock.t, journal=Journal(tmp_path, compact_every=3))
    router.monitor.core = core  # type: ignore[attr-defined]
    ids = await traffic(router, clock, range(30))
    before = totals(await stats(router))
    restart(router, tmp_path, clock)
    assert totals(await stats(router)) == before
    assert (await feedback(router, ids[0])).status == 409


async def test_unreadable_saved_state_is_set_aside_and_a_new_epoch_starts(tmp_path, clock):
    router = make_router(clock)
    restart(router, tmp_path, clock)
    await traffic(router, clock, range(10))
    old_epoch = (await stats(router))["epoch"]
    (tmp_path / "snapshot.json").write_text('{"epoch": "x", "stats": [1, 2')  # damaged
    core = restart(router, tmp_path, clock)
    report = await stats(router)
    assert report["epoch"] not in (old_epoch, "x") and core.replayed == 0
    assert all(r == 0 for r, _, _ in totals(report).values())
    assert list(tmp_path.glob("snapshot.json.unreadable-*"))
    await traffic(router, clock, range(10, 14))
    restart(router, tmp_path, clock)
    assert (await stats(router))["epoch"] == report["epoch"]
    assert sum(r for r, _, _ in totals(await stats(router)).values()) == 4


CHILD = r"""
import json, sys, time
sys.path.insert(0, sys.argv[3])
from test_router_core import ARGS
from mlplane.serving.config import AppSettings
from mlplane.serving.journal import Journal
from mlplane.serving.monitor import MonitorCore
from mlplane.serving.stats import TrafficStats

core = MonitorCore(AppSettings.parse(ARGS), 1000.0, journal=Journal(sys.argv[1]))
n = int(sys.argv[2])
for seq in range(1, n + 1):
    delta = TrafficStats()
    delta.record_request("candidate", 4, "ab1", 200, 0.01)
    core.apply_push("router-a", seq, {"stats": delta.to_wire()})
    info = {"variant": "candidate", "version": 4, "abtest": "ab1", "issued_at": 2000.0 + seq,
            "nonce": f"n{seq}"}
    core.feedback(info, 1.0, 2000.0 + seq)
print(core.epoch, flush=True)
time.sleep(60)
"""


def test_sigkill_loses_nothing_acknowledged(tmp_path):
    """A real process acknowledges N batches and N outcomes, then is killed with SIGKILL (no
    flush, no snapshot, no exit handler): a new monitor on its directory has all of them."""
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(tmp_path), "500", str(Path(__file__).parent)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        epoch = child.stdout.readline().strip()  # type: ignore[union-attr]
        assert epoch, "the child did not finish its calls"
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.wait(30)
    assert child.returncode == -signal.SIGKILL
    core = MonitorCore(SETTINGS, time.time(), journal=Journal(tmp_path))
    report = core.stats_report("ab1", False)
    assert report["epoch"] == epoch
    (row,) = report["variants"]
    assert (row["requests"], row["outcomes"], row["outcomeSum"]) == (500, 500, 500.0)
    info = {"variant": "candidate", "version": 4, "abtest": "ab1", "issued_at": 2001.0,
            "nonce": "n1"}  # fmt: skip
    assert core.feedback(info, 1.0, 2100.0)[0] == "duplicate"
    assert json.loads((tmp_path / "snapshot.json").read_text())["epoch"] == epoch


@pytest.fixture
def clock() -> Clock:
    return Clock()
