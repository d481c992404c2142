"""``mlplane traffic``'s generator against a stub router on 127.0.0.1 (no Ray)."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar

import pytest

from mlplane.operator.platforms.traffic import run_traffic


class StubRouter(BaseHTTPRequestHandler):
    """Sticky 2-variant router: user-N with even N -> control, odd -> candidate; every 10th
    predict answers 503; feedback is recorded by request id."""

    calls: ClassVar[list[tuple[str, dict[str, Any], dict[str, str]]]] = []

    def log_message(self, *args: Any) -> None:
        pass

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["content-length"])))
        headers = {k.lower(): v for k, v in self.headers.items()}
        StubRouter.calls.append((self.path, body, headers))
        if self.path.endswith("/v1/predict"):
            n = sum(1 for p, _, _ in StubRouter.calls if p.endswith("/v1/predict"))
            if n % 10 == 0:
                return self._answer(503, {"error": "busy"})
            user = int(headers["x-user-id"].split("-")[1])
            variant = "control" if user % 2 == 0 else "candidate"
            answer = {"predictions": [0], "variant": variant, "version": 1 + user % 2,
                      "requestId": f"r{n}"}  # fmt: skip
            return self._answer(200, answer)
        return self._answer(200, {"status": "accepted"})

    def _answer(self, code: int, body: dict[str, Any]) -> None:
        raw = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)


@pytest.fixture
def router() -> Iterator[str]:
    StubRouter.calls = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), StubRouter)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/default/churn"
    server.shutdown()


def test_requests_feedback_and_failures_are_counted(router: str) -> None:
    records = [{"a": 1}, {"a": 2}]
    report = run_traffic(router, records, requests=100, conversion={"candidate": 1.0,
                         "control": 0.0}, users=20, seed=3)  # fmt: skip
    assert report.requests == 100
    assert report.failures == {503: 10}
    assert sum(report.served.values()) == 90
    assert {v for v, _ in report.served} == {"control", "candidate"}
    # Outcome 1 exactly for the candidate's answers, posted once per answer.
    assert report.conversions["candidate"] == report.served[("candidate", 2)]
    assert report.conversions["control"] == 0
    feedback = [b for p, b, _ in StubRouter.calls if p.endswith("/v1/feedback")]
    assert len(feedback) == 90 and len({b["requestId"] for b in feedback}) == 90
    predicts = [(b, h) for p, b, h in StubRouter.calls if p.endswith("/v1/predict")]
    assert all(len(b["records"]) == 1 for b, _ in predicts)
    assert {h["x-user-id"] for _, h in predicts} <= {f"user-{i}" for i in range(20)}


def test_variants_without_a_rate_post_no_feedback_and_stop_ends_early(router: str) -> None:
    seen: list[int] = []
    report = run_traffic(router, [{"a": 1}], requests=1000, conversion={}, users=5,
                         stop=lambda: len(seen) >= 2, progress=lambda r: seen.append(r.requests),
                         every=20)  # fmt: skip
    assert report.requests == 40 and seen == [20, 40]
    assert not [p for p, _, _ in StubRouter.calls if p.endswith("/v1/feedback")]


def test_same_seed_same_users(router: str) -> None:
    run_traffic(router, [{"a": 1}], requests=30, conversion={}, seed=9)
    first = [h["x-user-id"] for p, _, h in StubRouter.calls if p.endswith("/v1/predict")]
    StubRouter.calls = []
    run_traffic(router, [{"a": 1}], requests=30, conversion={}, seed=9)
    assert first == [h["x-user-id"] for p, _, h in StubRouter.calls if p.endswith("/v1/predict")]


def test_no_records_is_refused() -> None:
    with pytest.raises(ValueError, match="no records"):
        run_traffic("http://127.0.0.1:9", [], requests=1, conversion={})
