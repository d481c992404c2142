"""The router's HTTP behaviour, feedback, stats and count shipping, with fake models (no Ray)."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest

from mlplane.monitoring.profile import build_profile
from mlplane.serving.admin import admin_auth, admin_token, scrape_token_sha256
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
#: What the operator sends (derived from the signing key it keeps) and what Prometheus sends.
ADMIN = admin_token(KEY, "ml-team/churn")
SCRAPE = "scrape-token-of-the-installation"


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
    signer = RequestIdSigner(KEY, settings.deployment)
    core = RouterCore(
        settings,
        signer,
        models.predict,
        models.info,
        monitor,
        router_id="router-a",
        rng=random.Random(1),
        clock=clock,
        admin=admin_auth(settings.deployment, signer, scrape_token_sha256(SCRAPE)),
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


async def admin(router, path, token=ADMIN, query=""):
    """An admin call (``/admin`` + path) as the operator makes it."""
    return await call(router, "GET", "/admin" + path, headers={"authorization": f"Bearer {token}"},
                      query=query)  # fmt: skip


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
    models = (await admin(router, "/v1/models")).json()
    summary = [(v["name"], v["weight"], v["servedVersion"], v["ready"]) for v in models["variants"]]
    assert summary == [("control", 50, 3, True), ("candidate", 50, 4, True)]
    assert models["bucketingHeader"] == "x-user-id"


async def test_an_invalid_reconfigure_keeps_the_split(router):
    router.configure(split(weights=(50, 40)))
    assert router.config_error and "sum to 100" in router.config_error
    assert [v.weight for v in router.config.variants] == [50, 50]
    assert (await admin(router, "/v1/models")).json()["configError"]
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
    stats = (await admin(router, "/v1/stats")).json()
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
    stats = (await admin(router, "/v1/stats")).json()
    assert sum(r["requests"] for r in stats["variants"]) == 18
    assert {r["weight"] for r in stats["variants"]} == {50}
    text = (await admin(router, "/metrics")).body.decode()
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
    report = (await admin(router, "/v1/drift")).json()
    assert report["referenceVersion"] == 3  # the control's version
    assert report["currentWindow"]["rows"] == 150
    clock.t += 20
    await predict(router, "late", (0.0,))
    await router.flush()
    report = (await admin(router, "/v1/drift")).json()
    last = report["lastEvaluation"]
    assert (last["rows"], last["drifted"]) == (150, ["x"])
    assert report["consecutiveDriftedWindows"] == 1


# --- admin endpoints off the public path -----------------------------------------------------

ADMIN_ENDPOINTS = ("/v1/stats", "/v1/models", "/v1/drift", "/metrics")


@pytest.mark.parametrize("path", ADMIN_ENDPOINTS)
async def test_the_public_path_refuses_admin_endpoints_even_with_the_token(router, path):
    for headers in ({}, {"authorization": f"Bearer {ADMIN}"}):
        answer = await call(router, "GET", path, headers=headers)
        assert answer.status == 404, (path, headers)
        assert "no route" in answer.json()["error"]
        assert b"variants" not in answer.body and b"mlplane_" not in answer.body


@pytest.mark.parametrize("path", ADMIN_ENDPOINTS)
@pytest.mark.parametrize(
    "authorization",
    [
        None,
        "Bearer",
        "Bearer wrong-token",
        f"Basic {ADMIN}",
        # The token of another deployment under the same key, and of this one under another key.
        f"Bearer {admin_token(KEY, 'ml-team/other')}",
        f"Bearer {admin_token(b'another-key-another-key', 'ml-team/churn')}",
        f"Bearer {ADMIN}x",
    ],
)
async def test_admin_without_or_with_a_wrong_token_is_401(router, path, authorization):
    headers = {} if authorization is None else {"authorization": authorization}
    answer = await call(router, "GET", "/admin" + path, headers=headers)
    assert answer.status == 401
    assert answer.headers["www-authenticate"] == 'Bearer realm="mlplane-admin"'
    assert "Authorization: Bearer <admin token>" in answer.json()["error"]
    assert b"variants" not in answer.body and b"mlplane_" not in answer.body


async def test_the_admin_token_opens_every_admin_endpoint(router):
    await predict(router, "u1")
    await router.flush()
    assert (await admin(router, "/v1/models")).json()["deployment"] == "ml-team/churn"
    assert sum(r["requests"] for r in (await admin(router, "/v1/stats")).json()["variants"]) == 1
    assert "currentWindow" in (await admin(router, "/v1/drift")).json()
    metrics = await admin(router, "/metrics")
    assert metrics.status == 200 and b"mlplane_requests_total{" in metrics.body
    assert (await admin(router, "/nope")).status == 404
    wrong_method = await call(router, "POST", "/admin/v1/stats",
                              headers={"authorization": f"Bearer {ADMIN}"})  # fmt: skip
    assert (wrong_method.status, wrong_method.headers["allow"]) == (405, "GET")


async def test_the_scrape_token_opens_only_the_metrics(router):
    assert (await admin(router, "/metrics", token=SCRAPE)).status == 200
    for path in ("/v1/stats", "/v1/models", "/v1/drift"):
        assert (await admin(router, path, token=SCRAPE)).status == 401
    plain = RouterCore(router.settings, router.signer, None, None, router.test_monitor,
                       admin=admin_auth("ml-team/churn", router.signer))  # fmt: skip
    assert (await admin(plain, "/metrics", token=SCRAPE)).status == 401  # no scrape hash given


async def test_no_admin_check_means_no_admin_access(router):
    bare = RouterCore(router.settings, router.signer, None, None, router.test_monitor)
    assert (await admin(bare, "/v1/stats")).status == 401


async def test_admin_tokens_of_a_rotation_are_accepted(tmp_path, router):
    """The operator derives from ``current``; a replica accepts current, next and previous, and
    rereads its key files when a token does not match (a rotation it has not seen yet)."""
    from mlplane.serving.request_id import KeyFiles

    old, new = b"old-key-old-key-old-key", b"new-key-new-key-new-key"
    (tmp_path / "current").write_bytes(old)
    files = KeyFiles(tmp_path, recheck_s=3600)  # no periodic reread: only the forced one
    signer = RequestIdSigner(files, "ml-team/churn")
    core = RouterCore(router.settings, signer, None, None, router.test_monitor,
                      admin=admin_auth("ml-team/churn", signer))  # fmt: skip
    core.configure(split())
    assert (await admin(core, "/v1/stats", token=admin_token(old, "ml-team/churn"))).status == 200
    assert (await admin(core, "/v1/stats", token=admin_token(new, "ml-team/churn"))).status == 401
    (tmp_path / "next").write_bytes(new)  # staged: the operator may already derive from it
    assert (await admin(core, "/v1/stats", token=admin_token(new, "ml-team/churn"))).status == 200
    (tmp_path / "current").write_bytes(new)
    (tmp_path / "previous").write_bytes(old)
    (tmp_path / "next").unlink()
    assert (await admin(core, "/v1/stats", token=admin_token(old, "ml-team/churn"))).status == 200


# --- backpressure ------------------------------------------------------------------------------


def _samples(text: str, name: str) -> dict[str, float]:
    return {
        line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith(name + "{")
    }


async def test_overload_is_503_with_retry_after_and_counted(router):
    await predict(router, "u1")  # served: the series exist at 0 before any overload
    router.fake_models.raise_ = ModelUnavailable(503, "the model is overloaded, retry",
                                                 overloaded=True)  # fmt: skip
    for user in ("u1", "u1", "u1"):
        answer = await predict(router, user)
        assert (answer.status, answer.headers["retry-after"]) == (503, "1")
        assert "overloaded" in answer.json()["error"] and "requestId" not in answer.json()
    # A replica that died under the request is a 503 too, but not shed for overload.
    router.fake_models.raise_ = ModelUnavailable(503, "the model is unavailable: died")
    assert (await predict(router, "u1")).status == 503
    await router.flush()
    text = (await admin(router, "/metrics")).body.decode()
    shed = _samples(text, "mlplane_requests_shed_total")
    variant = (await predict(router, "u1")).json()["variant"]  # the variant u1 meets
    version = 3 if variant == "control" else 4
    labels = (f'mlplane_requests_shed_total{{deployment="churn",namespace="ml-team",'
              f'variant="{variant}",version="{version}"}}')  # fmt: skip
    assert shed[labels] == 3
    assert sum(shed.values()) == 3  # the other variant's series exists, at 0
    errors = _samples(text, "mlplane_requests_total")
    assert sum(v for k, v in errors.items() if 'code="5xx"' in k) == 4
