"""Drift, SLOs and dashboards on the local platform, for real: a Prometheus scraping the
serving app and the runner, with mlplane's generated rules.

One story, in order (each test builds on the previous one):

1. two versions of the example churn model are registered, each with its training data's
   reference profile; a ModelDeployment watches drift (1-minute windows, ``onDrift: Retrain``)
   and an ABTest splits its traffic between the versions; a bounded request loop sends rows
   drawn like the training data, with feedback;
2. the traffic shifts (``monthly_spend`` doubles): the drift is in the ModelDeployment's status
   (``Drifted``, the feature named) within two windows, and in Prometheus;
3. drift persisting for two windows creates one retraining TrainingJob (deterministic name,
   owned by the ModelDeployment), which trains and registers a new version;
4. every panel of every generated Grafana dashboard gets data from Prometheus.

Runs inside a private network namespace (.ci/run does it).
"""

from __future__ import annotations

import json
import re
import shutil
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from local_ports import isolated_ports
from request_ledger import LoopThread, RequestLedger

from mlplane.operator.builders.retrain import retrain_name
from mlplane.operator.platforms.local import LocalPlatform
from mlplane.operator.platforms.store import NotFound, Store
from mlplane.operator.registry import process_uris

# One story per module (a module-scoped platform): modules are shuffled, tests are not.
pytestmark = [pytest.mark.e2e, pytest.mark.timeout(1200), pytest.mark.random_order(disabled=True)]
MODEL = "churn-monitoring-e2e"
WINDOW_S = 60.0
DASHBOARDS = Path(__file__).resolve().parents[2] / "monitoring" / "generated" / "dashboards"


def wait(condition: Callable[[], Any], timeout: float, what: str, every: float = 1.0) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        try:
            last = condition()
        except (urllib.error.URLError, OSError, ValueError, KeyError) as exc:
            last = exc
        else:
            if last:
                return last
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}: {last!r}")
        time.sleep(every)


def post(url: str, body: Any, headers: dict[str, str] | None = None) -> tuple[int, dict]:
    request = urllib.request.Request(
        url, json.dumps(body).encode(), {"content-type": "application/json", **(headers or {})},
        method="POST",
    )  # fmt: skip
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, {"error": exc.read()[:300].decode(errors="replace")}


def prom_query(base: str, expr: str) -> list[dict[str, Any]]:
    url = f"{base}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    with urllib.request.urlopen(url, timeout=30) as response:
        answer = json.loads(response.read())
    assert answer["status"] == "success", answer
    return answer["data"]["result"]


@pytest.fixture(scope="module")
def platform(tmp_path_factory) -> Iterator[LocalPlatform]:
    ports = isolated_ports()
    assert shutil.which("prometheus"), (
        "needs Prometheus on PATH (Debian's `prometheus` package; scripts/setup.sh installs it)"
    )
    local = LocalPlatform(tmp_path_factory.mktemp("platform") / "state", ports)
    local.up(num_cpus=2)
    try:
        yield local
    finally:
        local.down()


def frame(n: int, seed: int, spend_factor: float = 1.0) -> Any:
    from mlplane.training.examples.sklearn_tabular import FEATURES, make_data

    data, labels = make_data(n, seed)
    data = data[FEATURES].copy()
    data["monthly_spend"] = data["monthly_spend"] * spend_factor
    return data, labels


@pytest.fixture(scope="module")
def registered(platform: LocalPlatform) -> str:
    """Versions 1 and 2 of a churn classifier, each with its reference profile; champion -> 1."""
    import mlflow
    from mlflow.tracking import MlflowClient
    from sklearn.compose import ColumnTransformer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import OneHotEncoder

    from mlplane.monitoring.profile import PROFILE_ARTIFACT_PATH, build_profile

    with process_uris(platform.mlflow_uri):  # MLflow's globals, restored after
        mlflow.set_experiment("monitoring-e2e")
        data, labels = frame(2000, seed=5)
        for c in (0.1, 1.0):
            model = make_pipeline(
                ColumnTransformer([("cat", OneHotEncoder(handle_unknown="ignore"),
                                    ["plan", "region"])], remainder="passthrough"),
                LogisticRegression(C=c, max_iter=500),
            ).fit(data, labels)  # fmt: skip
            with mlflow.start_run():
                mlflow.sklearn.log_model(model, name="model", registered_model_name=MODEL,
                                         input_example=data.head(2),
                                         pip_requirements=["scikit-learn"])  # fmt: skip
                mlflow.log_text(build_profile(data).to_json(), PROFILE_ARTIFACT_PATH)
    MlflowClient(platform.mlflow_uri).set_registered_model_alias(MODEL, "champion", "1")
    return MODEL


def resources() -> list[dict[str, Any]]:
    md = {
        "apiVersion": "mlplane.dev/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": "churn", "namespace": "default"},
        "spec": {
            "model": {"name": MODEL, "alias": "champion"},
            "replicas": {"min": 1, "max": 1},
            "resources": {"cpu": "1", "memory": "1Gi"},
            "slo": {"availability": "99.5", "latencyP99Ms": 2000},
            "monitoring": {"drift": {
                "enabled": True, "window": "1m", "minSamples": 100, "consecutiveWindows": 2,
                "onDrift": "Retrain",
                "retrain": {"minInterval": "1h", "trainingJobTemplate": {"spec": {
                    "entrypoint": "python -m mlplane.training.examples.sklearn_tabular "
                                  "--steps 10 --checkpoint-every 5",
                    "backoffLimit": 0,
                    "mlflow": {"experiment": "monitoring-e2e-retrain",
                               "registeredModel": MODEL, "alias": "retrained"},
                }}},
            }},
        },
    }  # fmt: skip
    ab = {
        "apiVersion": "mlplane.dev/v1alpha1",
        "kind": "ABTest",
        "metadata": {"name": "c-vs-1", "namespace": "default"},
        "spec": {
            "deployment": "churn",
            "variants": [
                {"name": "control", "model": {"alias": "champion"}, "weight": 50},
                {"name": "candidate", "model": {"version": 2}, "weight": 50},
            ],
            "bucketing": {"header": "x-user-id"},
            "analysis": {"alpha": "0.001", "minSamplesPerVariant": 30, "maxDuration": "1h",
                         "interval": "5s"},
            "guardrails": [{"metric": "ErrorRate", "threshold": "0.5"}],
            "onConclusion": {"promote": False, "alias": "champion"},
        },
    }  # fmt: skip
    return [md, ab]


class Traffic:
    """One thread of requests (users 0..999, sticky), feedback for every answer (0.3 for both
    variants: the A/B test should not conclude), rows drawn like the training data until
    :meth:`shift` doubles ``monthly_spend``."""

    def __init__(self, url: str) -> None:
        self.url = url
        #: Every prediction and every feedback sent, answered or failed (never lost).
        self.predictions, self.feedback = RequestLedger(), RequestLedger()
        self.factor = 1.0
        self.shifted_at: float | None = None
        self._loop = LoopThread(self._step, limit=50_000, name="traffic")
        self._rng = np.random.default_rng(3)

    def shift(self) -> None:
        self.factor = 2.0
        self.shifted_at = time.time()

    def _step(self, i: int) -> None:
        data, _ = frame(8, seed=1000 + i, spend_factor=self.factor)
        user = {"x-user-id": f"user-{i % 1000}"}
        answer = self.predictions.post(self.url + "/v1/predict",
                                       {"records": data.to_dict("records")}, user)  # fmt: skip
        if answer.status == 200 and answer.body.get("requestId"):
            outcome = int(self._rng.random() < 0.3)
            feedback = {"requestId": answer.body["requestId"], "outcome": outcome}
            self.feedback.post(self.url + "/v1/feedback", feedback)

    def start(self) -> Traffic:
        self._loop.start()
        return self

    def check(self) -> None:
        """All counted, none failed, all 200; and the loop is still alive."""
        assert self._loop.alive, f"the request loop died: {self._loop.error!r}"
        self.predictions.check()
        self.feedback.check()
        assert self.predictions.sent > 0 and self.feedback.sent > 0

    def stop(self) -> None:
        self._loop.stop()


@pytest.fixture(scope="module")
def story(platform: LocalPlatform, registered: str) -> Iterator[dict[str, Any]]:
    store = Store(platform.state_dir)
    for body in resources():
        store.apply(body)

    def md_status() -> dict[str, Any]:
        return store.get("ModelDeployment", "default", "churn").get("status") or {}

    st = wait(lambda: (s := md_status()).get("phase") == "Ready" and s, 300, "deployment Ready")
    traffic = Traffic(st["endpoint"]).start()
    try:
        yield {"store": store, "md_status": md_status, "traffic": traffic}
    finally:
        traffic.stop()


def drifted(status: dict[str, Any]) -> dict[str, Any] | None:
    return next((c for c in status.get("conditions", []) if c["type"] == "Drifted"), None)


def test_drift_is_detected_within_two_windows(platform: LocalPlatform, story: dict) -> None:
    md_status, traffic = story["md_status"], story["traffic"]
    # A first window of traffic like the training data: no drift.
    no_drift = wait(lambda: (c := drifted(md_status())) and c["status"] == "False" and c,
                    3 * WINDOW_S + 60, "a window without drift")  # fmt: skip
    assert no_drift["reason"] == "NoDrift", no_drift
    traffic.shift()
    found = wait(
        lambda: (c := drifted(md_status())) and c["status"] == "True" and c,
        2 * WINDOW_S + 45, "the shift to be detected (two windows)", every=2.0,
    )  # fmt: skip
    assert time.time() - traffic.shifted_at <= 2 * WINDOW_S + 45
    drift = md_status()["drift"]
    assert "monthly_spend" in drift["driftedFeatures"], drift
    assert "tenure_months" not in drift["driftedFeatures"], drift
    assert found["reason"] == "Drifted"
    # ... and in Prometheus, scraped from the serving app.
    prometheus = platform.prometheus_uri
    assert prometheus is not None
    wait(lambda: prom_query(prometheus, 'max(mlplane_feature_drifted{feature="monthly_spend",'
                                        'deployment="churn"}) == 1'),
         60, "mlplane_feature_drifted in Prometheus")  # fmt: skip


def test_persistent_drift_retrains_once(platform: LocalPlatform, story: dict) -> None:
    store, md_status = story["store"], story["md_status"]
    name = retrain_name("churn", 1)

    def job() -> dict[str, Any] | None:
        try:
            return store.get("TrainingJob", "default", name)
        except NotFound:
            return None

    created = wait(job, 2 * WINDOW_S + 60, f"the retraining TrainingJob {name}", every=2.0)
    md = store.get("ModelDeployment", "default", "churn")
    owner = created["metadata"]["ownerReferences"][0]
    assert (owner["kind"], owner["name"], owner["uid"]) == ("ModelDeployment", "churn",
                                                            md["metadata"]["uid"])  # fmt: skip

    def done() -> dict[str, Any] | None:
        j = job()
        return j if j and (j.get("status") or {}).get("phase") in ("Succeeded", "Failed") else None

    finished = wait(done, 300, "the retraining to finish", every=2.0)
    assert finished["status"]["phase"] == "Succeeded", finished["status"]
    from mlflow.tracking import MlflowClient

    version = MlflowClient(platform.mlflow_uri).get_model_version_by_alias(MODEL, "retrained")
    assert version.version == "3"
    drift = md_status()["drift"]
    assert (drift["retrains"], drift["lastRetrainJob"]) == (1, name)
    # One at a time and rate-limited: still drifting, no second job.
    retrains = [t for t in store.list("TrainingJob", "default") if "-r" in t["metadata"]["name"]]
    assert [t["metadata"]["name"] for t in retrains] == [name]


def _panel_queries() -> list[tuple[str, str, str]]:
    out = []
    for path in sorted(DASHBOARDS.glob("*.json")):
        dashboard = json.loads(path.read_text())

        def panels(items: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
            for item in items:
                yield item
                yield from panels(item.get("panels", []))

        for panel in panels(dashboard["panels"]):
            for target in panel.get("targets", []):
                out.append((path.stem, panel.get("title", "?"), target["expr"]))
    return out


def _concrete(expr: str) -> str:
    """Grafana's variables as an "All" selection would fill them."""
    expr = expr.replace("$__rate_interval", "1m").replace("$__range", "15m")
    return re.sub(r"\$\{?(\w+)\}?", ".*", expr)


#: Panels of series this story cannot produce: GPU-hours and cost need GPU jobs (none here) and a
#: price table; the interval with C and M needs a job with spec.checkpoint.interval on spot
#: workers (tests/e2e/test_local_training.py checks that status; the exporter has unit tests).
NO_GPUS_HERE = {
    "GPU-hours by capacity",
    "GPU-hours lost to reclaims",
    "Estimated cost",
    "Checkpoint interval, write time C, time between reclaims M",
}


def test_every_dashboard_panel_gets_data(platform: LocalPlatform, story: dict) -> None:
    prometheus = platform.prometheus_uri
    assert prometheus is not None
    queries = _panel_queries()
    assert len(queries) > 30

    def empty() -> list[str]:
        return [f"{board} / {title}: {expr}" for board, title, expr in queries
                if title not in NO_GPUS_HERE
                and not prom_query(prometheus, _concrete(expr))]  # fmt: skip

    missing: list[str] = []

    def all_have_data() -> bool:
        missing[:] = empty()
        return not missing

    try:
        wait(all_have_data, 120, "every panel to have data", every=5.0)
    except AssertionError:
        raise AssertionError("panels without data:\n" + "\n".join(missing)) from None
    story["traffic"].check()
