"""The Ray Serve application: ``mlplane.serving.app:build_app`` (the ``import_path`` KubeRay and
the local platform deploy).

Deployments (names are the contract with ``serveConfigV2``, which sets their options)::

    router      ingress (HTTP), RouterCore: variants, request ids, feedback, stats shipping
    model-<i>   one per model deployment in args.model_deployments: ModelCore, one MLflow model
                version each, swapped in place by reconfigure(user_config)
    monitor     exactly one replica: totals, feedback ledger, drift tap, /metrics; with
                args.state_dir it saves them (serving/journal.py) and takes them back at start

Zero-downtime changes (see :mod:`mlplane.serving.config`): a new model version is a new
user_config of ``model-<i>`` (the replicas load it in the background and swap); new weights, a
new bucketing header or A/B test are a new user_config of ``router``. Serve applies both to the
running replicas through ``reconfigure`` without restarting anything. Only a change of the
application args (another set of model deployments, batching, SLO, drift settings) restarts the
replicas, rolling, with one surge replica each (``max_surge_percent``) so that no deployment
drops to zero replicas meanwhile.

The classes here are thin: everything testable without Ray lives in the cores they wrap.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from typing import Any

from ray import serve
from ray.exceptions import RayActorError
from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError
from ray.serve.handle import DeploymentHandle, DeploymentResponse
from starlette.requests import Request
from starlette.responses import Response

from mlplane.serving.admin import admin_auth
from mlplane.serving.config import AppSettings, ConfigError
from mlplane.serving.drift_tap import load_reference_profile
from mlplane.serving.feedback import FeedbackToken
from mlplane.serving.journal import Journal
from mlplane.serving.model import ModelCore
from mlplane.serving.monitor import MonitorCore
from mlplane.serving.request_id import (
    KEY_ENV,
    KeyFiles,
    KeySource,
    RequestIdSigner,
    key_from_env,
)
from mlplane.serving.router import (
    FLUSH_INTERVAL_S,
    MODEL_TIMEOUT_S,
    BodyTooLarge,
    ModelUnavailable,
    RouterCore,
)

__all__ = [
    "Model",
    "Monitor",
    "Router",
    "build_app",
    "feedback_token",
    "signing_keys",
]

log = logging.getLogger("mlplane.serving.app")

ROUTER = "router"
MONITOR = "monitor"
#: Defaults for running the app outside the operator's serveConfigV2 (which overrides them).
DEFAULT_NUM_CPUS = 0.25
MONITOR_NUM_CPUS = 0.1
#: Restarts (a change of the app's args) start one replacement before stopping an old replica,
#: so router and models never drop to zero replicas (the monitor, a single writer, does not
#: surge: its restart stops the old one first and the routers re-send what it missed).
MAX_SURGE_PERCENT = 1


def signing_keys(settings: AppSettings) -> KeySource:
    """Where this replica's request-id keys come from: the mounted key directory.

    No fallback to a key made up here or kept in Ray's internal KV (readable by anyone who
    reaches the cluster, and lost with it): without a directory, only ``MLPLANE_FEEDBACK_KEY``
    (one fixed key) is accepted, else the replica refuses to start, saying so.
    """
    if settings.signing_keys is not None:
        return KeyFiles(settings.signing_keys)
    key = key_from_env()
    if key is None:
        raise ConfigError(
            "no request-id signing key: args.signing_keys (the key directory the operator "
            f"mounts) is unset and so is {KEY_ENV}"
        )
    return key


def feedback_token(settings: AppSettings) -> FeedbackToken | None:
    """The token feedback must carry (``args.feedback_token_file``), None when unset.

    A configured file that cannot be read stops the replica (it must not silently accept
    unauthenticated feedback)."""
    if settings.feedback_token_file is None:
        return None
    try:
        return FeedbackToken(settings.feedback_token_file)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"args.feedback_token_file: {exc}") from None


def _log_like_serve() -> None:
    """Send ``mlplane.serving`` logs (INFO and up) to this replica's Serve log handlers.

    Serve sets up handlers (its replica log file, with request context) on the ``ray.serve``
    logger only; without this, the cores' messages below WARNING are lost.
    """
    ours = logging.getLogger("mlplane.serving")
    ours.setLevel(logging.INFO)
    for handler in logging.getLogger("ray.serve").handlers:
        if handler not in ours.handlers:
            ours.addHandler(handler)
    ours.propagate = False


def _replica_id() -> str:
    try:
        return serve.get_replica_context().replica_id.unique_id
    except Exception:
        return f"pid-{os.getpid()}"


async def _bounded(response: DeploymentResponse, timeout: float) -> Any:
    """Await a handle call for at most ``timeout`` s, cancelling it on expiry."""
    try:
        return await asyncio.wait_for(_resolve(response), timeout)
    except TimeoutError:
        response.cancel()
        raise


async def _resolve(response: DeploymentResponse) -> Any:
    return await response


@serve.deployment(
    name="model",
    ray_actor_options={"num_cpus": DEFAULT_NUM_CPUS},
    max_ongoing_requests=16,
    max_surge_percent=MAX_SURGE_PERCENT,
    health_check_period_s=10,
)
class Model:
    """A ``model-<i>`` deployment (bound under that name by :func:`build_app`)."""

    async def __init__(self, args: dict[str, Any]) -> None:
        _log_like_serve()
        settings = AppSettings.parse(args)
        self.core = ModelCore(settings.tracking_uri, policy=settings.model_policy)
        self.batching = settings.batching
        if self.batching is not None:
            self._predict_batched.set_max_batch_size(self.batching.max_batch_size)
            self._predict_batched.set_batch_wait_timeout_s(self.batching.batch_wait_timeout_s)

    async def reconfigure(self, user_config: dict[str, Any]) -> None:
        """Load the configured version in a thread (requests keep flowing), then swap."""
        await asyncio.to_thread(self.core.reconfigure, user_config)

    async def predict(self, columns: dict[str, list[Any]], n_rows: int) -> dict[str, Any]:
        if self.batching is not None:
            return await self._predict_batched((columns, n_rows))
        (answer,) = await asyncio.to_thread(self.core.predict, [(columns, n_rows)])
        return answer

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.005)
    async def _predict_batched(self, items: list[tuple[dict, int]]) -> list[dict[str, Any]]:
        return await asyncio.to_thread(self.core.predict, items)

    async def info(self) -> dict[str, Any]:
        return {**self.core.info(), "replica": _replica_id()}


@serve.deployment(
    name=MONITOR,
    num_replicas=1,
    ray_actor_options={"num_cpus": MONITOR_NUM_CPUS},
    max_ongoing_requests=256,
)
class Monitor:
    """The app's single aggregation point (see :mod:`mlplane.serving.monitor`)."""

    async def __init__(self, args: dict[str, Any]) -> None:
        _log_like_serve()
        self.settings = AppSettings.parse(args)
        journal = None if self.settings.state_dir is None else Journal(self.settings.state_dir)
        # Replaying the saved state reads files: off the event loop.
        self.core = await asyncio.to_thread(
            MonitorCore, self.settings, time.time(), journal=journal
        )
        self._drift_lock = asyncio.Lock()
        self._loading = False
        loop = asyncio.get_running_loop()
        self._ticker = loop.create_task(self._tick_forever())

    def _load_profile(self, version: int) -> Any:
        return load_reference_profile(self.settings.tracking_uri, self.settings.model_name, version)

    async def _ensure_reference(self) -> None:
        version = self.core.needs_reference()
        if version is None or self._loading:
            return
        self._loading = True
        try:
            async with self._drift_lock:
                await asyncio.to_thread(self.core.load_reference, version, self._load_profile)
        except Exception as exc:
            log.warning("reference profile of version %s not loaded (will retry): %r", version, exc)
        finally:
            self._loading = False

    async def _tick_forever(self) -> None:
        period = min(5.0, max(0.5, self.settings.drift.window_s / 10))
        while self.settings.drift.enabled:
            await asyncio.sleep(period)
            try:
                await self._ensure_reference()
                async with self._drift_lock:
                    await asyncio.to_thread(self.core.tap.advance, time.time())
            except Exception:
                log.exception("drift tick failed")

    async def push(self, router_id: str, seq: int, payload: dict[str, Any]) -> None:
        rows = self.core.apply_push(router_id, seq, payload)
        if rows is None:
            return
        if self.core.needs_reference() is not None:
            self.core.tap.dropped_rows += len(rows["timestamps"])  # profile not loaded yet
            asyncio.get_running_loop().create_task(self._ensure_reference())
            return
        async with self._drift_lock:
            await asyncio.to_thread(self.core.add_rows, rows, time.time())

    async def feedback(self, info: dict[str, Any], value: float) -> tuple[str, str]:
        return self.core.feedback(info, value, time.time())

    async def stats(self, abtest: str | None, all_tests: bool) -> dict[str, Any]:
        return self.core.stats_report(abtest, all_tests)

    async def drift(self) -> dict[str, Any]:
        return self.core.tap.report()

    async def metrics(self) -> bytes:
        return self.core.metrics_text()

    async def __del__(self) -> None:
        """Stop the timer before Serve shuts the replica's event loop and thread pool down."""
        self._ticker.cancel()


class _MonitorHandle:
    """The router's view of the monitor deployment (bounded calls)."""

    def __init__(self, handle: DeploymentHandle) -> None:
        self._handle = handle

    async def push(self, router_id: str, seq: int, payload: dict[str, Any]) -> None:
        await self._handle.push.remote(router_id, seq, payload)

    async def feedback(self, info: dict[str, Any], value: float) -> tuple[str, str]:
        verdict, reason = await self._handle.feedback.remote(info, value)
        return verdict, reason

    async def stats(self, abtest: str | None, all_tests: bool) -> dict[str, Any]:
        return await self._handle.stats.remote(abtest, all_tests)

    async def drift(self) -> dict[str, Any]:
        return await self._handle.drift.remote()

    async def metrics(self) -> bytes:
        return await self._handle.metrics.remote()


@serve.deployment(
    name=ROUTER,
    ray_actor_options={"num_cpus": DEFAULT_NUM_CPUS},
    max_ongoing_requests=64,
    max_surge_percent=MAX_SURGE_PERCENT,
)
class Router:
    """The ingress deployment (see :mod:`mlplane.serving.router`)."""

    async def __init__(
        self,
        args: dict[str, Any],
        models: dict[str, DeploymentHandle],
        monitor: DeploymentHandle,
    ) -> None:
        _log_like_serve()
        settings = AppSettings.parse(args)
        keys = await asyncio.to_thread(signing_keys, settings)
        self._models = models
        signer = RequestIdSigner(keys, settings.deployment)
        self.core = RouterCore(
            settings,
            signer,
            self._call_model,
            self._call_info,
            _MonitorHandle(monitor),
            router_id=_replica_id(),
            feedback_token=await asyncio.to_thread(feedback_token, settings),
            admin=admin_auth(settings.deployment, signer, settings.scrape_token_sha256),
        )
        self._flusher = asyncio.get_running_loop().create_task(
            self.core.run_flusher(FLUSH_INTERVAL_S)
        )

    async def reconfigure(self, user_config: dict[str, Any]) -> None:
        """A new split (async: applied on the event loop, between two requests)."""
        self.core.configure(user_config)

    async def _call_model(
        self, deployment: str, columns: dict[str, list[Any]], n_rows: int
    ) -> dict[str, Any]:
        handle = self._models[deployment]
        for attempt in range(2):
            try:
                return await _bounded(handle.predict.remote(columns, n_rows), MODEL_TIMEOUT_S)
            except TimeoutError:
                raise ModelUnavailable(
                    504, f"the model did not answer within {MODEL_TIMEOUT_S:g} s"
                ) from None
            except BackPressureError:
                # The model's queue is full (max_queued_requests): shed, 503 + Retry-After.
                raise ModelUnavailable(
                    503, "the model is overloaded, retry", overloaded=True
                ) from None
            except (RayActorError, DeploymentUnavailableError) as exc:
                # A replica died under the request (predict is idempotent): one retry.
                if attempt == 1:
                    raise ModelUnavailable(503, f"the model is unavailable: {exc}") from None
        raise AssertionError("unreachable")

    async def _call_info(self, deployment: str) -> dict[str, Any]:
        return await self._models[deployment].info.remote()

    async def __call__(self, request: Request) -> Response:
        async def read_body(limit: int) -> bytes:
            declared = request.headers.get("content-length")
            if declared is not None and declared.isdigit() and int(declared) > limit:
                raise BodyTooLarge
            chunks, size = [], 0
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    raise BodyTooLarge
                chunks.append(chunk)
            return b"".join(chunks)

        headers = {k.lower(): v for k, v in request.headers.items()}
        path = request.url.path
        root = request.scope.get("root_path") or ""
        if root and path.startswith(root):  # mounted under a route prefix such as /ns/name
            path = path[len(root) :] or "/"
        answer = await self.core.handle(request.method, path, request.url.query, headers, read_body)
        return Response(
            answer.body,
            status_code=answer.status,
            headers=answer.headers,
            media_type=answer.media_type,
        )

    async def __del__(self) -> None:
        """Ship the last counts before the replica goes (best effort, bounded)."""
        self._flusher.cancel()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.core.flush(), 2.0)


def build_app(args: dict[str, Any]) -> Any:
    """The application for ``args`` (see ``serve_args`` of the RayService builder)."""
    settings = AppSettings.parse(args)
    models = {name: Model.options(name=name).bind(args) for name in settings.model_deployments}
    monitor = Monitor.bind(args)
    return Router.bind(args, models, monitor)
