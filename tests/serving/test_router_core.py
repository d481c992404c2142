"""The router's HTTP behaviour, feedback, stats and count shipping, with fake models (no Ray)."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest

from mlplane.monitoring.profile import build_profile
from mlplane.serving.config import AppSettings, ConfigError
from mlplane.serving.monitor import MonitorCore
from mlplane.serving.request_id import RequestIdSigner
from mlplane.serving.router import BodyTooLarge, ModelUnavailable, RouterCore

ARGS = {
    "deployment": "ml-team/churn",
    "model_name": "churn",
    "tracking_uri": "sqlite:///unused",
    "model_deployments": ["model-0", "model-1"],
    "batching": None,
    "slo_latency_p99_ms": 100,
    "drift": {"enabled": True, "method": "StatisticalTest", "threshold": 0.01,
              "window_s": 10.0, "min_samples": 50},
}  # fmt: skip
KEY = b"test-key-test-key-test-key"


def split(weights=(50, 50), header="x-user-id", abtest="ab1", versions=(3, 4), objective=None):
    names = ("control", "candidate")
    return {
        "variants": [
            {"name": names[i], "deployment": f"model-{i}", "version": versions[i],
             "model_uri": f"models:/churn/{versions[i]}", "weight": w}
            for i, w in enumerate(weights)
        ],
        "bucketing_header": header,
        "abtest": abtest,
        "objective": objective,
    }  # fmt: skip


class Clock:
    def __init__(self, t: float = 1_800_000_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


class Monitor:
    """The monitor's calls served by a real MonitorCore in-process; can lose acknowledgements."""

    def __init__(self, settings: AppSettings, clock: Clock) -> None:
        self.core = MonitorCore(settings, clock.t - 100)
        self.clock = clock
        self.lose_ack = 0
        self.down = False
        rng = np.random.default_rng(0)
        self.profile = build_profile({"x": rng.normal(0, 1, 2000)})

    async def push(self, router_id, seq, payload):
        if self.down:
            raise ConnectionError("monitor down")
        payload = json.loads(json.dumps(payload))  # what crosses the wire is plain data
        rows = self.core.apply_push(router_id, seq, payload)
        if self.core.needs_reference() is not None:
            self.core.load_reference(self.core.needs_reference(), lambda v: self.profile)
        if rows is not None:
            self.core.add_rows(rows, self.clock.t)
        if self.lose_ack:
            self.lose_ack -= 1
            raise TimeoutError("acknowledgement lost")

    async def feedback(self, info, value):
        if self.down:
            raise ConnectionError("monitor down")
        return self.core.feedback(info, value, self.clock.t)

    async def stats(self, abtest, all_tests):
        return self.core.stats_report(abtest, all_tests)

    async def drift(self):
        return self.core.tap.report()

    async def metrics(self):
        return self.core.metrics_text()


class Models:
    def __init__(self) -> None:
        self.calls: list[str] = []
        self.answer = None
        self.raise_ = None

    async def predict(self, deployment, columns, n_rows):
        self.calls.append(deployment)
        if self.raise_ is not None:
            raise self.raise_
        if self.answer is not None:
            return self.answer
        version = 3 if deployment == "model-0" else 4
        return {"status": 200, "predictions": [float(v) for v in columns["x"]], "version": version}

    async def info(self, deployment):
        return {"version": 3 if deployment == "model-0" else 4, "replica": f"r-{deployment}"}


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def router(clock):
    settings = AppSettings.parse(ARGS)
    models = Models()
    monitor = Monitor(settings, clock)
    core = RouterCore(
        settings,
        RequestIdSigner(KEY, settings.deployment),
        models.predict,
        models.info,
        monitor,
        router_id="router-a",
        rng=random.Random(1),
        clock=clock,
    )
    core.configure(split())
    core.fake_models, core.test_monitor = models, monitor
    return core


def body_of(data) -> object:
    raw = data if isinstance(data, bytes) else json.dumps(data).encode()

    async def read(limit):
        if len(raw) > limit:
            raise BodyTooLarge
        return raw

    return read


async def call(router, method, path, data=b"", headers=None, query=""):
    return await router.handle(method, path, query, headers or {}, body_of(data))


async def predict(router, user=None, xs=(1.0,)):
    headers = {"x-user-id": user} if user is not None else {}
    return await call(router, "POST", "/v1/predict", {"inputs": {"x": list(xs)}}, headers)


async def test_predict_names_variant_version_and_request_id(router):
    answer = await predict(router, "user-1", (1.0, 2.0))
    assert answer.status == 200
    body = answer.json()
    assert body["predictions"] == [1.0, 2.0]
    assert body["variant"] == answer.headers["x-mlplane-variant"]
    assert str(body["version"]) == answer.headers["x-mlplane-model-version"]
    assert body["requestId"] == answer.headers["x-mlplane-request-id"]
    assert body["model"] == "churn"
    info = router.signer.verify(body["requestId"])
    assert (info.variant, info.version, info.abtest) == (body["variant"], body["version"], "ab1")


async def test_the_same_key_always_meets_the_same_variant(router):
    for user in range(30):
        seen = {(await predict(router, f"u{user}")).json()["variant"] for _ in range(4)}
        assert len(seen) == 1
    anonymous = {(await predict(router)).json()["variant"] for _ in range(40)}
    assert anonymous == {"control", "candidate"}


async def test_weight_change_applies_between_requests_and_moves_only_to_the_gainer(router):
    before = {u: (await predict(router, f"u{u}")).json()["variant"] for u in range(200)}
    router.configure(split(weights=(20, 80)))
    after = {u: (await predict(router, f"u{u}")).json()["variant"] for u in range(200)}
    assert all(after[u] == "candidate" for u, v in before.items() if v == "candidate")
    assert sum(before[u] != after[u] for u in before) > 30


@pytest.mark.parametrize(
    ("data", "status", "needle"),
    [
        (b"{nope", 400, "not valid JSON"),
        (b"", 400, "empty body"),
        ({"rows": []}, 400, "unknown field 'rows'"),
        (b"x" * (2**20 + 1), 413, "exceeds"),
    ],
)
async def test_bad_bodies_are_4xx_and_still_name_a_variant(router, data, status, needle):
    answer = await call(router, "POST", "/v1/predict", data, {"x-user-id": "u"})
    assert answer.status == status
    assert needle in answer.json()["error"]
    assert answer.json()["variant"] in ("control", "candidate")
    assert router.fake_models.calls == []


async def test_model_answers_and_failures_pass_through(router):
    router.fake_models.answer = {"status": 422, "error": "column 'x' row 0: bad", "version": 3}
    answer = await predict(router, "u")
    assert (answer.status, answer.json()["error"]) == (422, "column 'x' row 0: bad")
    router.fake_models.raise_ = ModelUnavailable(503, "the model is overloaded, retry")
    answer = await predict(router, "u")
    assert (answer.status, answer.headers["retry-after"]) == (503, "1")
    router.fake_models.raise_ = RuntimeError("bug")
    answer = await predict(router, "u")
    assert answer.status == 500 and "RuntimeError" in answer.json()["error"]


async def test_routes_and_methods(router):
    assert (await call(router, "GET", "/nope")).status == 404
    wrong = await call(router, "GET", "/v1/predict")
    assert (wrong.status, wrong.headers["allow"]) == (405, "POST")
    health = await call(router, "GET", "/healthz/")
    assert health.json()["variants"] == ["control", "candidate"]
    models = (await call(router, "GET", "/v1/models")).json()
    summary = [(v["name"], v["weight"], v["servedVersion"], v["ready"]) for v in models["variants"]]
    assert summary == [("control", 50, 3, True), ("candidate", 50, 4, True)]
    assert models["bucketingHeader"] == "x-user-id"


async def test_an_invalid_reconfigure_keeps_the_split(router):
    router.configure(split(weights=(50, 40)))
    assert router.config_error and "sum to 100" in router.config_error
    assert [v.weight for v in router.config.variants] == [50, 50]
    assert (await call(router, "GET", "/v1/models")).json()["configError"]
    fresh = RouterCore(router.settings, router.signer, None, None, None)
    with pytest.raises(ConfigError):
        fresh.configure(split(weights=(50, 40)))
    assert (await call(fresh, "GET", "/healthz")).status == 503


async def feedback(router, request_id, outcome=1):
    return await call(router, "POST", "/v1/feedback", {"requestId": request_id, "outcome": outcome})


async def test_feedback_is_counted_once_for_the_variant_that_served(router, clock):
    served = (await predict(router, "user-7")).json()
    router.configure(split(weights=(1, 99)))  # weights change before the outcome arrives
    # Another router replica (fresh state, same key) receives the feedback.
    signer = RequestIdSigner(KEY, "ml-team/churn")
    other = RouterCore(router.settings, signer, None, None, router.test_monitor)
    other.configure(split(weights=(1, 99)))
    clock.t += 30
    first = await feedback(other, served["requestId"])
    assert first.status == 200
    assert (first.json()["variant"], first.json()["abtest"]) == (served["variant"], "ab1")
    again = await feedback(router, served["requestId"])
    assert again.status == 409 and again.json()["status_detail"] == "duplicate"
    stats = (await call(router, "GET", "/v1/stats")).json()
    rows = {r["variant"]: r for r in stats["variants"]}
    assert rows[served["variant"]]["outcomes"] == 1
    assert sum(r["outcomes"] for r in stats["variants"]) == 1


async def test_feedback_refusals(router, clock):
    served = (await predict(router, "u")).json()["requestId"]
    stranger = RequestIdSigner(b"another-key-another-key", "ml-team/churn")
    forged = stranger.issue("control", 3, "ab1", clock.t)
    assert (await feedback(router, forged)).status == 404
    assert (await feedback(router, "garbage")).status == 404
    bad = await feedback(router, served, outcome="yes")
    assert bad.status == 400 and "'outcome'" in bad.json()["error"]
    router.configure(split(objective="Conversion"))
    assert (await feedback(router, served, outcome=3)).status == 400
    clock.t += 2 * 86_400
    assert (await feedback(router, served)).status == 410
    router.test_monitor.down = True
    late = (await predict(router, "u")).json()["requestId"]
    assert (await feedback(router, late)).status == 503
    router.test_monitor.down = False
    assert (await feedback(router, late)).status == 200  # a retry after a 503 counts once


async def test_counts_ship_exactly_once_despite_lost_acks_and_outages(router):
    monitor = router.test_monitor
    for u in range(10):
        await predict(router, f"u{u}")
    monitor.lose_ack = 1  # applied, but the router believes it failed
    assert await router.flush() is False
    for u in range(5):
        await predict(router, f"v{u}")
    assert await router.flush() is True  # re-sends the same batch (ignored), then the next
    monitor.down = True
    for u in range(3):
        await predict(router, f"w{u}")
    assert await router.flush() is False
    monitor.down = False
    await router.flush()
    await router.flush()
    stats = (await call(router, "GET", "/v1/stats")).json()
    assert sum(r["requests"] for r in stats["variants"]) == 18
    assert {r["weight"] for r in stats["variants"]} == {50}
    text = (await call(router, "GET", "/metrics")).body.decode()
    total = sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("mlplane_requests_total{")
    )
    assert total == 18
    assert "mlplane_requests_slow_total{" in text


async def test_drift_rows_reach_the_tap_with_their_times(router, clock):
    rng = np.random.default_rng(3)
    for k in range(30):
        await predict(router, f"u{k}", tuple(rng.normal(2.0, 1, 5)))  # shifted by 2 sd
    await router.flush()
    report = (await call(router, "GET", "/v1/drift")).json()
    assert report["referenceVersion"] == 3  # the control's version
    assert report["currentWindow"]["rows"] == 150
    clock.t += 20
    await predict(router, "late", (0.0,))
    await router.flush()
    report = (await call(router, "GET", "/v1/drift")).json()
    last = report["lastEvaluation"]
    assert (last["rows"], last["drifted"]) == (150, ["x"])
    assert report["consecutiveDriftedWindows"] == 1
