"""Fixtures and helpers to run the real Kopf operator against :class:`~k8s.emulator.Emulator`.

Use from a ``conftest.py`` with ``tests/`` on ``sys.path`` (see ``tests/operator/conftest.py``)::

    from k8s.harness import emulator, kubeconfig, operator  # noqa: F401 - fixtures

Fixtures (function-scoped, async):

- ``emulator``: a started :class:`~k8s.emulator.Emulator` on 127.0.0.1 with mlplane's,
  KubeRay's and the core resources declared (:func:`declare_all`); ``emulator.url`` is the
  server, ``emulator.get_object/list_objects/create_object/patch_object/delete_object`` read
  and write the store, ``emulator.requests_to(...)`` filters the request log. At teardown it
  fails the test if any request crashed the emulator (a 5xx).
- ``kubeconfig``: a kubeconfig pointing at the emulator, made the kubernetes client's and Kopf's
  default (``$KUBECONFIG``, ``KUBE_CONFIG_DEFAULT_LOCATION``) for this test only.
- ``operator``: the operator with mlplane's handlers running (Kopf's default registry after
  importing ``mlplane.operator.handlers``), stopped cleanly at teardown: an
  :class:`OperatorRun`. Tests that restart it use :func:`run_operator_process`: the operator
  in a new process, stopped with SIGKILL (:class:`OperatorProcess`; ``kill_after`` kills it
  right after a given request, e.g. between creating a child and writing the status;
  ``terminate`` sends SIGTERM). With ``leader_elect=True`` the process runs under leader
  election (the emulator serves Leases) and ``token=...`` tells its requests apart in the
  emulator's log (:meth:`OperatorProcess.requests`).

Helpers: :func:`wait_for` (poll until a condition holds, fail at a deadline naming what was
awaited and what was seen), :func:`create`, :func:`stored`, :func:`example`,
:func:`resource_of`, :func:`events_for`, and :meth:`OperatorRun.processed` (how many handling
cycles Kopf finished for an object).
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from importlib import resources as importlib_resources
from pathlib import Path
from typing import Any, TypeVar

import kmock
import kopf
import pytest
import pytest_asyncio
import yaml
from kubernetes.client import Configuration
from kubernetes.config import kube_config

from k8s.emulator import Emulator
from mlplane.crds import BY_KIND, GROUP, VERSION
from mlplane.operator.leader_loop import STANDING_BY

T = TypeVar("T")

#: Kinds outside mlplane that the operator reads or writes, by ``(apiVersion, kind)``.
OTHER_RESOURCES: dict[tuple[str, str], dict[str, Any]] = {
    ("ray.io/v1", "RayJob"): {"plural": "rayjobs"},
    ("ray.io/v1", "RayService"): {"plural": "rayservices"},
    ("ray.io/v1", "RayCluster"): {"plural": "rayclusters"},
    ("v1", "Pod"): {"plural": "pods"},
    # Each Ray cluster's token Secret and NetworkPolicy (``builders/access.py``).
    ("v1", "Secret"): {"plural": "secrets", "subresources": ()},
    # The operator's reclaim history (``platforms/reclaim_history.py``).
    ("v1", "ConfigMap"): {"plural": "configmaps", "subresources": ()},
    ("networking.k8s.io/v1", "NetworkPolicy"): {"plural": "networkpolicies", "subresources": ()},
    ("v1", "Node"): {"plural": "nodes", "namespaced": False},
    # Kopf waits for namespaces to be discoverable even when it runs cluster-wide.
    ("v1", "Namespace"): {"plural": "namespaces", "namespaced": False},
    ("v1", "Event"): {"plural": "events", "subresources": ()},
    ("events.k8s.io/v1", "Event"): {"plural": "events", "subresources": ()},
    # The operator's leader election (``operator/leader.py``).
    ("coordination.k8s.io/v1", "Lease"): {"plural": "leases", "subresources": ()},
}

#: How long :func:`wait_for` waits by default. Generous for a loaded 2-core machine: a healthy
#: run meets conditions in well under a second; the deadline only bounds a broken one.
DEFAULT_TIMEOUT = 20.0
POLL = 0.05


def resource_of(api_version: str, kind: str) -> str:
    """``group/version/plural`` of a kind the emulator serves (as kmock keys resources)."""
    if kind in BY_KIND and api_version == f"{GROUP}/{VERSION}":
        return f"{GROUP}/{VERSION}/{BY_KIND[kind].plural}"
    try:
        return f"{api_version}/{OTHER_RESOURCES[api_version, kind]['plural']}"
    except KeyError:
        raise KeyError(f"the emulator does not serve {api_version} {kind}") from None


def declare_all(emulator: Emulator) -> None:
    """Declare every resource the operator may touch, so Kopf discovers them."""
    for kind in BY_KIND.values():
        emulator.declare(
            f"{GROUP}/{VERSION}/{kind.plural}",
            kind=kind.kind_name,
            subresources=("status", "scale") if kind.scale else ("status",),
            shortnames=kind.short_names,
            categories=("mlplane",),
        )
    for (api_version, kind), spec in OTHER_RESOURCES.items():
        emulator.declare(
            f"{api_version}/{spec['plural']}",
            kind=kind,
            namespaced=spec.get("namespaced", True),
            subresources=spec.get("subresources", ("status",)),
        )


@pytest_asyncio.fixture
async def emulator() -> AsyncIterator[Emulator]:
    """A running emulator (on 127.0.0.1, a free port) serving every resource mlplane uses."""
    import kmock

    k8s = Emulator()
    declare_all(k8s)
    async with k8s, kmock.Server(k8s):
        yield k8s
        # A client error (404, 409, 422) is an answer; anything else is a bug in the emulator.
        crashes = [
            e for e in k8s.errors if not (isinstance(e, kmock.KubernetesError) and e.status < 500)
        ]
        assert not crashes, f"the emulator failed on requests: {crashes!r}"


def write_kubeconfig(path: Path, server: str, token: str | None = None) -> Path:
    """A kubeconfig with one context pointing at ``server``; no credentials, or a bearer
    ``token`` (the emulator accepts any: a test tells its clients apart by it)."""
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "emulator", "cluster": {"server": server}}],
                "users": [{"name": "tester", "user": {"token": token} if token else {}}],
                "contexts": [
                    {
                        "name": "emulator",
                        "context": {
                            "cluster": "emulator",
                            "user": "tester",
                            "namespace": "default",
                        },
                    }
                ],
                "current-context": "emulator",
            }
        )
    )
    return path


@pytest.fixture
def kubeconfig(emulator: Emulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point the kubernetes client (and so Kopf's login) at the emulator, for this test only."""
    path = write_kubeconfig(tmp_path / "kubeconfig", str(emulator.url).rstrip("/"))
    monkeypatch.setenv("KUBECONFIG", str(path))
    # The client reads $KUBECONFIG at import time into this constant.
    monkeypatch.setattr(kube_config, "KUBE_CONFIG_DEFAULT_LOCATION", str(path))
    # Kopf's login loads the config into the client's global default: undo that afterwards.
    monkeypatch.setattr(Configuration, "_default", Configuration._default)
    for var in ("KUBERNETES_SERVICE_HOST", "KUBERNETES_SERVICE_PORT"):
        monkeypatch.delenv(var, raising=False)
    return path


@dataclass
class OperatorRun:
    """A running operator: its thread, the flags that start and stop it, what it died of."""

    thread: threading.Thread
    stop_flag: threading.Event
    ready_flag: threading.Event
    settings: kopf.OperatorSettings
    error: list[BaseException] = field(default_factory=list)
    #: Kopf's per-object log records (``kopf.objects``), as the operator emitted them.
    records: list[logging.LogRecord] = field(default_factory=list)

    @property
    def running(self) -> bool:
        return self.thread.is_alive()

    def processed(self, obj: dict[str, Any], cause: str) -> int:
        """How many times Kopf finished a ``cause`` cycle for ``obj`` (matched by uid):
        ``cause`` is ``creation``, ``updating``, ``resuming`` or ``deletion``."""
        uid = obj["metadata"]["uid"]
        prefix = f"{cause.capitalize()} is processed"
        return sum(
            1
            for r in list(self.records)
            if getattr(r, "k8s_ref", {}).get("uid") == uid and r.getMessage().startswith(prefix)
        )

    def timer_runs(self, obj: dict[str, Any], timer: str) -> int:
        """How many runs of timer (or daemon rounds) ``timer`` the operator finished for ``obj``."""
        uid = obj["metadata"]["uid"]
        done = (f"Timer {timer!r} succeeded.", f"Round {timer!r} done.")  # timer or daemon
        return sum(
            1
            for r in list(self.records)
            if getattr(r, "k8s_ref", {}).get("uid") == uid and r.getMessage() in done
        )

    def check(self) -> None:
        """Fail when the operator has died (with what killed it)."""
        if self.error:
            raise AssertionError(f"the operator crashed: {self.error[0]!r}") from self.error[0]
        if not self.running:
            raise AssertionError("the operator exited")


@contextlib.asynccontextmanager
async def run_operator(
    registry: kopf.OperatorRegistry | None = None,
    settings: kopf.OperatorSettings | None = None,
    *,
    startup_timeout: float = DEFAULT_TIMEOUT,
    stop_timeout: float = DEFAULT_TIMEOUT,
) -> AsyncIterator[OperatorRun]:
    """Run Kopf cluster-wide and standalone until the block ends; fail if it dies or hangs.

    The operator runs ``kopf.operator(...)`` on its own event loop in a thread: Kopf treats
    every task created in its loop after it started as its own and cancels those at exit,
    which would include the test's. The emulator keeps running on the test's loop, so the
    test must wait with ``await`` (:func:`wait_for`), never block.

    ``registry`` defaults to Kopf's default registry with mlplane's handlers imported into it.
    Needs the ``kubeconfig`` fixture (or another way for Kopf to log in).
    """
    if registry is None:
        import mlplane.operator.handlers  # noqa: F401 - registers the handlers

        registry = kopf.get_default_registry()
    settings = settings or kopf.OperatorSettings()
    stop_flag, ready_flag = threading.Event(), threading.Event()
    errors: list[BaseException] = []

    def main() -> None:
        try:
            asyncio.run(
                kopf.operator(
                    registry=registry,
                    settings=settings,
                    clusterwide=True,
                    standalone=True,
                    stop_flag=stop_flag,
                    ready_flag=ready_flag,
                )
            )
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=main, name="mlplane-operator-under-test", daemon=True)
    run = OperatorRun(thread, stop_flag, ready_flag, settings, errors)
    recorder = _Recorder(run.records)
    objects_log = logging.getLogger("kopf.objects")
    level = objects_log.level
    objects_log.addHandler(recorder)
    if objects_log.getEffectiveLevel() > logging.INFO:
        objects_log.setLevel(logging.INFO)
    thread.start()
    try:
        await wait_for(
            lambda: ready_flag.is_set() or not thread.is_alive(),
            timeout=startup_timeout,
            message="the operator to start",
        )
        run.check()
        yield run
        run.check()
    finally:
        stop_flag.set()
        try:
            await wait_for(
                lambda: not thread.is_alive(),
                timeout=stop_timeout,
                message="the operator to stop",
            )
        finally:
            objects_log.removeHandler(recorder)
            objects_log.setLevel(level)


class _Recorder(logging.Handler):
    """Keeps log records in a list (appending is atomic: the operator's thread writes)."""

    def __init__(self, records: list[logging.LogRecord]) -> None:
        super().__init__(logging.DEBUG)
        self.records = records

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest_asyncio.fixture
async def operator(emulator: Emulator, kubeconfig: Path) -> AsyncIterator[OperatorRun]:
    """The mlplane operator running against ``emulator`` for the duration of the test."""
    async with run_operator() as run:
        yield run


#: Where ``k8s.operator_process`` is importable from (``tests/``).
_TESTS = Path(__file__).resolve().parents[1]


@dataclass
class OperatorProcess:
    """The operator in a process of its own (``k8s.operator_process``): nothing it keeps in
    memory survives :meth:`kill`. ``records`` are its per-object log records (as
    :class:`logging.LogRecord` with ``k8s_ref``), read back from the log file it writes."""

    popen: subprocess.Popen[bytes]
    log: Path
    stderr: Path
    #: The bearer token of its kubeconfig: its requests in the emulator's log carry it.
    token: str | None = None
    _offset: int = 0
    _records: list[logging.LogRecord] = field(default_factory=list)
    _ready: bool = False

    @property
    def ready(self) -> bool:
        """Whether Kopf has announced it is ready (reads the log written so far)."""
        _ = self.records
        return self._ready

    @property
    def pid(self) -> int:
        return self.popen.pid

    @property
    def running(self) -> bool:
        return self.popen.poll() is None

    @property
    def records(self) -> list[logging.LogRecord]:
        """Every complete line logged so far (a line cut by a kill is not counted)."""
        with self.log.open("rb") as f:
            f.seek(self._offset)
            chunk = f.read()
        complete = chunk[: chunk.rfind(b"\n") + 1]
        self._offset += len(complete)
        for line in complete.decode().splitlines():
            data = json.loads(line)
            if data.get("ready"):
                self._ready = True
                continue
            record = logging.makeLogRecord({"msg": data["message"], "levelname": data["level"],
                                            "k8s_ref": {"uid": data["uid"]}})  # fmt: skip
            self._records.append(record)
        return self._records

    def processed(self, obj: dict[str, Any], cause: str) -> int:
        """How many times this process finished a ``cause`` cycle for ``obj`` (see
        :meth:`OperatorRun.processed`)."""
        uid = obj["metadata"]["uid"]
        prefix = f"{cause.capitalize()} is processed"
        return sum(
            1
            for r in self.records
            if r.k8s_ref.get("uid") == uid and r.getMessage().startswith(prefix)
        )

    def timer_runs(self, obj: dict[str, Any], timer: str) -> int:
        """How many runs of the timer ``timer`` this process finished for ``obj``."""
        uid = obj["metadata"]["uid"]
        done = (f"Timer {timer!r} succeeded.", f"Round {timer!r} done.")  # timer or daemon
        return sum(
            1 for r in self.records if r.k8s_ref.get("uid") == uid and r.getMessage() in done
        )

    def said(self, prefix: str) -> bool:
        """Whether this process logged a message starting with ``prefix`` (e.g. the leader
        election's ``BECAME_LEADER``)."""
        return any(r.getMessage().startswith(prefix) for r in self.records)

    def said_about(self, obj: dict[str, Any]) -> list[str]:
        """Every message this process logged about ``obj`` (for failure messages)."""
        uid = obj["metadata"]["uid"]
        return [r.getMessage() for r in self.records if r.k8s_ref.get("uid") == uid]

    def requests(self, emulator: Emulator) -> list[kmock.Request]:
        """Every request this process sent to ``emulator`` (told apart by :attr:`token`)."""
        assert self.token, "start the process with a token to tell its requests apart"
        bearer = f"Bearer {self.token}"
        return [r for r in emulator if r.headers.get("Authorization") == bearer]

    def terminate(self) -> None:
        """SIGTERM, as Kubernetes stops a pod (a rolling update); :meth:`wait` for the exit."""
        if self.running:
            os.kill(self.pid, signal.SIGTERM)

    def kill(self) -> None:
        """SIGKILL, at whatever moment this is: no handler finishes, nothing is flushed."""
        if self.running:
            os.kill(self.pid, signal.SIGKILL)
        self.popen.wait(timeout=DEFAULT_TIMEOUT)

    def kill_after(
        self,
        emulator: Emulator,
        method: str,
        resource: str,
        *,
        name: str | None = None,
        subresource: str | type[Ellipsis] | None = ...,
        when: Callable[[kmock.Request], bool] | None = None,
        before: bool = False,
    ) -> list[kmock.Request]:
        """SIGKILL this process right after the emulator applies the first matching request
        (and before it answers): e.g. after the RayJob POST, before the status PATCH. With
        ``before``, kill it instead of applying the request (the write never lands).
        Returns a list that receives the request that triggered the kill."""
        res = kmock.resource(resource)
        verb = kmock.method(method.upper())
        fired: list[kmock.Request] = []

        def named(r: kmock.Request) -> bool:
            if name is None or r.name == name:
                return True
            return isinstance(r.data, dict) and r.data.get("metadata", {}).get("name") == name

        def match(r: kmock.Request) -> bool:
            return (
                r.resource == res
                and r.method == verb
                and named(r)
                and (subresource is ... or r.subresource == subresource)
                and (when is None or when(r))
            )

        def kill(r: kmock.Request) -> None:
            fired.append(r)
            self.kill()

        (emulator.before_request if before else emulator.after_request)(match, kill)
        return fired

    def check(self) -> None:
        """Fail when the process has exited (with the end of its stderr)."""
        if not self.running:
            tail = self.stderr.read_text(errors="replace")[-3000:]
            raise AssertionError(f"the operator exited ({self.popen.returncode}): {tail}")


@contextlib.asynccontextmanager
async def run_operator_process(
    *,
    startup_timeout: float = 90.0,
    tag: str = "operator",
    leader_elect: bool = False,
    token: str | None = None,
    env: dict[str, str] | None = None,
) -> AsyncIterator[OperatorProcess]:
    """Start the operator in a new process (with this process's environment, so the
    ``kubeconfig`` fixture's ``$KUBECONFIG`` and the tests' ``MLPLANE_*`` settings, plus
    ``env``) and wait until Kopf is ready; at the end of the block SIGKILL it if it still
    runs: a restart in a test is a crash, never a graceful stop at a quiet moment.

    ``leader_elect``: the process runs as ``mlplane operator --leader-elect`` does (Kopf only
    while it holds the Lease) and is ready once it either leads with Kopf ready or stands by.
    ``token``: its kubeconfig carries this bearer token, so :meth:`OperatorProcess.requests`
    finds what it sent."""
    handle, name = tempfile.mkstemp(prefix=f"mlplane-{tag}-", suffix=".jsonl")
    os.close(handle)
    log = Path(name)
    stderr = log.with_suffix(".stderr")
    child_env = dict(os.environ)
    child_env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(_TESTS), child_env.get("PYTHONPATH")) if p
    )
    child_env.update(env or {})
    kubeconfig: Path | None = None
    if token:
        server = yaml.safe_load(Path(os.environ["KUBECONFIG"]).read_text())["clusters"][0]
        kubeconfig = write_kubeconfig(log.with_suffix(".kubeconfig"),
                                      server["cluster"]["server"], token)  # fmt: skip
        child_env["KUBECONFIG"] = str(kubeconfig)
    args = [sys.executable, "-m", "k8s.operator_process", str(log)]
    with stderr.open("wb") as err:
        popen = subprocess.Popen(
            [*args, "--leader-elect"] if leader_elect else args,
            env=child_env,
            stdout=err,
            stderr=err,
            start_new_session=True,
        )
    proc = OperatorProcess(popen, log, stderr, token=token)

    def started() -> bool:
        return proc.ready or (leader_elect and proc.said(STANDING_BY)) or not proc.running

    try:
        await wait_for(started, timeout=startup_timeout,
                       message="the operator process to start")  # fmt: skip
        proc.check()
        yield proc
    finally:
        proc.kill()
        log.unlink(missing_ok=True)
        stderr.unlink(missing_ok=True)
        if kubeconfig is not None:
            kubeconfig.unlink(missing_ok=True)


async def wait_for(
    condition: Callable[[], T],
    *,
    timeout: float = DEFAULT_TIMEOUT,
    message: str = "the condition",
    seen: Callable[[], Any] | None = None,
) -> T:
    """Poll ``condition()`` until it is truthy and return its value; fail at the deadline.

    The failure names what was awaited (``message``) and, when given, what ``seen()`` shows
    at that moment (e.g. the stored object), so a broken run says why.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        value = condition()
        if value:
            return value
        if loop.time() >= deadline:
            detail = f"; last seen: {seen()!r}" if seen is not None else ""
            raise AssertionError(f"timed out after {timeout}s waiting for {message}{detail}")
        await asyncio.sleep(POLL)


async def more_timer_runs(
    run: OperatorRun | OperatorProcess,
    obj: dict[str, Any],
    timer: str,
    count: int = 2,
    *,
    timeout: float = DEFAULT_TIMEOUT,
) -> None:
    """Wait until the operator finished ``count`` more runs of ``timer`` for ``obj`` than it
    had now: the positive sign that it looked at the object *after* this moment, which every
    "nothing more happens" assertion needs first (a sleep passes even if the operator never
    ran). With ``count >= 2`` at least one whole run started after this call."""
    mark = run.timer_runs(obj, timer)
    await wait_for(lambda: run.timer_runs(obj, timer) >= mark + count, timeout=timeout,
                   message=f"{count} more runs of timer {timer!r} for "
                           f"{obj['metadata'].get('name')}")  # fmt: skip


def example(name: str) -> dict[str, Any]:
    """A document from ``crds/examples`` by file name (without ``.yaml``), as a fresh dict."""
    folder = importlib_resources.files("mlplane.crds") / "examples"
    return yaml.safe_load((folder / f"{name}.yaml").read_text())


async def create(emulator: Emulator, body: dict[str, Any]) -> dict[str, Any]:
    """Create ``body`` as ``kubectl create`` would; returns the stored object (uid, ...)."""
    res = resource_of(body.get("apiVersion", ""), body.get("kind", ""))
    return await emulator.create_object(res, copy.deepcopy(body))


def stored(emulator: Emulator, obj: dict[str, Any]) -> dict[str, Any] | None:
    """The current stored version of ``obj`` (None once it is gone)."""
    meta = obj["metadata"]
    res = resource_of(obj["apiVersion"], obj["kind"])
    return emulator.get_object(res, meta.get("namespace"), meta["name"])


def events_for(
    emulator: Emulator, obj: dict[str, Any], type_: str | None = None
) -> list[dict[str, Any]]:
    """Core v1 Events about ``obj`` (matched by uid, else kind and name), oldest first."""
    meta = obj["metadata"]
    found = []
    for event in emulator.list_objects("v1/events", meta.get("namespace")):
        ref = event.get("involvedObject", {})
        same = (
            ref.get("uid") == meta.get("uid")
            if ref.get("uid") and meta.get("uid")
            else (ref.get("kind"), ref.get("name")) == (obj.get("kind"), meta.get("name"))
        )
        if same and (type_ is None or event.get("type") == type_):
            found.append(event)
    return found


def admin_tokens(emulator: Emulator, namespace: str) -> set[str]:
    """The admin tokens the serving apps in ``namespace`` accept: each derived from the key of
    the signing Secret the operator made for its ModelDeployment (what the replicas mount), as
    :mod:`mlplane.serving.admin` derives it. For stub routers that answer as the app does."""
    import base64

    from mlplane.serving.admin import admin_token

    tokens = set()
    for secret in emulator.list_objects("v1/secrets", namespace):
        name = secret["metadata"]["name"]
        if name.endswith("-request-signing") and "current" in (secret.get("data") or {}):
            current = base64.b64decode(secret["data"]["current"]).decode().strip()
            md_name = name.removesuffix("-request-signing")
            tokens.add(admin_token(current.encode(), f"{namespace}/{md_name}"))
    return tokens
