"""ABTest through the real Kopf operator against the in-memory API server, with a real MLflow
registry (SQLite): the test plays KubeRay (RayService status) and the deployment's router — a
stub ``GET /v1/stats`` on 127.0.0.1 that ``MLPLANE_ABTEST_STATS_URL`` points the operator at,
answering the cumulative per-variant counts the test sets, only on the admin path and only with the
admin token derived from the deployment's signing Secret (as the serving app does).

Covers what issue 6 asks of the operator: the split reaches the ModelDeployment's RayService
(the router's ``user_config`` carries the variants); a promotion moves the MLflow alias and the
RayService follows with the single new version; a guardrail breach rolls back within one
evaluation (treatment weight 0) and deleting the ABTest restores single-model routing; an
operator restart mid-test keeps counts and decision consistent and moves the alias once.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlparse

import pytest
import yaml
from k8s.harness import (
    admin_tokens,
    create,
    events_for,
    run_operator,
    run_operator_process,
    stored,
    wait_for,
)
from mlflow.tracking import MlflowClient

from mlplane.operator import conditions

RAYSERVICES = "ray.io/v1/rayservices"
ABTESTS = "mlplane.dev/v1alpha1/abtests"
MODEL = "churn-ab"
NAMESPACE = "serving"
TIMEOUT = 30


@pytest.fixture(scope="module")
def mlflow_uri(tmp_path_factory) -> Iterator[str]:
    """A registry with three versions of MODEL (the registry is real; the models need not be)."""
    folder = tmp_path_factory.mktemp("mlflow-ab")
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    client = MlflowClient(uri)
    client.create_registered_model(MODEL)
    # The operator reads each version's MLmodel flavors (registry policy): a skops model's.
    (folder / "model").mkdir()
    (folder / "model" / "MLmodel").write_text(
        "flavors:\n  python_function: {loader_module: mlflow.sklearn}\n"
        "  sklearn: {serialization_format: skops}\n"
    )
    for _ in range(3):
        client.create_model_version(MODEL, source=(folder / "model").as_uri())
    old = os.environ.get("MLPLANE_MLFLOW_TRACKING_URI")
    os.environ["MLPLANE_MLFLOW_TRACKING_URI"] = uri
    yield uri
    if old is None:
        os.environ.pop("MLPLANE_MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLPLANE_MLFLOW_TRACKING_URI"] = old


class Router:
    """The deployment's router as far as the operator reads it: ``GET /admin/v1/stats`` with
    the deployment's admin token (401 otherwise, as the app answers)."""

    def __init__(self, expected_tokens: Any = None) -> None:
        self.rows: dict[str, list[dict[str, Any]]] = {}
        #: The count epoch the answers carry (None: left out, as an earlier release did).
        self.epoch: str | None = None
        self.reads: list[str] = []
        self.refused = 0
        router = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                url = urlparse(self.path)
                abtest = parse_qs(url.query).get("abtest", [""])[-1]
                router.reads.append(abtest)
                if url.path != "/admin/v1/stats":
                    self.send_error(404)
                    return
                given = self.headers.get("authorization") or ""
                accepted = expected_tokens() if expected_tokens else set()
                if given.removeprefix("Bearer ") not in accepted:
                    router.refused += 1
                    self.send_error(401)
                    return
                answer = {"since": 1.0, "abtests": sorted(router.rows),
                          "variants": router.rows.get(abtest, [])}  # fmt: skip
                if router.epoch is not None:
                    answer["epoch"] = router.epoch
                body = json.dumps(answer).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def counts(self, abtest: str, **variants: tuple[int, int, int, int, int]) -> None:
        """Per variant: (weight, requests, errors, outcomes, conversions)."""
        self.rows[abtest] = [
            {"abtest": abtest, "variant": name, "requests": r, "errors": e,
             "errorRate": e / r if r else None, "outcomes": n, "outcomeSum": float(s),
             "outcomeSumSquares": float(s), "latencyP99Ms": 20.0, "weight": w}
            for name, (w, r, e, n, s) in variants.items()
        ]  # fmt: skip


@pytest.fixture
def router(monkeypatch, emulator) -> Iterator[Router]:
    stub = Router(lambda: admin_tokens(emulator, NAMESPACE))
    stub.thread.start()
    monkeypatch.setenv("MLPLANE_ABTEST_STATS_URL", stub.url)
    monkeypatch.setenv("MLPLANE_ABTEST_INTERVAL", "1")
    yield stub
    stub.server.shutdown()
    stub.server.server_close()


def set_alias(uri: str, alias: str, version: int) -> None:
    MlflowClient(uri).set_registered_model_alias(MODEL, alias, str(version))


def alias_version(uri: str, alias: str) -> int:
    return int(MlflowClient(uri).get_model_version_by_alias(MODEL, alias).version)


def modeldeployment(name: str, alias: str) -> dict[str, Any]:
    return {
        "apiVersion": "mlplane.dev/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": name, "namespace": NAMESPACE},
        "spec": {
            "model": {"name": MODEL, "alias": alias},
            "replicas": {"min": 1, "max": 2},
            "resources": {"cpu": "1", "memory": "2Gi"},
        },
    }


def abtest(name: str, deployment: str, control: str, candidate: str, **spec: Any) -> dict:
    return {
        "apiVersion": "mlplane.dev/v1alpha1",
        "kind": "ABTest",
        "metadata": {"name": name, "namespace": NAMESPACE},
        "spec": {
            "deployment": deployment,
            "variants": [
                {"name": "control", "model": {"alias": control}, "weight": 50},
                {"name": "candidate", "model": {"alias": candidate}, "weight": 50},
            ],
            "bucketing": {"header": "x-user-id"},
            "analysis": {"minSamplesPerVariant": 100, "interval": "5s"},
            "guardrails": [{"metric": "ErrorRate", "threshold": "0.05"}],
            "onConclusion": {"alias": control},
            **spec,
        },
    }


def rayservice(emulator, name: str) -> dict[str, Any] | None:
    return emulator.get_object(RAYSERVICES, NAMESPACE, name)


def status(emulator, obj) -> dict[str, Any]:
    return (stored(emulator, obj) or {}).get("status") or {}


def condition(emulator, obj, type_: str) -> dict[str, Any]:
    return conditions.find(status(emulator, obj).get("conditions"), type_) or {}


def split(rs: dict[str, Any] | None) -> tuple[Any, list[tuple[str, int, int]]] | None:
    """The router's ``user_config``: (abtest, [(variant, version, weight)])."""
    if rs is None:
        return None
    app = yaml.safe_load(rs["spec"]["serveConfigV2"])["applications"][0]
    router = next(d for d in app["deployments"] if d["name"] == "router")["user_config"]
    return router["abtest"], [(v["name"], v["version"], v["weight"]) for v in router["variants"]]


async def play_kuberay(emulator, name: str) -> None:
    """KubeRay 1.7's status once the current spec's Serve application runs."""
    rs = rayservice(emulator, name)
    assert rs is not None
    app = yaml.safe_load(rs["spec"]["serveConfigV2"])["applications"][0]
    await emulator.patch_object(RAYSERVICES, NAMESPACE, name, {"status": {
        "observedGeneration": rs["metadata"]["generation"],
        "serviceStatus": "Running",
        "numServeEndpoints": 1,
        "conditions": [{"type": "Ready", "status": "True", "reason": "NonZeroServeEndpoints",
                        "message": "", "lastTransitionTime": "2026-11-29T12:00:00Z"}],
        "activeServiceStatus": {
            "rayClusterName": f"{name}-abcde",
            "applicationStatuses": {"mlplane": {
                "status": "RUNNING",
                "serveDeploymentStatuses": {d["name"]: {"status": "HEALTHY"}
                                            for d in app["deployments"]},
            }},
            "rayClusterStatus": {"readyWorkerReplicas": 1},
        },
    }}, subresource="status")  # fmt: skip


async def serving(emulator, md, expected) -> dict[str, Any]:
    """Wait for the RayService's router to carry ``expected``, play KubeRay, wait for Ready."""
    name = md["metadata"]["name"]

    def draining() -> bool:
        """Ending a split first drains the dropped variants to weight 0 (until Serve runs it)."""
        found = split(rayservice(emulator, name))
        return (
            found is not None
            and found[0] == expected[0]
            and found[1][: len(expected[1])] == expected[1]
            and len(found[1]) > len(expected[1])
            and all(weight == 0 for *_, weight in found[1][len(expected[1]) :])
        )

    def reached() -> Any:
        return (split(rayservice(emulator, name)) == expected or draining()) and rayservice(
            emulator, name
        )

    rs = await wait_for(
        reached,
        timeout=TIMEOUT,
        message=f"RayService {name} routing {expected}",
        seen=lambda: (split(rayservice(emulator, name)), status(emulator, md)),
    )
    if draining():
        await play_kuberay(emulator, name)
        rs = await wait_for(
            lambda: split(rayservice(emulator, name)) == expected and rayservice(emulator, name),
            timeout=TIMEOUT,
            message=f"RayService {name} routing {expected} once drained",
            seen=lambda: (split(rayservice(emulator, name)), status(emulator, md)),
        )
    await play_kuberay(emulator, name)
    served = str(expected[1][0][1])  # the control's (or only) version
    await wait_for(
        lambda: (
            status(emulator, md).get("phase") == "Ready"
            and status(emulator, md).get("servedVersion") == served
        ),
        timeout=TIMEOUT,
        message=f"ModelDeployment {name} Ready",
        seen=lambda: status(emulator, md),
    )
    return rs


async def phase(emulator, obj, wanted: str) -> dict[str, Any]:
    return await wait_for(
        lambda: status(emulator, obj).get("phase") == wanted and status(emulator, obj),
        timeout=TIMEOUT,
        message=f"ABTest {obj['metadata']['name']} {wanted}",
        seen=lambda: status(emulator, obj),
    )


async def started(emulator, router: Router, md, ab, versions: tuple[int, int]) -> None:
    """The split reaches the RayService, the router serves it: the ABTest runs."""
    name = ab["metadata"]["name"]
    control, candidate = versions
    await serving(emulator, md, (name, [("control", control, 50), ("candidate", candidate, 50)]))
    router.counts(name, control=(50, 0, 0, 0, 0), candidate=(50, 0, 0, 0, 0))
    await phase(emulator, ab, "Running")


async def test_promotion_moves_the_alias_and_the_deployment_follows(
    emulator, router, operator, mlflow_uri
):  # the router (its MLPLANE_ABTEST_* settings) before the operator, which reads them at start
    set_alias(mlflow_uri, "champion", 1)
    set_alias(mlflow_uri, "challenger", 2)
    md = await create(emulator, modeldeployment("churn", "champion"))
    await serving(emulator, md, (None, [("primary", 1, 100)]))
    ab = await create(emulator, abtest("promo", "churn", "champion", "challenger"))
    await started(emulator, router, md, ab, (1, 2))
    st = status(emulator, ab)
    assert [(v["name"], v["version"], v["weight"]) for v in st["variants"]] == [
        ("control", "1", 50),
        ("candidate", "2", 50),
    ]
    assert st["startTime"] and st["decision"] == "Continue"
    # An alias moving mid-test reshuffles nothing: the split is frozen in status.
    set_alias(mlflow_uri, "challenger", 3)
    router.counts("promo", control=(50, 60, 0, 60, 6), candidate=(50, 60, 0, 60, 12))
    await wait_for(lambda: status(emulator, ab)["variants"][0]["requests"] == 60, timeout=TIMEOUT,
                   message="the counts in status", seen=lambda: status(emulator, ab))  # fmt: skip
    assert split(rayservice(emulator, "churn"))[1][1] == ("candidate", 2, 50)  # type: ignore[index]
    # The candidate converts better: Promote, the alias moves, the deployment follows.
    router.counts("promo", control=(50, 2000, 0, 2000, 200), candidate=(50, 2000, 0, 2000, 400))
    st = await phase(emulator, ab, "Concluded")
    assert (st["decision"], st["winner"]) == ("Promote", "candidate")
    assert st["variants"][1]["pValue"] < 0.05
    assert alias_version(mlflow_uri, "champion") == 2
    await serving(emulator, md, (None, [("primary", 2, 100)]))
    assert status(emulator, md)["servedVersion"] == "2"
    concluded = condition(emulator, ab, "Concluded")
    assert (concluded["status"], concluded["reason"]) == ("True", "Promote")
    reasons = [e["reason"] for e in events_for(emulator, ab)]
    assert reasons.count("Promoted") == 1 and "Started" in reasons


async def test_guardrail_breach_rolls_back_then_deletion_restores_single_model(
    emulator, router, operator, mlflow_uri
):  # the router (its MLPLANE_ABTEST_* settings) before the operator, which reads them at start
    set_alias(mlflow_uri, "stable", 1)
    set_alias(mlflow_uri, "risky", 3)
    md = await create(emulator, modeldeployment("guard", "stable"))
    await serving(emulator, md, (None, [("primary", 1, 100)]))
    ab = await create(emulator, abtest("guarded", "guard", "stable", "risky"))
    await started(emulator, router, md, ab, (1, 3))
    # Far below minSamplesPerVariant, but the candidate fails 10 % of its requests.
    router.counts("guarded", control=(50, 150, 0, 10, 1), candidate=(50, 150, 15, 10, 5))
    st = await phase(emulator, ab, "Concluded")
    assert st["decision"] == "Rollback" and "winner" not in st
    weights = [(v["name"], v["weight"]) for v in st["variants"]]
    assert weights == [("control", 100), ("candidate", 0)]
    # Within one evaluation: the first status that carried these counts concluded.
    writes = [r.data.get("status", {}) for r in emulator.requests_to(
        ABTESTS, method="PATCH", name="guarded", subresource="status")]  # fmt: skip
    first = next(w for w in writes if (w.get("variants") or [{}])[0].get("requests") == 150)
    assert first["decision"] == "Rollback"
    breach = condition(emulator, ab, "GuardrailBreached")
    assert (breach["status"], breach["reason"]) == ("True", "TreatmentBreach")
    assert alias_version(mlflow_uri, "stable") == 1
    await serving(emulator, md, ("guarded", [("control", 1, 100), ("candidate", 3, 0)]))
    assert {"GuardrailBreached", "RolledBack"} <= {
        e["reason"] for e in events_for(emulator, ab, "Warning")
    }
    await emulator.delete_object(ABTESTS, NAMESPACE, "guarded")
    await wait_for(lambda: stored(emulator, ab) is None, timeout=TIMEOUT,
                   message="the ABTest to be gone")  # fmt: skip
    await serving(emulator, md, (None, [("primary", 1, 100)]))


async def test_restart_mid_test_keeps_counts_and_decision(emulator, kubeconfig, mlflow_uri, router):
    set_alias(mlflow_uri, "steady", 1)
    set_alias(mlflow_uri, "next", 2)
    spec = {"analysis": {"minSamplesPerVariant": 100, "interval": "5s"}}
    async with run_operator_process() as first:
        md = await create(emulator, modeldeployment("restart", "steady"))
        await serving(emulator, md, (None, [("primary", 1, 100)]))
        ab = await create(emulator, abtest("survivor", "restart", "steady", "next", **spec))
        await started(emulator, router, md, ab, (1, 2))
        router.epoch = "e1"
        router.counts("survivor", control=(50, 300, 0, 300, 30), candidate=(50, 300, 0, 300, 39))
        before = await wait_for(
            lambda: "pValue" in status(emulator, ab)["variants"][1] and status(emulator, ab),
            timeout=TIMEOUT,
            message="a first analysis",
            seen=lambda: status(emulator, ab),
        )
        first.kill()
    assert before["decision"] == "Continue"
    writes = len(emulator.requests_to(ABTESTS, method="PATCH", name="survivor",
                                      subresource="status"))  # fmt: skip
    reads = len(router.reads)
    async with run_operator_process() as second:
        await wait_for(lambda: second.processed(ab, "resuming"), timeout=TIMEOUT,
                       message="the resume")  # fmt: skip
        await wait_for(lambda: len(router.reads) >= reads + 3, timeout=TIMEOUT,
                       message="three evaluations after the restart")  # fmt: skip
        # Same counts, same status: the restarted operator writes nothing.
        assert status(emulator, ab) == before
        assert len(emulator.requests_to(ABTESTS, method="PATCH", name="survivor",
                                        subresource="status")) == writes  # fmt: skip
        # Meanwhile the serving cluster was replaced: a new count epoch from zero. The
        # operator folds e1's totals under it (300 + 2700 = 3000 requests per variant).
        router.epoch = "e2"
        router.counts(
            "survivor", control=(50, 2700, 0, 2700, 270), candidate=(50, 2700, 0, 2700, 411)
        )
        st = await phase(emulator, ab, "Concluded")
        assert (st["decision"], st["winner"], st["startTime"]) == (
            "Promote", "candidate", before["startTime"])  # fmt: skip
        assert (st["countsEpoch"], st["closedEpochs"]) == ("e2", ["e1"])
        assert [(v["requests"], v["outcomeSum"]) for v in st["variants"]] == [
            (3000, 300.0), (3000, 450.0)]  # fmt: skip
        assert st["variants"][1]["pValue"] <= before["variants"][1]["pValue"]
        assert alias_version(mlflow_uri, "steady") == 2
        await serving(emulator, md, (None, [("primary", 2, 100)]))
    assert [e["reason"] for e in events_for(emulator, ab)].count("Promoted") == 1


async def test_a_promotion_survives_a_refused_status_write_and_a_restart(
    emulator, kubeconfig, mlflow_uri, router, monkeypatch
):
    """Fault: the API server refuses every status write that would conclude the ABTest, and the
    operator is stopped there; the restarted one (a new process: nothing kept in memory) sees
    counts that now breach a guardrail. The promotion recorded in status is finished, not
    decided again: the alias moved once (only after the decision was stored), and the status
    ends Concluded Promote."""
    import kmock

    from mlplane.operator.registry import Registry

    set_alias(mlflow_uri, "incumbent", 1)
    set_alias(mlflow_uri, "contender", 2)
    moves: list[tuple[str, int, Any]] = []
    real_set_alias = Registry.set_alias

    def recording(self: Registry, name: str, alias: str, version: int) -> None:
        stored_status = (emulator.get_object(ABTESTS, NAMESPACE, "twophase") or {}).get("status")
        moves.append((alias, version, ((stored_status or {}).get("promotion") or {}).get("phase")))
        real_set_alias(self, name, alias, version)

    monkeypatch.setattr(Registry, "set_alias", recording)
    refused: list[Any] = []
    blocking = [True]
    real_update = type(emulator)._update

    async def refusing(self, res, namespace, name, data, *, subresource=None, **kw):
        if isinstance(data, dict):
            concludes = (data.get("status") or {}).get("phase") == "Concluded"
        else:  # a JSON patch
            concludes = {"op": "replace", "path": "/status/phase", "value": "Concluded"} in data
        if blocking[0] and res.plural == "abtests" and subresource == "status" and concludes:
            refused.append(data)
            message = "injected: the status write is refused"
            raise kmock.KubernetesError(status=503, reason="ServiceUnavailable", message=message)
        return await real_update(self, res, namespace, name, data, subresource=subresource, **kw)

    monkeypatch.setattr(type(emulator), "_update", refusing)
    async with run_operator():
        md = await create(emulator, modeldeployment("twophase", "incumbent"))
        await serving(emulator, md, (None, [("primary", 1, 100)]))
        ab = await create(emulator, abtest("twophase", "twophase", "incumbent", "contender"))
        await started(emulator, router, md, ab, (1, 2))
        router.counts("twophase", control=(50, 2000, 0, 2000, 200),
                      candidate=(50, 2000, 0, 2000, 400))  # fmt: skip
        await wait_for(lambda: refused, timeout=TIMEOUT, message="a refused Concluded write",
                       seen=lambda: status(emulator, ab))  # fmt: skip
        assert status(emulator, ab)["phase"] == "Running"
        assert [(alias, version) for alias, version, _ in moves] == [("incumbent", 2)]
    # A new operator: what the old one kept in memory (its memo) is gone; the API server works
    # again.
    blocking[0] = False
    router.counts("twophase", control=(50, 3000, 0, 3000, 300),
                  candidate=(50, 3000, 300, 3000, 600))  # fmt: skip
    async with run_operator():
        st = await phase(emulator, ab, "Concluded")
        assert (st["decision"], st.get("winner")) == ("Promote", "candidate")
        assert st["promotion"]["phase"] == "Done" and st["promotion"]["version"] == 2
        assert alias_version(mlflow_uri, "incumbent") == 2
    # The alias moved once, and only once the decision was stored (promotion Pending).
    assert moves == [("incumbent", 2, "Pending")]
    # The injected refusals are not the emulator's failures (the fixture checks those).
    emulator.errors[:] = [e for e in emulator.errors if "injected" not in str(e)]


def alias_moves(proc) -> int:
    """How many times an operator process moved an alias (its handler's log line)."""
    return sum(1 for r in proc.records if " alias " in r.getMessage() and " -> version " in
               r.getMessage())  # fmt: skip


async def test_kill_between_promotion_and_status_write(emulator, kubeconfig, mlflow_uri, router):
    """SIGKILL after the alias moved in MLflow, instead of the status write that records the
    promotion: the new process finds the alias already moved (moves it no further), concludes
    with the same decision, and the deployment serves the winner."""
    set_alias(mlflow_uri, "calm", 1)
    set_alias(mlflow_uri, "bold", 2)
    spec = {"analysis": {"minSamplesPerVariant": 100, "interval": "5s"}}
    async with run_operator_process() as first:
        md = await create(emulator, modeldeployment("killed", "calm"))
        await serving(emulator, md, (None, [("primary", 1, 100)]))
        ab = await create(emulator, abtest("crash", "killed", "calm", "bold", **spec))
        await started(emulator, router, md, ab, (1, 2))
        before = status(emulator, ab)

        def concluding(r) -> bool:
            return isinstance(r.data, dict) and (r.data.get("status") or {}).get(
                "phase") == "Concluded"  # fmt: skip

        fired = first.kill_after(emulator, "PATCH", ABTESTS, name="crash", subresource="status",
                                 when=concluding, before=True)  # fmt: skip
        router.counts("crash", control=(50, 3000, 0, 3000, 300), candidate=(50, 3000, 0, 3000, 450))
        await wait_for(lambda: fired and not first.running, timeout=TIMEOUT,
                       message="the kill instead of the concluding status write")  # fmt: skip
        moved_by_first = alias_moves(first)
    assert alias_version(mlflow_uri, "calm") == 2  # moved by the killed process
    assert moved_by_first == 1
    assert status(emulator, ab).get("phase") == "Running"  # its status never landed
    async with run_operator_process() as second:
        st = await phase(emulator, ab, "Concluded")
        assert (st["decision"], st["winner"], st["startTime"]) == (
            "Promote", "candidate", before["startTime"])  # fmt: skip
        await serving(emulator, md, (None, [("primary", 2, 100)]))
        assert second.processed(ab, "resuming")
        assert alias_moves(second) == 0  # found it moved: not moved again
    assert alias_version(mlflow_uri, "calm") == 2
    promoted = [e for e in events_for(emulator, ab) if e["reason"] == "Promoted"]
    assert len(promoted) <= 2, promoted  # at most once per process that decided
