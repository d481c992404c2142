"""Reading a ModelDeployment's serving app: ``GET /admin/v1/drift`` and ``/admin/v1/stats``.

The operator (handler or local runner) asks the router of the deployment's Serve app, at the
``status.endpoint`` the ModelDeployment core computed (a route prefix included when the app is
mounted under one), on its admin routes with the deployment's admin token
(:func:`mlplane.serving.admin.admin_token`, derived from the request-signing key the operator
keeps: :func:`deployment_admin_token`); the public paths answer 404 to everyone.

Every failure -- refused, timed out, a non-200 answer, a body that is not a
JSON object -- comes back as an :class:`~mlplane.operator.reconcile.drift.Unavailable` with the
reason, never as an exception: the pure core turns it into an ``Unknown`` condition and the
caller looks again later.

Plain ``urllib`` with no proxy: the endpoint is a cluster-internal Service (or 127.0.0.1 on the
local platform), which an ``HTTP_PROXY`` set for the operator's egress could not reach.
"""

from __future__ import annotations

import http.client
import json
import urllib.error
import urllib.request
from typing import Any
from urllib.parse import urlencode

from mlplane.operator.reconcile.drift import Unavailable
from mlplane.serving.admin import admin_path, admin_token

__all__ = [
    "DEFAULT_TIMEOUT",
    "MAX_BODY_BYTES",
    "Unavailable",
    "deployment_admin_token",
    "fetch_drift",
    "fetch_stats",
]

#: Seconds for one request: the router answers from its monitor within 5 s or says 503.
DEFAULT_TIMEOUT = 10.0
#: A drift report is a few kB per feature; anything far larger is not one.
MAX_BODY_BYTES = 8 * 1024 * 1024

_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _url(endpoint: str, path: str, query: dict[str, str] | None = None) -> str:
    url = endpoint.rstrip("/") + path
    return f"{url}?{urlencode(query)}" if query else url


def _error_text(body: bytes) -> str:
    """The router's ``{"error": ...}`` message, else the start of the body."""
    try:
        data = json.loads(body)
    except ValueError:
        data = None
    if isinstance(data, dict) and isinstance(data.get("error"), str):
        return data["error"]
    return body[:200].decode("utf-8", "replace").strip() or "(empty body)"


def deployment_admin_token(signing_key: str | None, namespace: str, name: str) -> str | None:
    """The admin token of ModelDeployment ``namespace/name`` from its current signing key (the
    Secret's or the local key folder's ``current``, as text); None without a key."""
    if not signing_key:
        return None
    return admin_token(signing_key.strip().encode(), f"{namespace}/{name}")


def get_json(
    url: str, timeout: float = DEFAULT_TIMEOUT, token: str | None = None
) -> dict[str, Any] | Unavailable:
    """``GET url`` (with ``Authorization: Bearer token`` when given) answered by a JSON
    object, or why not."""
    headers = {"Accept": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    try:
        request = urllib.request.Request(url, headers=headers)
        with _OPENER.open(request, timeout=timeout) as response:
            body = response.read(MAX_BODY_BYTES + 1)
    except urllib.error.HTTPError as exc:
        with exc:
            detail = _error_text(exc.read(64 * 1024))
        return Unavailable(f"GET {url}: HTTP {exc.code}: {detail}")
    except urllib.error.URLError as exc:
        return Unavailable(f"GET {url}: {exc.reason}")
    except (TimeoutError, OSError, http.client.HTTPException, ValueError) as exc:
        # ValueError: a malformed URL; OSError: resets and timeouts while reading the body.
        return Unavailable(f"GET {url}: {type(exc).__name__}: {exc}")
    if len(body) > MAX_BODY_BYTES:
        return Unavailable(f"GET {url}: the answer exceeds {MAX_BODY_BYTES} bytes")
    try:
        data = json.loads(body)
    except ValueError as exc:
        return Unavailable(f"GET {url}: the answer is not JSON: {exc}")
    if not isinstance(data, dict):
        return Unavailable(f"GET {url}: the answer is a JSON {type(data).__name__}, not an object")
    return data


def fetch_drift(
    endpoint: str, timeout: float = DEFAULT_TIMEOUT, *, token: str | None = None
) -> dict[str, Any] | Unavailable:
    """The serving app's drift report (``DriftTap.report()``), for ``reconcile_drift``."""
    return get_json(_url(endpoint, admin_path("/v1/drift")), timeout, token)


def fetch_stats(
    endpoint: str,
    abtest: str | None = None,
    *,
    all_tests: bool = False,
    timeout: float = DEFAULT_TIMEOUT,
    token: str | None = None,
) -> dict[str, Any] | Unavailable:
    """Per-variant counts and outcomes (``GET /v1/stats``) of the app's current A/B test, of
    ``abtest`` when given, or of every (abtest, variant) with ``all_tests``."""
    query: dict[str, str] = {}
    if abtest:
        query["abtest"] = abtest
    if all_tests:
        query["all"] = "1"
    return get_json(_url(endpoint, admin_path("/v1/stats"), query), timeout, token)
