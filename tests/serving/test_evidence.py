"""A/B evidence that cannot be forged: the attacker model of docs/security.md, at the router.

The attacker can send any prediction and any feedback (any header, any body, replayed ids) but
cannot read the signing key. What must hold: an id exists only for a prediction a model made,
names the variant and version that made it, counts once, within its window, with an outcome the
objective allows; nothing the attacker sends can put an outcome on another variant's counts.
JSON edge cases are a 400, never a 500.
"""

from __future__ import annotations

import asyncio
import base64
import json
import random
from pathlib import Path

import pytest
from test_router_core import ADMIN, ARGS, KEY, Clock, Models, Monitor, body_of, split

from mlplane.serving.admin import admin_auth
from mlplane.serving.config import AppSettings
from mlplane.serving.feedback import FeedbackToken
from mlplane.serving.request_id import RequestIdSigner
from mlplane.serving.router import RouterCore


def make_router(clock: Clock, token: FeedbackToken | None = None, **args: object) -> RouterCore:
    settings = AppSettings.parse({**ARGS, **args})
    models = Models()
    signer = RequestIdSigner(KEY, settings.deployment)
    core = RouterCore(
        settings,
        signer,
        models.predict,
        models.info,
        Monitor(settings, clock),
        router_id="router-a",
        rng=random.Random(1),
        clock=clock,
        feedback_token=token,
        admin=admin_auth(settings.deployment, signer),
    )
    core.configure(split())
    core.fake_models = models  # type: ignore[attr-defined]
    return core


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def router(clock: Clock) -> RouterCore:
    return make_router(clock)


async def post(router, path, data, headers=None):
    return await router.handle("POST", path, "", headers or {}, body_of(data))


async def predict(router, user=None, data=None):
    headers = {"x-user-id": user} if user is not None else {}
    return await post(router, "/v1/predict", data or {"inputs": {"x": [1.0]}}, headers)


async def feedback(router, request_id, outcome=1, headers=None):
    return await post(
        router, "/v1/feedback", {"requestId": request_id, "outcome": outcome}, headers
    )


async def outcomes(router) -> dict[str, tuple[int, float]]:
    await router.flush()
    stats = (
        await router.handle(
            "GET", "/admin/v1/stats", "", {"authorization": f"Bearer {ADMIN}"}, body_of(b"")
        )
    ).json()
    return {r["variant"]: (r["outcomes"], r["outcomeSum"]) for r in stats["variants"]}


def user_for(router: RouterCore, variant: str) -> str:
    """A bucketing key the attacker found to land on ``variant`` (it can probe freely)."""
    from mlplane.serving.bucketing import assign

    _, weights = router._split  # type: ignore[misc]
    names = [w.name for w in weights]
    return next(f"u{i}" for i in range(1000) if names[assign(f"u{i}", weights, "ab1")] == variant)


# --- (a) an id only for a prediction a model made ----------------------------------------------


@pytest.mark.parametrize(
    "failure",
    ["bad-json", "bad-shape", "too-many-rows", "model-error", "model-unavailable", "crash"],
)
async def test_an_error_answer_carries_no_request_id(router, failure):
    from mlplane.serving.router import ModelUnavailable

    data: object = {"inputs": {"x": [1.0]}}
    if failure == "bad-json":
        data = b"{nope"
    elif failure == "bad-shape":
        data = {"rows": []}
    elif failure == "too-many-rows":
        data = {"inputs": {"x": [1.0] * (router.max_rows + 1)}}
    elif failure == "model-error":
        router.fake_models.answer = {"status": 422, "error": "column 'x' is missing"}
    elif failure == "model-unavailable":
        router.fake_models.raise_ = ModelUnavailable(503, "overloaded")
    else:
        router.fake_models.raise_ = RuntimeError("boom")
    answer = await post(router, "/v1/predict", data, {"x-user-id": "u1"})
    assert answer.status >= 400
    assert "requestId" not in answer.json()
    assert "x-mlplane-request-id" not in answer.headers


async def test_200_invalid_predictions_give_no_feedback_to_count(router):
    """The issue's attack: invalid predictions, each followed by a conversion for its id."""
    candidate_user = user_for(router, "candidate")
    accepted = 0
    for i in range(200):
        answer = await post(router, "/v1/predict", {"nope": i}, {"x-user-id": candidate_user})
        assert answer.status == 400
        request_id = answer.json().get("requestId") or answer.headers.get("x-mlplane-request-id")
        sent = await feedback(router, request_id or "")
        accepted += sent.status == 200
    assert accepted == 0
    assert all(n == 0 for n, _ in (await outcomes(router)).values())


async def test_an_id_names_the_variant_and_the_version_the_model_reported(router):
    router.fake_models.answer = {"status": 200, "predictions": [1.0], "version": 7}
    answer = await predict(router, "u1")
    info = router.signer.verify(answer.json()["requestId"])
    assert (info.variant, info.version) == (answer.json()["variant"], 7)
    assert router.fake_models.calls == [f"model-{['control', 'candidate'].index(info.variant)}"]


# --- (b) a forged header or id cannot choose a variant's counts --------------------------------


def _edit(request_id: str, **changes: object) -> str:
    """The attacker rewrites the readable payload of an id and keeps its tag."""
    payload, _, tag = request_id.partition(".")
    body = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    fields = ["fmt", "variant", "version", "deployment", "abtest", "issued_ms", "nonce"]
    for key, value in changes.items():
        body[fields.index(key)] = value
    raw = base64.urlsafe_b64encode(json.dumps(body, separators=(",", ":")).encode())
    return f"{raw.rstrip(b'=').decode()}.{tag}"


async def test_a_forged_header_cannot_choose_a_variants_counts(router):
    """The attacker's prediction is served by the candidate (its header chose that); whatever it
    does next — feedback under the control's bucketing key, an id edited to name the control,
    a fresh nonce to count again, an id from another deployment — the control's counts do not
    move, and the candidate's move once, for the one prediction its model made."""
    candidate_user, control_user = user_for(router, "candidate"), user_for(router, "control")
    served = (await predict(router, candidate_user)).json()
    assert served["variant"] == "candidate"
    request_id = served["requestId"]

    tries = [
        await feedback(router, _edit(request_id, variant="control")),
        await feedback(router, _edit(request_id, variant="control", version=3)),
        await feedback(router, _edit(request_id, nonce="00" * 12)),
        await feedback(router, _edit(request_id, abtest="another-test")),
        await feedback(router, _edit(request_id, issued_ms=10**13)),
        await feedback(
            router,
            RequestIdSigner(b"attacker-key-attacker-key", "ml-team/churn").issue(
                "control", 3, "ab1", 1.8e9
            ),
        ),
    ]
    assert [t.status for t in tries] == [404] * len(tries)
    first = await feedback(router, request_id, headers={"x-user-id": control_user})
    assert first.status == 200 and first.json()["variant"] == "candidate"
    again = await feedback(router, request_id, headers={"x-user-id": control_user})
    assert again.status == 409
    counts = await outcomes(router)
    assert counts["control"] == (0, 0.0)
    assert counts["candidate"] == (1, 1.0)


# --- (c) once per id, within a window ----------------------------------------------------------


async def test_a_replayed_id_is_counted_once_even_concurrently(router):
    request_id = (await predict(router, "u1")).json()["requestId"]
    answers = await asyncio.gather(*(feedback(router, request_id) for _ in range(20)))
    assert sorted(a.status for a in answers) == [200] + [409] * 19
    assert sum(n for n, _ in (await outcomes(router)).values()) == 1


async def test_an_id_past_its_window_is_refused(router, clock):
    request_id = (await predict(router, "u1")).json()["requestId"]
    clock.t += 86_400 + 1
    late = await feedback(router, request_id)
    assert late.status == 410 and late.json()["status_detail"] == "expired"
    assert sum(n for n, _ in (await outcomes(router)).values()) == 0


# --- (d) outcomes bounded by the objective; (e) no overflow -----------------------------------


async def test_an_out_of_range_outcome_is_refused_naming_the_field(router):
    router.configure({**split(objective="Mean"), "outcome_range": [0, 100]})
    ids = [(await predict(router, f"u{i}")).json()["requestId"] for i in range(4)]
    for value in (101, -1, 1e200, 1e308):
        refused = await feedback(router, ids[0], outcome=value)
        assert refused.status == 400, value
        assert "'outcome'" in refused.json()["error"]
    assert "outcomeRange [0, 100]" in (await feedback(router, ids[0], outcome=101)).json()["error"]
    assert (await feedback(router, ids[0], outcome=100)).status == 200
    router.configure(split(objective="Conversion"))
    assert (await feedback(router, ids[1], outcome=0.5)).status == 400
    assert (await feedback(router, ids[1], outcome=True)).status == 200


def test_a_mean_objective_without_a_range_is_a_config_error():
    from mlplane.serving.config import ConfigError, RouterConfig

    with pytest.raises(ConfigError, match="outcome_range is required"):
        RouterConfig.parse(split(objective="Mean"), ["model-0", "model-1"])
    with pytest.raises(ConfigError, match="min < max"):
        RouterConfig.parse(
            {**split(objective="Mean"), "outcome_range": [5, 5]}, ["model-0", "model-1"]
        )


async def test_1e308_and_1e200_outcomes_never_overflow_the_sums(router):
    """Without an objective bound (no A/B test), huge outcomes are refused by the global cap,
    so the sum of squares the operator reads can never become inf (read as 0 before)."""
    router.configure(split(objective=None))
    ids = [(await predict(router, f"u{i}")).json()["requestId"] for i in range(3)]
    for request_id, value in zip(ids, (1e308, 1e200, 1e12), strict=True):
        answer = await feedback(router, request_id, outcome=value)
        assert answer.status == (200 if value == 1e12 else 400), value
    await router.flush()
    stats = (
        await router.handle(
            "GET", "/admin/v1/stats", "", {"authorization": f"Bearer {ADMIN}"}, body_of(b"")
        )
    ).json()
    sums = [(r["outcomeSum"], r["outcomeSumSquares"]) for r in stats["variants"]]
    assert (1e12, 1e24) in sums
    assert all(isinstance(s, float) and isinstance(q, float) for s, q in sums)


# --- (f) optional feedback authentication -----------------------------------------------------


async def test_feedback_needs_the_token_when_the_app_has_one(clock, tmp_path: Path):
    path = tmp_path / "token"
    path.write_text("s3cret-token-value\n")
    router = make_router(clock, FeedbackToken(path, recheck_s=0.0))
    request_id = (await predict(router, "u1")).json()["requestId"]
    for headers in ({}, {"authorization": "Bearer wrong"}, {"authorization": "s3cret-token-value"}):
        refused = await feedback(router, request_id, headers=headers)
        assert refused.status == 401 and refused.headers["www-authenticate"].startswith("Bearer")
    assert sum(n for n, _ in (await outcomes(router)).values()) == 0
    ok = {"authorization": "Bearer s3cret-token-value"}
    assert (await feedback(router, request_id, headers=ok)).status == 200
    path.write_text("rotated-token-value")  # a rotated Secret is followed without a restart
    other = (await predict(router, "u2")).json()["requestId"]
    assert (await feedback(router, other, headers=ok)).status == 401
    new = {"authorization": "Bearer rotated-token-value"}
    assert (await feedback(router, other, headers=new)).status == 200


def test_an_unreadable_token_file_stops_the_replica(tmp_path: Path):
    from mlplane.serving.app import feedback_token
    from mlplane.serving.config import ConfigError

    settings = AppSettings.parse({**ARGS, "feedback_token_file": str(tmp_path / "missing")})
    with pytest.raises(ConfigError, match="feedback_token_file"):
        feedback_token(settings)
    assert feedback_token(AppSettings.parse(ARGS)) is None


# --- JSON edges: a 400 with a message, never a 500 ---------------------------------------------

EDGES = {
    "huge-integer": b'{"inputs": {"x": [' + b"9" * 5000 + b"]}}",
    "deep-nesting": b'{"inputs": {"x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}}",
    "invalid-utf8": b'{"inputs": {"x": ["\xff\xfe"]}}',
    "truncated": b'{"inputs": {"x": [1.0',
    "not-an-object": b"[1, 2]",
    "nan-literal": b'{"inputs": {"x": [NaN]}}',
    "infinity-literal": b'{"inputs": {"x": [1.0, -Infinity]}}',
    "float-overflow": b'{"inputs": {"x": [1e999]}}',
    "nested-nan": b'{"inputs": {"x": [[1.0, NaN]]}}',
}


@pytest.mark.parametrize("name", sorted(EDGES))
async def test_json_edges_on_predict_are_a_400_with_a_message(router, name):
    answer = await post(router, "/v1/predict", EDGES[name], {"x-user-id": "u1"})
    assert answer.status == 400, answer.body
    assert answer.json()["error"]
    assert router.fake_models.calls == []


@pytest.mark.parametrize("name", sorted(EDGES))
async def test_json_edges_on_feedback_are_a_400_with_a_message(router, name):
    body = EDGES[name].replace(b'"inputs": {"x": ', b'"requestId": "x", "outcome": ')[:-1]
    answer = await post(router, "/v1/feedback", body)
    assert answer.status == 400, (body[:80], answer.body)
    assert answer.json()["error"]


async def test_non_finite_features_name_the_column(router):
    answer = await post(router, "/v1/predict", EDGES["nan-literal"])
    assert "column 'x' row 0" in answer.json()["error"]
    assert "allowNonFiniteInputs" in answer.json()["error"]


async def test_a_model_that_declares_non_finite_inputs_gets_them(clock):
    router = make_router(clock, allow_non_finite=True)
    answer = await post(router, "/v1/predict", EDGES["infinity-literal"])
    assert answer.status == 200
    assert answer.json()["predictions"] == [1.0, None]  # the answer's -inf is JSON null
    assert router.fake_models.calls == ["model-0"] or router.fake_models.calls == ["model-1"]
