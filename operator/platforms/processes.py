"""Start and stop background servers as whole process groups, by recorded PID.

Ray's head is a tree of a dozen processes (GCS, raylet, dashboard, agents, workers); each
server started here gets its own session, so its process-group id is the PID we record and
stopping it reaches every process it spawned, and nothing else on the machine.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path


def start(command: Sequence[str], log: Path, env: dict[str, str] | None = None) -> int:
    """Start ``command`` detached in a new session, output to ``log``; return its PID (= PGID)."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:
        process = subprocess.Popen(
            list(command),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
            start_new_session=True,
        )
    return process.pid


def group_members(pgid: int) -> list[int]:
    """PIDs of the live (not zombie) processes in a process group, read from /proc."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # pid (comm) state ppid pgrp ...; comm may hold spaces, so split after the last ')'.
        fields = stat.rsplit(")", 1)[1].split()
        if fields[0] != "Z" and int(fields[2]) == pgid:
            members.append(int(entry.name))
    return members


def _table() -> dict[int, tuple[int, str]]:
    """Live processes: pid → (parent pid, command line), read from /proc."""
    found: dict[int, tuple[int, str]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except (OSError, IndexError):
            continue
        if fields[0] != "Z":
            found[int(entry.name)] = (int(fields[1]), command.strip())
    return found


def commands() -> dict[int, str]:
    """Command lines of the live processes, by pid."""
    return {pid: command for pid, (_, command) in _table().items()}


def descendants(root: int) -> list[int]:
    """PIDs of the live processes under ``root`` (children, their children, ...)."""
    table = _table()
    found: list[int] = []
    frontier = [root]
    while frontier:
        parent = frontier.pop()
        for pid, (ppid, _) in table.items():
            if ppid == parent and pid not in found:
                found.append(pid)
                frontier.append(pid)
    return found


def alive(pid: int) -> bool:
    """Whether a process exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def wait_until(condition: Callable[[], bool], timeout: float, interval: float = 0.25) -> bool:
    """Poll ``condition`` until it holds or ``timeout`` seconds pass; return whether it held."""
    deadline = time.monotonic() + timeout
    while True:
        if condition():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


def stop_group(pgid: int, grace: float = 15.0) -> bool:
    """SIGTERM the group, wait up to ``grace`` s, then SIGKILL what is left.

    Returns whether the group is gone. Reaps our own child if it was one.
    """
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 10.0)):
        if not group_members(pgid):
            break
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            break
        wait_until(lambda: not group_members(pgid), wait)
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pgid, os.WNOHANG)
    return not group_members(pgid)


def tail(path: Path, lines: int = 15) -> str:
    """The end of a log file, to explain why a server did not come up."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"
