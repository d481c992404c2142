"""Benchmark: the operator turning N TrainingJobs into N RayJobs, beside a bare client.

    .venv/bin/python bench/operator_trainingjobs.py            # 1,000 TrainingJobs
    .venv/bin/python bench/operator_trainingjobs.py --quick    # 100
    .venv/bin/python bench/operator_trainingjobs.py --count 300 --mlflow server

One in-memory Kubernetes API server (``tests/k8s/emulator.py``, kmock) runs in this process;
both clients run in their own process, so their peak RSS and CPU time are theirs alone, without
the emulator. Peak RSS is ``VmHWM`` of the process's own memory (the baseline reads its own at
the end, the operator's is read at convergence), not ``ru_maxrss``: Linux carries the forking
parent's high-water mark across ``exec``, so a child's ``ru_maxrss`` is at least the
emulator's RSS at spawn time. CPU is user + system time (``os.wait4``, or ``/proc`` for the
running operator).

* **baseline** - a bare client: builds the N RayJobs with ``build_rayjob`` (exactly the objects
  the operator makes, from the same TrainingJob bodies, ``mlplane.crds.validate.parse``-d,
  with made-up uids and MLflow run ids of the same shape) and POSTs them with the kubernetes
  client's ``CustomObjectsApi.create_namespaced_custom_object``. It runs twice (rows
  ``client x6`` and ``client x1``, ``--baseline-workers``): from 6 threads, because Kopf runs
  sync handlers in a default ``ThreadPoolExecutor`` of ``min(32, cpus + 4)`` threads - 6 on 2
  cores - so that is the concurrency the operator's creates get; and sequentially, the plainest
  client. The parsed spec is copied per job (only the name and checkpoint URI differ):
  validating each job is the operator's work, not the client's.
* **operator** - ``mlplane operator -A`` (the real Kopf operator, as deployed) against the
  emulator through a kubeconfig; this script creates N TrainingJobs in the emulator and waits
  until N RayJobs exist and every TrainingJob has ``status.currentAttempt``. Each TrainingJob
  costs the operator: validation, an MLflow run (found by tag, created, found again), the
  RayJob, an Event and the status patch, plus Kopf's finalizer and progress annotations.
  MLflow is ``--mlflow sqlite`` (default: a SQLite file the operator opens in-process, the
  faster of the two here - its CPU and memory count as the operator's) or ``--mlflow server``
  (a local ``mlflow server`` on 127.0.0.1, started and stopped by this script, reported apart).

The baselines run first; their RayJobs (namespace ``bench-baseline``) are deleted after each,
so every case starts from an empty store. The emulator is wrapped to count requests rather than
log them all (see :func:`emulator_class`). "work" is the timed part: build+POST for
the baseline, first TrainingJob created until the last one has its attempt for the operator;
"total" adds process start (imports, login, Kopf's startup); "CPU" is the process's user +
system time up to then; "emulator CPU" is this process's during the case (the API server, plus
creating the TrainingJobs and polling in the operator case). The ratios are operator / each
baseline. The operator gets SIGTERM at
the end and SIGKILL 30 s later, as a pod with the default termination grace period.
After convergence the operator keeps running for ``--steady`` seconds, to show what it costs
at rest (since issue 16 a TrainingJob has no timer: its daemon sleeps until an event or the
``MLPLANE_RESYNC_INTERVAL`` resync; before, a timer per job every
``MLPLANE_RECONCILE_INTERVAL`` s). Not a test: the
numbers depend on the machine and its load (the load average is printed).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import copy
import functools
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from importlib import resources as importlib_resources
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
GROUP_VERSION = "mlplane.dev/v1alpha1"
TRAININGJOBS = f"{GROUP_VERSION}/trainingjobs"
RAYJOBS = "ray.io/v1/rayjobs"
NAMESPACE = "bench"
BASELINE_NAMESPACE = "bench-baseline"
EXAMPLE = "trainingjob-gpu-spot"
#: Threads Kopf's default executor gets for sync handlers (ThreadPoolExecutor's default size).
KOPF_THREADS = min(32, (os.cpu_count() or 1) + 4)
POLL = 0.25


# --- what both cases create -----------------------------------------------------------------


@functools.cache
def _example() -> dict[str, Any]:
    folder = importlib_resources.files("mlplane.crds") / "examples"
    return yaml.safe_load((folder / f"{EXAMPLE}.yaml").read_text())


def trainingjob(index: int, namespace: str, *, shared_experiment: bool) -> dict[str, Any]:
    """TrainingJob number ``index``: the spot-GPU example under a name of its own.

    Its checkpoint URI is its own; the MLflow experiment is shared (``bench``) unless
    ``shared_experiment`` is False, when the operator's default (one per job) applies.
    """
    body = copy.deepcopy(_example())
    name = f"tj-{index:05d}"
    body["metadata"] = {"name": name, "namespace": namespace}
    body["spec"]["checkpoint"]["uri"] = f"s3://bench-checkpoints/{name}"
    if shared_experiment:
        body["spec"]["mlflow"]["experiment"] = "bench"
    else:
        body["spec"]["mlflow"].pop("experiment", None)
    return body


# --- the baseline client (runs in a child process) ------------------------------------------


def baseline_client(args: argparse.Namespace) -> None:
    """Build the RayJobs, POST them, print timings as one JSON line (the child's side)."""
    from concurrent.futures import ThreadPoolExecutor

    from kubernetes import client, config

    from mlplane.crds.validate import parse
    from mlplane.operator.builders.rayjob import build_rayjob, first_attempt_capacity
    from mlplane.operator.config import OperatorConfig

    imported = time.perf_counter()
    config.load_kube_config(config_file=args.kubeconfig)
    api = client.CustomObjectsApi(client.ApiClient())
    operator_config = OperatorConfig.from_env()
    rng = random.Random(args.seed)
    # Parsed (validated, defaulted) once: the jobs differ only in name and checkpoint URI,
    # set on copies. Validating every job is the operator's work, not the client's.
    template = parse(trainingjob(0, BASELINE_NAMESPACE, shared_experiment=args.shared_experiment))
    bodies = []
    for i in range(args.count):
        body = trainingjob(i, BASELINE_NAMESPACE, shared_experiment=args.shared_experiment)
        spec = template.spec.model_copy(  # type: ignore[attr-defined]
            update={
                "checkpoint": template.spec.checkpoint.model_copy(  # type: ignore[attr-defined]
                    update={"uri": body["spec"]["checkpoint"]["uri"]}
                )
            }
        )
        metadata = template.metadata.model_copy(update={"name": body["metadata"]["name"]})
        tj = template.model_copy(update={"metadata": metadata, "spec": spec})
        uid = str(uuid.UUID(int=rng.getrandbits(128), version=4))
        run_id = f"{rng.getrandbits(128):032x}"
        capacity = first_attempt_capacity(tj)  # type: ignore[arg-type]
        bodies.append(
            build_rayjob(tj, 1, capacity, operator_config, run_id=run_id, owner_uid=uid)  # type: ignore[arg-type]
        )
    built = time.perf_counter()

    def post(body: dict[str, Any]) -> None:
        api.create_namespaced_custom_object("ray.io", "v1", BASELINE_NAMESPACE, "rayjobs", body)

    if args.workers <= 1:
        for body in bodies:
            post(body)
    else:
        with ThreadPoolExecutor(args.workers) as pool:
            list(pool.map(post, bodies))
    posted = time.perf_counter()
    peak = proc_status(os.getpid(), "VmHWM")
    print(json.dumps({"build": built - imported, "post": posted - built, "peak": peak}), flush=True)


# --- measuring children -----------------------------------------------------------------------


@dataclass
class Child:
    """A measured child process: wall time from spawn to exit, its own CPU and peak RSS."""

    proc: subprocess.Popen[bytes]
    started: float
    wall: float = 0.0
    cpu: float = 0.0
    #: VmHWM, set by whoever can read it (see the module docstring for why not ru_maxrss).
    peak_rss_mib: float = 0.0
    returncode: int | None = None

    @classmethod
    def spawn(cls, cmd: list[str], env: dict[str, str], log: Path) -> Child:
        # Not from the repository's root: its operator/ folder would shadow the stdlib module.
        with log.open("wb") as out:
            proc = subprocess.Popen(
                cmd, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=log.parent
            )
        return cls(proc, time.perf_counter())

    async def reap(self, timeout: float | None = None) -> bool:
        """Wait for exit without blocking the emulator's loop; keep the child's rusage.

        Polls ``os.wait4(..., WNOHANG)``: a blocking wait in a thread could not be given up
        on. False when the child is still running after ``timeout`` seconds.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            pid, status, usage = os.wait4(self.proc.pid, os.WNOHANG)
            if pid:
                break
            if deadline is not None and time.monotonic() >= deadline:
                return False
            await asyncio.sleep(0.05)
        self.wall = time.perf_counter() - self.started
        self.returncode = os.waitstatus_to_exitcode(status)
        self.proc.returncode = self.returncode  # reaped here: Popen must not wait again
        self.cpu = usage.ru_utime + usage.ru_stime
        return True

    async def stop(self, grace: float = 30.0) -> float:
        """SIGTERM (Kopf stops gracefully), SIGKILL after ``grace`` seconds; seconds taken."""
        begin = time.perf_counter()
        self.proc.send_signal(signal.SIGTERM)
        if not await self.reap(grace):
            self.proc.kill()
            await self.reap()
        return time.perf_counter() - begin


def proc_cpu(pid: int) -> float:
    """CPU seconds (user + system) a live process has used so far, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def proc_status(pid: int, key: str) -> float:
    """A ``/proc/<pid>/status`` size (VmRSS, VmHWM) in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{key}:"):
            return int(line.split()[1]) / 1024
    return 0.0


def descendants(pid: int) -> list[int]:
    """``pid`` and every live process below it (the MLflow server forks uvicorn)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo.extend(children.get(current, ()))
    return found


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# --- MLflow ---------------------------------------------------------------------------------


class MlflowServer:
    """``mlflow server`` on 127.0.0.1 with a SQLite store, in its own process group."""

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
        cmd = [
            str(Path(sys.executable).with_name("mlflow")),
            "server",
            "--backend-store-uri",
            f"sqlite:///{workdir / 'mlflow.db'}",
            "--artifacts-destination",
            str(workdir / "artifacts"),
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--workers",
            "1",
        ]
        with (workdir / "mlflow-server.log").open("wb") as log:
            self.proc = subprocess.Popen(
                cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )

    async def wait_healthy(self, timeout: float = 120.0) -> None:
        import urllib.request

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("mlflow server exited; see mlflow-server.log")
            try:
                await asyncio.to_thread(urllib.request.urlopen, f"{self.uri}/health", timeout=2)
                return
            except OSError:
                await asyncio.sleep(0.5)
        raise RuntimeError(f"mlflow server not healthy after {timeout}s")

    def usage(self) -> tuple[float, float]:
        """CPU seconds and summed peak RSS (MiB) of the server's processes so far."""
        cpu = rss = 0.0
        for pid in descendants(self.proc.pid):
            try:
                cpu += proc_cpu(pid)
                rss += proc_status(pid, "VmHWM")
            except OSError:
                pass
        return cpu, rss

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)  # our own group: the server and its workers
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


# --- the run --------------------------------------------------------------------------------


@dataclass
class Result:
    name: str
    child: Child
    work: float
    startup: float = 0.0
    emulator_cpu: float = 0.0
    requests: Counter[str] = field(default_factory=Counter)
    note: str = ""


def count_live(emulator: Any, res: Any, namespace: str, *, started: bool = False) -> int:
    """Live objects of a resource in a namespace (read in place: no copies, it is polled)."""
    n = 0
    for (r, ns, _), obj in list(emulator.objects.items()):
        if r != res or ns != namespace or obj.deleted:
            continue
        if started and not (obj.raw.get("status") or {}).get("currentAttempt"):
            continue
        n += 1
    return n


def request_label(request: Any) -> str:
    """``ACTION plural`` of a request, e.g. ``UPDATE trainingjobs`` (``GET -`` for discovery)."""
    plural = request.resource.plural if request.resource is not None else None
    action = request.action.value if request.action is not None else request.method.value
    return f"{action} {plural or '-'}"


def emulator_class() -> type:
    """The harness's emulator, counting requests instead of keeping them all.

    kmock dispatches each request by testing ``request in <reaction's filtered view>``, which
    walks the whole request log through the filters: the n-th request costs O(n), so the
    emulator alone would need minutes of CPU for the requests of 1,000 TrainingJobs. Here a
    request leaves the log once answered (watches stay while they stream) and is counted in
    :attr:`counts` instead. Storage, watches and the write path are the harness's.
    """
    import attrs
    from k8s.emulator import Emulator

    @attrs.define(kw_only=True)
    class CountingEmulator(Emulator):
        counts: Counter[str] = attrs.field(factory=Counter, init=False)

        async def _handle(self, request: Any) -> Any:
            self.counts[request_label(request)] += 1
            try:
                return await super()._handle(request)
            finally:
                log = self._requests
                for i in range(len(log) - 1, -1, -1):
                    if log[i] is request:
                        del log[i]
                        break

    return CountingEmulator


def sample_name(count: int) -> str:
    """The RayJob compared between the cases: the last job's (the baseline's is built from a
    copy of the first job's parsed spec)."""
    return f"tj-{count - 1:05d}-a1"


def normalised(rayjob: dict[str, Any]) -> str:
    """A RayJob without what differs between runs: namespace, uids, run id."""
    body = copy.deepcopy(rayjob)
    meta = body["metadata"]
    body["metadata"] = {"name": meta["name"], "labels": meta.get("labels")}
    env = yaml.safe_load(body["spec"]["runtimeEnvYAML"])
    for key in ("MLFLOW_RUN_ID", "MLPLANE_TRAININGJOB_UID"):
        env["env_vars"][key] = "<id>"
    text = yaml.safe_dump(env, sort_keys=True)
    body["spec"]["runtimeEnvYAML"] = text.replace(BASELINE_NAMESPACE + "/", NAMESPACE + "/")
    return json.dumps(body, sort_keys=True)


async def run_baseline(
    emulator: Any, args: argparse.Namespace, env: dict[str, str], workdir: Path, workers: int
) -> tuple[Result, dict[str, Any] | None]:
    import kmock

    first = Counter(emulator.counts)
    cpu0 = time.process_time()
    cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        "_baseline",
        "--kubeconfig",
        env["KUBECONFIG"],
        "--count",
        str(args.count),
        "--workers",
        str(workers),
        "--seed",
        str(args.seed),
    ]
    if not args.shared_experiment:
        cmd.append("--experiment-per-job")
    log_path = workdir / f"baseline-{workers}.log"
    child = Child.spawn(cmd, env, log_path)
    await child.reap()
    emulator_cpu = time.process_time() - cpu0
    log = log_path.read_text()
    if child.returncode != 0:
        raise RuntimeError(f"the baseline client failed:\n{log[-3000:]}")
    timings = json.loads(log.strip().splitlines()[-1])
    child.peak_rss_mib = timings["peak"]
    res = kmock.resource(RAYJOBS)
    created = count_live(emulator, res, BASELINE_NAMESPACE)
    sample = emulator.get_object(RAYJOBS, BASELINE_NAMESPACE, sample_name(args.count))
    result = Result(
        f"client x{workers}",
        child,
        work=timings["build"] + timings["post"],
        startup=child.wall - timings["build"] - timings["post"],
        emulator_cpu=emulator_cpu,
        requests=emulator.counts - first,
        note=f"build {timings['build']:.2f}s + POST {timings['post']:.2f}s "
        f"({'sequential' if workers <= 1 else f'{workers} threads'}); {created} RayJobs stored",
    )
    for rayjob in emulator.list_objects(RAYJOBS, BASELINE_NAMESPACE):
        await emulator.delete_object(RAYJOBS, BASELINE_NAMESPACE, rayjob["metadata"]["name"])
    return result, sample


async def wait_ready(emulator: Any, child: Child, timeout: float) -> None:
    """Until Kopf watches TrainingJobs and RayJobs (then creations reach the handlers)."""
    wanted = ("WATCH trainingjobs", "WATCH rayjobs")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if child.proc.poll() is not None:
            raise RuntimeError("the operator exited during startup; see operator.log")
        if all(emulator.counts[w] for w in wanted):
            return
        await asyncio.sleep(0.1)
    raise RuntimeError(f"the operator did not start watching within {timeout}s")


async def run_operator_case(
    emulator: Any,
    args: argparse.Namespace,
    env: dict[str, str],
    workdir: Path,
    mlflow: MlflowServer | None,
) -> tuple[Result, dict[str, Any]]:
    import kmock

    first = Counter(emulator.counts)
    cpu0 = time.process_time()
    mlflow_cpu0 = mlflow.usage()[0] if mlflow else 0.0
    cmd = [sys.executable, "-m", "mlplane.operator.cli", "operator", "-A", "--metrics-port", "0"]
    if not args.leader_elect:
        cmd.append("--no-leader-elect")
    child = Child.spawn(cmd, env, workdir / "operator.log")
    extra: dict[str, Any] = {}
    try:
        await wait_ready(emulator, child, timeout=180)
        startup = time.perf_counter() - child.started
        extra["rss_ready"] = proc_status(child.proc.pid, "VmRSS")
        tj_res, rj_res = kmock.resource(TRAININGJOBS), kmock.resource(RAYJOBS)

        begin = time.perf_counter()
        for i in range(args.count):
            body = trainingjob(i, NAMESPACE, shared_experiment=args.shared_experiment)
            await emulator.create_object(TRAININGJOBS, body)
        extra["create_tjs"] = time.perf_counter() - begin
        deadline = begin + args.timeout
        rayjobs = started = 0
        all_rayjobs_at: float | None = None
        first_rayjob_at: float | None = None
        while time.perf_counter() < deadline:
            rayjobs = count_live(emulator, rj_res, NAMESPACE)
            started = count_live(emulator, tj_res, NAMESPACE, started=True)
            now = time.perf_counter()
            if rayjobs and first_rayjob_at is None:
                first_rayjob_at = now - begin
            if rayjobs >= args.count and all_rayjobs_at is None:
                all_rayjobs_at = now - begin
            if rayjobs >= args.count and started >= args.count:
                break
            if child.proc.poll() is not None:
                raise RuntimeError("the operator exited; see operator.log")
            await asyncio.sleep(POLL)
        work = time.perf_counter() - begin
        extra.update(
            rayjobs=rayjobs,
            started=started,
            all_rayjobs_at=all_rayjobs_at,
            first_rayjob_at=first_rayjob_at,
        )
        extra["converged"] = rayjobs >= args.count and started >= args.count
        emulator_cpu = time.process_time() - cpu0
        extra["cpu_at_converged"] = proc_cpu(child.proc.pid)
        extra["rss_converged"] = proc_status(child.proc.pid, "VmRSS")
        child.peak_rss_mib = proc_status(child.proc.pid, "VmHWM")
        if mlflow:
            extra["mlflow_cpu"] = mlflow.usage()[0] - mlflow_cpu0
        requests = emulator.counts - first
        if args.steady > 0:
            cpu_before = proc_cpu(child.proc.pid)
            await asyncio.sleep(args.steady)
            extra["steady_cpu"] = (proc_cpu(child.proc.pid) - cpu_before) / args.steady
            extra["steady_mix"] = emulator.counts - first - requests
            extra["steady_requests"] = sum(extra["steady_mix"].values()) / args.steady
            extra["rayjobs_after_steady"] = count_live(emulator, rj_res, NAMESPACE)
            extra["peak_after_steady"] = proc_status(child.proc.pid, "VmHWM")
        if mlflow:
            extra["mlflow_rss"] = mlflow.usage()[1]
    finally:
        if child.proc.returncode is None:
            extra["stop"] = await child.stop()
    extra["sample"] = emulator.get_object(RAYJOBS, NAMESPACE, sample_name(args.count))
    extra["events"] = Counter(e.get("reason") for e in emulator.list_objects("v1/events"))
    result = Result(
        "operator", child, work=work, startup=startup, emulator_cpu=emulator_cpu, requests=requests
    )
    # CPU to convergence, not including the steady phase or shutdown.
    result.child.cpu = extra["cpu_at_converged"]
    return result, extra


def log_problems(path: Path) -> Counter[str]:
    """What the operator logged, by line start. ``mlplane operator`` sets no logging config,
    so only warnings and errors reach the log (as bare messages, without their level)."""
    seen: Counter[str] = Counter()
    for line in path.read_text(errors="replace").splitlines():
        if line.startswith("Unprocessed streams left for"):
            # Kopf at exit: watch events still queued per object (the operator was behind).
            seen[f"Unprocessed streams left at exit (objects): {line.count('), (') + 1}"] += 1
        elif line.strip():
            seen[line.strip()[:120]] += 1
    return seen


def load() -> str:
    one, five, _ = os.getloadavg()
    return f"load average {one:.2f} (1 min), {five:.2f} (5 min) on {os.cpu_count()} CPUs"


async def bench(args: argparse.Namespace) -> None:
    tests = str(ROOT / "tests")
    if tests not in sys.path:
        sys.path.insert(0, tests)
    import kmock
    from k8s.harness import declare_all, write_kubeconfig

    if args.workdir:
        args.workdir.mkdir(parents=True, exist_ok=True)
    keep = contextlib.nullcontext(str(args.workdir)) if args.workdir else None
    with keep or tempfile.TemporaryDirectory(prefix="mlplane-bench-") as tmp:
        workdir = Path(tmp)
        mlflow: MlflowServer | None = None
        if args.mlflow == "server":
            mlflow = MlflowServer(workdir)
            await mlflow.wait_healthy()
            tracking_uri = mlflow.uri
        else:
            tracking_uri = f"sqlite:///{workdir / 'mlflow.db'}"
            # Create the schema now, so no operator thread races to migrate an empty file.
            subprocess.run(
                [
                    sys.executable,
                    "-c",
                    "import sys; from mlflow.tracking import "
                    "MlflowClient; MlflowClient(sys.argv[1]).search_experiments()",
                    tracking_uri,
                ],
                check=True,
                capture_output=True,
            )
        try:
            k8s = emulator_class()()
            declare_all(k8s)
            async with k8s, kmock.Server(k8s):
                kubeconfig = write_kubeconfig(workdir / "kubeconfig", str(k8s.url).rstrip("/"))
                env = {
                    k: v
                    for k, v in os.environ.items()
                    if not k.startswith(("KUBERNETES_SERVICE_", "MLPLANE_", "MLFLOW_"))
                }
                env.update(
                    KUBECONFIG=str(kubeconfig),
                    MLPLANE_MLFLOW_TRACKING_URI=tracking_uri,
                    MLPLANE_RECONCILE_INTERVAL=str(args.interval),
                )
                print(
                    f"{args.count} TrainingJobs; MLflow {args.mlflow} ({tracking_uri}); "
                    f"timer interval {args.interval}s; baseline client threads "
                    f"{' and '.join(map(str, args.baseline_workers))}; {load()}",
                    flush=True,
                )
                bases, base_sample = [], None
                for workers in args.baseline_workers:
                    base, base_sample = await run_baseline(k8s, args, env, workdir, workers)
                    bases.append(base)
                    print(f"{base.name} done in {base.child.wall:.1f}s; {load()}", flush=True)
                op, extra = await run_operator_case(k8s, args, env, workdir, mlflow)
                crashes = [
                    e
                    for e in k8s.errors
                    if not (isinstance(e, kmock.KubernetesError) and e.status < 500)
                ]
            report(args, bases, op, extra, base_sample, crashes, workdir, mlflow is not None)
        finally:
            if mlflow is not None:
                mlflow.stop()


def report(
    args: argparse.Namespace,
    bases: list[Result],
    op: Result,
    extra: dict[str, Any],
    base_sample: dict[str, Any] | None,
    crashes: list[Any],
    workdir: Path,
    server: bool,
) -> None:
    n = args.count
    print()
    if not extra["converged"]:
        print(
            f"!! the operator did NOT converge within {args.timeout}s: {extra['rayjobs']} "
            f"RayJobs, {extra['started']} TrainingJobs with an attempt"
        )
    header = (
        f"{'case':<12}{'work s':>9}{'jobs/s':>9}{'startup s':>11}{'total s':>9}"
        f"{'CPU s':>8}{'peak RSS MiB':>14}{'emulator CPU s':>16}{'API requests':>14}"
    )
    print(header)
    print("-" * len(header))
    for r in (*bases, op):
        total = r.startup + r.work
        print(
            f"{r.name:<12}{r.work:>9.2f}{n / r.work:>9.1f}{r.startup:>11.2f}{total:>9.2f}"
            f"{r.child.cpu:>8.2f}{r.child.peak_rss_mib:>14.1f}{r.emulator_cpu:>16.2f}"
            f"{sum(r.requests.values()):>14}"
        )
    print()
    for base in bases:
        print(
            f"ratio operator / {base.name}: work time {op.work / base.work:.1f}x, "
            f"total time {(op.startup + op.work) / (base.startup + base.work):.1f}x, "
            f"CPU {op.child.cpu / base.child.cpu:.1f}x, "
            f"peak RSS {op.child.peak_rss_mib / base.child.peak_rss_mib:.1f}x"
        )
    print()
    for base in bases:
        print(f"{base.name}: {base.note}")
    print(
        f"operator: {n} TrainingJobs created in {extra['create_tjs']:.2f}s (in-process); "
        f"first RayJob at {extra['first_rayjob_at'] or float('nan'):.2f}s, "
        f"all RayJobs at {extra['all_rayjobs_at'] or float('nan'):.2f}s, every attempt in "
        f"status at {op.work:.2f}s; RSS {extra['rss_ready']:.0f} MiB when ready, "
        f"{extra['rss_converged']:.0f} MiB at convergence"
    )
    if server:
        print(
            f"mlflow server (not in the operator's numbers): {extra.get('mlflow_cpu', 0):.2f} "
            f"CPU s to convergence, peak RSS {extra.get('mlflow_rss', 0):.0f} MiB (all its "
            "processes)"
        )
    if "steady_cpu" in extra:
        print(
            f"at rest for {args.steady:.0f}s after convergence: operator CPU "
            f"{extra['steady_cpu'] * 100:.0f}% of a core, {extra['steady_requests']:.1f} API "
            f"requests/s, peak RSS {extra['peak_after_steady']:.0f} MiB, "
            f"{extra['rayjobs_after_steady']} RayJobs; requests: "
            + ", ".join(f"{k} {v}" for k, v in extra["steady_mix"].most_common())
        )
    print(
        "operator requests to convergence: "
        + ", ".join(f"{k} {v}" for k, v in op.requests.most_common())
    )
    for base in bases:
        mix = ", ".join(f"{k} {v}" for k, v in base.requests.most_common())
        print(f"{base.name} requests: {mix}")
    print(
        f"Events stored for {n} TrainingJobs (at the end): "
        + ", ".join(f"{k} {v}" for k, v in extra["events"].most_common())
    )
    sample = extra.get("sample")
    if base_sample and sample:
        same = normalised(base_sample) == normalised(sample)
        print(
            f"same RayJob from both ({sample_name(n)}, ids and namespace aside): "
            f"{'yes' if same else 'NO'}"
        )
    problems = log_problems(workdir / "operator.log")
    if problems:
        print(f"operator log: {sum(problems.values())} lines (warnings and errors), most frequent:")
        for line, count in problems.most_common(5):
            print(f"  {count:>6} x {line}")
    signal_name = "SIGKILL after 30s" if op.child.returncode == -9 else "SIGTERM"
    print(
        f"operator stopped by {signal_name} in {extra.get('stop', 0):.1f}s "
        f"(exit {op.child.returncode})"
    )
    if crashes:
        print(f"!! the emulator failed on {len(crashes)} requests: {crashes[:3]!r}")
    print(f"{load()} at the end")


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["_baseline"]:  # the child process of the baseline case
        child = argparse.ArgumentParser()
        child.add_argument("_baseline")
        child.add_argument("--kubeconfig", required=True)
        child.add_argument("--count", type=int, required=True)
        child.add_argument("--workers", type=int, required=True)
        child.add_argument("--seed", type=int, default=0)
        child.add_argument("--experiment-per-job", dest="shared_experiment", action="store_false")
        baseline_client(child.parse_args(argv))
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=1000, help="TrainingJobs (default 1000)")
    parser.add_argument("--quick", action="store_true", help="100 TrainingJobs")
    parser.add_argument("--mlflow", choices=("sqlite", "server"), default="sqlite")
    parser.add_argument(
        "--experiment-per-job",
        dest="shared_experiment",
        action="store_false",
        help="no spec.mlflow.experiment: one experiment per TrainingJob",
    )
    parser.add_argument(
        "--interval",
        type=float,
        default=5.0,
        help="MLPLANE_RECONCILE_INTERVAL of the operator (its default: 5)",
    )
    parser.add_argument(
        "--baseline-workers",
        type=int,
        nargs="+",
        default=[KOPF_THREADS, 1],
        help=f"client threads of each baseline run (default {KOPF_THREADS}, the size of "
        "Kopf's handler pool here, then 1: sequential)",
    )
    parser.add_argument(
        "--steady",
        type=float,
        default=20.0,
        help="seconds to watch the converged operator at rest (0: skip)",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=1800.0,
        help="give up on convergence after this many seconds",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--no-leader-elect",
        dest="leader_elect",
        action="store_false",
        help="run the operator without leader election: on a loaded machine the in-process "
        "emulator can answer a Lease renew too late (7 s) and the leader then exits",
    )
    parser.add_argument(
        "--workdir",
        type=Path,
        help="keep logs, kubeconfig and MLflow's store here (else a temp dir)",
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.count = 100
    asyncio.run(bench(args))


if __name__ == "__main__":
    main()
