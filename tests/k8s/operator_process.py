"""The real mlplane operator in a process of its own, for tests that SIGKILL it and start anew.

Run as ``python -m k8s.operator_process LOG [--leader-elect]`` with ``tests/`` on
``PYTHONPATH`` and the kubeconfig in ``$KUBECONFIG`` (:func:`k8s.harness.run_operator_process`
does that). A restart
that is a thread of the test's process keeps every in-memory cache of the operator (last
written status, disruption evidence, alias and drift caches); a new process keeps none.

``LOG`` receives one JSON line per record of Kopf's per-object log (``kopf.objects``:
``{"uid", "message", "level"}``) and ``{"ready": true}`` once Kopf has started. Each line is
written whole and flushed at once, so a SIGKILL loses nothing that was logged before it.

With ``--leader-elect`` the process runs as ``mlplane operator --leader-elect`` does
(:func:`mlplane.operator.leader_loop.run_with_leader_election`, settings from
``MLPLANE_LEADER_*``): Kopf runs only while it holds the Lease, ``{"ready": true}`` comes when
Kopf is ready as the leader, and the election's own log lines (``mlplane`` logger) say when it
stands by, leads or releases. It exits as that command does (``os._exit``).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
import threading
from typing import Any, TextIO


class _JsonLines(logging.Handler):
    """Kopf's per-object records as JSON lines (one write per line, under a lock)."""

    def __init__(self, out: TextIO) -> None:
        super().__init__(logging.DEBUG)
        self.out = out
        self.guard = threading.Lock()

    def write(self, line: dict[str, Any]) -> None:
        with self.guard:
            self.out.write(json.dumps(line) + "\n")
            self.out.flush()

    def emit(self, record: logging.LogRecord) -> None:
        ref = getattr(record, "k8s_ref", None) or {}
        self.write({"uid": ref.get("uid"), "message": record.getMessage(),
                    "level": record.levelname})  # fmt: skip


def main(log_path: str, leader_elect: bool = False) -> None:
    """Run Kopf cluster-wide and standalone with mlplane's handlers until killed (with
    ``leader_elect``: only while holding the Lease)."""
    import kopf

    import mlplane.operator.handlers  # noqa: F401 - registers the handlers

    out = open(log_path, "a", encoding="utf-8")  # noqa: SIM115 - open until the process dies
    handler = _JsonLines(out)
    objects_log = logging.getLogger("kopf.objects")
    objects_log.addHandler(handler)
    objects_log.setLevel(logging.INFO)
    # mlplane's own log (e.g. an alias moved), for tests that count what an operator did.
    own_log = logging.getLogger("mlplane")
    own_log.addHandler(handler)
    own_log.setLevel(logging.INFO)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    ready = threading.Event()

    def announce() -> None:
        ready.wait()
        handler.write({"ready": True})

    threading.Thread(target=announce, daemon=True).start()
    if not leader_elect:
        asyncio.run(
            kopf.operator(
                registry=kopf.get_default_registry(),
                clusterwide=True,
                standalone=True,
                ready_flag=ready,
            )
        )
        return
    from mlplane.operator.config import OperatorConfig
    from mlplane.operator.leader_loop import kopf_work, run_with_leader_election

    work = kopf_work(registry=kopf.get_default_registry(), clusterwide=True, ready_flag=ready)
    code = asyncio.run(run_with_leader_election(OperatorConfig.from_env(), work))
    logging.shutdown()
    os._exit(code)


if __name__ == "__main__":
    main(sys.argv[1], leader_elect="--leader-elect" in sys.argv[2:])
