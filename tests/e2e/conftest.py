"""Each e2e module leaves nothing behind: no process it started, no loopback port listening.

The CI run that found port 9464 held "by another program" inside a private network namespace
had only the e2e modules themselves in that namespace: an earlier module's platform had left a
listener. :func:`nothing_left_behind` checks after every e2e module that

- no process started during the module (a descendant of this pytest process) is alive, and
- inside a private network namespace (how CI runs e2e), no TCP listener that was not there
  before the module is left, whoever owns it now (Ray's daemons leave the process tree);

waiting up to :data:`SETTLE_SECONDS` for processes that are exiting, then failing with the
listener, its process and command line.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

#: How long stopped processes get to exit (and release their ports) before it is a leak.
SETTLE_SECONDS = float(os.environ.get("MLPLANE_E2E_SETTLE", "30"))


def private_network_namespace() -> bool:
    """Whether this process runs in a network namespace of its own (``unshare -n``): one with
    no interface but loopback, so every listener in it is the tests'."""
    try:
        lines = Path("/proc/self/net/dev").read_text().splitlines()[2:]
    except OSError:
        return False
    return [line.split(":", 1)[0].strip() for line in lines] == ["lo"]


def listeners() -> dict[str, str]:
    """TCP listeners in this network namespace: ``address:port`` → their process (``ss``)."""
    out = subprocess.run(["ss", "-Hltnp"], capture_output=True, text=True, check=True).stdout
    found = {}
    for line in out.splitlines():
        parts = line.split(None, 5)
        if len(parts) >= 4:
            found[parts[3]] = parts[5] if len(parts) > 5 else ""
    return found


def descendants(root: int) -> dict[int, str]:
    """Live descendants of ``root`` (from ``/proc``): pid → command line."""
    parents: dict[int, int] = {}
    commands: dict[int, str] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            fields = stat[stat.rindex(")") + 2 :].split()
            if fields[0] == "Z":
                continue  # a zombie holds nothing; its parent reaps it
            parents[int(entry.name)] = int(fields[1])
            commands[int(entry.name)] = (
                (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            )
        except (OSError, ValueError, IndexError):
            continue
    found: dict[int, str] = {}
    frontier = [root]
    while frontier:
        parent = frontier.pop()
        for pid, ppid in parents.items():
            if ppid == parent and pid not in found:
                found[pid] = commands[pid][:200]
                frontier.append(pid)
    return found


def _is_e2e(module: pytest.Module) -> bool:
    marks = getattr(module.obj, "pytestmark", [])
    marks = marks if isinstance(marks, list) else [marks]
    return any(m.name == "e2e" for m in marks)


@pytest.fixture(scope="module", autouse=True)
def nothing_left_behind(request: pytest.FixtureRequest) -> Iterator[None]:
    """After an e2e module: none of its processes alive, none of its ports listening."""
    module = request.node
    if not isinstance(module, pytest.Module) or not _is_e2e(module):
        yield
        return
    check_ports = private_network_namespace()
    ports_before = set(listeners()) if check_ports else set()
    processes_before = set(descendants(os.getpid()))
    yield
    deadline = time.monotonic() + SETTLE_SECONDS
    while True:
        left = {p: c for p, c in descendants(os.getpid()).items() if p not in processes_before}
        ports = (
            {a: who for a, who in listeners().items() if a not in ports_before}
            if check_ports
            else {}
        )
        if not left and not ports:
            return
        if time.monotonic() >= deadline:
            break
        time.sleep(0.5)
    lines = [f"  port {a}: {who}" for a, who in sorted(ports.items())]
    lines += [f"  pid {p}: {c}" for p, c in sorted(left.items())]
    pytest.fail(
        f"{module.name} left {len(ports)} listener(s) and {len(left)} process(es) behind "
        f"{SETTLE_SECONDS:.0f}s after its last test:\n" + "\n".join(lines),
        pytrace=False,
    )
