"""Generated request bodies through the serving app's predict and feedback, without Ray.

The layer that turns an HTTP request into an answer is :class:`RouterCore` (``handle``) with the
model replicas' :func:`predict_items` behind it; both run here for real, with a real
scikit-learn model (one deployment with an MLflow-like signature, one without) and a real
``MonitorCore`` for feedback. Bodies: JSON of any shape, numbers beyond every range, NaN and
Infinity, deep nesting, wrong types, huge payloads, bytes that are not UTF-8, any content type
and headers. Every answer must be a 2xx or a 4xx with a JSON ``error`` message: never a 5xx,
never an exception, never an error logged.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import random
import time
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from sklearn.linear_model import LogisticRegression

from mlplane.serving.config import AppSettings
from mlplane.serving.inputs import ColumnSpec, InputSchema
from mlplane.serving.model import LoadedModel, predict_items
from mlplane.serving.monitor import MonitorCore
from mlplane.serving.request_id import RequestIdSigner
from mlplane.serving.router import BodyTooLarge, RouterCore

EXAMPLES = int(os.environ.get("MLPLANE_FUZZ_EXAMPLES", "0"))
FUZZ = settings(
    max_examples=EXAMPLES or 150,
    derandomize=not EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    database=None,
    # MLPLANE_FUZZ_NO_SHRINK=1: report the first failing example as found (faster to triage).
    phases=[p for p in Phase if p != Phase.shrink or not os.environ.get("MLPLANE_FUZZ_NO_SHRINK")],
)
KEY = b"fuzz-key-fuzz-key-fuzz-key-fuzz"
ARGS = {
    "deployment": "fuzz/churn",
    "model_name": "churn",
    "tracking_uri": "sqlite:///unused",
    "model_deployments": ["model-0", "model-1"],
    "batching": None,
    "slo_latency_p99_ms": 100,
    "drift": {"enabled": True, "method": "StatisticalTest", "threshold": 0.01,
              "window_s": 60.0, "min_samples": 50},
}  # fmt: skip
SIGNATURE = InputSchema((
    ColumnSpec("x", "double"), ColumnSpec("plan", "string", required=False),
    ColumnSpec("n", "long", required=False), ColumnSpec("flag", "boolean", required=False),
    ColumnSpec("seen", "datetime", required=False), ColumnSpec("small", "integer", required=False),
    ColumnSpec("f", "float", required=False),
))  # fmt: skip


class Sklearn:
    """What an MLflow pyfunc of a scikit-learn model does with a frame: its own columns."""

    def __init__(self) -> None:
        self.model = LogisticRegression().fit([[0.0], [1.0], [2.0], [3.0]], [0, 0, 1, 1])

    def predict(self, frame: Any) -> Any:
        return self.model.predict(frame[["x"]].to_numpy())


def _split(objective: str | None) -> dict[str, Any]:
    config: dict[str, Any] = {
        "variants": [
            {"name": name, "deployment": f"model-{i}", "version": i + 1,
             "model_uri": f"models:/churn/{i + 1}", "weight": 50}
            for i, name in enumerate(("control", "candidate"))
        ],
        "bucketing_header": "x-user-id",
        "abtest": "ab1",
        "objective": objective,
    }  # fmt: skip
    if objective == "Mean":
        config["outcome_range"] = [0, 100]
    return config


class Monitor:
    """The monitor deployment's calls, served by a real MonitorCore in this process."""

    def __init__(self, settings: AppSettings) -> None:
        self.core = MonitorCore(settings, time.time() - 100)

    async def push(self, router_id: str, seq: int, payload: dict[str, Any]) -> None:
        self.core.apply_push(router_id, seq, json.loads(json.dumps(payload)))

    async def feedback(self, info: dict[str, Any], value: float) -> tuple[str, str]:
        return self.core.feedback(info, value, time.time())

    async def stats(self, abtest: str | None, all_tests: bool) -> dict[str, Any]:
        return self.core.stats_report(abtest, all_tests)

    async def drift(self) -> dict[str, Any]:
        return self.core.tap.report()

    async def metrics(self) -> bytes:
        return self.core.metrics_text()


def router(objective: str | None = "Conversion", allow_non_finite: bool = False) -> RouterCore:
    settings = AppSettings.parse({**ARGS, "allow_non_finite": allow_non_finite})
    loaded = {
        "model-0": LoadedModel("models:/churn/1", 1, Sklearn(), SIGNATURE, 0.0),
        "model-1": LoadedModel("models:/churn/2", 2, Sklearn(), InputSchema(None), 0.0),
    }

    async def call_model(deployment: str, columns: dict[str, list[Any]], n: int) -> Any:
        # What crosses Ray's wire is pickled plain data: the replica sees a copy.
        (answer,) = predict_items(loaded[deployment], [(columns, n)])
        return answer

    async def call_info(deployment: str) -> dict[str, Any]:
        return {"version": loaded[deployment].version}

    core = RouterCore(settings, RequestIdSigner(KEY, settings.deployment), call_model, call_info,
                      Monitor(settings), router_id="fuzz", rng=random.Random(0))  # fmt: skip
    core.configure(_split(objective))
    return core


# --- bodies ---------------------------------------------------------------------------------------

NUMBERS = st.one_of(
    st.integers(),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([10**400, -(10**30), 2**63, 2**64 + 1, 1e308, 5e-324, -0.0]),
)
TEXT = st.text(max_size=20)
LEAVES = st.none() | st.booleans() | NUMBERS | TEXT
ANY_JSON = st.recursive(
    LEAVES, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(TEXT, inner, max_size=4),
    max_leaves=20,
)  # fmt: skip
COLUMN_NAMES = st.sampled_from(["x", "plan", "n", "flag", "seen", "small", "f", "y", ""]) | TEXT
ROWS = st.dictionaries(COLUMN_NAMES, LEAVES | ANY_JSON, max_size=5)
PAYLOADS = st.one_of(
    st.builds(lambda rows: {"records": rows}, st.lists(ROWS, max_size=5) | ANY_JSON),
    st.builds(lambda cols, data: {"columns": cols, "data": data},
              st.lists(COLUMN_NAMES, max_size=4) | ANY_JSON,
              st.lists(st.lists(LEAVES, max_size=4), max_size=4) | ANY_JSON),
    st.builds(lambda cols: {"inputs": cols},
              st.dictionaries(COLUMN_NAMES, st.lists(LEAVES, max_size=4) | LEAVES, max_size=5)
              | ANY_JSON),
    ANY_JSON,
)  # fmt: skip


def _encode(value: Any) -> bytes:
    return json.dumps(value, allow_nan=True).encode()


RAW = st.one_of(
    st.binary(max_size=64),  # not UTF-8, not JSON
    st.sampled_from([
        b"", b"{", b"null", b"[]", b'"x"', b"NaN", b"1e999", b'{"inputs": {"x": 1e999}}',
        b'{"inputs": {"x": -Infinity}}', b'{"inputs": {"x": NaN}}',
        b'{"inputs": {"x": ' + b"9" * 5000 + b"}}",  # past the int-str conversion limit
        b"[" * 100_000 + b"]" * 100_000,  # deeper than any parser's recursion
        b'{"a":' * 50_000 + b"1" + b"}" * 50_000,
        b"\xff\xfe" + "{}".encode("utf-16-le"), "{\"inputs\": {\"x\": 1}}".encode("utf-32"),
        b'{"inputs": {"x": [' + b"1," * 700_000 + b"1]}}",  # over 1 MiB: 413
        b'{"inputs": {"x": [' + b"1," * 20_000 + b"1]}}",  # over the row limit: 413
        b'{"inputs": {"x": "\\ud800"}}',  # a lone surrogate
    ]),
)  # fmt: skip
HEADERS = st.dictionaries(
    st.sampled_from(["content-type", "x-user-id", "authorization", "content-length", "accept"]),
    st.sampled_from(["application/json", "text/plain", "application/x-www-form-urlencoded",
                     "multipart/form-data; boundary=x", "", "é", "Bearer x", "1"]) | TEXT,
)  # fmt: skip
BODIES = st.one_of(PAYLOADS.map(_encode), ANY_JSON.map(_encode), RAW)


def reader(raw: bytes) -> Any:
    async def read(limit: int) -> bytes:
        if len(raw) > limit:
            raise BodyTooLarge
        return raw

    return read


class _Errors(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture(scope="module")
def errors() -> Any:
    handler = _Errors()
    logger = logging.getLogger("mlplane.serving")
    logger.addHandler(handler)
    yield handler
    logger.removeHandler(handler)


def answer_ok(status: int, body: bytes, what: str) -> Any:
    """A 2xx or a 4xx with a JSON message; returns the decoded body."""
    assert 200 <= status < 500, f"{what}: answered {status} {body[:500]!r}"
    data = json.loads(body)
    if status >= 400:
        assert isinstance(data.get("error"), str) and data["error"], f"{what}: {data!r}"
    return data


def run(coro: Any) -> Any:
    return asyncio.run(coro)


ROUTERS = {"strict": router(), "non-finite": router("Mean", allow_non_finite=True),
           "no-objective": router(None)}  # fmt: skip


@pytest.mark.parametrize("which", sorted(ROUTERS))
@FUZZ
@given(body=BODIES, headers=HEADERS, path=st.sampled_from(["/v1/predict", "/v1/predict/"]))
def test_predict_answers_every_body_with_a_2xx_or_4xx(which, body, headers, path, errors):
    core = ROUTERS[which]
    errors.records.clear()
    answer = run(core.handle("POST", path, "", headers, reader(body)))
    data = answer_ok(answer.status, answer.body, f"predict {body[:300]!r}")
    if answer.status == 200:
        assert len(data["predictions"]) >= 1
        assert data["requestId"]
    assert not errors.records, [r.getMessage() for r in errors.records]


def _issued(core: RouterCore) -> str:
    body = _encode({"inputs": {"x": [1.0]}})
    answer = run(core.handle("POST", "/v1/predict", "", {}, reader(body)))
    assert answer.status == 200, answer.body
    return str(answer.json()["requestId"])


FEEDBACK = st.one_of(
    st.builds(
        lambda rid, outcome, extra: {"requestId": rid, "outcome": outcome, **extra},
        st.sampled_from(["ISSUED"]) | TEXT | ANY_JSON,
        NUMBERS | st.booleans() | ANY_JSON,
        st.dictionaries(TEXT, ANY_JSON, max_size=1) | st.just({}),
    ).map(_encode),
    BODIES,
)


@pytest.mark.parametrize("which", sorted(ROUTERS))
@FUZZ
@given(body=FEEDBACK, headers=HEADERS)
def test_feedback_answers_every_body_with_a_2xx_or_4xx(which, body, headers, errors):
    core = ROUTERS[which]
    errors.records.clear()
    if b'"ISSUED"' in body:  # a real id, so outcomes reach the ledger and the totals
        body = body.replace(b'"ISSUED"', json.dumps(_issued(core)).encode())
    answer = run(core.handle("POST", "/v1/feedback", "", headers, reader(body)))
    answer_ok(answer.status, answer.body, f"feedback {body[:300]!r}")
    assert not errors.records, [r.getMessage() for r in errors.records]
    # Whatever was accepted keeps the totals finite (sums of outcomes and their squares).
    stats = run(core.monitor.stats("ab1", False))
    for row in stats.get("variants", []):
        for value in row.values():
            if isinstance(value, float):
                assert math.isfinite(value), stats
