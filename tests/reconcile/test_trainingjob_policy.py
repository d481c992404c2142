"""The registry policy on TrainingJobs: allowed tracking URIs, model names per namespace."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from mlplane.crds.validate import parse
from mlplane.operator import conditions
from mlplane.operator.config import OperatorConfig
from mlplane.operator.reconcile.trainingjob import (
    Observed,
    ObservedAttempt,
    ObservedRun,
    policy_refusal,
    reconcile,
)

T0 = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)
UID = "uid-policy"
OWN = "http://mlflow.mlflow:5000"
CONFIG = OperatorConfig(mlflow_tracking_uri=OWN)
TEAM_A = replace(CONFIG, model_name_policy=(("team-a", ("churn-*", "fraud")),))


def body(namespace: str = "team-a", **mlflow: Any) -> dict[str, Any]:
    return {
        "apiVersion": "mlplane.dev/v1alpha1", "kind": "TrainingJob",
        "metadata": {"name": "train", "namespace": namespace, "uid": UID, "generation": 1},
        "spec": {
            "entrypoint": "python train.py",
            "workers": [{"name": "cpu", "replicas": 1}],
            "mlflow": {"registeredModel": "churn-model", "alias": "candidate", **mlflow},
        },
    }  # fmt: skip


def condition(status: dict[str, Any], type_: str) -> dict[str, Any]:
    return conditions.find(status.get("conditions"), type_) or {}


@pytest.mark.parametrize(
    ("config", "namespace", "mlflow", "reason"),
    [
        (CONFIG, "team-a", {}, None),
        (CONFIG, "team-a", {"trackingUri": OWN + "/"}, None),
        (CONFIG, "team-a", {"trackingUri": "http://evil:5000"}, "TrackingUriNotAllowed"),
        (replace(CONFIG, allowed_tracking_uris=("http://other:5000",)), "team-a",
         {"trackingUri": "http://other:5000"}, None),
        (TEAM_A, "team-a", {}, None),  # churn-* matches churn-model
        (TEAM_A, "team-a", {"registeredModel": "fraud"}, None),
        (TEAM_A, "team-a", {"registeredModel": "fraud-v2", "alias": None}, "ModelNameNotAllowed"),
        (TEAM_A, "team-b", {}, "ModelNameNotAllowed"),  # not listed: nothing allowed
        (replace(TEAM_A, model_name_policy=(("*", ("shared-*",)),)), "team-b",
         {"registeredModel": "shared-x"}, None),
    ],
)  # fmt: skip
def test_policy_refusal(config, namespace, mlflow, reason):
    spec = body(namespace, **mlflow)
    if spec["spec"]["mlflow"].get("alias") is None:
        spec["spec"]["mlflow"].pop("alias")
    found = policy_refusal(parse(spec), config)
    assert (found[0] if found else None) == reason


def step(doc: dict[str, Any], observed: Observed, config: OperatorConfig, minutes: int = 1):
    plan = reconcile(parse(doc), observed, T0 + timedelta(minutes=minutes), config, uid=UID)
    doc["status"] = plan.status
    return plan


def test_refused_tracking_uri_creates_nothing_and_asks_for_no_run():
    doc = body(trackingUri="sqlite:////etc/evil.db")
    plan = step(doc, Observed(), CONFIG)
    assert plan.create == [] and not plan.ensure_run and plan.register is None
    assert plan.status["phase"] == "Pending"
    admitted = condition(plan.status, "Admitted")
    assert (admitted["status"], admitted["reason"]) == ("False", "TrackingUriNotAllowed")
    assert "MLPLANE_ALLOWED_TRACKING_URIS" in admitted["message"]
    assert condition(plan.status, "Running")["reason"] == "TrackingUriNotAllowed"
    assert [e.reason for e in plan.events] == ["TrackingUriNotAllowed"]
    assert step(doc, Observed(), CONFIG, 2).events == []  # said once
    # The user removes the URI: the job goes on with the operator's MLflow.
    del doc["spec"]["mlflow"]["trackingUri"]
    plan = step(doc, Observed(), CONFIG, 3)
    assert plan.ensure_run
    assert condition(plan.status, "Admitted") == {}


def test_refused_model_name_starts_nothing():
    doc = body("team-b")
    plan = step(doc, Observed(run=ObservedRun("run1")), TEAM_A)
    assert plan.create == [] and plan.register is None and not plan.ensure_run
    admitted = condition(plan.status, "Admitted")
    assert (admitted["status"], admitted["reason"]) == ("False", "ModelNameNotAllowed")
    assert "namespace team-b may not register or alias model 'churn-model'" in admitted["message"]


def test_refused_model_name_after_a_successful_attempt_registers_nothing():
    """The policy changed while the job ran: the trained model is not registered or aliased."""
    doc = body("team-b")
    step(doc, Observed(run=ObservedRun("run1")), CONFIG)
    done = ObservedAttempt(1, "OnDemand", "SUCCEEDED", end_time="2026-12-03T12:05:00Z")
    assert step(doc, Observed((done,), run=ObservedRun("run1")), CONFIG, 2).register is not None
    plan = step(doc, Observed((done,), run=ObservedRun("run1")), TEAM_A, 3)
    assert plan.register is None
    assert condition(plan.status, "Admitted")["reason"] == "ModelNameNotAllowed"
