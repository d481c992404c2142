"""The e2e platforms never depend on a default port being free (not an e2e test: no Ray)."""

from __future__ import annotations

import ast
import socket
from dataclasses import fields
from pathlib import Path

from local_ports import isolated_ports

from mlplane.operator.platforms.local import Ports

E2E = Path(__file__).parent


def test_every_port_is_free_and_none_is_a_default() -> None:
    defaults = Ports()
    held = socket.socket()
    try:  # hold a default port, as another program on a CI machine did (9464)
        held.bind(("127.0.0.1", defaults.runner_metrics))
        held.listen()
    except OSError:
        pass  # already held by someone else: the same situation
    try:
        ports = isolated_ports(mlflow=12345)
        assert ports.mlflow == 12345
        for f in fields(Ports):
            port = getattr(ports, f.name)
            if f.name != "mlflow":
                assert port != getattr(defaults, f.name), f.name
            with socket.socket() as probe:
                probe.bind(("127.0.0.1", port))
    finally:
        held.close()


def test_e2e_modules_build_ports_only_through_the_helper() -> None:
    offenders = []
    for path in sorted(set(E2E.glob("test_*.py")) - {Path(__file__)}):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "Ports":
                offenders.append(f"{path.name}:{node.lineno}")
    assert offenders == [], f"use local_ports.isolated_ports() instead of Ports(...): {offenders}"
