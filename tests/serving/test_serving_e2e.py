"""The serving app for real: Ray Serve, MLflow (SQLite), the builder's serveConfigV2 over REST.

One Ray head (``ray start --block`` in its own session, stopped by process group) and one MLflow
registry per module. The app is deployed exactly as the local platform does it
(:mod:`mlplane.serving.deploy`): the builder's ``serveConfigV2``, fitted to two cores, PUT to the
Serve REST API. Tests run in order and build on each other (version change, then A/B split).

Run inside a private network namespace (Ray listens on every interface)::

    unshare -n bash -c 'ip link set lo up; .venv/bin/pytest -m e2e tests/serving'
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from mlplane.crds.validate import parse
from mlplane.operator.builders import Variant, build_rayservice
from mlplane.operator.builders.signing import SigningKeys
from mlplane.operator.config import OperatorConfig
from mlplane.operator.platforms.local_signing import LocalSigningKeys
from mlplane.operator.registry import process_uris
from mlplane.serving.admin import admin_token
from mlplane.serving.deploy import (
    get_applications,
    local_serve_config,
    put_applications,
    serve_config_of,
    wait_running,
)
from mlplane.serving.request_id import InvalidRequestId, RequestIdSigner
from mlplane.serving.request_id import SigningKeys as Keys

# The tests tell one story on one running app, in file order (modules themselves are shuffled).
pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900), pytest.mark.random_order(disabled=True)]

MODEL = "churn-e2e"
UID = "6a1f3c2e-0000-4000-8000-0000000000e2"
FEATURES = ("tenure", "spend", "visits", "plan")
DEPLOY_TIMEOUT = 300.0
PREFIX = "/e2e/churn"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def group_alive(pgid: int) -> bool:
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if fields[0] != "Z" and int(fields[2]) == pgid:
            return True
    return False


def wait_for(condition, timeout: float, what: str, interval: float = 0.25):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            last = condition()
        except (urllib.error.URLError, OSError, ValueError) as exc:
            last = exc
        else:
            if last:
                return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:g} s waiting for {what}; last: {last!r}")


# --- HTTP --------------------------------------------------------------------------------------


class Answer:
    def __init__(self, status: int, body: bytes, headers: dict[str, str]) -> None:
        self.status = status
        self.body = body
        self.headers = {k.lower(): v for k, v in headers.items()}

    def json(self):
        return json.loads(self.body)


def http(method: str, url: str, body=None, headers=None, raw: bytes | None = None) -> Answer:
    data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    request = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return Answer(response.status, response.read(), dict(response.headers))
    except urllib.error.HTTPError as exc:
        return Answer(exc.code, exc.read(), dict(exc.headers))


def post_oversized(base: str, path: str, size: int) -> int:
    """Status of a POST whose body the server refuses before reading it all.

    The server may answer 413 and close while the body is still being sent, which makes a
    plain client fail with a broken pipe; read the answer from the socket regardless.
    """
    host, port = base.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=60) as sock:
        head = f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Length: {size}\r\n\r\n"
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            sock.sendall(head.encode() + b"x" * size)
        data = b""
        while b"\r\n" not in data:
            chunk = sock.recv(4096)
            if not chunk:
                break
            data += chunk
    return int(data.split(b" ", 2)[1])


# --- fixtures ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def workdir():
    # Short: Ray's unix socket paths must stay under ~107 characters.
    path = Path(tempfile.mkdtemp(prefix="mlps-", dir="/tmp"))
    yield path
    if os.environ.get("MLPLANE_E2E_KEEP"):  # keep Ray's and Serve's logs for debugging
        print(f"e2e files kept in {path}")
    else:
        shutil.rmtree(path, ignore_errors=True)


def _frame(rng: np.random.Generator, n: int, shift: float = 0.0):
    import pandas as pd

    return pd.DataFrame(
        {
            "tenure": rng.normal(24 + shift * 12, 12, n).round(1),
            "spend": rng.gamma(2.0, 30.0, n),
            "visits": rng.poisson(5, n).astype("int64"),
            "plan": rng.choice(["free", "pro", "team"], n),
        }
    )


@pytest.fixture(scope="module")
def registry(workdir):
    """Two registered versions of a small sklearn pipeline, each with a reference profile."""
    import mlflow
    from mlflow.models import infer_signature
    from sklearn.compose import ColumnTransformer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import OneHotEncoder

    from mlplane.monitoring.profile import PROFILE_ARTIFACT_PATH, build_profile

    uri = f"sqlite:///{workdir}/mlflow.db"
    with process_uris(uri):  # MLflow's globals, restored after
        experiment = mlflow.create_experiment(
            "serving-e2e", artifact_location=f"file://{workdir}/art"
        )
        rng = np.random.default_rng(7)
        frame = _frame(rng, 600)
        for version, c in ((1, 0.05), (2, 5.0)):
            labels = (frame["tenure"] + rng.normal(0, 5, len(frame)) > 24).astype(int)
            model = make_pipeline(
                ColumnTransformer(
                    [("plan", OneHotEncoder(handle_unknown="ignore"), ["plan"])],
                    remainder="passthrough",
                ),
                LogisticRegression(C=c, max_iter=500),
            ).fit(frame, labels)
            with mlflow.start_run(experiment_id=experiment):
                info = mlflow.sklearn.log_model(
                    model,
                    name="model",
                    signature=infer_signature(frame, model.predict(frame)),
                    registered_model_name=MODEL,
                    pip_requirements=["scikit-learn"],
                )
                mlflow.log_text(build_profile(frame).to_json(), PROFILE_ARTIFACT_PATH)
            assert int(info.registered_model_version) == version
    return uri


@pytest.fixture(scope="module")
def ray_cluster(workdir):
    """A Ray head with the dashboard (Serve REST API); yields (dashboard URL, HTTP port)."""
    ports = {name: free_port() for name in ("gcs", "dashboard", "client")}
    token = secrets.token_hex(32)
    patch = pytest.MonkeyPatch()
    patch.setenv("RAY_AUTH_TOKEN", token)
    log = (workdir / "ray.log").open("wb")
    ray = Path(sys.executable).parent / "ray"
    process = subprocess.Popen(
        [
            str(ray),
            "start",
            "--head",
            "--block",
            "--disable-usage-stats",
            "--node-ip-address=127.0.0.1",
            f"--port={ports['gcs']}",
            "--dashboard-host=127.0.0.1",
            f"--dashboard-port={ports['dashboard']}",
            f"--ray-client-server-port={ports['client']}",
            "--include-dashboard=true",
            "--num-cpus=2",
            f"--temp-dir={workdir / 'ray'}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        # Token auth with a token of our own (the deploy helpers read RAY_AUTH_TOKEN), not
        # whatever ~/.ray/auth_token holds on this machine.
        env={**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token},
    )
    dashboard = f"http://127.0.0.1:{ports['dashboard']}"
    try:
        wait_for(
            lambda: process.poll() is None and get_applications(dashboard) is not None,
            120,
            "the Ray dashboard's Serve API",
            interval=1.0,
        )
        # Chosen now, not before Ray started: Ray takes random ports of its own.
        yield dashboard, free_port()
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        while group_alive(process.pid) and time.monotonic() < deadline:
            time.sleep(0.5)
        if group_alive(process.pid):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)
        log.close()
        patch.undo()


def _md():
    body = {
        "apiVersion": "mlplane.dev/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": "churn", "namespace": "e2e", "uid": UID},
        "spec": {
            "model": {"name": MODEL, "alias": "champion"},
            "replicas": {"min": 1, "max": 1},
            "resources": {"cpu": "250m", "memory": "512Mi"},
            "batching": {"maxBatchSize": 4, "batchWaitTimeoutMs": 5},
            "slo": {"availability": "99.9", "latencyP99Ms": 250},
            "monitoring": {"drift": {"enabled": True, "window": "1m", "minSamples": 20}},
        },
    }
    return parse(body)


class App:
    """Builds configs with the operator's builder and deploys them like the local platform."""

    def __init__(self, dashboard: str, port: int, tracking_uri: str, keys_root: Path) -> None:
        self.dashboard = dashboard
        # The request-id keys, in a folder laid out like a mounted Secret (the local platform's).
        self.keys = LocalSigningKeys(keys_root)
        self.keys.write("e2e", "churn", UID, SigningKeys(secrets.token_hex(32)))
        # Mounted like the local platform mounts one of several deployments.
        self.base = f"http://127.0.0.1:{port}{PREFIX}"
        self.port = port
        self.config = OperatorConfig(mlflow_tracking_uri=tracking_uri)

    def serve_config(self, version: int, variants=None, **kwargs) -> dict:
        rayservice = build_rayservice(
            _md(), version, self.config, owner_uid=UID, variants=variants, **kwargs
        )
        config = local_serve_config(
            serve_config_of(rayservice),
            port=self.port,
            num_cpus=0.25,
            name="e2e-churn",
            route_prefix=PREFIX,
            signing_keys=str(self.keys.directory("e2e", "churn")),
        )
        # Windows of 2 s instead of the CRD's 60 s minimum, so a test sees evaluations.
        config["applications"][0]["args"]["drift"]["window_s"] = 2.0
        return config

    def deploy(self, config: dict) -> None:
        put_applications(self.dashboard, config)
        wait_running(self.dashboard, config, timeout=DEPLOY_TIMEOUT)
        wait_for(self.ready, 120, "every variant to serve its configured version")

    def ready(self) -> bool:
        answer = self.admin("/v1/models")
        return answer.status == 200 and all(v["ready"] for v in answer.json()["variants"])

    def admin(self, path: str) -> Answer:
        """An admin endpoint, as the operator reads it: ``/admin`` + path with the admin
        token derived from the deployment's signing key."""
        _, keys = self.keys.read("e2e", "churn")
        assert keys is not None
        token = admin_token(keys.current.encode(), "e2e/churn")
        return http("GET", f"{self.base}/admin{path}", headers={"authorization": f"Bearer {token}"})

    def predict(self, rows, headers=None) -> Answer:
        return http("POST", f"{self.base}/v1/predict", {"records": rows}, headers)


@pytest.fixture(scope="module")
def app(ray_cluster, registry, tmp_path_factory):
    dashboard, port = ray_cluster
    app = App(dashboard, port, registry, tmp_path_factory.mktemp("keys"))
    app.deploy(app.serve_config(1))
    return app


def rows(n: int = 1, seed: int = 0, shift: float = 0.0) -> list[dict]:
    return _frame(np.random.default_rng(seed), n, shift).to_dict(orient="records")


# --- tests -------------------------------------------------------------------------------------


def test_predict_answers_with_version_variant_and_request_id(app):
    answer = app.predict(rows(3))
    assert answer.status == 200, answer.body
    body = answer.json()
    assert len(body["predictions"]) == 3
    assert set(body["predictions"]) <= {0, 1}
    assert (body["variant"], body["version"], body["model"]) == ("primary", 1, MODEL)
    assert answer.headers["x-mlplane-variant"] == "primary"
    assert answer.headers["x-mlplane-model-version"] == "1"
    assert answer.headers["x-mlplane-request-id"] == body["requestId"]
    # The other two body shapes give the same predictions.
    data = rows(3)
    split = http(
        "POST",
        f"{app.base}/v1/predict",
        {"columns": list(FEATURES), "data": [[r[f] for f in FEATURES] for r in data]},
    )
    columnar = http(
        "POST", f"{app.base}/v1/predict", {"inputs": {f: [r[f] for r in data] for f in FEATURES}}
    )
    assert split.json()["predictions"] == columnar.json()["predictions"] == body["predictions"]
    health = http("GET", f"{app.base}/healthz")
    assert (health.status, health.json()["status"]) == (200, "ok")
    (variant,) = app.admin("/v1/models").json()["variants"]
    assert (variant["name"], variant["version"], variant["servedVersion"]) == ("primary", 1, 1)
    # The admin endpoints are off the public path, and refuse a caller without the token.
    for path in ("/v1/models", "/v1/stats", "/v1/drift", "/metrics"):
        assert http("GET", f"{app.base}{path}").status == 404, path
        assert http("GET", f"{app.base}/admin{path}").status == 401, path


@pytest.mark.parametrize(
    ("mutate", "status", "needle"),
    [
        (lambda r: r.pop("spend"), 422, "'spend'"),
        (lambda r: r.update(colour="red"), 422, "'colour'"),
        (lambda r: r.update(visits="many"), 422, "'visits'"),
        (lambda r: r.update(tenure=True), 422, "'tenure'"),
    ],
    ids=["missing", "extra", "wrong-type", "bool-for-number"],
)
def test_bad_input_is_a_4xx_naming_the_column(app, mutate, status, needle):
    record = rows(1)[0]
    mutate(record)
    answer = app.predict([record])
    assert answer.status == status, answer.body
    assert needle in answer.json()["error"]
    assert answer.json()["variant"] == "primary"


def test_malformed_and_oversized_bodies(app):
    url = f"{app.base}/v1/predict"
    assert http("POST", url, raw=b"{not json").status == 400
    assert http("POST", url, {"rows": []}).status == 400
    assert post_oversized(f"http://127.0.0.1:{app.port}", f"{PREFIX}/v1/predict", 2**20 + 10) == 413
    assert app.predict(rows(1) * 10_001).status == 413
    assert http("GET", f"{app.base}/v1/nothing").status == 404
    # The replica survived all of it.
    assert app.predict(rows(1)).status == 200


def test_version_change_is_in_place_with_zero_failed_requests(app):
    before = app.admin("/v1/models").json()["variants"][0]["replica"]
    config = app.serve_config(2)
    with Traffic(app) as traffic:
        put_applications(app.dashboard, config)
        wait_for(
            lambda: sum(1 for _, v in traffic.seen[-20:] if v == 2) == 20,
            DEPLOY_TIMEOUT,
            "20 answers in a row from version 2",
        )
    failures = traffic.failures()
    assert failures == [], f"{len(failures)} failed requests of {len(traffic.seen)}"
    versions = [v for _, v in traffic.seen]
    assert versions[0] == 1 and versions[-1] == 2
    assert set(versions) == {1, 2}
    wait_running(app.dashboard, config, timeout=60)
    after = app.admin("/v1/models").json()["variants"][0]
    assert (after["servedVersion"], after["replica"]) == (2, before), "replica was restarted"


class Traffic:
    """A bounded background request loop recording every status and served version."""

    def __init__(self, app: App, threads: int = 2) -> None:
        self.app = app
        self.seen: list[tuple[int, int | None]] = []
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._loop, args=(k,)) for k in range(threads)]

    def _loop(self, seed: int) -> None:
        i = 0
        while not self._stop.is_set() and len(self.seen) < 5000:
            answer = self.app.predict(rows(1, seed=seed * 100_000 + i))
            body = answer.json() if answer.body.startswith(b"{") else {}
            self.seen.append((answer.status, body.get("version")))
            if answer.status != 200:
                self.errors.append(answer.body[:300].decode(errors="replace"))
            i += 1

    def __enter__(self) -> Traffic:
        for t in self._threads:
            t.start()
        wait_for(lambda: len(self.seen) >= 20, 60, "traffic before the change")
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=120)

    def failures(self) -> list[int]:
        return [s for s, _ in self.seen if s != 200]


@pytest.fixture(scope="module")
def ab(app):
    """An A/B split (a redeploy: a second model deployment), counting requests from here."""
    app.ab_variants = lambda w: [Variant("control", 2, w[0]), Variant("candidate", 1, w[1])]
    config = app.serve_config(
        2, app.ab_variants((50, 50)), bucketing_header="x-user-id", abtest="ab-e2e"
    )
    with Traffic(app) as traffic:
        app.deploy(config)
    app.redeploy_traffic = traffic
    # Counts from here on: wait until the redeploy traffic has been shipped to the monitor.
    app.baseline = wait_for(lambda: stable_scrape(app), 60, "settled counters")
    app.sent = 0
    return app


def test_starting_an_ab_test_fails_no_request(ab):
    """Adding a model deployment changes the app's args: Serve restarts replicas, rolling."""
    failures = ab.redeploy_traffic.failures()
    traffic = ab.redeploy_traffic
    assert failures == [], f"{len(failures)} failed of {len(traffic.seen)}: {traffic.errors}"


def _predict_counted(app, headers=None, n=1, seed=0) -> Answer:
    answer = app.predict(rows(n, seed=seed), headers)
    app.sent += 1
    return answer


def test_ab_split_is_sticky_and_a_weight_change_restarts_nothing(ab):
    assignment = {}
    for user in range(40):
        got = {
            _predict_counted(ab, {"x-user-id": f"user-{user}"}, seed=user).json()["variant"]
            for _ in range(3)
        }
        assert len(got) == 1, f"user-{user} met {got}"
        assignment[user] = got.pop()
    assert set(assignment.values()) == {"control", "candidate"}
    anonymous = {_predict_counted(ab, seed=k).json()["variant"] for k in range(30)}
    assert anonymous == {"control", "candidate"}

    models = ab.admin("/v1/models").json()
    replicas = {v["name"]: v["replica"] for v in models["variants"]}
    config = ab.serve_config(
        2, ab.ab_variants((30, 70)), bucketing_header="x-user-id", abtest="ab-e2e"
    )
    put_applications(ab.dashboard, config)
    wait_running(ab.dashboard, config, timeout=DEPLOY_TIMEOUT)
    models = ab.admin("/v1/models").json()
    assert [v["weight"] for v in models["variants"]] == [30, 70]
    assert {v["name"]: v["replica"] for v in models["variants"]} == replicas
    after = {
        user: _predict_counted(ab, {"x-user-id": f"user-{user}"}, seed=user).json()["variant"]
        for user in assignment
    }
    # Only control → candidate moves: the candidate's share grew.
    assert all(after[u] == "candidate" for u, v in assignment.items() if v == "candidate")
    assert any(after[u] != v for u, v in assignment.items())


def test_feedback_is_counted_once_for_the_serving_variant(ab):
    answer = _predict_counted(ab, {"x-user-id": "user-feedback"})
    request_id, variant = answer.json()["requestId"], answer.json()["variant"]
    url = f"{ab.base}/v1/feedback"
    first = http("POST", url, {"requestId": request_id, "outcome": 1})
    assert first.status == 200, first.body
    assert (first.json()["variant"], first.json()["abtest"]) == (variant, "ab-e2e")
    assert http("POST", url, {"requestId": request_id, "outcome": 1}).status == 409
    forged = request_id[:-4] + ("AAAA" if not request_id.endswith("AAAA") else "BBBB")
    assert http("POST", url, {"requestId": forged, "outcome": 1}).status == 404
    bad = http("POST", url, {"requestId": request_id, "outcome": "yes"})
    assert bad.status == 400 and "'outcome'" in bad.json()["error"]
    stats = ab.admin("/v1/stats").json()
    by_variant = {row["variant"]: row for row in stats["variants"]}
    assert by_variant[variant]["outcomes"] == 1
    assert by_variant[variant]["outcomeSum"] == 1.0
    assert sum(row["outcomes"] for row in stats["variants"]) == 1


def _scrape(app: App) -> dict[tuple[str, tuple], float]:
    text = app.admin("/metrics").body.decode()
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def stable_scrape(app: App):
    """A scrape whose request total did not move over two flush intervals (else None)."""
    first = _scrape(app)
    time.sleep(1.2)  # the routers ship counts every 0.5 s
    second = _scrape(app)
    same = _total(first, "mlplane_requests_total") == _total(second, "mlplane_requests_total")
    return second if same else None


def _total(samples, name, **labels) -> float:
    return sum(
        v
        for (n, lbl), v in samples.items()
        if n == name and all(dict(lbl).get(k) == x for k, x in labels.items())
    )


def test_metrics_and_stats_count_every_request_once(ab):
    for k in range(20):
        _predict_counted(ab, {"x-user-id": f"m-{k}"}, seed=k)

    def new(samples, name, **labels) -> float:
        return _total(samples, name, **labels) - _total(ab.baseline, name, **labels)

    def counted():
        samples = _scrape(ab)
        return samples if new(samples, "mlplane_requests_total") == ab.sent else None

    samples = wait_for(counted, 30, f"{ab.sent} more requests in mlplane_requests_total")
    dep = {"namespace": "e2e", "deployment": "churn"}
    assert new(samples, "mlplane_requests_total", code="2xx", **dep) == ab.sent
    assert new(samples, "mlplane_request_duration_seconds_count", **dep) == ab.sent
    assert "mlplane_requests_slow_total" in {n for n, _ in samples}
    assert new(samples, "mlplane_abtest_requests_total", abtest="ab-e2e") == ab.sent
    assert new(samples, "mlplane_abtest_outcomes_total", abtest="ab-e2e") == 1
    assert _total(samples, "mlplane_abtest_errors_total", abtest="ab-e2e") == 0
    stats = ab.admin("/v1/stats").json()
    assert sum(row["requests"] for row in stats["variants"]) == _total(
        samples, "mlplane_abtest_requests_total", abtest="ab-e2e"
    )
    assert {row["weight"] for row in stats["variants"]} == {30, 70}
    assert all(row["latencyP99Ms"] > 0 for row in stats["variants"])


def test_drift_tap_evaluates_windows_against_the_reference(ab):
    shifted_from = time.time()

    def evaluated():
        for k in range(10):
            ab.predict(rows(5, seed=1000 + k, shift=1.0))
        report = ab.admin("/v1/drift").json()
        last = report["lastEvaluation"]
        # A window holding only shifted traffic (earlier ones mix in the tests above).
        fresh = last is not None and last["windowStart"] >= shifted_from
        return report if fresh and last["hasVerdict"] else None

    report = wait_for(evaluated, 60, "a drift evaluation with a verdict", interval=0.1)
    assert report["status"] == "Ok"
    assert report["referenceVersion"] == 2
    assert "tenure" in report["lastEvaluation"]["drifted"]
    samples = _scrape(ab)
    assert _total(samples, "mlplane_feature_drifted", feature="tenure") == 1
    assert _total(samples, "mlplane_feature_drift_score", feature="tenure", method="psi") > 0
    assert _total(samples, "mlplane_drift_last_evaluation_timestamp_seconds") > 0


def test_a_key_rotation_under_the_running_app_loses_no_feedback(ab):
    """The operator's two steps, as the kubelet would update the mounted Secret, under the
    running app (nothing restarts): a staged key is accepted at once but signs nothing; once
    promoted it signs new ids, and feedback for ids issued before is still accepted."""
    _, before = ab.keys.read("e2e", "churn")
    first = _predict_counted(ab, {"x-user-id": "user-rotation"}).json()
    fresh = secrets.token_hex(32)
    old_key = RequestIdSigner(Keys(before.current.encode()), "e2e/churn")
    new_key = RequestIdSigner(Keys(fresh.encode()), "e2e/churn")
    url = f"{ab.base}/v1/feedback"

    # Step 1: staged. An id another pod would sign with the new key is accepted here...
    staged = SigningKeys(before.current, None, fresh, "e2e", "2026-12-03T09:00:00Z")
    ab.keys.write("e2e", "churn", UID, staged)
    minted = new_key.issue(first["variant"], first["version"], "ab-e2e", time.time())
    answer = wait_for(
        lambda: (a := http("POST", url, {"requestId": minted, "outcome": 1})).status == 200 and a,
        30,
        "feedback for an id signed with the staged key",
    )
    assert answer.json()["variant"] == first["variant"]
    # ... while this app still signs with the current key.
    signed = _predict_counted(ab, {"x-user-id": "user-rotation"}).json()["requestId"]
    assert old_key.verify(signed).variant == first["variant"]

    # Step 2: promoted.
    ab.keys.write("e2e", "churn", UID, SigningKeys(fresh, before.current, None, "e2e"))

    def signed_with_new_key() -> str | None:
        request_id = _predict_counted(ab, {"x-user-id": "user-rotation"}).json()["requestId"]
        try:
            new_key.verify(request_id)
        except InvalidRequestId:
            return None
        return request_id

    new_id = wait_for(signed_with_new_key, 30, "ids signed with the promoted key")
    with pytest.raises(InvalidRequestId):
        old_key.verify(new_id)
    for request_id in (first["requestId"], new_id):
        answer = http("POST", url, {"requestId": request_id, "outcome": 1})
        assert answer.status == 200, answer.body
