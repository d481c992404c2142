"""fetch_drift / fetch_stats against a stub serving router on 127.0.0.1: the admin paths with the
deployment's admin token, answers pass through, every failure comes back as Unavailable with the
reason (never an exception)."""

from __future__ import annotations

import contextlib
import json
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from mlplane.operator.platforms.serving_client import (
    deployment_admin_token,
    fetch_drift,
    fetch_stats,
)
from mlplane.operator.reconcile.drift import Unavailable
from mlplane.serving.admin import admin_token

TOKEN = deployment_admin_token("0123456789abcdef0123456789abcdef", "team", "churn")

DRIFT = {"enabled": True, "status": "Ok", "referenceVersion": 3, "history": [],
         "consecutiveDriftedWindows": 0, "lastEvaluation": None}  # fmt: skip


class Router(BaseHTTPRequestHandler):
    """Routes by path, like the serving router mounted under ``/churn``."""

    release: threading.Event
    seen: list[str]
    tokens: list[str | None]

    def log_message(self, *args: Any) -> None:  # quiet
        pass

    def _send(self, status: int, body: bytes, content_type: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("content-type", content_type)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        self.seen.append(self.path)
        self.tokens.append(self.headers.get("authorization"))
        if (
            url.path.startswith("/churn/")
            and self.headers.get("authorization") != f"Bearer {TOKEN}"
        ):
            self._send(
                401, b'{"error":"/admin/v1/drift needs Authorization: Bearer <admin token>"}'
            )
        elif url.path == "/churn/admin/v1/drift":
            self._send(200, json.dumps(DRIFT).encode())
        elif url.path == "/churn/admin/v1/stats":
            query = {k: v[-1] for k, v in parse_qs(url.query).items()}
            self._send(200, json.dumps({"variants": [], "query": query}).encode())
        elif url.path == "/down/admin/v1/drift":
            self._send(503, b'{"error":"the monitor is unavailable, retry"}')
        elif url.path == "/html/admin/v1/drift":
            self._send(502, b"<html>bad gateway</html>", "text/html")
        elif url.path == "/garbage/admin/v1/drift":
            self._send(200, b"{not json")
        elif url.path == "/list/admin/v1/drift":
            self._send(200, b"[1, 2]")
        elif url.path == "/slow/admin/v1/drift":
            self.release.wait(30)
            with contextlib.suppress(OSError):  # the client gave up: that is the test
                self._send(200, b"{}")
        else:
            self._send(404, b'{"error":"no route"}')


@pytest.fixture
def router() -> Iterator[tuple[str, type[Router]]]:
    handler = type(
        "StubRouter", (Router,), {"release": threading.Event(), "seen": [], "tokens": []}
    )
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", handler
    finally:
        handler.release.set()
        server.shutdown()
        server.server_close()
        thread.join(10)


def test_drift_report_under_a_route_prefix(router: tuple[str, type[Router]]) -> None:
    base, handler = router
    assert fetch_drift(f"{base}/churn/", timeout=5, token=TOKEN) == DRIFT
    assert handler.seen == ["/churn/admin/v1/drift"]
    assert handler.tokens == [f"Bearer {TOKEN}"]


def test_the_admin_token_is_the_apps(router: tuple[str, type[Router]]) -> None:
    """The operator's token is the one the app derives from the same signing key (the text of
    the Secret's ``current``, as the mounted file holds it), for that deployment only."""
    key = "0123456789abcdef0123456789abcdef"
    assert admin_token(key.encode(), "team/churn") == TOKEN
    assert deployment_admin_token(key, "team", "other") != TOKEN
    assert deployment_admin_token(None, "team", "churn") is None
    base, handler = router
    for token in (None, "wrong"):
        answer = fetch_drift(f"{base}/churn", timeout=5, token=token)
        assert isinstance(answer, Unavailable) and "HTTP 401" in answer.reason
    assert handler.tokens == [None, "Bearer wrong"]


def test_stats_query(router: tuple[str, type[Router]]) -> None:
    base, _ = router
    answer = fetch_stats(f"{base}/churn", "ab-1", timeout=5, token=TOKEN)
    assert isinstance(answer, dict) and answer["query"] == {"abtest": "ab-1"}
    answer = fetch_stats(f"{base}/churn", None, timeout=5, token=TOKEN)
    assert isinstance(answer, dict) and answer["query"] == {}
    answer = fetch_stats(f"{base}/churn", all_tests=True, timeout=5, token=TOKEN)
    assert isinstance(answer, dict) and answer["query"] == {"all": "1"}


@pytest.mark.parametrize(
    ("prefix", "expected"),
    [
        ("/down", "HTTP 503: the monitor is unavailable, retry"),
        ("/html", "HTTP 502: <html>bad gateway</html>"),
        ("/nowhere", "HTTP 404: no route"),
        ("/garbage", "not JSON"),
        ("/list", "a JSON list, not an object"),
    ],
)
def test_bad_answers_are_unavailable(
    router: tuple[str, type[Router]], prefix: str, expected: str
) -> None:
    base, _ = router
    answer = fetch_drift(base + prefix, timeout=5)
    assert isinstance(answer, Unavailable)
    assert expected in answer.reason and f"{prefix}/admin/v1/drift" in answer.reason


def test_timeout_is_unavailable(router: tuple[str, type[Router]]) -> None:
    base, handler = router
    answer = fetch_drift(base + "/slow", timeout=0.2)
    handler.release.set()
    assert isinstance(answer, Unavailable) and "timed out" in answer.reason


def test_refused_and_malformed_endpoints_are_unavailable() -> None:
    with socket.socket() as sock:  # a port nobody listens on once closed
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    answer = fetch_drift(f"http://127.0.0.1:{port}", timeout=5)
    assert isinstance(answer, Unavailable) and "refused" in answer.reason.lower()
    assert isinstance(fetch_drift("not a url", timeout=1), Unavailable)
