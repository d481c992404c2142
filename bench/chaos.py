"""Chaos: the real operator under injected faults, then invariants that say nothing was lost.

    .venv/bin/python bench/chaos.py --seed 7 --resources 200 --faults 500
    .venv/bin/python bench/chaos.py --quick          # 8 TrainingJobs, 60 faults
    .venv/bin/python bench/chaos.py --quick --replicas 2   # leader election, leader kills

The seeded subset in the test suite: ``tests/chaos/test_chaos_seeded.py``.

One in-memory Kubernetes API server (``tests/k8s/emulator.py``) runs in this process; the operator
runs as it is deployed (``mlplane operator -A``) in a child process against it, with a real
MLflow server (SQLite) in another. This script plays KubeRay and the training pods: it moves
each RayJob through Initializing, Running and an end, reclaims spot workers (a pod with a
``DisruptionTarget`` condition on a spot node, before or after the RayJob fails: both orders
happen in production), fails some attempts as code failures, and does what the training runtime
does on success (checkpoint tags and a model logged into the attempt's MLflow run).

Faults, all drawn from ``--seed`` (the same seed gives the same schedule; timing still varies),
within the first ``--chaos-seconds`` (``--faults`` is the most injected; the table says how many
were), then none while convergence is measured:

- **operator SIGKILL** at random moments, then a new process (kills land mid-reconcile too);
  with ``--replicas 2`` (or more) the replicas run with leader election, as the chart deploys
  them, and each kill hits the leader once it leads with the standby up (the killed one comes
  back as a standby); convergence is still measured from the last fault;
- **API faults** on a fraction of the operator's requests: 409 Conflict, 500, 503, 429 with
  ``Retry-After``, a slow answer, and a write that is *applied* but answered 503 (a timeout
  whose write landed: the client must find it, not repeat it);
- **MLflow outages** in windows: the server stopped (SIGSTOP: calls hang until the client's
  timeout) or killed and restarted (connections refused);
- **watch streams cut mid-stream**: a share of the watches ends after a few events (the client
  resumes from its last resourceVersion; the emulator replays what it missed).

Invariants checked at the end, each violation printed with the seed and the resource:

- every TrainingJob ends Succeeded or Failed within the deadline after the last fault;
- ``status.attempts`` equals the RayJobs that exist for it, ``preemptions`` the reclaims this
  script made, ``failures`` the code failures it made (nothing lost, nothing double-counted);
- one MLflow run per TrainingJob uid; a Succeeded job has exactly one model version for its
  uid, its alias points there, and its status names it; a Failed job registered nothing;
- the counters in status never went back in any status write the emulator saw;
- after every TrainingJob is deleted, none of their RayJobs, Secrets or NetworkPolicies remain;
- the operator never exited by itself (a crash loop; a leader that exits because it could not
  renew its Lease is counted apart: that is the design), and the tracebacks it logged are
  counted;
- never two writers: the processes that sent the operator's requests (other than the Lease's),
  in the order the API server received them, take turns once each (a process that resumes
  after another one started is a split brain).

Not covered yet (issue #17): ModelDeployments and ABTests (they need a played RayService and
serving app), deletions during the chaos, S3 outages, Node objects in the played reclaims, and
the local platform's variant (Ray worker, serving monitor and runner kills). API faults are
drawn per request, so ``--faults`` is a ceiling: the table says how many landed.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import contextlib
import os
import random
import signal
import statistics
import sys
import tempfile
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from operator_trainingjobs import Child, MlflowServer, load, trainingjob

ROOT = Path(__file__).resolve().parents[1]
NAMESPACE = "chaos"
TRAININGJOBS = "mlplane.dev/v1alpha1/trainingjobs"
RAYJOBS = "ray.io/v1/rayjobs"
PODS = "v1/pods"
LEASES = "coordination.k8s.io/v1/leases"
#: What a leader that could not renew logs before it exits (``operator/leader_loop.py``).
LOST = "Leader election: lost the lease"
COUNTERS = ("attempts", "preemptions", "failures")
MLFLOW_HTTP = ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_TIMEOUT")
API_FAULTS = ("conflict", "error500", "unavailable503", "throttle429", "slow", "applied503")


@dataclass
class Plan:
    """What this script does to one TrainingJob's attempts (drawn from the seed)."""

    #: Per attempt number: "preempt-before" / "preempt-after" (evidence before or after the
    #: RayJob fails), "fail" (a code failure), or "succeed".
    outcomes: dict[int, str] = field(default_factory=dict)
    preemptions: int = 0
    failures: int = 0


@dataclass
class Faults:
    """The fault schedule and what was injected, by type."""

    rng: random.Random
    api_rate: float
    injected: Counter[str] = field(default_factory=Counter)
    last_fault_at: float = 0.0
    enabled: bool = True
    #: The share of watch streams cut after a few events (the client must resume from its
    #: last resourceVersion and miss nothing).
    watch_cut_rate: float = 0.3

    def api_fault(self) -> str | None:
        if not self.enabled or self.rng.random() >= self.api_rate:
            return None
        kind = self.rng.choice(API_FAULTS)
        self.injected[f"api {kind}"] += 1
        self.last_fault_at = time.monotonic()
        return kind

    def watch_cut(self) -> int | None:
        """After how many events a new watch stream is cut mid-stream (None: not cut)."""
        if not self.enabled or self.rng.random() >= self.watch_cut_rate:
            return None
        return self.rng.randint(1, 10)


def emulator_class(
    faults: Faults,
    writes: dict[str, list[dict[str, Any]]],
    senders: list[str],
    lease_readers: set[str],
) -> type:
    """The harness's emulator with faults on the operator's requests, recording status writes;
    in ``senders``, each change of the process that sends the operator's requests other than
    the Lease's (its bearer token), in the order they arrive; in ``lease_readers``, the
    processes that have asked for the Lease (a standby that is up)."""
    import aiohttp.web
    import attrs
    import kmock
    from k8s.emulator import Emulator

    def status_answer(code: int, reason: str, headers: dict[str, str] | None = None) -> Any:
        body = {"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": code,
                "reason": reason, "message": f"injected by bench/chaos.py: {reason}"}  # fmt: skip
        return aiohttp.web.json_response(body, status=code, headers=headers)

    @attrs.define(kw_only=True)
    class ChaosEmulator(Emulator):
        async def _serve_watch(self, request: Any) -> Any:
            cut = faults.watch_cut()
            sent = 0
            async with contextlib.aclosing(super()._serve_watch(request)) as stream:
                async for item in stream:
                    yield item
                    if cut is not None and isinstance(item, dict):
                        sent += 1
                        if sent >= cut and faults.enabled:
                            faults.injected["watch cut mid-stream"] += 1
                            faults.last_fault_at = time.monotonic()
                            return

        async def _handle(self, request: Any) -> Any:
            res = request.resource
            sender = request.headers.get("Authorization") or ""
            if res is not None and res.plural == "leases":
                lease_readers.add(sender.removeprefix("Bearer "))
            operators = res is not None and res.plural != "leases" and sender.startswith("Bearer")
            # Recorded as it arrives (a slow answer below must not reorder it).
            if operators and (not senders or senders[-1] != sender):
                senders.append(sender)
            is_write = request.action in (kmock.action.CREATE, kmock.action.UPDATE,
                                          kmock.action.DELETE)  # fmt: skip
            kind = faults.api_fault() if res is not None and res.plural else None
            if kind == "slow":
                await asyncio.sleep(faults.rng.uniform(0.5, 3.0))
            elif kind == "conflict" and is_write:
                return status_answer(409, "Conflict")
            elif kind == "error500" and request.action != kmock.action.WATCH:
                return status_answer(500, "InternalError")
            elif kind == "unavailable503":
                return status_answer(503, "ServiceUnavailable")
            elif kind == "throttle429":
                return status_answer(429, "TooManyRequests", {"Retry-After": "1"})
            try:
                answer = await super()._handle(request)
            finally:
                log = self._requests  # keep the log short (see operator_trainingjobs.py)
                for i in range(len(log) - 1, -1, -1):
                    if log[i] is request:
                        del log[i]
                        break
            if res is not None and res.plural == "trainingjobs" and request.name and is_write:
                found = self.get_object(TRAININGJOBS, request.namespace, request.name)
                if found is not None:
                    st = found.get("status") or {}
                    write: dict[str, Any] = {c: int(st.get(c) or 0) for c in COUNTERS}
                    # Who wrote what, for the violation's story (not compared).
                    write["by"] = sender.removeprefix("Bearer ")
                    write["phase"] = st.get("phase")
                    write["rv"] = found["metadata"].get("resourceVersion")
                    writes[request.name].append(write)
            if kind == "applied503" and is_write:
                return status_answer(503, "ServiceUnavailable")  # the write did land
            return answer

    return ChaosEmulator


#: Lease settings of the replicas: a SIGKILLed leader is replaced within about 7 s.
LEASE_SETTINGS = {
    "MLPLANE_LEADER_LEASE_DURATION": "6",
    "MLPLANE_LEADER_RENEW_DEADLINE": "4",
    "MLPLANE_LEADER_RETRY_PERIOD": "1",
}


class Operator:
    """The operator's replicas: ``mlplane operator -A`` in child processes, killed and restarted.

    One replica runs without a Lease (``--no-leader-elect``: a restarted process need not wait
    out its predecessor's lease). Two or more run as the chart deploys them (``--leader-elect``,
    short lease settings): a kill hits the replica that holds the Lease, with the standby
    running, and the killed one comes back as a standby (what Kubernetes does with its pod).
    Each process has a kubeconfig of its own whose bearer token names it, so the emulator tells
    apart which process sent what (the "never two writers" invariant).
    """

    def __init__(self, env: dict[str, str], workdir: Path, server: str, replicas: int = 1) -> None:
        self.env, self.workdir, self.server, self.replicas = env, workdir, server, replicas
        #: Slot -> its current process, that process's log, and its name (the bearer token
        #: of its requests and the first part of its Lease holder identity).
        self.children: dict[int, tuple[Child, Path, str]] = {}
        #: Seconds from each leader kill to a live replica holding the Lease.
        self.takeovers: list[float] = []
        self._killed_leader: tuple[str, float] | None = None
        self.starts = 0
        self.crashes = 0
        #: Leaders that exited because they could not renew the Lease in time (API faults on
        #: the Lease): the designed reaction (the pod restarts as a standby), not a crash.
        self.lease_lost = 0
        self.leader_kills = 0

    def start(self) -> None:
        """Start every replica that has no running process."""
        for slot in range(self.replicas):
            if slot not in self.children:
                self._spawn(slot)

    def _spawn(self, slot: int) -> None:
        from k8s.harness import write_kubeconfig

        self.starts += 1
        token = f"chaos-op{slot}-{self.starts}"
        env = dict(self.env)
        cmd = [sys.executable, "-m", "mlplane.operator.cli", "operator", "-A",
               "--metrics-port", "0"]  # fmt: skip
        if self.replicas == 1:
            cmd.append("--no-leader-elect")
        else:
            cmd.append("--leader-elect")
            env.update(LEASE_SETTINGS, POD_NAME=token)
        kubeconfig = self.workdir / f"kubeconfig-{token}"
        env["KUBECONFIG"] = str(write_kubeconfig(kubeconfig, self.server, token))
        log = self.workdir / f"operator-{self.starts}.log"
        self.children[slot] = (Child.spawn(cmd, env, log), log, token)

    def leader(self, emulator: Any) -> int | None:
        """The slot of the live replica holding the Lease (None: the Lease is free or names a
        killed process, i.e. a takeover is pending)."""
        if self.replicas == 1:
            return 0
        lease = emulator.get_object(LEASES, "mlplane-system", "mlplane-operator") or {}
        holder = str((lease.get("spec") or {}).get("holderIdentity") or "").split("_")[0]
        for slot, (_, _, name) in self.children.items():
            if name == holder:
                if self._killed_leader is not None:
                    self.takeovers.append(time.monotonic() - self._killed_leader[1])
                    self._killed_leader = None
                return slot
        return None

    async def kill(self, emulator: Any, lease_readers: set[str]) -> bool:
        """SIGKILL the leader and start its replacement (as a standby). With replicas, only
        once a live replica leads and every other one is up and looking at the Lease (the
        standby running); False: not now (the caller tries again a little later)."""
        slot = self.leader(emulator)
        if slot is None:
            return False
        if self.replicas > 1:
            if any(name not in lease_readers for _, _, name in self.children.values()):
                return False
            self.leader_kills += 1
            self._killed_leader = (self.children[slot][2], time.monotonic())
        child, _, _ = self.children.pop(slot)
        child.proc.send_signal(signal.SIGKILL)
        await child.reap()
        self._spawn(slot)
        return True

    async def check(self) -> None:
        """Restart a replica that exited by itself: a leader that lost its Lease exits by
        design (counted apart); any other exit is a crash (a violation)."""
        for slot, (child, log, _) in list(self.children.items()):
            if child.proc.poll() is not None or await child.reap(0):
                if self.replicas > 1 and LOST in log.read_text(errors="replace"):
                    self.lease_lost += 1
                else:
                    self.crashes += 1
                del self.children[slot]
                self._spawn(slot)

    async def stop(self) -> None:
        """SIGTERM every replica at once (a leader releases the Lease), SIGKILL after 10 s."""

        async def one(child: Child) -> None:
            if child.proc.returncode is None:
                with contextlib.suppress(ChildProcessError):  # already reaped
                    await child.stop(grace=10)

        await asyncio.gather(*(one(child) for child, _, _ in self.children.values()))

    def tracebacks(self) -> int:
        return sum(p.read_text(errors="replace").count("Traceback (most recent call last)")
                   for p in self.workdir.glob("operator-*.log"))  # fmt: skip


class Mlflow:
    """The MLflow server, with outages: stopped (calls hang) or killed and restarted (refused)."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.server = MlflowServer(workdir)
        self.uri = self.server.uri

    async def outage(self, rng: random.Random, seconds: float, faults: Faults) -> None:
        proc = self.server.proc
        if rng.random() < 0.5:
            faults.injected["mlflow hang"] += 1
            os.killpg(proc.pid, signal.SIGSTOP)
            try:
                await asyncio.sleep(seconds)
            finally:
                os.killpg(proc.pid, signal.SIGCONT)
        else:
            faults.injected["mlflow down"] += 1
            port = self.server.port
            self.server.stop()
            await asyncio.sleep(seconds)
            self.server = _restart_mlflow(self.workdir, port)
            await self.server.wait_healthy()
        faults.last_fault_at = time.monotonic()


def _restart_mlflow(workdir: Path, port: int) -> MlflowServer:
    """A new server on the same port and store (MlflowServer picks a free port: reuse ours)."""
    server = MlflowServer.__new__(MlflowServer)
    server.port, server.uri = port, f"http://127.0.0.1:{port}"
    import subprocess

    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    cmd = [str(Path(sys.executable).with_name("mlflow")), "server", "--backend-store-uri",
           f"sqlite:///{workdir / 'mlflow.db'}", "--artifacts-destination",
           str(workdir / "artifacts"), "--host", "127.0.0.1", "--port", str(port),
           "--workers", "1"]  # fmt: skip
    with (workdir / "mlflow-server.log").open("ab") as log:
        server.proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT,
                                       start_new_session=True)  # fmt: skip
    return server


# --- playing KubeRay and the training runtime ------------------------------------------------


def _run_id(rayjob: dict[str, Any]) -> str:
    return yaml.safe_load(rayjob["spec"]["runtimeEnvYAML"])["env_vars"]["MLFLOW_RUN_ID"]


def _train(uri: str, run_id: str) -> None:
    """What the runtime does on success: checkpoint tags and a model in the attempt's run."""
    import mlflow
    from mlflow.tracking import MlflowClient
    from sklearn.linear_model import LogisticRegression

    from mlplane.operator.registry import process_uris

    client = MlflowClient(uri)
    client.set_tag(run_id, "mlplane.checkpoint.uri", f"s3://ckpt/{run_id}/step-10")
    client.set_tag(run_id, "mlplane.checkpoint.step", "10")
    with process_uris(uri), mlflow.start_run(run_id=run_id):
        model = LogisticRegression().fit([[0.0], [1.0], [2.0], [3.0]], [0, 0, 1, 1])
        mlflow.sklearn.log_model(model, name="model", pip_requirements=["scikit-learn"])


class KubeRay:
    """Moves every RayJob of the namespace along, as KubeRay and the pods would."""

    def __init__(self, emulator: Any, rng: random.Random, mlflow: Mlflow, args: Any) -> None:
        self.emulator, self.rng, self.mlflow, self.args = emulator, rng, mlflow, args
        self.plans: dict[str, Plan] = defaultdict(Plan)
        self.state: dict[str, tuple[str, float]] = {}  # rayjob -> (stage, since)
        self.trained: set[str] = set()
        self.tasks: set[asyncio.Task[None]] = set()
        #: The runtime's MLflow calls run here: at the end the script does not wait for a call
        #: that hangs on a stopped server (``asyncio.run`` would wait for its default pool).
        self.pool = concurrent.futures.ThreadPoolExecutor(8, thread_name_prefix="chaos-train")
        self.started = time.monotonic()
        #: What this script did to each TrainingJob, when (seconds into the run): printed with
        #: a violation about it.
        self.timeline: dict[str, list[str]] = defaultdict(list)

    def stages(self, tj: str) -> dict[str, str]:
        """Where this script's play of each of the TrainingJob's RayJobs stands."""
        return {job: stage for job, (stage, _) in self.state.items() if job.startswith(f"{tj}-a")}

    def note(self, tj: str, what: str) -> None:
        self.timeline[tj].append(f"{time.monotonic() - self.started:.1f}s {what}")

    def _outcome(self, tj: str, attempt: int, spot: bool) -> str:
        plan = self.plans[tj]
        if attempt not in plan.outcomes:
            draw = self.rng.random()
            if draw < self.args.preempt_rate and plan.preemptions < 3:
                # Evidence after the failure is a spot reclaim's; an on-demand attempt is lost
                # only to an eviction seen first (the operator judges on-demand failures at once).
                orders = ("preempt-before", "preempt-after") if spot else ("preempt-before",)
                outcome = self.rng.choice(orders)
                plan.preemptions += 1
            elif draw < self.args.preempt_rate + self.args.fail_rate:
                outcome = "fail"
                plan.failures += 1
            else:
                outcome = "succeed"
            plan.outcomes[attempt] = outcome
        return plan.outcomes[attempt]

    async def _status(self, name: str, job: str, deployment: str) -> None:
        with contextlib.suppress(Exception):  # deleted meanwhile
            await self.emulator.patch_object(RAYJOBS, NAMESPACE, name,
                                             {"status": {"jobStatus": job,
                                                         "jobDeploymentStatus": deployment}},
                                             subresource="status")  # fmt: skip

    async def _succeed(self, name: str, run_id: str) -> None:
        while True:
            try:
                loop = asyncio.get_running_loop()
                await loop.run_in_executor(self.pool, _train, self.mlflow.uri, run_id)
                break
            except Exception:  # MLflow is out: the runtime tries again
                await asyncio.sleep(1.0)
        await self._status(name, "SUCCEEDED", "Complete")
        self.state[name] = ("done", time.monotonic())

    async def _reclaim(self, tj: str, attempt: int) -> None:
        pod = f"{tj}-a{attempt}-worker-chaos"
        body = {"apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": pod, "namespace": NAMESPACE,
                             "labels": {"mlplane.dev/trainingjob": tj,
                                        "mlplane.dev/attempt": str(attempt),
                                        "ray.io/node-type": "worker"}},
                "spec": {"nodeName": f"spot-{tj}-{attempt}",
                         "containers": [{"name": "ray-worker", "image": "r"}]}}  # fmt: skip
        with contextlib.suppress(Exception):
            await self.emulator.create_object(PODS, body)
            await self.emulator.patch_object(PODS, NAMESPACE, pod, {"status": {"conditions": [
                {"type": "DisruptionTarget", "status": "True",
                 "reason": "DeletionByTaintManager"}]}}, subresource="status")  # fmt: skip

    async def step(self) -> None:
        now = time.monotonic()
        for rayjob in self.emulator.list_objects(RAYJOBS, NAMESPACE):
            name = rayjob["metadata"]["name"]
            labels = rayjob["metadata"].get("labels") or {}
            tj, attempt = labels.get("mlplane.dev/trainingjob"), labels.get("mlplane.dev/attempt")
            if not tj or not attempt:
                continue
            stage, since = self.state.get(name, ("new", now))
            waited = now - since
            if stage == "new":
                await self._status(name, "PENDING", "Initializing")
                self.state[name] = ("init", now)
            elif stage == "init" and waited > 0.5:
                await self._status(name, "RUNNING", "Running")
                self.state[name] = ("running", now)
            elif stage == "running" and waited > self.args.attempt_seconds:
                spot = labels.get("mlplane.dev/capacity") == "Spot"
                outcome = self._outcome(tj, int(attempt), spot)
                self.note(tj, f"a{attempt}: {outcome}")
                if outcome == "preempt-before":
                    await self._reclaim(tj, int(attempt))
                    self.state[name] = ("evidence", now)
                elif outcome == "preempt-after":
                    await self._status(name, "FAILED", "Failed")
                    self.state[name] = ("failed-first", now)
                elif outcome == "fail":
                    await self._status(name, "FAILED", "Failed")
                    self.state[name] = ("done", now)
                else:
                    # Training ends in a task of its own: a step waiting for MLflow (out, or
                    # hanging until a timeout) would delay every other job's play, e.g. a
                    # reclaim's evidence past the operator's grace.
                    self.state[name] = ("training", now)
                    self.tasks.add(asyncio.create_task(self._succeed(name, _run_id(rayjob))))
            elif stage == "evidence" and waited > 1.0:
                await self._status(name, "FAILED", "Failed")
                self.note(tj, f"a{attempt}: FAILED after its reclaim")
                self.state[name] = ("done", now)
            elif stage == "failed-first" and waited > 1.0:
                await self._reclaim(tj, int(attempt))
                self.note(tj, f"a{attempt}: reclaim evidence after its failure")
                self.state[name] = ("done", now)


# --- the run ---------------------------------------------------------------------------------


def _violations(
    emulator: Any, kuberay: KubeRay, writes: dict[str, list[dict[str, Any]]], uri: str,
    names: list[str], uids: dict[str, str],
) -> list[str]:  # fmt: skip
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    out: list[str] = []
    for name in names:
        obj = emulator.get_object(TRAININGJOBS, NAMESPACE, name) or {}
        st = obj.get("status") or {}
        phase, uid = st.get("phase"), uids[name]
        plan = kuberay.plans[name]
        # Checked whether or not the job converged (a job stuck creating runs shows here).
        runs = client.search_runs(
            [e.experiment_id for e in client.search_experiments()],
            f"tags.`mlplane.trainingjob.uid` = '{uid}'",
        )
        if len(runs) > 1 or (len(runs) == 0 and phase in ("Succeeded", "Failed")):
            out.append(f"{name}: {len(runs)} MLflow runs for uid {uid}")
        if phase not in ("Succeeded", "Failed"):
            last = max(st.get("conditions") or [{}], key=lambda c: c.get("lastTransitionTime", ""))
            out.append(f"{name}: did not converge (phase {phase}; {last.get('type')} "
                       f"{last.get('reason')}: {last.get('message')}); what the script did: "
                       f"{kuberay.timeline[name]}; RayJobs: {kuberay.stages(name)}")  # fmt: skip
            continue
        rayjobs = [
            r
            for r in emulator.list_objects(RAYJOBS, NAMESPACE)
            if (r["metadata"].get("labels") or {}).get("mlplane.dev/trainingjob") == name
        ]
        if int(st.get("attempts") or 0) != len(rayjobs):
            out.append(f"{name}: status.attempts {st.get('attempts')} != {len(rayjobs)} RayJobs")
        if int(st.get("preemptions") or 0) != plan.preemptions:
            out.append(f"{name}: status.preemptions {st.get('preemptions')} != "
                       f"{plan.preemptions} reclaims made ({plan.outcomes})")  # fmt: skip
        if int(st.get("failures") or 0) != plan.failures:
            out.append(f"{name}: status.failures {st.get('failures')} != "
                       f"{plan.failures} code failures made ({plan.outcomes})")  # fmt: skip
        if out and out[-1].startswith(f"{name}: status."):
            events = [f"{e.get('reason')}: {e.get('message')}"
                      for e in emulator.list_objects("v1/events", NAMESPACE)
                      if (e.get("involvedObject") or {}).get("name") == name]  # fmt: skip
            out.append(f"{name}: what the script did: {kuberay.timeline[name]}; "
                       f"the operator's events: {events}")  # fmt: skip
        versions = client.search_model_versions(f"name = '{name}'")
        mine = [v for v in versions if (v.tags or {}).get("mlplane.trainingjob.uid") == uid]
        if phase == "Succeeded":
            if len(mine) != 1:
                out.append(f"{name}: Succeeded with {len(mine)} model versions for its uid")
            else:
                alias = client.get_model_version_by_alias(name, "candidate").version
                if str(alias) != str(mine[0].version):
                    out.append(f"{name}: alias candidate -> {alias}, not {mine[0].version}")
                if str((st.get("mlflow") or {}).get("modelVersion")) != str(mine[0].version):
                    out.append(f"{name}: status names version "
                               f"{(st.get('mlflow') or {}).get('modelVersion')}")  # fmt: skip
        elif mine:
            out.append(f"{name}: Failed but registered {len(mine)} versions")
        previous = {c: 0 for c in COUNTERS}
        history = writes.get(name, [])
        for i, write in enumerate(history):
            back = [c for c in COUNTERS if write[c] < previous[c]]
            if back:
                story = [f"{w['by']} rv {w['rv']} {w['phase']} "
                         + "/".join(str(w[c]) for c in COUNTERS)
                         for w in history[max(0, i - 6) : i + 1]]  # fmt: skip
                out.append(f"{name}: status counters went back: {previous} -> {write}; "
                           f"the writes up to it (by, rv, phase, counters): {story}")  # fmt: skip
                break
            previous = {c: write[c] for c in COUNTERS}
    return out


async def run(args: argparse.Namespace) -> int:
    tests = str(ROOT / "tests")
    if tests not in sys.path:
        sys.path.insert(0, tests)
    # The played runtime's MLflow calls fail fast, as the operator's do: MLflow's client
    # retries for minutes by default, and a call waiting on a stopped server holds the lock of
    # process_uris, so every other job's training would wait behind it (a false "did not
    # converge"). The runtime's loop (KubeRay._succeed) is the retry.
    from mlplane.operator.registry import bound_http_calls

    saved = {k: os.environ.get(k) for k in MLFLOW_HTTP}
    bound_http_calls(5.0)
    try:
        return await _run(args)
    finally:  # as it was (the seeded test runs this in pytest's process)
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


async def _run(args: argparse.Namespace) -> int:
    import kmock
    from k8s.harness import declare_all

    rng = random.Random(args.seed)
    faults = Faults(random.Random(args.seed + 1), api_rate=args.api_rate)
    writes: dict[str, list[dict[str, Any]]] = defaultdict(list)
    senders: list[str] = []
    lease_readers: set[str] = set()
    with tempfile.TemporaryDirectory(prefix="mlplane-chaos-") as tmp:
        workdir = Path(args.workdir or tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        mlflow = Mlflow(workdir)
        await mlflow.server.wait_healthy()
        k8s = emulator_class(faults, writes, senders, lease_readers)()
        declare_all(k8s)
        operator: Operator | None = None
        kuberay: KubeRay | None = None
        try:
            async with k8s, kmock.Server(k8s):
                env = {
                    k: v
                    for k, v in os.environ.items()
                    if not k.startswith(("KUBERNETES_SERVICE_", "MLPLANE_", "MLFLOW_"))
                }
                # MLPLANE_RECONCILE_INTERVAL paces the operator's timers where they exist;
                # an operator without them ignores it (nothing here relies on it).
                env.update(MLPLANE_MLFLOW_TRACKING_URI=mlflow.uri,
                           MLPLANE_MLFLOW_TIMEOUT="3", MLPLANE_RETRY_DELAY="2",
                           MLPLANE_RECONCILE_INTERVAL="2",
                           MLPLANE_PREEMPTION_EVIDENCE_GRACE=str(args.evidence_grace))  # fmt: skip
                print(f"seed {args.seed}: {args.resources} TrainingJobs, {args.faults} faults "
                      f"(API fault rate {args.api_rate:.0%}), {args.replicas} operator "
                      f"replica(s); {load()}", flush=True)  # fmt: skip
                operator = Operator(env, workdir, str(k8s.url).rstrip("/"), args.replicas)
                operator.start()
                kuberay = KubeRay(k8s, rng, mlflow, args)
                names = [f"tj-{i:04d}" for i in range(args.resources)]
                uids: dict[str, str] = {}
                for name in names:
                    body = trainingjob(0, NAMESPACE, shared_experiment=False)
                    body["metadata"]["name"] = name
                    body["spec"]["mlflow"] = {"registeredModel": name, "alias": "candidate"}
                    body["spec"]["checkpoint"]["uri"] = f"s3://chaos/{name}"
                    created = await k8s.create_object(TRAININGJOBS, body)
                    uids[name] = created["metadata"]["uid"]
                started = time.monotonic()
                # Non-API faults: operator kills and MLflow outages, spread over the run.
                other = max(1, int(args.faults * (1 - args.api_share)))
                api_budget = args.faults - other
                schedule = sorted(rng.uniform(0, args.chaos_seconds) for _ in range(other))
                kinds = [rng.choice(("kill", "kill", "mlflow")) for _ in schedule]
                outage: asyncio.Task[None] | None = None
                #: When each TrainingJob first showed its final phase.
                final_at: dict[str, float] = {}
                while True:
                    elapsed = time.monotonic() - started
                    await kuberay.step()
                    await operator.check()
                    operator.leader(k8s)  # notes a takeover
                    while schedule and schedule[0] <= elapsed:
                        schedule.pop(0)
                        kind = kinds.pop(0)
                        if kind == "kill":
                            if not await operator.kill(k8s, lease_readers):
                                # No leader with a standby up yet (a takeover under way):
                                # the leader is killed once there is one.
                                schedule.insert(0, elapsed + 1.0)
                                kinds.insert(0, kind)
                                break
                            label = "operator SIGKILL"
                            faults.injected[label + (" (leader)" if args.replicas > 1 else "")] += 1
                            faults.last_fault_at = time.monotonic()
                        elif outage is None or outage.done():
                            outage = asyncio.create_task(
                                mlflow.outage(rng, rng.uniform(2, 8), faults)
                            )
                    api_done = sum(v for k, v in faults.injected.items() if k.startswith("api "))
                    if api_done >= api_budget or elapsed > args.chaos_seconds:
                        # Faults stop with the chaos window, whatever of the budget is left:
                        # then only convergence is measured (from the last fault).
                        faults.enabled = False
                    for n in names:
                        if n not in final_at and (k8s.get_object(TRAININGJOBS, NAMESPACE, n)
                                                  or {}).get("status", {}).get("phase") in (
                                                      "Succeeded", "Failed"):  # fmt: skip
                            final_at[n] = time.monotonic()
                    done = len(final_at) == len(names)
                    if (not schedule and not faults.enabled and done
                            and (outage is None or outage.done())):  # fmt: skip
                        break
                    if elapsed > args.chaos_seconds + args.converge_seconds:
                        break
                    await asyncio.sleep(0.3)
                faults.enabled = False
                converged_at = time.monotonic()
                after_last = converged_at - (faults.last_fault_at or started)
                finished = {n: (k8s.get_object(TRAININGJOBS, NAMESPACE, n) or {}) for n in names}
                problems = _violations(k8s, kuberay, writes, mlflow.uri, names, uids)
                # Deletion: every child goes with its TrainingJob.
                for name in names:
                    with contextlib.suppress(Exception):
                        await k8s.delete_object(TRAININGJOBS, NAMESPACE, name)
                deadline = time.monotonic() + 60
                while time.monotonic() < deadline:
                    await operator.check()
                    left = k8s.list_objects(TRAININGJOBS, NAMESPACE)
                    if not left:
                        break
                    await asyncio.sleep(0.5)
                for ref in (TRAININGJOBS, RAYJOBS, "v1/secrets",
                            "networking.k8s.io/v1/networkpolicies"):  # fmt: skip
                    left = [o["metadata"]["name"] for o in k8s.list_objects(ref, NAMESPACE)]
                    if left:
                        problems.append(f"after deletion, {ref} left: {left[:5]}")
                if operator.crashes:
                    problems.append(f"the operator exited by itself {operator.crashes} times")
                if len(senders) != len(set(senders)):
                    problems.append(f"two operator processes wrote in turns (never two "
                                    f"writers): senders in order {senders}")  # fmt: skip
                last_fault = faults.last_fault_at or started
                # Per job: how long after the last fault it showed its final phase (0: during
                # the chaos), and how long from its creation.
                after_fault = sorted(max(0.0, t - last_fault) for t in final_at.values())
                from_start = sorted(t - started for t in final_at.values())
                await operator.stop()  # while the API server still answers
                phases = Counter((o.get("status") or {}).get("phase") for o in finished.values())
                attempts = [int((o.get("status") or {}).get("attempts") or 0)
                            for o in finished.values()]  # fmt: skip
        finally:
            for task in kuberay.tasks if kuberay is not None else ():
                task.cancel()
            if kuberay is not None:
                kuberay.pool.shutdown(wait=False, cancel_futures=True)
            if operator is not None:
                await operator.stop()
            mlflow.server.stop()
        tracebacks = operator.tracebacks() if operator else 0
    print(f"\nfaults injected ({sum(faults.injected.values())}):")
    for kind, n in sorted(faults.injected.items()):
        print(f"  {kind:<26} {n:>6}")
    print(f"resources: {args.resources} TrainingJobs -> {dict(phases)}; attempts per job "
          f"p50 {statistics.median(attempts):.0f}, max {max(attempts)}")  # fmt: skip
    assert operator is not None
    print(f"operator: {args.replicas} replica(s), {operator.starts} process starts, "
          f"{operator.crashes} exits by itself, {tracebacks} tracebacks logged")  # fmt: skip
    if args.replicas > 1:
        takeovers = sorted(operator.takeovers)
        print(f"leader election: {operator.leader_kills} kills of the leader with a standby up, "
              f"{operator.lease_lost} exits on a lost lease, "
              f"{len(set(senders))} writers in turn; takeover after a leader kill "
              f"p50 {_pct(takeovers, 50):.1f}s, max {_pct(takeovers, 100):.1f}s")  # fmt: skip
    print(f"time to the final phase: after the last fault p50 {_pct(after_fault, 50):.1f}s, "
          f"p99 {_pct(after_fault, 99):.1f}s; from creation p50 {_pct(from_start, 50):.1f}s, "
          f"p99 {_pct(from_start, 99):.1f}s")  # fmt: skip
    print(f"all converged {after_last:.1f}s after the last fault; {load()}")
    print(f"invariant violations: {len(problems)}")
    for problem in problems:
        print(f"  seed {args.seed}: {problem}")
    return 1 if problems else 0


def _pct(values: list[float], pct: float) -> float:
    """The ``pct`` percentile of sorted ``values`` (nearest rank; 0 when empty)."""
    if not values:
        return 0.0
    return values[min(len(values) - 1, max(0, round(pct / 100 * len(values)) - 1))]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The run's settings (``tests/chaos`` builds its seeded subset from these too)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--resources", type=int, default=40, help="TrainingJobs")
    parser.add_argument("--faults", type=int, default=200, help="faults to inject in all")
    parser.add_argument(
        "--api-share",
        type=float,
        default=0.9,
        help="share of the faults that are API faults (the rest: kills, MLflow)",
    )
    parser.add_argument(
        "--api-rate",
        type=float,
        default=0.05,
        help="fraction of the operator's requests that fail while faults last",
    )
    parser.add_argument("--chaos-seconds", type=float, default=120.0)
    parser.add_argument("--converge-seconds", type=float, default=240.0)
    parser.add_argument("--attempt-seconds", type=float, default=3.0)
    parser.add_argument("--preempt-rate", type=float, default=0.3)
    parser.add_argument("--fail-rate", type=float, default=0.1)
    parser.add_argument(
        "--evidence-grace",
        type=float,
        default=15.0,
        help="MLPLANE_PREEMPTION_EVIDENCE_GRACE of the operator (15: its default)",
    )
    parser.add_argument(
        "--replicas",
        type=int,
        default=1,
        help="operator replicas: 1 runs without a Lease; 2+ with leader election, and the "
        "kills hit the leader with the standby running",
    )
    parser.add_argument("--workdir", type=Path, default=None, help="keep logs here")
    parser.add_argument("--quick", action="store_true", help="8 jobs, 60 faults, 60 s")
    args = parser.parse_args(argv)
    if args.quick:
        args.resources, args.faults, args.chaos_seconds = 8, 60, 60.0
    return args


def main(argv: list[str] | None = None) -> None:
    sys.exit(asyncio.run(run(parse_args(argv))))


if __name__ == "__main__":
    main()
