"""The load client and statistics of ``bench/serving_router.py``, on a stub server (no Ray).

The bench's numbers are only as good as these helpers: percentiles must agree with numpy's,
ratios must pair rounds, and the client must send exactly the requests asked for, no more
in flight than its concurrency, and count every status and variant.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import socket
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from aiohttp import web
from hypothesis import given, settings
from hypothesis import strategies as st

BENCH = Path(__file__).resolve().parents[2] / "bench" / "serving_router.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_serving_router", BENCH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve their annotations through it
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop(spec.name, None)


@settings(max_examples=200, deadline=None)
@given(
    values=st.lists(st.floats(0, 10, allow_nan=False), min_size=1, max_size=50),
    q=st.floats(0, 100),
)
def test_percentile_agrees_with_numpy(bench, values, q):
    assert bench.percentile(values, q) == pytest.approx(np.percentile(values, q), abs=1e-9)


def test_percentile_refuses_nonsense(bench):
    with pytest.raises(ValueError, match="no values"):
        bench.percentile([], 50)
    with pytest.raises(ValueError, match="within"):
        bench.percentile([1.0], 101)


def _run(bench, target, wall, latencies, statuses=None, variants=None):
    return bench.RunResult(
        target,
        wall,
        list(latencies),
        Counter(statuses or {"200": len(latencies)}),
        Counter(variants or {}),
    )


def test_summary_is_the_median_over_rounds(bench):
    runs = [
        _run(bench, "a", 1.0, [0.010] * 100),  # 100 req/s, p50 10 ms
        _run(bench, "a", 2.0, [0.030] * 100, {"200": 99, "503": 1}, {"x": 60, "y": 40}),
        _run(bench, "a", 0.5, [0.020] * 100, variants={"x": 1}),  # 200 req/s
    ]
    s = bench.summarize(runs)
    assert (s.target, s.rounds, s.requests, s.errors) == ("a", 3, 300, 1)
    assert s.rps == pytest.approx(100.0)
    assert s.p50_ms == pytest.approx(20.0)
    assert s.p99_ms == pytest.approx(20.0)
    assert s.variants == {"x": 61, "y": 40}


def test_ratios_pair_rounds_by_index(bench):
    mine = [_run(bench, "m", 1.0, [0.02] * 10), _run(bench, "m", 1.0, [0.04] * 10)]
    base = [_run(bench, "b", 0.5, [0.01] * 10), _run(bench, "b", 1.0, [0.01] * 10)]
    ratios = bench.paired_ratios(mine, base)
    # Round 1: 10 vs 20 req/s (0.5x), 2x latency; round 2: 1x req/s, 4x latency.
    assert ratios["req/s"] == bench.Ratio(0.75, 0.5, 1.0)
    assert ratios["p50"].median == pytest.approx(3.0)
    assert (ratios["p99"].low, ratios["p99"].high) == pytest.approx((2.0, 4.0))
    with pytest.raises(ValueError, match="same"):
        bench.paired_ratios(mine, base[:1])
    report = bench.format_report([bench.summarize(mine), bench.summarize(base)], {"m": ratios}, "b")
    assert "ratio m / b" in report and "req/s 0.75x [0.50-1.00]" in report


def test_round_order_alternates(bench):
    assert [bench.round_order(["a", "b"], k) for k in range(3)] == [
        ["a", "b"],
        ["b", "a"],
        ["a", "b"],
    ]


def test_requests_are_seeded_json_with_a_bucketing_key(bench):
    bodies, headers = bench.make_requests(50, rows_per_request=3, seed=1)
    again, _ = bench.make_requests(50, rows_per_request=3, seed=1)
    assert bodies == again
    records = json.loads(bodies[0])["records"]
    assert len(records) == 3 and set(records[0]) == {"tenure", "spend", "visits", "plan"}
    assert all(h[bench.BUCKETING_HEADER].startswith("user-") for h in headers)
    assert len({h[bench.BUCKETING_HEADER] for h in headers}) > 1


async def test_client_sends_exactly_n_requests_within_its_concurrency(bench):
    seen: list[tuple[bytes, str]] = []
    in_flight = {"now": 0, "max": 0}

    async def predict(request: web.Request) -> web.Response:
        in_flight["now"] += 1
        in_flight["max"] = max(in_flight["max"], in_flight["now"])
        try:
            await asyncio.sleep(0.002)  # let requests overlap
            body = await request.read()
            key = request.headers[bench.BUCKETING_HEADER]
            seen.append((body, key))
            if len(seen) % 10 == 0:
                return web.json_response({"error": "busy"}, status=503)
            variant = "even" if int(key.removeprefix("user-")) % 2 == 0 else "odd"
            return web.json_response({"ok": True}, headers={bench.VARIANT_HEADER: variant})
        finally:
            in_flight["now"] -= 1

    app = web.Application()
    app.router.add_post("/v1/predict", predict)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    try:
        bodies, headers = bench.make_requests(7, 1)
        result = await bench.drive(
            f"http://127.0.0.1:{port}/v1/predict", bodies, headers, 60, 4, target="stub"
        )
    finally:
        await runner.cleanup()

    assert result.requests == len(seen) == 60
    assert result.statuses == Counter({"200": 54, "503": 6})
    assert result.errors == 6
    assert sum(result.variants.values()) == 54
    assert 1 <= in_flight["max"] <= 4
    assert all(latency > 0 for latency in result.latencies_s)
    assert result.rps == pytest.approx(60 / result.wall_s)
    # Request i carried body i % 7 with its own header set.
    assert Counter(body for body, _ in seen) == Counter(bodies[i % 7] for i in range(60))


async def test_client_counts_a_refused_connection_as_an_error(bench):
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    bodies, headers = bench.make_requests(1, 1)
    result = await bench.drive(f"http://127.0.0.1:{port}/", bodies, headers, 5, 2)
    assert result.requests == 5 and result.errors == 5
    assert "200" not in result.statuses
