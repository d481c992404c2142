"""MLflow calls of the operator are bounded: one try, at most the configured timeout.

A reconcile blocked in MLflow's HTTP retries holds its thread for minutes: other objects wait
and the operator cannot stop (seen as Kopf taking over 20 s to stop in tests). The server
here accepts connections and never answers, the worst kind of outage; it counts connections,
so a retry inside the client shows as a second one.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator

import pytest

from mlplane.operator.config import OperatorConfig
from mlplane.operator.registry import Registry, RegistryUnavailable


class Silent:
    """A TCP server on 127.0.0.1 that accepts, reads, and never answers."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.connections: list[socket.socket] = []
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections.append(conn)

    def close(self) -> None:
        self.sock.close()
        for conn in self.connections:
            conn.close()


@pytest.fixture
def silent() -> Iterator[Silent]:
    server = Silent()
    yield server
    server.close()


@pytest.mark.timeout(60)
def test_a_hanging_mlflow_gets_one_try_per_call(silent, monkeypatch):
    monkeypatch.setenv("MLPLANE_MLFLOW_TIMEOUT", "1")
    registry = Registry(f"http://127.0.0.1:{silent.port}")
    with pytest.raises(RegistryUnavailable):
        registry.observe_run("uid", "model", experiment="exp")
    with pytest.raises(RegistryUnavailable):
        registry.ensure_run("exp", "uid", "ml/x")
    assert len(silent.connections) == 2  # no retry inside the client: the loop retries


def test_the_timeout_comes_from_the_operator_settings(monkeypatch):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "120")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "7")
    Registry("http://127.0.0.1:9", timeout=3)
    from mlflow.environment_variables import (
        MLFLOW_HTTP_REQUEST_MAX_RETRIES,
        MLFLOW_HTTP_REQUEST_TIMEOUT,
    )

    assert (MLFLOW_HTTP_REQUEST_TIMEOUT.get(), MLFLOW_HTTP_REQUEST_MAX_RETRIES.get()) == (3, 0)


@pytest.mark.parametrize("value", ["0", "-1", "ten", "601"])
def test_a_wrong_timeout_names_the_variable(value):
    with pytest.raises(ValueError, match="MLPLANE_MLFLOW_TIMEOUT"):
        OperatorConfig.from_env({"MLPLANE_MLFLOW_TIMEOUT": value})
