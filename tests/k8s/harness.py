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
  :class:`OperatorRun`. Tests that restart it use :func:`run_operator` directly.

Helpers: :func:`wait_for` (poll until a condition holds, fail at a deadline naming what was
awaited and what was seen), :func:`create`, :func:`stored`, :func:`example`,
:func:`resource_of`, :func:`events_for`, and :meth:`OperatorRun.processed` (how many handling
cycles Kopf finished for an object).
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import logging
import threading
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from importlib import resources as importlib_resources
from pathlib import Path
from typing import Any, TypeVar

import kopf
import pytest
import pytest_asyncio
import yaml
from kubernetes.client import Configuration
from kubernetes.config import kube_config

from k8s.emulator import Emulator
from mlplane.crds import BY_KIND, GROUP, VERSION

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


def write_kubeconfig(path: Path, server: str) -> Path:
    """A kubeconfig with one context, no credentials, pointing at ``server``."""
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "emulator", "cluster": {"server": server}}],
                "users": [{"name": "tester", "user": {}}],
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
