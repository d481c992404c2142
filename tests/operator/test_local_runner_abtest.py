"""The local runner's ABTest promotion, without Ray or MLflow: the router's ``/v1/stats`` and
the registry are given as data, the store is real (files). The same three steps as under Kopf:
the decision is stored first, a later pass that reads it back moves the alias, then Concluded;
a failed status write and a restart in between finish the promotion instead of deciding again.
"""

from __future__ import annotations

import copy
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from mlplane.operator import conditions
from mlplane.operator import runner as runner_module
from mlplane.operator.builders.labels import rayservice_name
from mlplane.operator.config import OperatorConfig
from mlplane.operator.platforms.store import Store
from mlplane.operator.registry import RegistryError, ResolvedModel
from mlplane.operator.runner import Runner
from mlplane.serving.admin import admin_token

NOW = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)
CONFIG = OperatorConfig(mlflow_tracking_uri="http://127.0.0.1:5000")
MODEL = "churn"
VERSIONS = {"champion": 1, "challenger": 2}


class Registry:
    """MLflow's aliases of MODEL; each move records what the stored ABTest said at the time."""

    tracking_uri = CONFIG.mlflow_tracking_uri

    def __init__(self, store: Store) -> None:
        self.store = store
        self.aliases = dict(VERSIONS)
        self.moves: list[tuple[str, int, str | None]] = []

    def resolve(self, name: str, *, alias: str | None = None, version: int | None = None) -> Any:
        if alias not in self.aliases:
            raise RegistryError(f"no alias {alias!r}")
        return ResolvedModel(name, self.aliases[alias], None, None)

    def model_flavors(self, name: str, version: int) -> dict[str, Any]:
        return {"python_function": {"loader_module": "mlflow.sklearn"},
                "sklearn": {"serialization_format": "skops"}}  # fmt: skip

    def set_alias(self, name: str, alias: str, version: int) -> None:
        status = self.store.get("ABTest", "team", "ab").get("status") or {}
        self.moves.append((alias, version, (status.get("promotion") or {}).get("phase")))
        self.aliases[alias] = version


def rows(control: tuple[int, int, int], candidate: tuple[int, int, int]) -> list[dict]:
    """The router's rows: (requests, errors, conversions) per variant, every request an outcome."""
    return [
        {"abtest": "ab", "variant": name, "requests": r, "errors": e, "outcomes": r,
         "outcomeSum": float(s), "outcomeSumSquares": float(s), "latencyP99Ms": 20.0,
         "weight": 50}
        for name, (r, e, s) in (("control", control), ("candidate", candidate))
    ]  # fmt: skip


WIN = rows((5000, 0, 500), (5000, 0, 1000))
BREACH = rows((6000, 0, 600), (6000, 600, 1200))


@pytest.fixture
def store(tmp_path: Path) -> Store:
    store = Store(tmp_path)
    store.apply({
        "apiVersion": "mlplane.dev/v1alpha1", "kind": "ModelDeployment",
        "metadata": {"name": "churn", "namespace": "team"},
        "spec": {"model": {"name": MODEL, "alias": "champion"}},
    })  # fmt: skip
    md = store.get("ModelDeployment", "team", "churn")
    store.write_status(md, {
        "phase": "Ready", "endpoint": "http://127.0.0.1:8000/team/churn",
        "conditions": [{"type": "Ready", "status": "True", "reason": "Serving", "message": "",
                        "lastTransitionTime": "2026-12-03T11:00:00Z"}],
    })  # fmt: skip
    store.apply({
        "apiVersion": "mlplane.dev/v1alpha1", "kind": "ABTest",
        "metadata": {"name": "ab", "namespace": "team"},
        "spec": {
            "deployment": "churn",
            "variants": [{"name": "control", "model": {"alias": "champion"}, "weight": 50},
                         {"name": "candidate", "model": {"alias": "challenger"}, "weight": 50}],
            "analysis": {"minSamplesPerVariant": 1000, "interval": "5s"},
            "guardrails": [{"metric": "ErrorRate", "threshold": "0.01"}],
            "onConclusion": {"alias": "champion"},
        },
    })  # fmt: skip
    return store


class Platform:
    """One runner process over the store: a restart is a new one (nothing kept in memory)."""

    def __init__(self, tmp_path: Path, store: Store, registry: Registry, router: dict) -> None:
        self.runner = Runner(tmp_path)
        self.runner.store = store
        self.runner.registry = lambda uri: registry  # type: ignore[assignment,method-assign,return-value]
        self.router = router

    def step(self, now: datetime) -> None:
        """One pass over the ABTest, due whatever the interval (time is the test's)."""
        self.runner._due.clear()
        self.runner._abtests = self.runner._valid_abtests(now)
        body = self.runner.store.get("ABTest", "team", "ab")
        self.runner._guarded(self.runner.abtest, body, now, CONFIG)


@pytest.fixture
def world(store: Store, monkeypatch: pytest.MonkeyPatch) -> tuple[Registry, dict]:
    registry = Registry(store)
    router: dict[str, Any] = {"variants": rows((0, 0, 0), (0, 0, 0))}
    tokens: list[str | None] = []

    def fetch_stats(endpoint: str, abtest: str, token: str | None = None) -> dict[str, Any]:
        tokens.append(token)  # the admin token the runner sends (checked below)
        return copy.deepcopy({k: v for k, v in router.items() if k != "tokens"})

    router["tokens"] = tokens
    monkeypatch.setattr(runner_module, "fetch_stats", fetch_stats)
    monkeypatch.setattr(runner_module, "resolve_model",
                        lambda registry, ref: registry.resolve(MODEL, alias=ref.alias))  # fmt: skip
    return registry, router


def status(store: Store) -> dict[str, Any]:
    return store.get("ABTest", "team", "ab").get("status") or {}


def test_the_alias_moves_only_once_the_decision_is_stored(tmp_path, store, world):
    registry, router = world
    platform = Platform(tmp_path, store, registry, router)
    platform.step(NOW)
    assert status(store)["phase"] == "Running"
    router["variants"] = WIN
    platform.step(NOW + timedelta(minutes=1))
    st = status(store)
    assert (st["phase"], st["decision"], st["promotion"]["phase"]) == ("Running", "Promote",
                                                                       "Pending")  # fmt: skip
    assert registry.moves == []
    platform.step(NOW + timedelta(minutes=1, seconds=1))
    assert registry.moves == [("champion", 2, "Pending")]
    st = status(store)
    assert (st["phase"], st["decision"], st["winner"]) == ("Concluded", "Promote", "candidate")
    assert st["promotion"]["phase"] == "Done"
    reasons = [e["reason"] for e in store.events("ABTest", "team", "ab")]
    assert reasons.count("Promoting") == 1 and reasons.count("Promoted") == 1


def test_a_failed_concluded_write_then_a_restart_finishes_the_promotion(
    tmp_path, store, world, monkeypatch
):
    """Fault: the status write that would conclude fails (once); the runner restarts and the
    router's counts now breach a guardrail. The recorded promotion is finished: the alias moved
    once, the status ends Concluded Promote."""
    registry, router = world
    platform = Platform(tmp_path, store, registry, router)
    platform.step(NOW)
    refused: list[dict[str, Any]] = []
    write_status = Store.write_status

    def failing(self: Store, body: dict[str, Any], new: dict[str, Any]) -> bool:
        if body["kind"] == "ABTest" and new.get("phase") == "Concluded" and not refused:
            refused.append(new)
            raise OSError("injected: the status write failed")
        return write_status(self, body, new)

    monkeypatch.setattr(Store, "write_status", failing)
    router["variants"] = WIN
    for i in range(3):  # until the write that concludes was refused
        platform.step(NOW + timedelta(minutes=1, seconds=i))
        if refused:
            break
    assert refused and status(store)["phase"] == "Running"
    assert [(alias, version) for alias, version, _ in registry.moves] == [("champion", 2)]
    router["variants"] = BREACH
    restarted = Platform(tmp_path, store, registry, router)
    restarted.step(NOW + timedelta(minutes=5))
    st = status(store)
    assert (st["phase"], st["decision"], st.get("winner")) == ("Concluded", "Promote", "candidate")
    assert st["promotion"] == {**st["promotion"], "phase": "Done", "version": 2}
    assert len(registry.moves) == 1 and registry.aliases["champion"] == 2
    restarted.step(NOW + timedelta(minutes=6))
    assert len(registry.moves) == 1 and status(store) == st


def test_a_deployment_split_by_an_abtest_is_deployed_with_the_split(tmp_path, store, world):
    """Found by mypy: with an ABTest splitting its traffic, the runner handed the deployment's
    MLmodel flavors to the core in the place of ``signing_conflict`` (positional arguments),
    so the deployment stopped on a "signing secret conflict" and the split never deployed."""
    registry, router = world
    platform = Platform(tmp_path, store, registry, router)
    platform.step(NOW)
    assert status(store)["phase"] == "Running"  # the split is frozen in the ABTest's status
    runner = platform.runner
    runner._abtests = runner._valid_abtests(NOW)
    runner.modeldeployment(store.get("ModelDeployment", "team", "churn"), NOW, CONFIG)
    md_status = store.get("ModelDeployment", "team", "churn")["status"]
    ready = conditions.find(md_status.get("conditions"), "Ready") or {}
    assert ready.get("reason") not in ("SigningSecretConflict", "UnsafeModelFlavor"), md_status
    record = runner.serving.get("team", rayservice_name("churn"))
    assert record is not None, md_status
    app = yaml.safe_load(record["spec"]["serveConfigV2"])["applications"][0]
    router_config = next(d for d in app["deployments"] if d["name"] == "router")["user_config"]
    assert router_config["abtest"] == "ab"
    assert [(v["name"], v["version"], v["weight"]) for v in router_config["variants"]] == [
        ("control", 1, 50), ("candidate", 2, 50)]  # fmt: skip
    # Once the deployment's key folder exists, the stats are read with its admin token: the
    # one the app derives from the same key (mlplane.serving.admin).
    _, keys = runner.serving.signing.read("team", "churn")
    assert keys is not None
    expected = admin_token(keys.current.encode(), "team/churn")
    platform.step(NOW + timedelta(minutes=1))
    assert router["tokens"][-1] == expected


def test_count_epochs_are_folded_by_the_runner_across_its_own_restart(tmp_path, store, world):
    """The router's answer carries its count epoch: the runner (restarted in between, nothing
    in memory) folds a closed epoch into status, adds the new one on top, and does not count
    a closed epoch answering again."""
    registry, router = world
    platform = Platform(tmp_path, store, registry, router)
    platform.step(NOW)
    router.update(epoch="e1", variants=rows((300, 0, 30), (300, 0, 60)))
    platform.step(NOW + timedelta(minutes=1))
    assert status(store)["countsEpoch"] == "e1"
    router.update(epoch="e2", variants=rows((100, 0, 10), (100, 0, 20)))
    Platform(tmp_path, store, registry, router).step(NOW + timedelta(minutes=2))
    st = status(store)
    assert (st["countsEpoch"], st["closedEpochs"]) == ("e2", ["e1"])
    assert [(v["requests"], v["outcomeSum"]) for v in st["variants"]] == [(400, 40.0), (400, 80.0)]
    router.update(epoch="e1", variants=rows((350, 0, 35), (350, 0, 70)))
    platform.step(NOW + timedelta(minutes=3))
    again = status(store)
    assert again["variants"] == st["variants"] and again["phase"] == "Running"
    running = conditions.find(again["conditions"], "Running") or {}
    assert (running["status"], running["reason"]) == ("Unknown", "StatsUnavailable")
