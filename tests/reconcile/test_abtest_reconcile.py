"""The ABTest reconcile core: pending reasons, freezing the split, starting, the decisions and
what each one does to the alias and the routing, finality, restarts, ``routing_for``.

:class:`Lab` stands in for the API server: it stores the ABTest as JSON (what a restarted
operator reads back) and applies each plan's status the way the handler's merge patch does.
"""

from __future__ import annotations

import copy
import json
import random
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from mlplane.crds import ABTest, ModelDeployment
from mlplane.crds.validate import parse
from mlplane.operator import conditions
from mlplane.operator.builders.rayservice import Variant
from mlplane.operator.reconcile.abtest import (
    AliasMove,
    Observed,
    Plan,
    Routing,
    StatsUnavailable,
    VariantStats,
    pending_promotion,
    reconcile,
    routing_for,
    routing_holder,
    stats_from_response,
)
from mlplane.operator.reconcile.modeldeployment import Unresolved

T0 = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)
MODEL = "churn-classifier"
VERSIONS = {"control": 1, "candidate": 2}


def abtest_body(name: str = "ab", created: str = "2026-11-29T11:00:00Z", **spec: Any) -> dict:
    return {
        "apiVersion": "mlplane.dev/v1alpha1",
        "kind": "ABTest",
        "metadata": {"name": name, "namespace": "ml", "generation": 1,
                     "creationTimestamp": created, "uid": f"uid-{name}"},
        "spec": {
            "deployment": "churn",
            "variants": [
                {"name": "control", "model": {"alias": "champion"}, "weight": 90},
                {"name": "candidate", "model": {"alias": "candidate"}, "weight": 10},
            ],
            "bucketing": {"header": "x-user-id"},
            "analysis": {"alpha": "0.05", "minSamplesPerVariant": 1000, "maxDuration": "1d",
                         "interval": "60s"},
            "guardrails": [{"metric": "ErrorRate", "threshold": "0.01"}],
            **spec,
        },
    }  # fmt: skip


def deployment(phase: str = "Ready", ready: str = "True") -> ModelDeployment:
    body = {
        "apiVersion": "mlplane.dev/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": "churn", "namespace": "ml", "generation": 1},
        "spec": {"model": {"name": MODEL, "alias": "champion"},
                 "resources": {"cpu": "1", "memory": "2Gi"}},
        "status": {"phase": phase, "endpoint": "http://churn-serve-svc.ml.svc:8000",
                   "conditions": [{"type": "Ready", "status": ready, "reason": "Serving",
                                   "message": "", "lastTransitionTime": "2026-11-29T11:00:00Z"}]},
    }  # fmt: skip
    md = parse(body)
    assert isinstance(md, ModelDeployment)
    return md


def rows(
    control: tuple[int, float],
    candidate: tuple[int, float],
    *,
    requests: tuple[int, int] | None = None,
    errors: tuple[int, int] = (0, 0),
    weights: tuple[int | None, int | None] = (90, 10),
) -> tuple[VariantStats, ...]:
    """The router's rows: (outcomes, conversions) per variant. Requests default to a split
    that matches the weights exactly (``m * weight / 10`` with ``m`` the larger outcome count),
    so that only tests about the sample ratio see a mismatch."""
    m = max(control[0], candidate[0])
    reqs = requests or tuple(m if w is None else round(m * w / 10) for w in weights)
    out = []
    for name, (n, total), r, e, w in zip(
        ("control", "candidate"), (control, candidate), reqs, errors, weights, strict=True
    ):
        out.append(
            VariantStats(
                name,
                requests=r,
                errors=e,
                outcomes=n,
                outcome_sum=total,
                outcome_sum_squares=total,
                latency_p99_ms=20.0,
                weight=w,
            )
        )
    return tuple(out)


class Lab:
    """One stored ABTest; ``step`` reconciles it and stores the new status (as JSON)."""

    def __init__(self, body: dict[str, Any]) -> None:
        self.body = copy.deepcopy(body)
        self.writes = 0

    @property
    def test(self) -> ABTest:
        resource = parse(json.loads(json.dumps(self.body)))
        assert isinstance(resource, ABTest)
        return resource

    @property
    def status(self) -> dict[str, Any]:
        return self.body.get("status") or {}

    def condition(self, type_: str) -> dict[str, Any]:
        return conditions.find(self.status.get("conditions"), type_) or {}

    def step(self, now: datetime, **observed: Any) -> Plan:
        observed.setdefault("deployment", deployment())
        observed.setdefault("versions", VERSIONS)
        plan = reconcile(self.test, Observed(**observed), now)
        patch = conditions.status_patch(self.status, plan.status)
        if patch:
            self.writes += 1
            new = {**self.status, **patch}
            self.body["status"] = {k: v for k, v in new.items() if v is not None}
        return plan

    def start(self, now: datetime = T0) -> Plan:
        """Freeze the split, then the router serves it: Running."""
        first = self.step(now)
        assert self.status["phase"] == "Pending", self.status
        assert self.condition("Running")["reason"] == "WaitingForRouter"
        assert [e.reason for e in first.events] == ["Starting", "Waiting"]
        plan = self.step(now, stats=rows((0, 0), (0, 0)))
        assert self.status["phase"] == "Running", self.status
        return plan


def reasons(plan: Plan) -> list[str]:
    return [e.reason for e in plan.events]


# --- pending ------------------------------------------------------------------------------------


def test_missing_deployment_is_pending_with_a_warning_once():
    lab = Lab(abtest_body())
    plan = lab.step(T0, deployment=None)
    assert lab.status["phase"] == "Pending"
    assert lab.condition("Running")["reason"] == "DeploymentNotFound"
    assert "ml/churn" in lab.condition("Running")["message"]
    assert [(e.type, e.reason) for e in plan.events] == [("Warning", "DeploymentNotFound")]
    assert plan.requeue_after is not None and plan.set_alias is None
    assert "variants" not in lab.status
    writes = lab.writes
    again = lab.step(T0 + timedelta(seconds=5), deployment=None)
    assert again.events == [] and lab.writes == writes


def test_unresolved_alias_and_unreachable_mlflow_wait_without_freezing():
    lab = Lab(abtest_body())
    gone = Unresolved("AliasNotFound", "model 'churn-classifier' has no alias 'candidate'")
    plan = lab.step(T0, versions={"control": 1, "candidate": gone})
    assert lab.status["phase"] == "Pending"
    assert lab.condition("Running")["reason"] == "VariantUnresolved"
    assert "candidate: model 'churn-classifier' has no alias" in lab.condition("Running")["message"]
    assert [(e.type, e.reason) for e in plan.events] == [("Warning", "VariantUnresolved")]
    down = Unresolved("RegistryUnavailable", "MLflow cannot be reached")
    plan = lab.step(T0, versions={"control": down, "candidate": 2})
    assert lab.condition("Running")["reason"] == "RegistryUnavailable"
    assert [(e.type, e.reason) for e in plan.events] == [("Normal", "Waiting")]
    assert "variants" not in lab.status
    assert routing_for("churn", [lab.test]) is None


def test_a_deployment_not_serving_is_waited_for():
    lab = Lab(abtest_body())
    lab.step(T0, deployment=deployment(phase="Deploying", ready="Unknown"))
    assert lab.condition("Running")["reason"] == "DeploymentNotReady"
    assert "variants" not in lab.status


def test_frozen_split_is_routed_and_started_once_the_router_serves_it():
    lab = Lab(abtest_body())
    lab.step(T0)
    assert lab.status["variants"] == [
        {"name": "control", "version": "1", "weight": 90, "requests": 0, "errors": 0,
         "outcomes": 0},
        {"name": "candidate", "version": "2", "weight": 10, "requests": 0, "errors": 0,
         "outcomes": 0},
    ]  # fmt: skip
    assert routing_for("churn", [lab.test]) == Routing(
        (Variant("control", 1, 90), Variant("candidate", 2, 10)), "x-user-id", "ab", "Conversion"
    )
    assert routing_for("other", [lab.test]) is None
    # The deployment rolls the split out (Deploying), then its router serves it.
    lab.step(T0, deployment=deployment(phase="Deploying"), stats=rows((0, 0), (0, 0)))
    assert lab.status["phase"] == "Pending"
    assert "Deploying" in lab.condition("Running")["message"]
    lab.step(T0, stats=StatsUnavailable("connection refused"))
    assert "connection refused" in lab.condition("Running")["message"]
    # A row of history (the router's current split is not this test's) does not start it.
    lab.step(T0, stats=rows((0, 0), (0, 0), weights=(None, None)))
    assert lab.status["phase"] == "Pending"
    # An alias moving before the start changes nothing that is frozen.
    lab.step(T0, versions={"control": 1, "candidate": 7})
    assert lab.status["variants"][1]["version"] == "2"
    plan = lab.step(T0 + timedelta(seconds=30), stats=rows((0, 0), (0, 0)))
    assert lab.status["phase"] == "Running"
    assert lab.status["startTime"] == "2026-11-29T12:00:30Z"
    assert lab.status["decision"] == "Continue"
    assert reasons(plan) == ["Started"]
    assert lab.condition("Running")["status"] == "True"
    assert lab.condition("Concluded")["reason"] == "Continue"
    assert plan.requeue_after == 60.0


# --- decisions ----------------------------------------------------------------------------------


def test_promote_moves_the_alias_once_and_stops_routing():
    lab = Lab(abtest_body())
    lab.start()
    plan = lab.step(T0 + timedelta(minutes=1), stats=rows((500, 50), (500, 100)))
    assert lab.status["decision"] == "Continue" and plan.set_alias is None
    assert "fewer than minSamplesPerVariant=1000" in lab.condition("Concluded")["message"]
    assert "pValue" not in lab.status["variants"][1]

    plan = lab.step(T0 + timedelta(minutes=2), stats=rows((5000, 500), (5000, 1000)))
    # Step 1: the decision and the alias move are recorded; nothing moves in this round and
    # the split is still served.
    assert plan.set_alias is None and plan.requeue_after == 0.0
    st = lab.status
    assert (st["phase"], st["decision"], st["winner"]) == ("Running", "Promote", "candidate")
    assert st["promotion"] == {
        "decision": "Promote", "variant": "candidate", "model": MODEL, "alias": "champion",
        "version": 2, "phase": "Pending", "reason": st["promotion"]["reason"],
        "decidedAt": "2026-11-29T12:02:00Z",
    }  # fmt: skip
    assert "concludedAt" not in st
    assert (lab.condition("Concluded")["status"], lab.condition("Concluded")["reason"]) == (
        "False", "Promoting")  # fmt: skip
    assert reasons(plan) == ["Promoting"]
    assert routing_for("churn", [lab.test]) is not None
    # Steps 2 and 3: the stored decision is read back: move the alias, then Concluded.
    plan = lab.step(T0 + timedelta(minutes=2, seconds=1), stats=None)
    assert plan.set_alias == AliasMove(MODEL, "champion", 2)
    st = lab.status
    assert (st["phase"], st["decision"], st["winner"]) == ("Concluded", "Promote", "candidate")
    assert st["promotion"]["phase"] == "Done"
    assert st["concludedAt"] == "2026-11-29T12:02:01Z"
    control, candidate = st["variants"]
    assert (control["requests"], control["outcomes"], control["mean"]) == (45000, 5000, 0.1)
    assert candidate["mean"] == 0.2
    assert candidate["pValue"] < 0.05
    assert 0 < candidate["interval"][0] < 0.1 < candidate["interval"][1]
    assert "pValue" not in control
    assert [v["weight"] for v in st["variants"]] == [90, 10]
    concluded = lab.condition("Concluded")
    assert (concluded["status"], concluded["reason"]) == ("True", "Promote")
    assert "churn-classifier alias champion -> version 2" in concluded["message"]
    assert lab.condition("Running")["reason"] == "Concluded"
    assert "Promoted" in reasons(plan) and plan.requeue_after is None
    # Promote routes nothing: the deployment follows the moved alias by itself.
    assert routing_for("churn", [lab.test]) is None
    # Final: replays and later counts change nothing and never move the alias again.
    writes = lab.writes
    for later in (rows((5000, 500), (5000, 1000)), rows((9000, 900), (9000, 900)), None):
        again = lab.step(T0 + timedelta(days=3), stats=later, deployment=None)
        assert (again.set_alias, again.events, again.requeue_after) == (None, [], None)
    assert lab.writes == writes


def test_promote_false_names_the_winner_and_leaves_the_alias():
    lab = Lab(abtest_body(onConclusion={"promote": False, "alias": "champion"}))
    lab.start()
    plan = lab.step(T0 + timedelta(minutes=2), stats=rows((5000, 500), (5000, 1000)))
    assert plan.set_alias is None
    assert (lab.status["decision"], lab.status["winner"]) == ("Promote", "candidate")
    assert "WinnerFound" in reasons(plan)


def test_guardrail_breach_rolls_back_within_one_evaluation():
    lab = Lab(abtest_body())
    lab.start()
    # Far below minSamplesPerVariant, and the candidate converts better: the breach wins.
    plan = lab.step(
        T0 + timedelta(minutes=1),
        stats=rows((100, 5), (100, 30), requests=(1800, 200), errors=(0, 10)),
    )
    st = lab.status
    assert (st["phase"], st["decision"]) == ("Concluded", "Rollback")
    assert "winner" not in st and plan.set_alias is None
    assert [(v["name"], v["weight"]) for v in st["variants"]] == [
        ("control", 100),
        ("candidate", 0),
    ]
    breach = lab.condition("GuardrailBreached")
    assert (breach["status"], breach["reason"]) == ("True", "TreatmentBreach")
    assert "ErrorRate of 'candidate' is 0.05" in breach["message"]
    assert {"GuardrailBreached", "RolledBack"} <= set(reasons(plan))
    assert all(e.type == "Warning" for e in plan.events)
    # The rollback keeps the split with the candidate at 0 (a weight change, applied in place)
    # until the ABTest is deleted.
    assert routing_for("churn", [lab.test]) == Routing(
        (Variant("control", 1, 100), Variant("candidate", 2, 0)), "x-user-id", "ab", "Conversion"
    )
    deleting = lab.test
    deleting.metadata.model_extra["deletionTimestamp"] = "2026-11-29T13:00:00Z"  # type: ignore[index]
    assert routing_for("churn", [deleting]) is None


def test_a_control_breach_is_reported_but_decides_nothing():
    lab = Lab(abtest_body())
    lab.start()
    plan = lab.step(
        T0 + timedelta(minutes=1),
        stats=rows((100, 5), (100, 5), requests=(1800, 200), errors=(180, 0)),
    )
    assert lab.status["decision"] == "Continue"
    assert lab.condition("GuardrailBreached")["reason"] == "ControlBreach"
    assert reasons(plan) == ["GuardrailBreached"]


def test_no_difference_at_max_duration_returns_the_deployment_to_its_model():
    lab = Lab(abtest_body())
    lab.start()
    same = rows((3000, 300), (3000, 300))
    lab.step(T0 + timedelta(hours=23), stats=same)
    assert lab.status["decision"] == "Continue"
    plan = lab.step(T0 + timedelta(days=1), stats=same)
    assert (lab.status["phase"], lab.status["decision"]) == ("Concluded", "NoDifference")
    assert "maxDuration reached" in lab.condition("Concluded")["message"]
    assert plan.set_alias is None and reasons(plan) == ["NoDifference"]
    assert [v["weight"] for v in lab.status["variants"]] == [90, 10]
    assert routing_for("churn", [lab.test]) is None


def test_max_duration_concludes_even_when_the_counts_cannot_be_read():
    lab = Lab(abtest_body())
    lab.start()
    plan = lab.step(T0 + timedelta(hours=1), stats=StatsUnavailable("router down"))
    assert lab.status["phase"] == "Running"
    running = lab.condition("Running")
    assert (running["status"], running["reason"]) == ("Unknown", "StatsUnavailable")
    assert reasons(plan) == ["StatsUnavailable"]
    assert reasons(lab.step(T0 + timedelta(hours=2), stats=StatsUnavailable("router down"))) == []
    lab.step(T0 + timedelta(days=2), stats=StatsUnavailable("router down"))
    assert lab.status["decision"] == "NoDifference"
    assert "router down" in lab.condition("Concluded")["message"]


def test_latency_objective_decreasing_promotes_the_faster_variant():
    lab = Lab(abtest_body(objective={"metric": "Latency", "direction": "Decrease"}, guardrails=[]))
    lab.start()

    def latency(n: int, mean_s: float, sd_s: float, weight: int) -> dict[str, Any]:
        return dict(
            requests=n,
            latency_count=n,
            latency_sum_seconds=n * mean_s,
            latency_sum_squares_seconds=n * (sd_s**2 + mean_s**2),
            weight=weight,
        )

    stats = (
        VariantStats("control", **latency(27000, 0.050, 0.01, 90)),
        VariantStats("candidate", **latency(3000, 0.040, 0.01, 10)),
    )
    lab.step(T0 + timedelta(minutes=5), stats=stats)
    assert (lab.status["decision"], lab.status["winner"]) == ("Promote", "candidate")
    assert lab.status["variants"][0]["mean"] == pytest.approx(50.0)  # milliseconds
    assert lab.step(T0 + timedelta(minutes=6)).set_alias == AliasMove(MODEL, "champion", 2)


# --- restarts and idempotence -------------------------------------------------------------------


def test_restart_same_inputs_same_plan_and_nothing_new_writes_nothing():
    body = abtest_body(analysis={"alpha": "0.05", "minSamplesPerVariant": 200})
    body["spec"]["variants"].append(
        {"name": "other", "model": {"version": 3}, "weight": 0}
    )  # three variants: the Bonferroni-adjusted p-values go through the status
    body["spec"]["variants"][0]["weight"] = 80
    body["spec"]["variants"][2]["weight"] = 10
    lab = Lab(body)
    versions = {**VERSIONS, "other": 3}
    lab.step(T0, versions=versions)
    lab.step(T0, versions=versions, stats=_three((0, 0), (0, 0), (0, 0)))
    assert lab.status["phase"] == "Running"
    p_values = []
    for i, counts in enumerate(
        [((400, 40), (400, 52), (400, 40)), ((800, 80), (800, 100), (800, 78))], start=1
    ):
        stats = _three(*counts)
        stored = copy.deepcopy(lab.body)
        plan = lab.step(T0 + timedelta(minutes=i), versions=versions, stats=stats)
        p_values.append(lab.status["variants"][1]["pValue"])
        # A restarted operator reads the stored object back and sees the same counts.
        replay = Lab(stored)
        replan = replay.step(T0 + timedelta(minutes=i), versions=versions, stats=stats)
        assert replay.body == lab.body
        assert (replan.set_alias, replan.events) == (plan.set_alias, plan.events)
        # The same counts again: nothing to write, nothing to say.
        writes = lab.writes
        again = lab.step(T0 + timedelta(minutes=i, seconds=30), versions=versions, stats=stats)
        assert lab.writes == writes and again.events == []
    assert p_values[1] <= p_values[0]  # running minimum across evaluations


# --- the promotion, in two phases: every crash point -------------------------------------------

#: The candidate converts better: the analysis decides Promote.
WIN = rows((5000, 500), (5000, 1000))
#: Later evidence that, evaluated afresh, would roll back (the candidate breaches ErrorRate).
BREACH = rows((6000, 600), (6000, 1200), requests=(54000, 6000), errors=(0, 600))  # 90/10


class Alias:
    """The registry's alias as an adapter moves it: only when it does not point there yet."""

    def __init__(self, version: int = 1) -> None:
        self.version, self.moves = version, 0

    def carry_out(self, plan: Plan) -> None:
        if plan.set_alias is not None and plan.set_alias.version != self.version:
            self.version, self.moves = plan.set_alias.version, self.moves + 1


def test_breach_evidence_alone_rolls_back():
    """The control case for the crash tests below: BREACH decides Rollback when evaluated."""
    lab = Lab(abtest_body())
    lab.start()
    lab.step(T0 + timedelta(minutes=2), stats=BREACH)
    assert (lab.status["phase"], lab.status["decision"]) == ("Concluded", "Rollback")


def test_crash_after_the_decision_is_written_finishes_that_promotion():
    lab = Lab(abtest_body())
    lab.start()
    alias = Alias()
    decided = lab.step(T0 + timedelta(minutes=2), stats=WIN)
    alias.carry_out(decided)
    assert alias.moves == 0 and lab.status["promotion"]["phase"] == "Pending"
    # The operator dies here. The restarted one reads the stored status back and sees new
    # evidence, a changed spec and even its deployment gone: the decision stands.
    restarted = Lab(copy.deepcopy(lab.body))
    restarted.body["spec"]["guardrails"] = []
    restarted.body["metadata"]["generation"] = 2
    plan = restarted.step(T0 + timedelta(minutes=9), stats=BREACH, deployment=None)
    alias.carry_out(plan)
    st = restarted.status
    assert (st["phase"], st["decision"], st["winner"]) == ("Concluded", "Promote", "candidate")
    assert st["promotion"]["phase"] == "Done" and st["observedGeneration"] == 2
    assert (alias.version, alias.moves) == (2, 1)
    assert reasons(plan) == ["Promoted"]
    assert "RolledBack" not in reasons(plan)


def test_crash_after_the_alias_moved_before_concluded_moves_it_no_more():
    lab = Lab(abtest_body())
    lab.start()
    alias = Alias()
    lab.step(T0 + timedelta(minutes=2), stats=WIN)
    stored = copy.deepcopy(lab.body)
    # The round that reads the decision back moves the alias; the process dies before the
    # Concluded status is written (the stored object still says Pending).
    moving = reconcile(lab.test, Observed(deployment(), VERSIONS, WIN), T0 + timedelta(minutes=3))
    alias.carry_out(moving)
    assert moving.status["phase"] == "Concluded" and alias.moves == 1
    restarted = Lab(stored)
    plan = restarted.step(T0 + timedelta(minutes=4), stats=BREACH)
    assert plan.set_alias == moving.set_alias  # the same move: already done, nothing to do
    alias.carry_out(plan)
    assert (alias.version, alias.moves) == (2, 1)
    st = restarted.status
    assert (st["phase"], st["decision"], st["winner"]) == ("Concluded", "Promote", "candidate")
    # Final: nothing more, whatever comes.
    again = restarted.step(T0 + timedelta(minutes=5), stats=BREACH)
    assert (again.set_alias, again.events) == (None, [])


def test_pending_promotion_reads_only_an_unfinished_promotion():
    lab = Lab(abtest_body())
    lab.start()
    assert pending_promotion(lab.status) is None
    lab.step(T0 + timedelta(minutes=2), stats=WIN)
    assert pending_promotion(lab.status) == AliasMove(MODEL, "champion", 2)
    assert pending_promotion({**lab.status, "promotion": {"phase": "Pending"}}) is None
    lab.step(T0 + timedelta(minutes=3))
    assert pending_promotion(lab.status) is None  # Done, and final
    assert pending_promotion(None) is None


def _three(a: tuple[int, float], b: tuple[int, float], c: tuple[int, float]) -> tuple:
    return tuple(
        VariantStats(
            name, requests=n * w // 10, outcomes=n, outcome_sum=s, outcome_sum_squares=s, weight=w
        )
        for name, (n, s), w in zip(
            ("control", "candidate", "other"), (a, b, c), (80, 10, 10), strict=True
        )
    )


def test_a_router_counts_restart_carries_the_totals_over():
    """The router's monitor restarted: its counts start from zero. The totals in status become
    the carried base, so the evidence (and the running bounds) go on; a second restart adds
    to the base; replays write nothing."""
    lab = Lab(abtest_body(analysis={"alpha": "0.05", "minSamplesPerVariant": 200}))
    lab.start()
    lab.step(T0 + timedelta(minutes=1), stats=rows((400, 40), (400, 50)))
    before = lab.status["variants"][1]["pValue"]
    plan = lab.step(T0 + timedelta(minutes=2), stats=rows((50, 5), (50, 6)))
    assert reasons(plan) == ["CountsReset"]
    assert "carried over" not in plan.events[0].message
    control, candidate = lab.status["variants"]
    assert (control["requests"], control["outcomes"], control["outcomeSum"]) == (4050, 450, 45.0)
    assert candidate["carried"]["outcomes"] == 400 and candidate["carried"]["outcomeSum"] == 50.0
    assert candidate["outcomes"] == 450 and candidate["pValue"] <= before  # kept, still running
    writes = lab.writes
    again = lab.step(T0 + timedelta(minutes=2, seconds=30), stats=rows((50, 5), (50, 6)))
    assert again.events == [] and lab.writes == writes  # the same counts: nothing new
    lab.step(T0 + timedelta(minutes=3), stats=rows((120, 12), (120, 15)))
    assert lab.status["variants"][0]["requests"] == 4680
    plan = lab.step(T0 + timedelta(minutes=4), stats=rows((10, 1), (10, 2)))
    assert reasons(plan) == ["CountsReset"]
    control, candidate = lab.status["variants"]
    assert (control["requests"], control["carried"]["requests"]) == (4770, 4680)
    assert candidate["outcomeSum"] == 50.0 + 15.0 + 2.0
    assert lab.status["phase"] == "Running"


def test_a_counts_restart_without_sums_in_status_restarts_the_evidence():
    """A status written before the sums were kept cannot carry them: evidence restarts."""
    lab = Lab(abtest_body(analysis={"alpha": "0.05", "minSamplesPerVariant": 200}))
    lab.start()
    lab.step(T0 + timedelta(minutes=1), stats=rows((400, 40), (400, 50)))
    for v in lab.body["status"]["variants"]:
        for key in ("outcomeSum", "outcomeSumSquares", "latencyCount", "latencySumSeconds",
                    "latencySumSquaresSeconds"):  # fmt: skip
            v.pop(key, None)
    plan = lab.step(T0 + timedelta(minutes=2), stats=rows((50, 5), (50, 6)))
    assert reasons(plan) == ["CountsReset"] and "discarded" in plan.events[0].message
    assert lab.status["variants"][0]["requests"] == 450
    assert "carried" not in lab.status["variants"][0]
    assert "pValue" not in lab.status["variants"][1]  # below minSamples again
    assert lab.status["phase"] == "Running"


def test_router_no_longer_serving_the_split_is_reported_not_analysed():
    lab = Lab(abtest_body())
    lab.start()
    lab.step(T0 + timedelta(minutes=1), stats=rows((10, 1), (10, 1), weights=(None, None)))
    running = lab.condition("Running")
    assert running["reason"] == "StatsUnavailable"
    assert "does not serve ABTest ab's variants control, candidate" in running["message"]


# --- spec changes and a deployment that goes away -----------------------------------------------


def test_weight_change_mid_test_applies_and_a_variant_change_fails_the_test():
    lab = Lab(abtest_body())
    lab.start()
    lab.body["spec"]["variants"][0]["weight"] = 80
    lab.body["spec"]["variants"][1]["weight"] = 20
    lab.body["metadata"]["generation"] = 2
    lab.step(T0 + timedelta(minutes=1), stats=rows((10, 1), (10, 1), weights=(80, 20)))
    assert [v["weight"] for v in lab.status["variants"]] == [80, 20]
    assert lab.status["observedGeneration"] == 2
    assert routing_for("churn", [lab.test]).variants[1] == Variant("candidate", 2, 20)  # type: ignore[union-attr]
    lab.body["spec"]["variants"][1]["name"] = "renamed"
    lab.body["metadata"]["generation"] = 3
    plan = lab.step(T0 + timedelta(minutes=2), stats=rows((10, 1), (10, 1)))
    assert lab.status["phase"] == "Failed"
    assert lab.condition("Concluded")["reason"] == "SpecChanged"
    assert reasons(plan) == ["Failed"]
    assert routing_for("churn", [lab.test]) is None


def test_deployment_deleted_mid_test_fails_it():
    lab = Lab(abtest_body())
    lab.start()
    lab.step(T0 + timedelta(minutes=1), deployment=None)
    assert lab.status["phase"] == "Failed"
    assert lab.condition("Concluded")["reason"] == "DeploymentDeleted"


# --- several tests on one deployment ------------------------------------------------------------


def test_two_tests_on_one_deployment_the_oldest_running_one_splits():
    older = Lab(abtest_body("older", created="2026-11-29T10:00:00Z"))
    newer = Lab(abtest_body("newer", created="2026-11-29T11:00:00Z"))

    def step(lab: Lab, other: Lab, now: datetime, **kw: Any) -> Plan:
        return lab.step(now, competitors=[other.test], **kw)

    # The newer one is looked at first: it waits for the older one all the same.
    step(newer, older, T0)
    assert newer.condition("Running")["reason"] == "WaitingForDeployment"
    assert "ABTest older splits" in newer.condition("Running")["message"]
    step(older, newer, T0)
    assert older.condition("Running")["reason"] == "WaitingForRouter"
    both = [older.test, newer.test]
    assert routing_holder("churn", both).metadata.name == "older"  # type: ignore[union-attr]
    assert routing_for("churn", both).abtest == "older"  # type: ignore[union-attr]
    step(older, newer, T0, stats=rows((0, 0), (0, 0)))
    assert older.status["phase"] == "Running"
    step(newer, older, T0)
    assert newer.status["phase"] == "Pending" and "variants" not in newer.status
    # Promote: the older test is final; the newer one takes the deployment.
    step(older, newer, T0 + timedelta(minutes=5), stats=rows((5000, 500), (5000, 1000)))
    assert older.status["decision"] == "Promote"
    # While the promotion is pending, the older test still holds the deployment.
    assert routing_for("churn", [older.test, newer.test]).abtest == "older"  # type: ignore[union-attr]
    step(older, newer, T0 + timedelta(minutes=5, seconds=1))
    assert older.status["phase"] == "Concluded"
    assert routing_for("churn", [older.test, newer.test]) is None
    step(newer, older, T0 + timedelta(minutes=6))
    assert newer.condition("Running")["reason"] == "WaitingForRouter"
    assert routing_for("churn", [older.test, newer.test]).abtest == "newer"  # type: ignore[union-attr]


def test_a_running_test_outranks_an_older_waiting_one_and_a_rollback_yields():
    running = Lab(abtest_body("running", created="2026-11-29T11:00:00Z"))
    running.start()
    waiting = Lab(abtest_body("waiting", created="2026-11-29T10:00:00Z"))
    waiting.step(T0, competitors=[running.test])
    assert waiting.condition("Running")["reason"] == "WaitingForDeployment"
    assert routing_for("churn", [waiting.test, running.test]).abtest == "running"  # type: ignore[union-attr]
    # Rolled back: its zero-weight split routes only until another test freezes its own.
    running.step(
        T0 + timedelta(minutes=1),
        stats=rows((10, 1), (200, 1), requests=(1800, 200), errors=(0, 50)),
    )
    assert running.status["decision"] == "Rollback"
    assert routing_for("churn", [waiting.test, running.test]).abtest == "running"  # type: ignore[union-attr]
    waiting.step(T0 + timedelta(minutes=2), competitors=[running.test])
    assert waiting.condition("Running")["reason"] == "WaitingForRouter"
    routing = routing_for("churn", [waiting.test, running.test])
    assert routing is not None and routing.abtest == "waiting"
    assert [v.weight for v in routing.variants] == [90, 10]


def test_stats_from_response_keeps_this_tests_rows():
    payload = {
        "since": 1.0,
        "variants": [
            {"abtest": "ab", "variant": "control", "requests": 10, "errors": 1, "outcomes": 4,
             "outcomeSum": 2.0, "outcomeSumSquares": 2.0, "latencyP99Ms": 12.5, "weight": 90},
            {"abtest": "old", "variant": "control", "requests": 99, "weight": None},
            {"abtest": "ab", "variant": "candidate", "requests": 3, "errorRate": None,
             "latencyP99Ms": None, "weight": None},
        ],
    }  # fmt: skip
    got = stats_from_response(payload, "ab")
    assert got == (
        VariantStats(
            "control",
            requests=10,
            errors=1,
            outcomes=4,
            outcome_sum=2.0,
            outcome_sum_squares=2.0,
            latency_p99_ms=12.5,
            weight=90,
        ),
        VariantStats("candidate", requests=3),
    )
    assert isinstance(stats_from_response({"error": "x"}, "ab"), StatsUnavailable)
    assert isinstance(stats_from_response({"variants": [{"abtest": "ab"}]}, "ab"), StatsUnavailable)


# --- sample ratio mismatch ----------------------------------------------------------------------


def _fifty_fifty(**spec: Any) -> Lab:
    body = abtest_body(**spec)
    body["spec"]["variants"][0]["weight"] = body["spec"]["variants"][1]["weight"] = 50
    lab = Lab(body)
    lab.step(T0)
    lab.step(T0, stats=rows((0, 0), (0, 0), weights=(50, 50)))
    assert lab.status["phase"] == "Running"
    return lab


def test_a_60_40_split_under_50_50_stops_with_sample_ratio_mismatch_not_a_promotion():
    """The router sends 60/40 under a 50/50 configuration and the candidate looks better:
    the evidence is broken, so the test stops (Failed) without moving the alias or rolling
    back; replays of the same counts and later counts change nothing."""
    lab = _fifty_fifty()
    evaluations = [(1, 600, 400), (2, 1200, 800), (3, 3000, 2000), (4, 6000, 4000)]
    plan = None
    for minute, control_requests, candidate_requests in evaluations:
        outcomes = (min(control_requests, 5000), min(candidate_requests, 5000))
        plan = lab.step(
            T0 + timedelta(minutes=minute),
            stats=rows(
                (outcomes[0], outcomes[0] * 0.1),
                (outcomes[1], outcomes[1] * 0.2),
                requests=(control_requests, candidate_requests),
                weights=(50, 50),
            ),
        )
        if lab.status["phase"] != "Running":
            break
    assert plan is not None and minute == 1  # read continuously, found at the first look
    st = lab.status
    assert st["phase"] == "Failed" and "decision" not in st and "winner" not in st
    assert plan.set_alias is None
    srm = lab.condition("SampleRatioMismatch")
    assert (srm["status"], srm["reason"]) == ("True", "ObservedSplitDiffers")
    assert "control 60.0% of 600 requests (configured 50%)" in srm["message"]
    assert "nothing is promoted or rolled back" in srm["message"]
    assert lab.condition("Concluded")["reason"] == "SampleRatioMismatch"
    assert [v["weight"] for v in st["variants"]] == [50, 50]  # not a rollback
    assert [v["requests"] for v in st["variants"]] == [600, 400]
    assert reasons(plan) == ["Failed"]
    assert routing_for("churn", [lab.test]) is None  # the deployment serves its own model
    writes = lab.writes
    for later in (rows((5000, 500), (5000, 1000), weights=(50, 50)), None):
        again = lab.step(T0 + timedelta(hours=1), stats=later)
        assert (again.set_alias, again.events) == (None, [])
    assert lab.writes == writes


def test_an_exact_split_is_checked_and_the_test_decides_as_usual():
    lab = _fifty_fifty()
    stats = rows((5000, 500), (5000, 1000), requests=(5003, 4997), weights=(50, 50))
    plan = lab.step(T0 + timedelta(minutes=2), stats=stats)
    # Two-phase promotion: the decision is recorded first, the alias moves on the next round.
    assert lab.status["promotion"]["variant"] == "candidate" and plan.set_alias is None
    srm = lab.condition("SampleRatioMismatch")
    assert (srm["status"], srm["reason"]) == ("False", "SplitAsConfigured")
    plan = lab.step(T0 + timedelta(minutes=3), stats=stats)
    assert (lab.status["decision"], lab.status["winner"]) == ("Promote", "candidate")
    assert plan.set_alias == AliasMove(MODEL, "champion", 2)
    srm = lab.condition("SampleRatioMismatch")
    assert (srm["status"], srm["reason"]) == ("False", "SplitAsConfigured")
    assert "control 50.0% of 5003 requests (configured 50%)" in srm["message"]


def test_a_weight_change_restarts_the_sample_ratio_count_once_the_router_serves_it():
    """Totals mix the old and new weights: the check counts from the first evaluation that
    sees the router on the new weights, and finds a mismatch after that only."""
    lab = Lab(abtest_body(analysis={"alpha": "0.05", "minSamplesPerVariant": 100000}))
    lab.start()
    lab.step(T0 + timedelta(minutes=1), stats=rows((900, 90), (100, 10)))  # 9000/1000: 90/10
    assert lab.condition("SampleRatioMismatch")["reason"] == "SplitAsConfigured"
    lab.body["spec"]["variants"][0]["weight"] = lab.body["spec"]["variants"][1]["weight"] = 50
    lab.body["metadata"]["generation"] = 2
    # The router still splits 90/10 (the new weights are on their way): not checked.
    lab.step(T0 + timedelta(minutes=2), stats=rows((900, 90), (100, 10), requests=(9900, 1100)))
    srm = lab.condition("SampleRatioMismatch")
    assert (srm["status"], srm["reason"]) == ("Unknown", "WeightsChanging")
    # The router serves 50/50 now; requests split 90/10 before it may still arrive, even on
    # a variant the new weights leave out: one more evaluation before counting.
    lab.step(
        T0 + timedelta(minutes=3),
        stats=rows((900, 90), (100, 10), requests=(10800, 1200), weights=(50, 50)),
    )
    assert lab.status["phase"] == "Running"
    assert lab.condition("SampleRatioMismatch")["reason"] == "WeightsSettling"
    lab.step(
        T0 + timedelta(minutes=4),
        stats=rows((900, 90), (100, 10), requests=(11000, 1250), weights=(50, 50)),
    )
    assert [v["srmBaseline"] for v in lab.status["variants"]] == [11000, 1250]
    assert lab.condition("SampleRatioMismatch")["reason"] == "SplitAsConfigured"
    # From there a 50/50 split: totals 90/10-heavy, yet no mismatch.
    lab.step(
        T0 + timedelta(minutes=5),
        stats=rows((900, 90), (100, 10), requests=(13000, 3250), weights=(50, 50)),
    )
    assert lab.status["phase"] == "Running"
    assert lab.condition("SampleRatioMismatch")["reason"] == "SplitAsConfigured"
    # ... and 60/40 from there (1800 vs 1200 more requests) is found.
    lab.step(
        T0 + timedelta(minutes=6),
        stats=rows((900, 90), (100, 10), requests=(14800, 4450), weights=(50, 50)),
    )
    assert lab.status["phase"] == "Failed"
    assert lab.condition("SampleRatioMismatch")["status"] == "True"


def test_overflowed_outcome_sums_are_not_read_as_zero():
    """The router writes a sum that overflowed as null: that row is unreadable, not 0."""
    row = {"abtest": "ab", "variant": "control", "requests": 10, "outcomes": 2,
           "outcomeSum": None, "outcomeSumSquares": None, "weight": 50}  # fmt: skip
    read = stats_from_response({"variants": [row]}, "ab")
    assert isinstance(read, StatsUnavailable) and "outcomeSum" in read.message
    row["outcomeSum"] = float("inf")
    assert isinstance(stats_from_response({"variants": [row]}, "ab"), StatsUnavailable)


def test_a_mean_objectives_outcome_range_travels_with_the_routing():
    lab = _fifty_fifty(objective={"metric": "Mean", "outcomeRange": {"min": "0", "max": "250.5"}})
    routing = routing_for("churn", [lab.test])
    assert routing is not None and routing.outcome_range == (0.0, 250.5)
    assert routing_for("churn", [Lab(abtest_body()).test]) is None


def test_late_requests_of_the_old_weights_do_not_stop_a_test_moving_a_variant_to_zero():
    """Weights 50/50 -> 100/0 (control only): the router switched, but a request it assigned
    to the candidate before is shipped after the evaluation that first saw the switch. It is
    not counted; a candidate request one evaluation later is a mismatch."""
    lab = _fifty_fifty()
    lab.step(T0 + timedelta(minutes=1), stats=rows((1000, 100), (1000, 100), weights=(50, 50)))
    lab.body["spec"]["variants"][0]["weight"], lab.body["spec"]["variants"][1]["weight"] = 100, 0
    lab.body["metadata"]["generation"] = 2

    def at(minute: int, control: int, candidate: int) -> None:
        counts = rows((1000, 100), (1000, 100), requests=(control, candidate), weights=(100, 0))
        lab.step(T0 + timedelta(minutes=minute), stats=counts)

    at(2, 5050, 5001)  # spec changed: Unknown, WeightsChanging
    at(3, 5100, 5003)  # the router serves 100/0: WeightsSettling
    assert lab.condition("SampleRatioMismatch")["reason"] == "WeightsSettling"
    at(4, 5200, 5004)  # one late candidate request, assigned before the switch
    assert lab.status["phase"] == "Running"
    at(5, 7200, 5004)
    assert lab.condition("SampleRatioMismatch")["reason"] == "SplitAsConfigured"
    at(6, 7200, 5005)
    assert lab.status["phase"] == "Failed"


# --- count epochs: the status is the durable ledger ----------------------------------------------


def _epoch(stats: tuple[VariantStats, ...], epoch: str) -> tuple[VariantStats, ...]:
    return tuple(replace(r, epoch=epoch) for r in stats)


def test_a_new_epoch_is_folded_even_when_its_counts_are_higher():
    """A cluster replacement: the new monitor counts from zero in a new epoch, and by the next
    read it has counted MORE than the old epoch had (undetectable from the counts alone). The
    old epoch's totals are carried, the new one counts on top, the old epoch is closed."""
    lab = Lab(abtest_body(analysis={"alpha": "0.05", "minSamplesPerVariant": 200}))
    lab.start()
    lab.step(T0 + timedelta(minutes=1), stats=_epoch(rows((400, 40), (400, 50)), "e1"))
    assert lab.status["countsEpoch"] == "e1" and lab.status.get("closedEpochs") in (None, [])
    plan = lab.step(T0 + timedelta(minutes=2), stats=_epoch(rows((500, 50), (500, 60)), "e2"))
    assert reasons(plan) == ["CountsReset"] and "new count epoch e2" in plan.events[0].message
    control, candidate = lab.status["variants"]
    assert (control["requests"], control["outcomes"]) == (3600 + 4500, 900)
    assert (candidate["outcomes"], candidate["outcomeSum"]) == (900, 110.0)
    assert candidate["carried"]["outcomes"] == 400
    assert (lab.status["countsEpoch"], lab.status["closedEpochs"]) == ("e2", ["e1"])
    # The live epoch grows: only its growth is added; a replay writes nothing.
    lab.step(T0 + timedelta(minutes=3), stats=_epoch(rows((600, 60), (600, 70)), "e2"))
    assert lab.status["variants"][1]["outcomes"] == 1000
    writes = lab.writes
    again = lab.step(T0 + timedelta(minutes=3), stats=_epoch(rows((600, 60), (600, 70)), "e2"))
    assert again.events == [] and lab.writes == writes


def test_a_monitor_restarted_from_its_saved_counts_keeps_its_epoch_and_nothing_is_carried():
    lab = Lab(abtest_body(analysis={"alpha": "0.05", "minSamplesPerVariant": 200}))
    lab.start()
    lab.step(T0 + timedelta(minutes=1), stats=_epoch(rows((400, 40), (400, 50)), "e1"))
    plan = lab.step(T0 + timedelta(minutes=2), stats=_epoch(rows((410, 41), (420, 52)), "e1"))
    assert plan.events == []
    candidate = lab.status["variants"][1]
    assert candidate["outcomes"] == 420 and "carried" not in candidate


def test_an_old_epoch_reported_again_is_not_counted_twice():
    """The old cluster still answers after the new one was read: its (closed) epoch's counts
    are refused with a StatsUnavailable condition; totals stay; the live epoch goes on."""
    lab = Lab(abtest_body(analysis={"alpha": "0.05", "minSamplesPerVariant": 200}))
    lab.start()
    lab.step(T0 + timedelta(minutes=1), stats=_epoch(rows((400, 40), (400, 50)), "e1"))
    lab.step(T0 + timedelta(minutes=2), stats=_epoch(rows((10, 1), (10, 2)), "e2"))
    before = copy.deepcopy(lab.status["variants"])
    plan = lab.step(T0 + timedelta(minutes=3), stats=_epoch(rows((450, 45), (450, 55)), "e1"))
    assert reasons(plan) == ["StatsUnavailable"]
    assert lab.condition("Running")["status"] == "Unknown"
    assert "epoch e1" in lab.condition("Running")["message"]
    assert lab.status["variants"] == before and lab.status["countsEpoch"] == "e2"
    lab.step(T0 + timedelta(minutes=4), stats=_epoch(rows((20, 2), (20, 3)), "e2"))
    assert lab.status["variants"][1]["outcomes"] == 420
    assert lab.condition("Running")["reason"] == "Analysing"


def test_counts_going_down_within_an_epoch_are_a_restart_of_every_variant():
    """Within one epoch, any variant going down means the monitor lost its counts: every
    variant is carried (one whose new counts happen to be higher would otherwise lose its
    old ones)."""
    lab = Lab(abtest_body(analysis={"alpha": "0.05", "minSamplesPerVariant": 200}))
    lab.start()
    lab.step(T0 + timedelta(minutes=1), stats=_epoch(rows((400, 40), (10, 1)), "e1"))
    plan = lab.step(T0 + timedelta(minutes=2), stats=_epoch(rows((5, 1), (30, 3)), "e1"))
    assert reasons(plan) == ["CountsReset"]
    control, candidate = lab.status["variants"]
    assert (control["outcomes"], candidate["outcomes"]) == (405, 40)
    assert candidate["outcomeSum"] == 4.0


def test_folded_totals_equal_every_epochs_last_read_and_never_go_back():
    """Random epochs, restarts with and without saved counts, stale reads of closed epochs: the
    status totals always equal the sum over epochs of the last counts read from each, and no
    counter in status ever goes down."""
    rng = random.Random(1515)
    lab = Lab(abtest_body(analysis={"alpha": "0.05", "minSamplesPerVariant": 10**8}))
    lab.start()
    last_read: dict[str, tuple[int, int]] = {}  # epoch -> (control, candidate) outcomes
    epochs = ["e0"]
    live = [0, 0]
    previous = (0, 0)
    now = T0
    for step in range(100):
        now += timedelta(minutes=1)
        roll = rng.random()
        if roll < 0.1:  # the state is lost: a new epoch from zero
            epochs.append(f"e{len(epochs)}")
            live = [0, 0]
        live = [c + rng.randrange(0, 50) for c in live]
        epoch = epochs[-1]
        if roll > 0.95 and len(epochs) > 1:  # an old cluster answers: refused
            old = rng.choice(epochs[:-1])
            lab.step(now, stats=_epoch(rows((99_999, 0), (99_999, 0)), old))
        else:
            lab.step(now, stats=_epoch(rows((live[0], 0), (live[1], 0)), epoch))
            last_read[epoch] = (live[0], live[1])
        control, candidate = lab.status["variants"]
        got = (control["outcomes"], candidate["outcomes"])
        want = tuple(sum(v[i] for v in last_read.values()) for i in (0, 1))
        assert got == want, (step, got, want)
        assert got[0] >= previous[0] and got[1] >= previous[1]
        previous = got
    assert len(lab.status["closedEpochs"]) <= 16
