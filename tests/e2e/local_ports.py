"""Loopback ports for the e2e platforms: every one of them free, none of them a default.

A default port (9464 for the runner's metrics, 9090 for Prometheus, 8000 for Serve) may be held
by anything on a shared CI machine; ``LocalPlatform.up`` refuses to start when any port of its
``Ports`` is taken, so a test that leaves one field at its default fails there and nowhere else.
"""

from __future__ import annotations

import socket
from dataclasses import fields

from mlplane.operator.platforms.local import Ports


def free_port() -> int:
    """A port the kernel just handed out (free now; the caller binds it soon after)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def isolated_ports(**fixed: int) -> Ports:
    """``Ports`` with a fresh free port in every field but those given in ``fixed``."""
    return Ports(**{f.name: fixed.get(f.name) or free_port() for f in fields(Ports)})
