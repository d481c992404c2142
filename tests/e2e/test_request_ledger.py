"""The e2e request ledger counts resets, timeouts and refusals, not only HTTP error answers, and
a request loop that dies is an error (not an e2e test: a local HTTP server, no Ray)."""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from request_ledger import LoopThread, RequestLedger


class Handler(BaseHTTPRequestHandler):
    """``/ok`` answers 200, ``/bad`` 503, ``/reset`` resets the connection (RST), ``/slow``
    answers after the client's timeout."""

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        if self.path == "/reset":
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                       struct.pack("ii", 1, 0))  # fmt: skip
            self.connection.close()
            return
        if self.path == "/slow":
            time.sleep(1.0)
        code = 503 if self.path == "/bad" else 200
        body = b'{"ok": true}'
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        with contextlib.suppress(BrokenPipeError):  # /slow: the client gave up already
            self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def server() -> Iterator[str]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def test_every_request_is_answered_or_failed_and_the_totals_add_up(server: str) -> None:
    ledger = RequestLedger()
    assert ledger.post(server + "/ok", {}).status == 200
    assert ledger.post(server + "/bad", {}).status == 503
    reset = ledger.post(server + "/reset", {})
    slow = ledger.post(server + "/slow", {}, timeout=0.2)
    with socket.socket() as sock:  # a port nothing listens on: refused
        sock.bind(("127.0.0.1", 0))
        closed = sock.getsockname()[1]
    refused = ledger.post(f"http://127.0.0.1:{closed}/", {})
    assert (reset.status, slow.status, refused.status) == (None, None, None)
    assert "Reset" in (reset.error or "") or "Disconnected" in (reset.error or ""), reset.error
    assert "timed out" in (slow.error or "").lower(), slow.error
    assert ledger.sent == 5 and len(ledger.answered) == 2 and len(ledger.failed) == 3
    with pytest.raises(AssertionError, match="3 of 5 requests got no answer"):
        ledger.check()
    ok_only = RequestLedger()
    ok_only.post(server + "/ok", {})
    ok_only.post(server + "/bad", {})
    with pytest.raises(AssertionError, match="1 of 2 answers were not accepted"):
        ok_only.check()


def test_a_loop_that_dies_is_an_error() -> None:
    def step(i: int) -> None:
        if i == 3:
            raise ConnectionResetError("reset by peer")

    loop = LoopThread(step, limit=100, name="dies").start()
    deadline = time.monotonic() + 10
    while loop.alive and time.monotonic() < deadline:
        time.sleep(0.01)
    assert loop.steps == 3
    with pytest.raises(AssertionError, match="the request loop died"):
        loop.stop()
