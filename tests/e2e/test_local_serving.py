"""ModelDeployments and ABTests on the local platform, for real: the runner, Ray Serve, MLflow.

Two versions of a small scikit-learn model are registered in the platform's MLflow; a
ModelDeployment following the alias ``champion`` is applied to the local store. The runner
resolves the alias, records the RayService and deploys it as a Serve application; ``mlplane get
md`` shows the endpoint; predictions answer over HTTP. Moving the alias while a bounded request
loop runs switches the answers to the new version with zero failed requests; deleting the
ModelDeployment stops its application. An ABTest between the two versions, with synthetic
conversions posted as feedback, concludes Promote and moves the alias, with zero failed requests.

Runs inside a private network namespace (.ci/run does it).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from local_ports import isolated_ports
from request_ledger import LoopThread, RequestLedger

from mlplane.operator.platforms.local import LocalPlatform
from mlplane.operator.platforms.local_serving import LocalServing
from mlplane.operator.platforms.store import Store
from mlplane.operator.registry import process_uris

# The tests are one story on one platform (the last deletes the deployment): modules are
# shuffled (``--random-order``), the tests within this one are not.
pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900), pytest.mark.random_order(disabled=True)]
BIN = Path(sys.executable).parent
MODEL = "churn-local-e2e"
FEATURES = ("tenure", "spend", "plan")
DEPLOY_TIMEOUT = 300.0


def wait(condition: Callable[[], Any], timeout: float, what: str) -> Any:
    """Poll until ``condition()`` is truthy; fail naming ``what`` (and the last value)."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        try:
            last = condition()
        except (urllib.error.URLError, OSError, ValueError) as exc:
            last = exc
        else:
            if last:
                return last
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}: {last!r}")
        time.sleep(0.5)


def post(url: str, body: Any) -> tuple[int, dict[str, Any]]:
    request = urllib.request.Request(
        url, json.dumps(body).encode(), {"content-type": "application/json"}, method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        raw = exc.read()
        return exc.code, json.loads(raw) if raw.startswith(b"{") else {"raw": raw[:300]}


def rows(n: int, seed: int) -> list[dict[str, Any]]:
    rng = np.random.default_rng(seed)
    return [
        {"tenure": float(rng.normal(24, 12)), "spend": float(rng.gamma(2, 30)),
         "plan": str(rng.choice(["free", "pro"]))}
        for _ in range(n)
    ]  # fmt: skip


@pytest.fixture(scope="module")
def platform(tmp_path_factory) -> Iterator[LocalPlatform]:
    ports = isolated_ports()
    local = LocalPlatform(tmp_path_factory.mktemp("platform") / "state", ports)
    local.up(num_cpus=2)
    try:
        yield local
    finally:
        local.down()


@pytest.fixture(scope="module")
def registered(platform: LocalPlatform) -> str:
    """Two versions of a small pipeline in the platform's MLflow; ``champion`` -> 1."""
    import mlflow
    import pandas as pd
    from mlflow.tracking import MlflowClient
    from sklearn.compose import ColumnTransformer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import OneHotEncoder

    with process_uris(platform.mlflow_uri):  # MLflow's globals, restored after
        mlflow.set_experiment("local-serving-e2e")
        frame = pd.DataFrame(rows(300, seed=1))
        labels = (frame["tenure"] > 24).astype(int)
        for c in (0.05, 5.0):
            model = make_pipeline(
                ColumnTransformer([("plan", OneHotEncoder(handle_unknown="ignore"), ["plan"])],
                                  remainder="passthrough"),
                LogisticRegression(C=c, max_iter=300),
            ).fit(frame, labels)  # fmt: skip
            with mlflow.start_run():
                mlflow.sklearn.log_model(model, name="model", registered_model_name=MODEL,
                                         input_example=frame.head(2),
                                         pip_requirements=["scikit-learn"])  # fmt: skip
    MlflowClient(platform.mlflow_uri).set_registered_model_alias(MODEL, "champion", "1")
    return MODEL


def modeldeployment(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "mlplane.dev/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {
            "model": {"name": MODEL, "alias": "champion"},
            "replicas": {"min": 1, "max": 1},
            "resources": {"cpu": "1", "memory": "1Gi"},
        },
    }


def status(store: Store, name: str) -> dict[str, Any]:
    return store.get("ModelDeployment", "default", name).get("status") or {}


def champion_served(platform: LocalPlatform, version: int) -> None:
    """Point ``champion`` at ``version`` and wait until the deployment serves it: each test
    sets up the alias it starts from instead of inheriting the previous test's."""
    from mlflow.tracking import MlflowClient

    MlflowClient(platform.mlflow_uri).set_registered_model_alias(MODEL, "champion", str(version))
    store = Store(platform.state_dir)
    wait(lambda: (s := status(store, "churn")).get("servedVersion") == str(version)
         and s.get("phase") == "Ready", DEPLOY_TIMEOUT,
         f"champion version {version} served")  # fmt: skip


@pytest.fixture(scope="module")
def deployed(platform: LocalPlatform, registered: str) -> dict[str, Any]:
    store = Store(platform.state_dir)
    store.apply(modeldeployment("churn"))
    st = wait(
        lambda: (s := status(store, "churn")).get("phase") == "Ready" and s,
        DEPLOY_TIMEOUT,
        "the ModelDeployment to be Ready",
    )
    return st


def test_deployment_becomes_ready_and_predicts(platform: LocalPlatform, deployed: dict) -> None:
    port = platform.ports.serve
    assert deployed["endpoint"] == f"http://127.0.0.1:{port}/default/churn"
    assert deployed["servedVersion"] == "1"
    resolved = next(c for c in deployed["conditions"] if c["type"] == "ModelResolved")
    assert resolved["status"] == "True"
    code, answer = post(deployed["endpoint"] + "/v1/predict", {"records": rows(3, seed=2)})
    assert code == 200, answer
    assert answer["version"] == 1 and len(answer["predictions"]) == 3
    assert answer["requestId"]
    # Bad input is the caller's problem, named, never a 500.
    code, answer = post(deployed["endpoint"] + "/v1/predict", {"records": [{"tenure": 1.0}]})
    assert code == 422 and "spend" in json.dumps(answer)
    # The admin endpoints are off the public path; a client without the token gets nothing.
    for path in ("/v1/stats", "/v1/models", "/v1/drift", "/metrics"):
        assert _get_status(deployed["endpoint"] + path) == 404, path
        assert _get_status(deployed["endpoint"] + "/admin" + path) == 401, path
    token = LocalServing(platform).admin_token("default", "churn")
    admin = f"{deployed['endpoint']}/admin/v1/models"
    assert _get_status(admin, {"Authorization": f"Bearer {token}"}) == 200


def _get_status(url: str, headers: dict[str, str] | None = None) -> int:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}),
                                    timeout=30) as response:  # fmt: skip
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


def test_get_md_shows_the_endpoint(platform: LocalPlatform, deployed: dict) -> None:
    shown = subprocess.run(
        [str(BIN / "mlplane"), "get", "md", "--state-dir", str(platform.state_dir)],
        capture_output=True, text=True, check=True,
        env={"COLUMNS": "250", "PATH": str(BIN)},
    )  # fmt: skip
    line = next(x for x in shown.stdout.splitlines() if x.startswith("churn"))
    assert "Ready" in line and deployed["endpoint"] in line, shown.stdout


class Traffic:
    """A bounded request loop (one thread) recording each status and served version; every
    request is counted in ``ledger`` (answered or failed), and a loop that dies fails."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.ledger = RequestLedger()
        self.seen: list[tuple[int | None, int | None]] = []
        self._loop = LoopThread(self._step, limit=20_000, name="traffic")

    def _step(self, i: int) -> None:
        answer = self.ledger.post(self.url, {"records": rows(1, seed=1000 + i)})
        self.seen.append((answer.status, answer.body.get("version")))

    def __enter__(self) -> Traffic:
        self._loop.start()
        wait(lambda: len(self.seen) >= 10 or not self._loop.alive, 60,
             "traffic before the alias moves")  # fmt: skip
        return self

    def __exit__(self, *exc: object) -> None:
        self._loop.stop()


def test_moving_the_alias_switches_versions_with_zero_failed_requests(
    platform: LocalPlatform, deployed: dict
) -> None:
    from mlflow.tracking import MlflowClient

    champion_served(platform, 1)
    store = Store(platform.state_dir)
    records = LocalServing(platform)
    before = records.get("default", "churn")
    assert before is not None
    with Traffic(deployed["endpoint"] + "/v1/predict") as traffic:
        MlflowClient(platform.mlflow_uri).set_registered_model_alias(MODEL, "champion", "2")
        wait(lambda: [v for _, v in traffic.seen[-10:]] == [2] * 10, DEPLOY_TIMEOUT,
             "ten answers in a row from version 2")  # fmt: skip
    traffic.ledger.check()  # every request answered 200: none failed, none lost
    versions = [v for _, v in traffic.seen]
    assert versions[0] == 1 and versions[-1] == 2
    # Once a request met version 2, no later one met version 1 (no flapping back).
    assert 1 not in versions[versions.index(2) :]
    wait(lambda: status(store, "churn").get("servedVersion") == "2", 60, "servedVersion 2")
    after = records.get("default", "churn")
    assert after is not None
    # In place: only the Serve config changed (one generation), nothing else of the spec.
    assert after["metadata"]["generation"] == before["metadata"]["generation"] + 1
    assert {k: v for k, v in after["spec"].items() if k != "serveConfigV2"} == {
        k: v for k, v in before["spec"].items() if k != "serveConfigV2"
    }
    events = [e["reason"] for e in store.events("ModelDeployment", "default", "churn")]
    assert "VersionChanged" in events


def abtest() -> dict[str, Any]:
    return {
        "apiVersion": "mlplane.dev/v1alpha1",
        "kind": "ABTest",
        "metadata": {"name": "candidate", "namespace": "default"},
        "spec": {
            "deployment": "churn",
            "variants": [
                {"name": "control", "model": {"alias": "champion"}, "weight": 50},
                {"name": "candidate", "model": {"version": 1}, "weight": 50},
            ],
            "bucketing": {"header": "x-user-id"},
            "objective": {"metric": "Conversion"},
            "analysis": {"alpha": "0.05", "minSamplesPerVariant": 100, "maxDuration": "15m",
                         "interval": "5s"},
            "guardrails": [{"metric": "ErrorRate", "threshold": "0.05"}],
            "onConclusion": {"promote": True, "alias": "champion"},
        },
    }  # fmt: skip


def monitor_replica_pid(platform: LocalPlatform, app: str) -> int | None:
    """The pid of the app's running ``monitor`` replica, from Serve's REST API (None: none)."""
    from mlplane.serving.deploy import get_applications

    token = platform.ray_headers().get("Authorization", "").removeprefix("Bearer ") or None
    answer = get_applications(platform.ray_dashboard, token=token)
    deployment = answer["applications"][app]["deployments"]["monitor"]
    running = [r for r in deployment.get("replicas", ()) if r.get("state") == "RUNNING"]
    return int(running[0]["pid"]) if len(running) == 1 and running[0].get("pid") else None


def kill_monitor(platform: LocalPlatform, app: str) -> int:
    """SIGKILL the app's monitor replica (the one holding the counts); its pid."""
    pid = monitor_replica_pid(platform, app)
    assert pid is not None, "no running monitor replica"
    cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    assert b"monitor" in cmdline, cmdline[:200]  # never kill anything else
    os.kill(pid, signal.SIGKILL)
    return pid


class Evidence:
    """What the client sent and the app accepted, per variant: predictions answered 200 and
    outcomes counted (200; or 409 for an id whose earlier attempt got a 503 -- counted then)."""

    def __init__(self) -> None:
        self.requests = {"control": 0, "candidate": 0}
        self.outcomes = {"control": 0, "candidate": 0}
        self.sums = {"control": 0, "candidate": 0}

    def feedback(self, ledger: RequestLedger, url: str, variant: str, body: dict) -> None:
        """Post until counted; a 503 (the monitor away) is retried, with a deadline."""
        deadline, retried = time.monotonic() + 120, False
        while True:
            sent = ledger.post(url + "/v1/feedback", body)
            if sent.status == 200 or (sent.status == 409 and retried):
                self.outcomes[variant] += 1
                self.sums[variant] += body["outcome"]
                return
            assert sent.status == 503 and time.monotonic() < deadline, (sent.status, sent.body)
            retried = True
            time.sleep(0.2)

    def matches(self, status: dict[str, Any]) -> bool:
        got = {v["name"]: v for v in status.get("variants") or ()}
        return all(
            (got[n].get("requests"), got[n].get("outcomes"), got[n].get("outcomeSum"))
            == (self.requests[n], self.outcomes[n], float(self.sums[n]))
            for n in self.requests
            if n in got
        ) and set(got) == set(self.requests)


def test_abtest_promotes_the_better_converting_version_with_zero_failed_requests(
    platform: LocalPlatform, deployed: dict
) -> None:
    """Control is champion (version 2, set here), the candidate version 1; users
    served by the candidate convert at 0.6, the control's at 0.2 (seeded).

    First the evidence must survive a restart: while the test cannot conclude yet
    (``minSamplesPerVariant`` out of reach), the monitor replica holding the counts is killed
    with SIGKILL mid-traffic; once the traffic stops, the ABTest's totals equal exactly what the
    client sent and the app accepted (requests, outcomes and their sums per variant), in the
    same count epoch, without a CountsReset. Then the threshold is lowered and the test
    concludes Promote as without the restart: champion moves to 1 and the deployment serves
    version 1 alone."""
    from mlflow.tracking import MlflowClient

    store = Store(platform.state_dir)
    client = MlflowClient(platform.mlflow_uri)
    champion_served(platform, 2)
    body = abtest()
    body["spec"]["analysis"]["minSamplesPerVariant"] = 100_000
    store.apply(body)
    url = deployed["endpoint"]
    rng = np.random.default_rng(11)
    seen: list[tuple[int | None, str | None, int | None]] = []
    predictions, feedback = RequestLedger(), RequestLedger()

    def ab_status() -> dict[str, Any]:
        return store.get("ABTest", "default", "candidate").get("status") or {}

    wait(lambda: ab_status().get("phase") == "Running", 120, "the ABTest to run")
    evidence = Evidence()
    restart_feedback = RequestLedger()  # 503s while the monitor is away, each retried
    killed = None
    for user in range(1, 241):
        if user == 121:
            killed = kill_monitor(platform, "default-churn")
        answer = predictions.post(url + "/v1/predict", {"records": rows(1, seed=user)},
                                  {"x-user-id": f"user-{user}"})  # fmt: skip
        seen.append((answer.status, answer.body.get("variant"), answer.body.get("version")))
        variant = answer.body.get("variant")
        assert answer.status == 200 and variant in evidence.requests, answer
        evidence.requests[variant] += 1
        outcome = int(rng.random() < (0.6 if variant == "candidate" else 0.2))
        evidence.feedback(restart_feedback, url, variant,
                          {"requestId": answer.body["requestId"], "outcome": outcome})  # fmt: skip
    restarted = wait(lambda: (pid := monitor_replica_pid(platform, "default-churn")) != killed
                     and pid, 120, "a new monitor replica")  # fmt: skip
    assert restarted != killed
    epoch = wait(lambda: ab_status().get("countsEpoch"), 60, "the counts epoch in status")
    wait(lambda: evidence.matches(ab_status()), 120,
         f"the ABTest's totals to equal what was sent and accepted: {vars(evidence)}")  # fmt: skip
    st = ab_status()
    assert st["countsEpoch"] == epoch and not st.get("closedEpochs"), st
    events = [e["reason"] for e in store.events("ABTest", "default", "candidate")]
    assert "CountsReset" not in events
    restart_feedback.check(ok=lambda o: o.status in (200, 409, 503))
    assert evidence.outcomes["control"] > 0 and evidence.outcomes["candidate"] > 0

    body["spec"]["analysis"]["minSamplesPerVariant"] = 100
    store.apply(body)
    deadline = time.monotonic() + 600
    user = 240
    after_conclusion: set[int] = set()
    while time.monotonic() < deadline and len(seen) < 6000:
        user += 1
        answer = predictions.post(url + "/v1/predict", {"records": rows(1, seed=user)},
                                  {"x-user-id": f"user-{user}"})  # fmt: skip
        seen.append((answer.status, answer.body.get("variant"), answer.body.get("version")))
        if answer.status == 200 and answer.body.get("variant") in ("control", "candidate"):
            rate = 0.6 if answer.body["variant"] == "candidate" else 0.2
            outcome = int(rng.random() < rate)
            body = {"requestId": answer.body["requestId"], "outcome": outcome}
            sent = feedback.post(url + "/v1/feedback", body)
            if sent.status == 503 and ab_status().get("phase") == "Concluded":
                # The test is over: serving the winner alone restarts the app (its monitor
                # included, which takes its saved counts and ledger back); feedback meanwhile
                # gets a 503 to retry. Before the conclusion every outcome must count.
                after_conclusion.add(id(sent))
        if user % 25 == 0:
            st = ab_status()
            if st.get("phase") == "Concluded" and seen[-1][1:] == ("primary", 1):
                break
    st = ab_status()
    assert st.get("phase") == "Concluded", st
    assert (st["decision"], st["winner"]) == ("Promote", "candidate"), st
    predictions.check()  # every prediction answered 200: none failed, none lost
    feedback.check(ok=lambda o: o.status == 200 or id(o) in after_conclusion)
    assert predictions.sent == len(seen) and feedback.sent > 0
    variants = {v for _, v, _ in seen}
    assert {"control", "candidate"} <= variants
    assert client.get_model_version_by_alias(MODEL, "champion").version == "1"
    assert seen[-1][1:] == ("primary", 1), seen[-5:]
    wait(lambda: status(store, "churn").get("servedVersion") == "1", 60, "servedVersion 1")
    counts = {v["name"]: v for v in st["variants"]}
    assert counts["candidate"]["outcomes"] >= 100 and counts["control"]["outcomes"] >= 100
    events = [e["reason"] for e in store.events("ABTest", "default", "candidate")]
    assert "Promoted" in events


def test_a_60_40_split_under_50_50_stops_with_sample_ratio_mismatch(
    platform: LocalPlatform, deployed: dict
) -> None:
    """Clients whose bucketing keys land 60/40 on control/candidate under a 50/50 ABTest (the
    router sends 60/40): the test stops Failed with SampleRatioMismatch, nothing is promoted or
    rolled back, and the deployment serves its own model again."""
    from mlflow.tracking import MlflowClient

    from mlplane.serving.bucketing import Weighted, assign

    store = Store(platform.state_dir)
    client = MlflowClient(platform.mlflow_uri)
    champion = client.get_model_version_by_alias(MODEL, "champion").version
    body = abtest()
    body["metadata"]["name"] = "skewed"
    body["spec"]["variants"][1]["model"] = {"version": 2}
    body["spec"]["analysis"]["minSamplesPerVariant"] = 100_000  # no decision: only the SRM
    store.apply(body)
    split = [Weighted("control", 50), Weighted("candidate", 50)]
    pools: dict[str, list[str]] = {"control": [], "candidate": []}
    for i in range(400):
        key = f"skew-{i}"
        pools[split[assign(key, split, "skewed")].name].append(key)
    url = deployed["endpoint"]

    def ab_status() -> dict[str, Any]:
        return store.get("ABTest", "default", "skewed").get("status") or {}

    wait(lambda: ab_status().get("phase") == "Running", 120, "the skewed ABTest to run")
    rng = np.random.default_rng(5)
    sent = {"control": 0, "candidate": 0}
    deadline = time.monotonic() + 300
    j = 0
    while time.monotonic() < deadline and ab_status().get("phase") == "Running":
        for _ in range(25):
            target = "control" if j % 5 < 3 else "candidate"  # 60/40
            key = pools[target][j % len(pools[target])]
            j += 1
            request = urllib.request.Request(
                url + "/v1/predict", json.dumps({"records": rows(1, seed=j)}).encode(),
                {"content-type": "application/json", "x-user-id": key}, method="POST",
            )  # fmt: skip
            with urllib.request.urlopen(request, timeout=60) as response:
                answer = json.loads(response.read())
            if answer["variant"] in sent:
                sent[answer["variant"]] += 1
                outcome = int(rng.random() < 0.3)
                post(url + "/v1/feedback", {"requestId": answer["requestId"], "outcome": outcome})
    st = ab_status()
    assert st.get("phase") == "Failed", st
    srm = next(c for c in st["conditions"] if c["type"] == "SampleRatioMismatch")
    assert (srm["status"], srm["reason"]) == ("True", "ObservedSplitDiffers"), srm
    assert "(configured 50%)" in srm["message"]
    counted = {v["name"]: v["requests"] for v in st["variants"]}
    assert counted["control"] > 1.2 * counted["candidate"], (counted, sent)
    assert "decision" not in st and "winner" not in st
    assert client.get_model_version_by_alias(MODEL, "champion").version == champion
    events = [e["reason"] for e in store.events("ABTest", "default", "skewed")]
    assert "Promoted" not in events and "RolledBack" not in events
    wait(
        lambda: (
            post(url + "/v1/predict", {"records": rows(1, seed=0)})[1].get("variant") == "primary"
        ),
        120,
        "the deployment to serve its own model again",
    )


def test_deleting_the_deployment_stops_its_application(
    platform: LocalPlatform, deployed: dict
) -> None:
    store = Store(platform.state_dir)
    store.delete("ModelDeployment", "default", "churn")
    serving = LocalServing(platform)
    wait(lambda: serving.refresh() == {}, 120, "the Serve application to be removed")
    assert serving.get("default", "churn") is None
    # The last application gone, Serve may stop its proxy too: refused or 404, never an answer.
    wait(lambda: _gone(deployed["endpoint"] + "/v1/predict"), 60, "the endpoint to stop answering")


def _gone(url: str) -> bool:
    try:
        return post(url, {"records": rows(1, 3)})[0] == 404
    except urllib.error.URLError:
        return True
