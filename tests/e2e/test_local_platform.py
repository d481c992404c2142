"""`mlplane local up|status|down` for real: Ray and MLflow start, answer, and leave nothing behind.

Run inside a private network namespace (see .ci/run): Ray's GCS and raylet listen on all
interfaces whatever --node-ip-address says.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from local_ports import free_port, isolated_ports

from mlplane.operator.platforms import processes
from mlplane.operator.platforms.local import LocalPlatform, LocalPlatformError

pytestmark = pytest.mark.e2e
MLPLANE = str(Path(sys.executable).parent / "mlplane")


def cli(*args: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    return subprocess.run([MLPLANE, *args], capture_output=True, text=True, timeout=timeout,
                          check=False)  # fmt: skip


def test_up_status_down(tmp_path):
    state = tmp_path / "s"
    ports = [free_port() for _ in range(7)]
    flags = ["--state-dir", str(state), "--num-cpus", "1", "--ray-port", str(ports[0]),
             "--dashboard-port", str(ports[1]), "--ray-client-port", str(ports[2]),
             "--mlflow-port", str(ports[3]), "--serve-port", str(ports[4]),
             "--metrics-port", str(ports[5]), "--prometheus-port", str(ports[6])]  # fmt: skip
    # Prometheus is part of the platform where its binary is installed (setup.sh installs it).
    expected = {"ray", "mlflow", "runner"}
    if shutil.which("prometheus"):
        expected.add("prometheus")
    up = cli("local", "up", *flags)
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        recorded = json.loads((state / "platform.json").read_text())
        pids = {name: server["pid"] for name, server in recorded["servers"].items()}
        assert set(pids) == expected
        assert all(processes.group_members(pid) for pid in pids.values())

        status = cli("local", "status", "--state-dir", str(state), "--json")
        assert status.returncode == 0, status.stdout + status.stderr
        health = {c["name"]: c for c in json.loads(status.stdout)}
        assert health["ray"]["healthy"], health
        assert health["ray"]["detail"].startswith("Ray 2.")
        assert health["mlflow"]["healthy"], health
        assert health["mlflow"]["address"] == f"http://127.0.0.1:{ports[3]}"
        assert health["runner"]["healthy"], health
        if "prometheus" in expected:
            assert health["prometheus"]["healthy"], health
            assert health["prometheus"]["address"] == f"http://127.0.0.1:{ports[6]}"

        again = cli("local", "up", *flags)  # idempotent: nothing new is started
        assert again.returncode == 0, again.stderr
        assert json.loads((state / "platform.json").read_text())["servers"] == recorded["servers"]
    finally:
        down = cli("local", "down", "--state-dir", str(state))
    assert down.returncode == 0, down.stderr
    assert down.stdout.strip() == "stopped: " + ", ".join(
        n for n in ("ray", "mlflow", "runner", "prometheus") if n in expected
    )
    for name, pid in pids.items():
        assert processes.group_members(pid) == [], f"{name} left processes behind"
    leftovers = subprocess.run(["pgrep", "-f", str(state)], capture_output=True, text=True,
                               check=False)  # fmt: skip
    assert leftovers.stdout.strip() == "", "processes still reference the state folder"
    assert not (state / "platform.json").exists()
    after = cli("local", "status", "--state-dir", str(state))
    assert after.returncode == 1


def test_busy_port_is_a_clear_error(tmp_path):
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        busy = holder.getsockname()[1]
        platform = LocalPlatform(tmp_path / "s", isolated_ports(mlflow=busy))
        with pytest.raises(LocalPlatformError, match=f"port {busy} \\(mlflow\\).*in use"):
            platform.up()
    assert platform.state() is None
