"""The ingress: HTTP API, weighted sticky variants, signed request ids, stats shipping.

Endpoints (JSON unless noted; every response to ``/v1/predict`` names its variant in the body
and in ``x-mlplane-variant``, the model version in ``x-mlplane-model-version``, and carries a
signed request id in the body and in ``x-mlplane-request-id`` — only when a model answered 200:
an error carries no id, so nothing can be credited to it)::

    GET  /healthz         {"status": "ok", ...}: the router is up and configured
    POST /v1/predict      body: see mlplane.serving.inputs; 200 {"predictions", "variant",
                          "version", "model", "requestId"}; 400/413/422 for bad input
    POST /v1/feedback     {"requestId", "outcome"}: 200 accepted, 404 unknown or forged id,
                          409 duplicate, 410 too old to count exactly once, 400 malformed or
                          an outcome outside the objective's bounds, 401 without the token
                          (when the app has one: args.feedback_token_file)

Admin endpoints, only under ``/admin`` with ``Authorization: Bearer <admin token>`` (401
without or with a wrong one; 404 on their public paths): see :mod:`mlplane.serving.admin`::

    GET  /admin/v1/models what is served: variants, weights, desired and loaded versions
    GET  /admin/v1/stats  per-variant requests, errors, outcomes (count, sum, sum of squares),
                          latency (p99, sum, sum of squares) of the current A/B test;
                          ?abtest=NAME for another one, ?all=1 for every (abtest, variant)
    GET  /admin/v1/drift  the drift tap's latest windows (for the operator's status.drift)
    GET  /admin/metrics   Prometheus text format (see mlplane.serving.metrics); also opened
                          by the installation's scrape token

Overload: a model deployment whose queue is full (``max_queued_requests``) makes its handle
refuse the call; the router answers 503 with ``Retry-After`` and counts it
(``mlplane_requests_shed_total``) instead of letting requests queue without bound.

:class:`RouterCore` holds all of it without Ray (tests drive it with fake model and monitor
calls); :class:`Router` is the thin Ray Serve deployment around it.

Counting is off the request path and exactly once: each request updates an in-memory
:class:`~.stats.TrafficStats` delta (and, with drift on, appends its features to a buffer); a
background task ships the delta every :data:`FLUSH_INTERVAL_S` to the ``monitor`` deployment as
batch ``(router id, sequence number)``. A batch that fails to arrive is re-sent unchanged (new
traffic goes into the next one) and the monitor ignores a sequence number it has already
applied, so a retry after a lost acknowledgement does not count twice. The drift buffer is
capped (:data:`MAX_BUFFERED_ROWS`); rows beyond it are dropped and reported as dropped.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import random
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import parse_qs

from mlplane.serving.admin import ADMIN_PREFIX, METRICS_PATH, AdminAuth, bearer
from mlplane.serving.bucketing import Weighted, choose
from mlplane.serving.config import AppSettings, ConfigError, RouterConfig
from mlplane.serving.feedback import FeedbackError, FeedbackToken, parse_feedback
from mlplane.serving.inputs import DEFAULT_MAX_ROWS, InputError, decode_json, parse_payload
from mlplane.serving.request_id import InvalidRequestId, RequestIdSigner
from mlplane.serving.stats import TrafficStats

__all__ = [
    "DEFAULT_MAX_BODY_BYTES",
    "FLUSH_INTERVAL_S",
    "BodyTooLarge",
    "HttpResponse",
    "ModelUnavailable",
    "MonitorClient",
    "RouterCore",
]

log = logging.getLogger("mlplane.serving.router")

#: Largest request body accepted (413 beyond): ``MLPLANE_MAX_BODY_BYTES``, default 1 MiB — a
#: few thousand rows of tens of features; larger payloads belong in batch jobs.
DEFAULT_MAX_BODY_BYTES = int(os.environ.get("MLPLANE_MAX_BODY_BYTES", str(2**20)))
MAX_ROWS = int(os.environ.get("MLPLANE_MAX_ROWS", str(DEFAULT_MAX_ROWS)))
#: How often a router replica ships its counts and drift rows to the monitor.
FLUSH_INTERVAL_S = 0.5
#: Drift rows a router replica buffers between successful flushes (beyond: dropped, counted).
MAX_BUFFERED_ROWS = 50_000
#: Bound on waiting for a model replica (then 504) and on monitor calls (then 503).
MODEL_TIMEOUT_S = float(os.environ.get("MLPLANE_MODEL_TIMEOUT_S", "30"))
MONITOR_TIMEOUT_S = 10.0

VARIANT_HEADER = "x-mlplane-variant"
VERSION_HEADER = "x-mlplane-model-version"
#: Not ``x-request-id``: Ray Serve's proxy sets that one to its own id.
REQUEST_ID_HEADER = "x-mlplane-request-id"


class BodyTooLarge(Exception):
    """The request body exceeds the limit (raised by the body reader)."""


class ModelUnavailable(Exception):
    """The model deployment could not answer: ``status`` 503 (retry) or 504 (timed out);
    ``overloaded``: its queue was full (the request was shed, not lost)."""

    def __init__(self, status: int, message: str, *, overloaded: bool = False) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.overloaded = overloaded


class MonitorClient(Protocol):
    """The calls the router makes to the ``monitor`` deployment."""

    async def push(self, router_id: str, seq: int, payload: dict[str, Any]) -> None: ...
    async def feedback(self, info: dict[str, Any], value: float) -> tuple[str, str]: ...
    async def stats(self, abtest: str | None, all_tests: bool) -> dict[str, Any]: ...
    async def drift(self) -> dict[str, Any]: ...
    async def metrics(self) -> bytes: ...


#: ``(deployment, columns, n_rows) -> the model's answer``; raises ModelUnavailable.
ModelCall = Callable[[str, dict[str, list[Any]], int], Awaitable[dict[str, Any]]]
#: ``deployment -> the model replica's info()``.
InfoCall = Callable[[str], Awaitable[dict[str, Any]]]
BodyReader = Callable[[int], Awaitable[bytes]]


@dataclass
class HttpResponse:
    status: int
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)
    media_type: str = "application/json"

    def json(self) -> Any:
        return json.loads(self.body)


def _json(status: int, body: Any, headers: Mapping[str, str] | None = None) -> HttpResponse:
    data = json.dumps(body, separators=(",", ":"), allow_nan=False, default=_default)
    return HttpResponse(status, data.encode(), dict(headers or {}))


def _default(value: Any) -> Any:
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def _error(status: int, message: str, **extra: Any) -> HttpResponse:
    return _json(status, {"error": message, **extra})


def _not_allowed(method: str, path: str, allowed: tuple[str, ...]) -> HttpResponse:
    return HttpResponse(
        405,
        json.dumps({"error": f"{method} is not allowed on {path}"}).encode(),
        {"allow": ", ".join(allowed)},
    )


def _clean(value: Any) -> Any:
    """JSON-safe copy: non-finite floats become null (allow_nan=False would refuse them)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, list):
        return [_clean(v) for v in value]
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    return value


#: The public routes: what the app's clients may call.
_ROUTES: dict[str, tuple[str, ...]] = {
    "/healthz": ("GET",),
    "/v1/predict": ("POST",),
    "/v1/feedback": ("POST",),
}
#: The admin routes (under ADMIN_PREFIX, behind the admin token).
_ADMIN_ROUTES: dict[str, tuple[str, ...]] = {
    "/v1/models": ("GET",),
    "/v1/stats": ("GET",),
    "/v1/drift": ("GET",),
    METRICS_PATH: ("GET",),
}


class RouterCore:
    """Everything the router does, with the model and monitor calls injected."""

    def __init__(
        self,
        settings: AppSettings,
        signer: RequestIdSigner,
        call_model: ModelCall,
        call_info: InfoCall,
        monitor: MonitorClient,
        *,
        router_id: str | None = None,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.time,
        timer: Callable[[], float] = time.perf_counter,
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
        max_rows: int = MAX_ROWS,
        feedback_token: FeedbackToken | None = None,
        admin: AdminAuth | None = None,
    ) -> None:
        self.settings = settings
        #: Who may call the admin routes; None: nobody (every admin call is a 401).
        self.admin = admin
        #: When set, ``POST /v1/feedback`` needs ``Authorization: Bearer <token>``.
        self.feedback_token = feedback_token
        self.signer = signer
        self._call_model = call_model
        self._call_info = call_info
        self.monitor = monitor
        self.router_id = router_id or uuid.uuid4().hex
        self._rng = rng or random.Random()
        self._clock = clock
        self._timer = timer
        self.max_body_bytes = max_body_bytes
        self.max_rows = max_rows
        self.config_error: str | None = None
        #: The split in force and its weights, replaced together (one assignment).
        self._split: tuple[RouterConfig, tuple[Weighted, ...]] | None = None
        self._delta = TrafficStats()
        self._rows: list[tuple[dict[str, list[Any]], int, float]] = []
        self._buffered = 0
        self._dropped = 0
        self._seq = 0
        self._pending: tuple[int, dict[str, Any]] | None = None
        self._flush_lock = asyncio.Lock()

    # --- configuration ---------------------------------------------------------------------

    def configure(self, user_config: Any) -> None:
        """Apply the router's user_config (variants, weights, header, A/B test).

        The first configuration must be valid (raises ConfigError). A later invalid one is
        refused and reported in ``/v1/models`` while the previous split stays in force:
        raising from ``reconfigure`` would make Serve replace the replica, which would fail the
        same way, taking the ingress down.
        """
        try:
            config = RouterConfig.parse(user_config, self.settings.model_deployments)
        except ConfigError as exc:
            if self.config is None:
                raise
            self.config_error = str(exc)
            log.error("router user_config refused, keeping the previous one: %s", exc)
            return
        self._split = (config, tuple(Weighted(v.name, v.weight) for v in config.variants))
        self.config_error = None
        for v in config.variants:
            self._delta.touch(v.version, v.name, config.abtest, self.settings.slo_s)

    @property
    def config(self) -> RouterConfig | None:
        """The router configuration in force (None before the first one)."""
        return self._split[0] if self._split is not None else None

    # --- HTTP ------------------------------------------------------------------------------

    async def handle(
        self,
        method: str,
        path: str,
        query: str,
        headers: Mapping[str, str],
        read_body: BodyReader,
    ) -> HttpResponse:
        """Answer one HTTP request; ``headers`` with lower-case names."""
        path = path.rstrip("/") or "/"
        if path.startswith(ADMIN_PREFIX + "/"):
            return await self._admin(method, path.removeprefix(ADMIN_PREFIX), query, headers)
        allowed = _ROUTES.get(path)
        if allowed is None:
            return _error(404, f"no route {path}; see POST /v1/predict, POST /v1/feedback")
        if method not in allowed:
            return _not_allowed(method, path, allowed)
        if path == "/v1/predict":
            return await self.predict(headers, read_body)
        if path == "/v1/feedback":
            return await self.feedback(read_body, headers)
        return self.healthz()

    async def _admin(
        self, method: str, path: str, query: str, headers: Mapping[str, str]
    ) -> HttpResponse:
        """An admin route: 404 for none, 401 before anything else without the right token."""
        allowed = _ADMIN_ROUTES.get(path)
        if allowed is None:
            return _error(404, f"no route {ADMIN_PREFIX}{path}")
        token = bearer(headers)
        if self.admin is None or not self.admin.allows(token, metrics=path == METRICS_PATH):
            return HttpResponse(
                401,
                json.dumps(
                    {
                        "error": f"{ADMIN_PREFIX}{path} needs Authorization: Bearer <admin token>"
                        + (" (wrong token)" if token else "")
                    }
                ).encode(),
                {"www-authenticate": 'Bearer realm="mlplane-admin"'},
            )
        if method not in allowed:
            return _not_allowed(method, ADMIN_PREFIX + path, allowed)
        if path == "/v1/models":
            return await self.models()
        if path == "/v1/stats":
            return await self.stats(query)
        if path == "/v1/drift":
            return await self._monitor_json(self.monitor.drift())
        return await self.metrics()

    def healthz(self) -> HttpResponse:
        if self.config is None:
            return _error(503, "the router has no configuration yet")
        return _json(
            200,
            {
                "status": "ok",
                "deployment": self.settings.deployment,
                "variants": [v.name for v in self.config.variants],
            },
        )

    async def _read_json(self, read_body: BodyReader) -> Any:
        try:
            raw = await read_body(self.max_body_bytes)
        except BodyTooLarge:
            raise InputError(
                413, f"the body exceeds {self.max_body_bytes} bytes; send fewer rows per request"
            ) from None
        return decode_json(raw)

    async def predict(self, headers: Mapping[str, str], read_body: BodyReader) -> HttpResponse:
        started = self._timer()
        split = self._split
        if split is None:
            return _error(503, "the router has no configuration yet")
        config, weights = split
        key = headers.get(config.bucketing_header) if config.bucketing_header else None
        salt = config.abtest or self.settings.deployment
        variant = config.variants[choose(key, weights, salt=salt, rng=self._rng)]
        version = variant.version
        columns: dict[str, list[Any]] | None = None
        n_rows = 0
        shed = False
        try:
            payload = await self._read_json(read_body)
            columns, n_rows = parse_payload(
                payload, self.max_rows, allow_non_finite=self.settings.allow_non_finite
            )
            answer = await self._call_model(variant.deployment, columns, n_rows)
            status = int(answer.get("status", 500))
            version = int(answer.get("version") or version)
            body: dict[str, Any] = (
                {"predictions": _clean(answer["predictions"])}
                if status == 200
                else {"error": answer.get("error", "the model failed")}
            )
        except InputError as exc:
            status, body = exc.status, {"error": exc.message}
        except ModelUnavailable as exc:
            status, body, shed = exc.status, {"error": exc.message}, exc.overloaded
        except Exception as exc:  # a bug or an unexpected Ray error: never kill the replica
            log.exception("predict failed on %s", variant.deployment)
            status, body = 500, {"error": f"internal error: {type(exc).__name__}"}
        now = self._clock()
        body.update(variant=variant.name, version=version, model=self.settings.model_name)
        headers_out = {VARIANT_HEADER: variant.name, VERSION_HEADER: str(version)}
        if status == 200:
            # An id (the only way to post an outcome) only for a prediction a model made,
            # naming the variant and the version the model reported: an error, a refused
            # input or an unavailable model yields nothing to credit.
            request_id = self.signer.issue(variant.name, version, config.abtest, now)
            body["requestId"] = headers_out[REQUEST_ID_HEADER] = request_id
        if status == 503:
            headers_out["retry-after"] = "1"
        response = _json(status, body, headers_out)
        self._delta.record_request(
            variant.name,
            version,
            config.abtest,
            status,
            self._timer() - started,
            self.settings.slo_s,
            shed=shed,
        )
        if status == 200 and columns is not None and self.settings.drift.enabled:
            self._buffer(columns, n_rows, now)
        return response

    def _buffer(self, columns: dict[str, list[Any]], n_rows: int, now: float) -> None:
        if self._buffered + n_rows > MAX_BUFFERED_ROWS:
            self._dropped += n_rows
            return
        self._rows.append((columns, n_rows, now))
        self._buffered += n_rows

    async def feedback(
        self, read_body: BodyReader, headers: Mapping[str, str] | None = None
    ) -> HttpResponse:
        config = self.config
        if self.feedback_token is not None and not self.feedback_token.allows(
            (headers or {}).get("authorization")
        ):
            return HttpResponse(
                401,
                json.dumps({"error": "feedback needs Authorization: Bearer <token>"}).encode(),
                {"www-authenticate": 'Bearer realm="mlplane-feedback"'},
            )
        try:
            body = await self._read_json(read_body)
            fb = parse_feedback(
                body,
                config.objective if config else None,
                config.outcome_range if config else None,
            )
        except (InputError, FeedbackError) as exc:
            return _error(exc.status, exc.message)
        try:
            info = self.signer.verify(fb.request_id)
        except InvalidRequestId as exc:
            return _error(404, f"unknown request id: {exc}")
        info_dict = {
            "variant": info.variant,
            "version": info.version,
            "abtest": info.abtest,
            "issued_at": info.issued_at,
            "nonce": info.nonce,
        }
        try:
            verdict, reason = await asyncio.wait_for(
                self.monitor.feedback(info_dict, fb.outcome), MONITOR_TIMEOUT_S
            )
        except Exception as exc:
            log.warning("feedback not recorded: monitor unavailable: %r", exc)
            return HttpResponse(
                503,
                json.dumps({"error": "feedback store unavailable, retry"}).encode(),
                {"retry-after": "1"},
            )
        attribution = {"variant": info.variant, "version": info.version, "abtest": info.abtest}
        if verdict == "accepted":
            return _json(200, {"status": "accepted", "requestId": fb.request_id, **attribution})
        status = {"duplicate": 409, "expired": 410}.get(verdict, 422)
        return _error(status, reason, status_detail=verdict, **attribution)

    async def models(self) -> HttpResponse:
        config = self.config
        if config is None:
            return _error(503, "the router has no configuration yet")

        async def info(deployment: str) -> dict[str, Any]:
            try:
                return await asyncio.wait_for(self._call_info(deployment), MONITOR_TIMEOUT_S)
            except Exception as exc:
                return {"error": f"unavailable: {type(exc).__name__}"}

        infos = await asyncio.gather(*(info(v.deployment) for v in config.variants))
        return _json(
            200,
            {
                "deployment": self.settings.deployment,
                "model": self.settings.model_name,
                "abtest": config.abtest,
                "bucketingHeader": config.bucketing_header,
                "objective": config.objective,
                "configError": self.config_error,
                "variants": [
                    {
                        "name": v.name,
                        "deployment": v.deployment,
                        "weight": v.weight,
                        "version": v.version,
                        "modelUri": v.model_uri,
                        "servedVersion": i.get("version"),
                        "ready": i.get("version") == v.version,
                        "replica": i.get("replica"),
                        "loadError": i.get("loadError") or i.get("error"),
                    }
                    for v, i in zip(config.variants, infos, strict=True)
                ],
            },
        )

    async def _monitor_json(self, call: Awaitable[dict[str, Any]]) -> HttpResponse:
        try:
            return _json(200, _clean(await asyncio.wait_for(call, MONITOR_TIMEOUT_S)))
        except Exception as exc:
            log.warning("monitor unavailable: %r", exc)
            return _error(503, "the monitor is unavailable, retry")

    async def stats(self, query: str) -> HttpResponse:
        params = parse_qs(query)
        config = self.config
        all_tests = params.get("all", ["0"])[-1] in ("1", "true")
        abtest = params["abtest"][-1] if "abtest" in params else (config and config.abtest)
        response = await self._monitor_json(self.monitor.stats(abtest or None, all_tests))
        if response.status != 200 or config is None:
            return response
        data = response.json()
        weights = {v.name: v.weight for v in config.variants}
        for row in data["variants"]:
            current = row["abtest"] == config.abtest and row["variant"] in weights
            row["weight"] = weights[row["variant"]] if current else None
        data.update(deployment=self.settings.deployment, abtest=abtest or None)
        return _json(200, data)

    async def metrics(self) -> HttpResponse:
        try:
            text = await asyncio.wait_for(self.monitor.metrics(), MONITOR_TIMEOUT_S)
        except Exception as exc:
            log.warning("metrics unavailable: %r", exc)
            return _error(503, "the monitor is unavailable, retry")
        return HttpResponse(200, text, {}, "text/plain; version=0.0.4; charset=utf-8")

    # --- shipping counts -------------------------------------------------------------------

    def _drain_rows(self) -> dict[str, Any] | None:
        if not self._rows and not self._dropped:
            return None
        names: list[str] = []
        for columns, _, _ in self._rows:
            names.extend(k for k in columns if k not in names)
        merged: dict[str, list[Any]] = {k: [] for k in names}
        timestamps: list[float] = []
        for columns, n, ts in self._rows:
            for k in names:
                merged[k].extend(columns.get(k, [None] * n))
            timestamps.extend([ts] * n)
        config = self.config
        out = {
            "reference_version": config.variants[0].version if config else None,
            "columns": merged,
            "timestamps": timestamps,
            "dropped": self._dropped,
        }
        self._rows, self._buffered, self._dropped = [], 0, 0
        return out

    async def flush(self) -> bool:
        """Ship pending counts to the monitor; True when nothing is left to ship.

        A batch that failed before is re-sent first, unchanged; then what accumulated since.
        """
        async with self._flush_lock:
            for _ in range(2):  # the retried batch, then the fresh one
                if self._pending is None:
                    rows = self._drain_rows()
                    if self._delta.is_empty() and rows is None:
                        return True
                    self._seq += 1
                    self._pending = (self._seq, {"stats": self._delta.to_wire(), "drift": rows})
                    self._delta = TrafficStats()
                seq, payload = self._pending
                try:
                    await asyncio.wait_for(
                        self.monitor.push(self.router_id, seq, payload), MONITOR_TIMEOUT_S
                    )
                except Exception as exc:
                    log.warning("could not ship counts to the monitor (will retry): %r", exc)
                    return False
                self._pending = None
            return self._delta.is_empty() and not self._rows

    async def run_flusher(self, interval: float = FLUSH_INTERVAL_S) -> None:
        """Ship counts every ``interval`` seconds until cancelled."""
        while True:
            await asyncio.sleep(interval)
            try:
                await self.flush()
            except Exception:  # never let the loop die
                log.exception("flush failed")


def header_map(items: Sequence[tuple[bytes, bytes]]) -> dict[str, str]:
    """ASGI raw headers → a dict with lower-case names (the last value of a repeated header)."""
    return {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in items}
