"""The local platform: a Ray head and an MLflow server on this machine, state in ``.mlplane/``.

This is what a newcomer runs first and what CI exercises for real. Everything binds 127.0.0.1
(Ray's GCS and raylet still listen on all interfaces: tests run it in a private network
namespace). Each server is started in its own session; its PID (= process-group id) is
recorded in ``.mlplane/platform.json`` and stopping it signals that whole group, so
``local down`` leaves no process behind and touches nothing it did not start.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
import shutil
import signal
import socket
import sys
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from mlplane.operator.platforms import processes
from mlplane.operator.platforms.base import (
    ChildOwnedByOther,
    ComponentHealth,
    Platform,
    controller_uid,
)

#: The runner is unhealthy when its last pass is older than this.
RUNNER_STALE_SECONDS = 60.0
#: Ray keeps unix sockets under its temp dir; their paths must stay under 108 bytes.
_MAX_RAY_TEMP_DIR = 40
#: Ray job metadata: the uid of the TrainingJob that submitted it.
OWNER_KEY = "mlplane.dev/owner-uid"
#: The signal of a reclaim announced with ``mlplane local reclaim --notice``.
LOCAL_NOTICE_SIGNAL = "mlplane.dev/local-reclaim-notice"


def _iso(epoch_ms: int | None) -> str | None:
    if not epoch_ms:
        return None
    return datetime.fromtimestamp(epoch_ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class LocalPlatformError(RuntimeError):
    """Something the user can act on (a busy port, a server that did not start)."""


@dataclass
class Ports:
    """Loopback ports of the local platform (change them when another program holds one)."""

    ray_gcs: int = 6379
    ray_dashboard: int = 8265
    ray_client: int = 10001
    mlflow: int = 5000
    #: Ray Serve's HTTP proxy: every ModelDeployment answers under /<namespace>/<name>.
    serve: int = 8000
    #: The runner's Prometheus /metrics (the operator's series: reconciles, training, SLOs).
    runner_metrics: int = 9464
    #: Prometheus (started when the `prometheus` binary is installed).
    prometheus: int = 9090


@dataclass
class Server:
    pid: int
    address: str
    log: str


@dataclass
class State:
    """What ``local up`` started, as written to ``platform.json``."""

    started_at: str
    ports: Ports
    ray_temp_dir: str
    servers: dict[str, Server] = field(default_factory=dict)

    @classmethod
    def read(cls, path: Path) -> State | None:
        if not path.exists():
            return None
        raw = json.loads(path.read_text())
        return cls(
            started_at=raw["started_at"],
            ports=Ports(**raw["ports"]),
            ray_temp_dir=raw["ray_temp_dir"],
            servers={k: Server(**v) for k, v in raw["servers"].items()},
        )

    def write(self, path: Path) -> None:
        path.write_text(json.dumps(asdict(self), indent=2) + "\n")


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _http_ok(
    url: str, timeout: float = 2.0, headers: dict[str, str] | None = None
) -> tuple[bool, str]:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status == 200, response.read(4096).decode(errors="replace").strip()
    except (urllib.error.URLError, OSError) as exc:
        return False, str(getattr(exc, "reason", exc))


def _executable(name: str) -> str:
    """A console script of this environment (``ray``, ``mlflow``), found beside Python first."""
    beside = Path(sys.executable).parent / name
    if beside.exists():
        return str(beside)
    found = shutil.which(name)
    if not found:
        raise LocalPlatformError(
            f"`{name}` is not installed: install mlplane with the local extra "
            f"(pip install -e '.[local]')"
        )
    return found


class LocalPlatform(Platform):
    """Ray + MLflow on this machine, managed through a state folder."""

    name = "local"

    def __init__(self, state_dir: Path = Path(".mlplane"), ports: Ports | None = None) -> None:
        self.state_dir = state_dir.resolve()
        state = None if ports else self.state()
        # A running platform's ports are the ones it was started with (the runner, the CLI).
        self.ports = ports or (state.ports if state else Ports())

    # --- paths ---------------------------------------------------------------------------------

    @property
    def state_file(self) -> Path:
        return self.state_dir / "platform.json"

    @property
    def auth_token_file(self) -> Path:
        """Ray's token (token authentication is on: its GCS listens beyond loopback)."""
        return self.state_dir / "ray_auth_token"

    def ray_env(self) -> dict[str, str]:
        """What a Ray client of this platform needs in its environment to authenticate."""
        return {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(self.auth_token_file)}

    def ray_headers(self) -> dict[str, str]:
        """HTTP headers for Ray's dashboard and Jobs API."""
        try:
            token = self.auth_token_file.read_text().strip()
        except FileNotFoundError:
            return {}
        return {"Authorization": f"Bearer {token}"}

    def _ensure_token(self) -> None:
        if not self.auth_token_file.exists():
            self.auth_token_file.touch(mode=0o600)
            self.auth_token_file.write_text(secrets.token_hex(32))

    @property
    def heartbeat_file(self) -> Path:
        """Touched by the runner after every pass over the resources."""
        return self.state_dir / "runner.heartbeat"

    @property
    def mlflow_db(self) -> Path:
        return self.state_dir / "mlflow" / "mlflow.db"

    @property
    def artifacts_dir(self) -> Path:
        return self.state_dir / "artifacts"

    def _ray_temp_dir(self) -> Path:
        preferred = self.state_dir / "ray"
        if len(str(preferred)) <= _MAX_RAY_TEMP_DIR:
            return preferred
        digest = hashlib.sha256(str(self.state_dir).encode()).hexdigest()[:10]
        return Path("/tmp") / f"mlplane-ray-{digest}"

    def state(self) -> State | None:
        """What is recorded as started (None before the first ``up`` or after ``down``)."""
        return State.read(self.state_file)

    @property
    def mlflow_uri(self) -> str:
        state = self.state()
        return state.servers["mlflow"].address if state else f"http://127.0.0.1:{self.ports.mlflow}"

    @property
    def ray_dashboard(self) -> str:
        state = self.state()
        port = state.ports.ray_dashboard if state else self.ports.ray_dashboard
        return f"http://127.0.0.1:{port}"

    # --- lifecycle -----------------------------------------------------------------------------

    def up(self, timeout: float = 120.0, num_cpus: int | None = None) -> State:
        """Start Ray and MLflow (what is not already running) and wait until both answer.

        Idempotent: a healthy platform is left as it is. Raises :class:`LocalPlatformError`
        with the server's log tail when one does not come up; what did come up is stopped.
        """
        state = self.state()
        if state and all(c.healthy for c in self.health()):
            return state
        if state:  # partly dead: start over cleanly rather than mixing two generations
            self.down()
        for label, port in asdict(self.ports).items():
            if not _port_free(port):
                raise LocalPlatformError(
                    f"port {port} ({label}) on 127.0.0.1 is in use by another program: "
                    f"stop it or choose another port (see `mlplane local up --help`)"
                )
        for folder in (self.state_dir, self.mlflow_db.parent, self.artifacts_dir):
            folder.mkdir(parents=True, exist_ok=True)
        self._ensure_token()
        ray_temp = self._ray_temp_dir()
        ray_temp.mkdir(parents=True, exist_ok=True)
        state = State(
            started_at=datetime.now(UTC).isoformat(timespec="seconds"),
            ports=self.ports,
            ray_temp_dir=str(ray_temp),
        )
        logs = self.state_dir / "logs"
        cpus = num_cpus or os.cpu_count() or 1
        ray_cmd = [
            _executable("ray"), "start", "--head", "--block",
            "--node-ip-address=127.0.0.1", "--dashboard-host=127.0.0.1",
            f"--port={self.ports.ray_gcs}", f"--dashboard-port={self.ports.ray_dashboard}",
            f"--ray-client-server-port={self.ports.ray_client}",
            f"--num-cpus={cpus}", "--disable-usage-stats", f"--temp-dir={ray_temp}",
        ]  # fmt: skip
        mlflow_cmd = [
            _executable("mlflow"), "server",
            "--backend-store-uri", f"sqlite:///{self.mlflow_db}",
            "--artifacts-destination", str(self.artifacts_dir),
            "--host", "127.0.0.1", "--port", str(self.ports.mlflow), "--workers", "1",
        ]  # fmt: skip
        env = {
            "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
            "RAY_USAGE_STATS_ENABLED": "0",
            # Job entrypoints say `python ...`: make it this environment's, which has mlplane.
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
            **self.ray_env(),
        }
        runner_cmd = [
            sys.executable, "-m", "mlplane.operator.runner", "--state-dir", str(self.state_dir),
            "--metrics-port", str(self.ports.runner_metrics),
        ]  # fmt: skip
        servers = [
            ("ray", ray_cmd, f"http://127.0.0.1:{self.ports.ray_dashboard}"),
            ("mlflow", mlflow_cmd, f"http://127.0.0.1:{self.ports.mlflow}"),
            ("runner", runner_cmd, str(self.heartbeat_file)),
        ]
        prometheus = shutil.which("prometheus")
        if prometheus:
            servers.append(("prometheus", self._prometheus_command(prometheus),
                            f"http://127.0.0.1:{self.ports.prometheus}"))  # fmt: skip
        for name, command, address in servers:
            log = logs / f"{name}.log"
            pid = processes.start(command, log, env)
            state.servers[name] = Server(pid=pid, address=address, log=str(log))
            state.write(self.state_file)  # record each PID the moment it exists
        for name, server in state.servers.items():

            def settled(s: Server = server, n: str = name) -> bool:
                return self._component(n, s).healthy or not processes.alive(s.pid)

            if not processes.wait_until(settled, timeout) or not processes.alive(server.pid):
                detail = processes.tail(Path(server.log))
                self.down()
                raise LocalPlatformError(f"{name} did not come up; the end of its log:\n{detail}")
        return state

    # --- Prometheus ----------------------------------------------------------------------------

    @property
    def prometheus_dir(self) -> Path:
        return self.state_dir / "prometheus"

    @property
    def serving_targets_file(self) -> Path:
        """Prometheus' file service discovery: one target per serving ModelDeployment (the
        runner keeps it current; each app's metrics are under its route prefix)."""
        return self.prometheus_dir / "serving-targets.json"

    @property
    def scrape_token_file(self) -> Path:
        """The token this machine's Prometheus sends to the serving apps' ``/admin/metrics``
        (made once with Prometheus' config, mode 0600; the apps get only its SHA-256)."""
        return self.prometheus_dir / "scrape-token"

    def scrape_token(self, *, create: bool = False) -> str | None:
        """The scrape token (made now with ``create`` when there is none), else None."""
        path = self.scrape_token_file
        try:
            return path.read_text().strip() or None
        except FileNotFoundError:
            if not create:
                return None
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path.with_suffix(".tmp"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(32) + "\n")
        os.replace(path.with_suffix(".tmp"), path)
        return path.read_text().strip()

    @property
    def prometheus_uri(self) -> str | None:
        state = self.state()
        server = state.servers.get("prometheus") if state else None
        return server.address if server else None

    def _prometheus_command(self, binary: str) -> list[str]:
        """Prometheus scraping the runner and the serving apps, with mlplane's generated rules
        (the same file the Helm chart ships), every 5 s so that a demo shows data quickly."""
        from mlplane import monitoring

        rules = Path(monitoring.__file__).parent / "generated" / "mlplane-rules.yaml"
        self.prometheus_dir.mkdir(parents=True, exist_ok=True)
        if not self.serving_targets_file.exists():
            self.serving_targets_file.write_text("[]\n")
        self.scrape_token(create=True)
        config = {
            "global": {"scrape_interval": "5s", "evaluation_interval": "5s"},
            "rule_files": [str(rules)],
            "scrape_configs": [
                {"job_name": "mlplane-operator",
                 "static_configs": [{"targets": [f"127.0.0.1:{self.ports.runner_metrics}"]}]},
                {"job_name": "mlplane-serving",
                 "authorization": {"type": "Bearer",
                                   "credentials_file": str(self.scrape_token_file)},
                 "file_sd_configs": [{"files": [str(self.serving_targets_file)],
                                      "refresh_interval": "5s"}]},
            ],
        }  # fmt: skip
        path = self.prometheus_dir / "prometheus.yml"
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        return [
            binary, f"--config.file={path}",
            f"--storage.tsdb.path={self.prometheus_dir / 'data'}",
            f"--web.listen-address=127.0.0.1:{self.ports.prometheus}",
            "--storage.tsdb.retention.time=7d",
        ]  # fmt: skip

    def write_serving_targets(self, endpoints: dict[str, str]) -> None:
        """``{"<namespace>/<name>": "http://127.0.0.1:8000/<namespace>/<name>"}`` → the file
        Prometheus discovers serving apps from (written only when it changes)."""
        targets = []
        for key, endpoint in sorted(endpoints.items()):
            rest = endpoint.removeprefix("http://")
            host, _, path = rest.partition("/")
            labels = {"__metrics_path__": f"/{path}/admin/metrics", "instance": key}
            targets.append({"targets": [host], "labels": labels})
        text = json.dumps(targets, indent=1) + "\n"
        if self.prometheus_dir.exists() and (
            not self.serving_targets_file.exists() or self.serving_targets_file.read_text() != text
        ):
            tmp = self.serving_targets_file.with_suffix(".tmp")
            tmp.write_text(text)
            os.replace(tmp, self.serving_targets_file)

    def down(self) -> list[str]:
        """Stop every recorded server (whole process groups); return what was stopped."""
        state = self.state()
        if state is None:
            return []
        stopped = []
        leftovers = []
        for name, server in state.servers.items():
            if processes.group_members(server.pid):
                if processes.stop_group(server.pid):
                    stopped.append(name)
                else:
                    leftovers.append(name)
        if leftovers:
            raise LocalPlatformError(
                f"could not stop {', '.join(leftovers)}; see `ps -g <pid>` for the recorded PIDs "
                f"in {self.state_file}"
            )
        self.state_file.unlink(missing_ok=True)
        ray_temp = Path(state.ray_temp_dir)
        if ray_temp != self.state_dir / "ray" and ray_temp.name.startswith("mlplane-ray-"):
            # The /tmp fallback (a long state path): nothing else would ever remove it.
            shutil.rmtree(ray_temp, ignore_errors=True)
        return stopped

    # --- Ray jobs (what a RayJob becomes here) ---------------------------------------------------

    def _jobs(self) -> Any:
        from ray.job_submission import JobSubmissionClient

        return JobSubmissionClient(self.ray_dashboard, headers=self.ray_headers())

    @staticmethod
    def submission_id(namespace: str, rayjob_name: str, owner_uid: str) -> str:
        """The Ray job of a RayJob: its namespace, name and owner's uid.

        The same every time for one TrainingJob, so a retry finds its job instead of starting
        a second one. The uid makes a TrainingJob deleted and applied again (a new uid) get
        new Ray jobs: Ray keeps finished jobs under their id, does not support reusing an id
        even after ``delete_job``, and a predecessor's job must never pass for the new one's.
        """
        return f"{namespace}-{rayjob_name}-{owner_uid}"

    def submit(self, rayjob: dict[str, Any]) -> bool:
        """Run a RayJob's entrypoint through the Jobs API; False if that job already exists.

        A suspended RayJob is not started (nothing runs it here). A job of that id whose
        recorded owner is not the RayJob's controller raises :class:`ChildOwnedByOther`.
        """
        if rayjob["spec"].get("suspend"):
            return False
        meta = rayjob["metadata"]
        owner = controller_uid(rayjob)
        if not owner:
            raise ValueError(f"RayJob {meta['name']} has no controller ownerReference")
        job_id = self.submission_id(meta["namespace"], meta["name"], owner)
        runtime_env = yaml.safe_load(rayjob["spec"].get("runtimeEnvYAML") or "{}") or {}
        try:
            self._jobs().submit_job(
                entrypoint=rayjob["spec"]["entrypoint"],
                submission_id=job_id,
                runtime_env=runtime_env,
                metadata={OWNER_KEY: owner, "mlplane.dev/rayjob": meta["name"]},
            )
        except RuntimeError as exc:
            if "already exists" not in str(exc):
                raise
            theirs = (self._jobs().get_job_info(job_id).metadata or {}).get(OWNER_KEY)
            if theirs is not None and theirs != owner:
                raise ChildOwnedByOther("Ray job", meta["namespace"], job_id, theirs) from None
            return False
        return True

    def job(self, namespace: str, rayjob_name: str, owner_uid: str) -> dict[str, Any] | None:
        """A Ray job's state in a RayJob's status shape (None when there is no such job).

        ``ownerUid`` is the owner recorded at submission (None for jobs that recorded none).
        """
        try:
            info = self._jobs().get_job_info(self.submission_id(namespace, rayjob_name, owner_uid))
        except RuntimeError as exc:
            if "does not exist" in str(exc) or "404" in str(exc):
                return None
            raise
        status = info.status.value if hasattr(info.status, "value") else str(info.status)
        return {
            "jobStatus": status,
            "jobDeploymentStatus": {
                "SUCCEEDED": "Complete",
                "FAILED": "Failed",
                "STOPPED": "Failed",
            }.get(status, "Running"),
            "message": info.message,
            "startTime": _iso(info.start_time),
            "endTime": _iso(info.end_time),
            "ownerUid": (info.metadata or {}).get(OWNER_KEY),
        }

    def stop_job(self, namespace: str, rayjob_name: str, owner_uid: str) -> None:
        """Stop a running attempt (its TrainingJob is deleted, or it returns to spot)."""
        with contextlib.suppress(RuntimeError):
            self._jobs().stop_job(self.submission_id(namespace, rayjob_name, owner_uid))

    def nodes(self) -> list[dict[str, Any]]:
        """Ray's nodes (state API over HTTP: ALIVE or DEAD, resources, start and end times)."""
        request = urllib.request.Request(
            f"{self.ray_dashboard}/api/v0/nodes?limit=1000&detail=1", headers=self.ray_headers()
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            payload = json.loads(response.read())
        return list(payload["data"]["result"]["result"])

    def dead_nodes(self, resource: str = "spot") -> list[dict[str, Any]]:
        """Ray worker nodes carrying ``resource`` (the local stand-in for spot) that died."""
        return [
            n for n in self.nodes()
            if n["state"] == "DEAD" and resource in (n.get("resources_total") or {})
        ]  # fmt: skip

    # --- reclaim notices (the local stand-in for a spot node's termination taint) ---------------

    @property
    def notices_dir(self) -> Path:
        """``<state-dir>/notices/<node id>.json``: Ray nodes announced to go."""
        return self.state_dir / "notices"

    def spot_node(self, node: str) -> dict[str, Any]:
        """The ALIVE Ray worker node with the ``spot`` resource whose id starts with ``node``.

        Raises :class:`LocalPlatformError` naming the candidates otherwise (never the head).
        """
        spot = [
            n
            for n in self.nodes()
            if n["state"] == "ALIVE" and "spot" in (n.get("resources_total") or {})
        ]
        found = [n for n in spot if str(n["node_id"]).startswith(node)] if node else []
        if len(found) != 1:
            names = ", ".join(str(n["node_id"])[:16] for n in spot) or "none"
            what = "matches no" if not found else "matches more than one"
            raise LocalPlatformError(
                f"node {node!r} {what} live spot worker node (they are: {names}); give a "
                "longer prefix of the node id (`ray list nodes`)"
            )
        return found[0]

    def announce_reclaim(
        self, node_id: str, seconds: float, *, now: datetime | None = None
    ) -> dict[str, Any]:
        """Record that the node goes in ``seconds``: the notice the runner reads (as the
        operator reads a node's termination taint on Kubernetes)."""
        moment = now or datetime.now(UTC)
        notice = {
            "node_id": node_id,
            "signal": LOCAL_NOTICE_SIGNAL,
            "time": moment.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "window_seconds": seconds,
        }
        self.notices_dir.mkdir(parents=True, exist_ok=True)
        target = self.notices_dir / f"{node_id}.json"
        tmp = target.with_suffix(".tmp")
        tmp.write_text(json.dumps(notice))
        os.replace(tmp, target)
        return notice

    def notices(self) -> list[dict[str, Any]]:
        """Every announced reclaim (unreadable files are skipped: a write in progress)."""
        out = []
        for path in sorted(self.notices_dir.glob("*.json")) if self.notices_dir.is_dir() else ():
            try:
                out.append(json.loads(path.read_text()))
            except (OSError, ValueError):
                continue
        return out

    def kill_node(self, node_id: str) -> list[int]:
        """SIGKILL a Ray worker node's raylet and every process under it, as a reclaimed VM
        goes: no goodbye to the head. Returns the PIDs signalled."""
        raylets = [
            pid
            for pid, cmd in processes.commands().items()
            if "raylet" in cmd.split(" ", 1)[0] and f"--node_id={node_id}" in cmd
        ]
        if not raylets:
            raise LocalPlatformError(f"no raylet process of node {node_id[:16]} on this machine")
        doomed = [pid for raylet in raylets for pid in (raylet, *processes.descendants(raylet))]
        for pid in doomed:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        return doomed

    # --- health --------------------------------------------------------------------------------

    def _component(self, name: str, server: Server) -> ComponentHealth:
        if not processes.alive(server.pid):
            return ComponentHealth(name, False, "not running", server.address, server.pid)
        if name == "runner":
            return self._runner_health(server)
        path = {"ray": "/api/version", "prometheus": "/-/ready"}.get(name, "/health")
        ok, body = _http_ok(
            server.address + path, headers=self.ray_headers() if name == "ray" else None
        )
        if ok and name == "ray":
            try:
                body = "Ray " + str(json.loads(body).get("ray_version", "?"))
            except ValueError:
                body = "Ray (version unknown)"
        return ComponentHealth(name, ok, body if ok else f"not answering: {body}", server.address,
                               server.pid)  # fmt: skip

    def _runner_health(self, server: Server) -> ComponentHealth:
        try:
            age = time.time() - self.heartbeat_file.stat().st_mtime
        except FileNotFoundError:
            return ComponentHealth("runner", False, "no pass finished yet", None, server.pid)
        ok = age < RUNNER_STALE_SECONDS
        detail = f"last pass {age:.0f}s ago" if ok else f"stuck: last pass {age:.0f}s ago"
        return ComponentHealth("runner", ok, detail, None, server.pid)

    def health(self) -> list[ComponentHealth]:
        """Ray and MLflow: running (by recorded PID) and answering on their health endpoints."""
        state = self.state()
        if state is None:
            return [
                ComponentHealth("ray", False, "not started (run `mlplane local up`)"),
                ComponentHealth("mlflow", False, "not started (run `mlplane local up`)"),
                ComponentHealth("runner", False, "not started (run `mlplane local up`)"),
            ]
        return [self._component(name, server) for name, server in state.servers.items()]
