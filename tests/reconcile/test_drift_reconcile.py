"""The drift core: status.drift and the Drifted condition from /v1/drift, and onDrift: Retrain.

:class:`Tap` plays the serving app's drift tap as ``DriftTap.report()`` shows it (windows
aligned to the epoch, a bounded history, its own consecutive count); :class:`Operator` plays the
handler: it keeps the status between calls and "creates" TrainingJobs the way the API server
would (a name taken answers 409).
"""

from __future__ import annotations

import copy
from collections import deque
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mlplane.crds.validate import check, parse
from mlplane.operator import conditions
from mlplane.operator.builders import labels as lbl
from mlplane.operator.builders.retrain import build_retrain_trainingjob, retrain_name
from mlplane.operator.reconcile.drift import (
    CONDITION,
    ObservedRetrain,
    Unavailable,
    reconcile_drift,
)

UID = "md-uid-1"
WINDOW = 3600.0
#: A window boundary: windows are aligned to the epoch.
T0 = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)


def modeldeployment(
    name: str = "churn",
    *,
    on_drift: str = "Retrain",
    enabled: bool = True,
    consecutive: int = 3,
    min_interval: str = "24h",
    method: str = "StatisticalTest",
) -> Any:
    drift: dict[str, Any] = {
        "enabled": enabled, "method": method, "window": "1h", "minSamples": 1000,
        "consecutiveWindows": consecutive, "onDrift": on_drift,
    }  # fmt: skip
    if on_drift == "Retrain":
        drift["retrain"] = {
            "minInterval": min_interval,
            "trainingJobTemplate": {
                "metadata": {"labels": {"team": "churn", lbl.RETRAIN: "spoofed"},
                             "annotations": {"owner": "ml-team"}},
                "spec": {
                    "entrypoint": "python -m churn.train",
                    "image": "ghcr.io/example/churn-train:1.4.0",
                    "workers": [{"name": "cpu", "replicas": 2,
                                 "resources": {"cpu": "4", "memory": "8Gi"}}],
                    "mlflow": {"registeredModel": "churn-classifier", "alias": "candidate"},
                },
            },
        }  # fmt: skip
    body = {
        "apiVersion": "mlplane.dev/v1alpha1", "kind": "ModelDeployment",
        "metadata": {"name": name, "namespace": "ml", "uid": UID, "generation": 2},
        "spec": {"model": {"name": "churn-classifier", "alias": "champion"},
                 "monitoring": {"drift": drift}},
    }  # fmt: skip
    assert check(body) == []
    return parse(body)


def at(hours: float) -> datetime:
    return T0 + timedelta(hours=hours)


class Tap:
    """The drift tap's report: closed windows with verdicts, history bounded like the tap's."""

    def __init__(self, version: int = 3, history: int = 12) -> None:
        self.version = version
        self.history: deque[dict[str, Any]] = deque(maxlen=history)
        self.consecutive = 0
        self.index = int(T0.timestamp() // WINDOW)
        self.status = "Ok"

    def close(self, verdict: bool | None, rows: int = 5000, features: int = 3) -> float:
        """Close the next window: drifted (True), not drifted (False), no verdict (None)."""
        start, end = self.index * WINDOW, (self.index + 1) * WINDOW
        self.index += 1
        drifted = ["f0", "f2"] if verdict else []
        if verdict:
            self.consecutive += 1
        elif verdict is False:
            self.consecutive = 0
        results = [
            {"feature": f"f{i}", "psi": 0.05 * (i + 1) if verdict else 0.001, "js": 0.02 * (i + 1),
             "drifted": None if verdict is None else f"f{i}" in drifted}
            for i in range(features)
        ]  # fmt: skip
        self.history.append({
            "version": self.version, "windowStart": start, "windowEnd": end,
            "rows": rows if verdict is not None else 40, "evaluatedAt": end + 1.5,
            "drifted": drifted, "anyDrifted": bool(drifted), "hasVerdict": verdict is not None,
            "features": results,
        })  # fmt: skip
        return end

    def restart(self, version: int | None = None) -> None:
        """The monitor replica restarted (or the reference changed): history and count reset."""
        self.history.clear()
        self.consecutive = 0
        if version is not None:
            self.version = version

    def report(self) -> dict[str, Any]:
        history = [{k: v for k, v in h.items() if k != "features"} for h in self.history]
        latest = self.history[-1] if self.history else None
        return {
            "enabled": True, "status": self.status, "reason": "", "method": "StatisticalTest",
            "threshold": 0.01, "windowSeconds": WINDOW, "minSamples": 1000,
            "referenceVersion": self.version,
            "currentWindow": {"start": self.index * WINDOW, "end": (self.index + 1) * WINDOW,
                              "rows": 12},
            "consecutiveDriftedWindows": self.consecutive,
            "lastEvaluation": copy.deepcopy(latest), "history": history,
            "droppedRows": 0, "lateRows": 0,
        }  # fmt: skip


class Operator:
    """Calls the core like the handler: keeps the status, creates jobs, 409 on a taken name."""

    def __init__(self, md: Any) -> None:
        self.md = md
        self.status: dict[str, Any] = {"phase": "Ready"}
        self.jobs: dict[str, dict[str, Any]] = {}
        self.conflicts = 0
        self.events: list[Any] = []

    def observed(self) -> list[ObservedRetrain]:
        return [ObservedRetrain.from_trainingjob(j) for j in self.jobs.values()]

    def tick(self, report: Any, now: datetime, *, crash_before_status: bool = False) -> Any:
        plan = reconcile_drift(self.md, self.status, report, self.observed(), now, uid=UID)
        self.events += plan.events
        if plan.create is not None:
            name = plan.create["metadata"]["name"]
            if name in self.jobs:
                self.conflicts += 1
            else:
                job = copy.deepcopy(plan.create)
                job["metadata"]["creationTimestamp"] = conditions.timestamp(now)
                job["status"] = {"phase": "Running"}
                self.jobs[name] = job
        if not crash_before_status:
            self.status = plan.status
        return plan

    def finish(self, name: str, phase: str = "Succeeded") -> None:
        self.jobs[name]["status"]["phase"] = phase


def drifted(status: dict[str, Any]) -> dict[str, Any]:
    return conditions.find(status.get("conditions"), CONDITION) or {}


# --- counting windows -----------------------------------------------------------------------


def test_each_window_counts_once_however_often_it_is_read() -> None:
    op, tap = Operator(modeldeployment(on_drift="Alert")), Tap()
    end = tap.close(True)
    for minutes in (1, 2, 30):  # timer ticks within the same window
        op.tick(tap.report(), at(1) + timedelta(minutes=minutes))
        assert op.status["drift"]["consecutiveDriftedWindows"] == 1
    assert op.status["drift"]["lastWindowEnd"] == conditions.timestamp(
        datetime.fromtimestamp(end, UTC)
    )
    tap.close(True)
    op.tick(tap.report(), at(2.1))
    op.tick(tap.report(), at(2.2))
    assert op.status["drift"]["consecutiveDriftedWindows"] == 2
    tap.close(False)
    op.tick(tap.report(), at(3.1))
    assert op.status["drift"]["consecutiveDriftedWindows"] == 0
    assert drifted(op.status)["status"] == "False"
    assert drifted(op.status)["reason"] == "NoDrift"


def test_windows_closed_between_two_looks_are_all_counted() -> None:
    op, tap = Operator(modeldeployment(on_drift="Alert")), Tap()
    tap.close(True)
    op.tick(tap.report(), at(1.1))
    for _ in range(4):
        tap.close(True)
    op.tick(tap.report(), at(5.1))
    assert op.status["drift"]["consecutiveDriftedWindows"] == 5


def test_a_window_without_verdict_neither_counts_nor_resets() -> None:
    op, tap = Operator(modeldeployment(on_drift="Alert")), Tap()
    tap.close(True)
    tap.close(True)
    op.tick(tap.report(), at(2.1))
    tap.close(None)
    plan = op.tick(tap.report(), at(3.1))
    assert plan.drift["consecutiveDriftedWindows"] == 2
    cond = drifted(plan.status)
    assert (cond["status"], cond["reason"]) == ("Unknown", "NotEnoughSamples")
    assert "40 rows" in cond["message"] and "1000" in cond["message"]
    tap.close(True)
    op.tick(tap.report(), at(4.1))
    assert op.status["drift"]["consecutiveDriftedWindows"] == 3


def test_no_window_closed_yet_is_not_enough_samples() -> None:
    op, tap = Operator(modeldeployment()), Tap()
    plan = op.tick(tap.report(), at(0.5))
    cond = drifted(plan.status)
    assert (cond["status"], cond["reason"]) == ("Unknown", "NotEnoughSamples")
    assert plan.drift["consecutiveDriftedWindows"] == 0
    assert plan.create is None and plan.events == []
    # The next look: just after the open window closes (and the monitor evaluated it).
    assert plan.requeue_after == pytest.approx(1800 + 10)


def test_a_new_reference_version_starts_over() -> None:
    op, tap = Operator(modeldeployment(on_drift="Alert")), Tap(version=3)
    tap.close(True)
    tap.close(True)
    op.tick(tap.report(), at(2.1))
    assert op.status["drift"]["consecutiveDriftedWindows"] == 2
    tap.restart(version=4)
    tap.close(True)
    op.tick(tap.report(), at(3.1))
    assert op.status["drift"]["referenceVersion"] == 4
    assert op.status["drift"]["consecutiveDriftedWindows"] == 1


def test_after_a_gap_the_tap_count_is_used_never_a_bridged_streak() -> None:
    """The operator was away longer than the history: a reset it never saw must not be
    bridged by carrying its old streak over."""
    op, tap = Operator(modeldeployment(on_drift="Alert")), Tap(history=4)
    tap.close(True)
    tap.close(True)
    op.tick(tap.report(), at(2.1))
    tap.close(False)  # falls out of the history before the next look
    for _ in range(4):
        tap.close(True)
    op.tick(tap.report(), at(7.1))
    assert op.status["drift"]["consecutiveDriftedWindows"] == 4  # not 2 + 4


def _true_streak(verdicts: list[bool | None]) -> int:
    streak = 0
    for v in verdicts:
        streak = streak + 1 if v else 0 if v is False else streak
    return streak


@settings(max_examples=200, deadline=None)
@given(
    steps=st.lists(
        st.tuples(st.sampled_from([True, False, None]), st.integers(0, 2)), min_size=1,
        max_size=40,
    ),
    history=st.integers(1, 6),
)  # fmt: skip
def test_the_streak_never_overcounts_and_is_exact_when_every_look_overlaps(
    steps: list[tuple[bool | None, int]], history: int
) -> None:
    """Random verdicts, random number of looks after each window (0: none, so windows pile
    up and may fall out of the history); the status streak never exceeds the true one and
    equals it whenever no window was missed."""
    op, tap = Operator(modeldeployment(on_drift="Alert")), Tap(history=history)
    verdicts: list[bool | None] = []
    missed = False
    pending = 0
    for hour, (verdict, looks) in enumerate(steps, start=1):
        tap.close(verdict)
        verdicts.append(verdict)
        pending += 1
        for look in range(looks):
            if pending > history:
                missed = True
            pending = 0
            op.tick(tap.report(), at(hour) + timedelta(minutes=look + 1))
            streak = op.status["drift"]["consecutiveDriftedWindows"]
            assert streak <= _true_streak(verdicts)
            if not missed:
                assert streak == _true_streak(verdicts)


# --- conditions, unavailability, disabled -----------------------------------------------------


def test_drifted_condition_score_features_and_one_event_per_transition() -> None:
    op, tap = Operator(modeldeployment(on_drift="Alert")), Tap()
    tap.close(True)
    plan = op.tick(tap.report(), at(1.1))
    cond = drifted(plan.status)
    assert (cond["status"], cond["reason"]) == ("True", "Drifted")
    assert "f0, f2 drifted" in cond["message"] and "1 of 3" in cond["message"]
    assert cond["observedGeneration"] == 2
    assert plan.drift["driftedFeatures"] == ["f0", "f2"]
    assert plan.drift["score"] == pytest.approx(0.15)  # largest PSI (StatisticalTest)
    assert plan.drift["lastEvaluated"] == conditions.timestamp(at(1) + timedelta(seconds=1))
    assert [(e.type, e.reason) for e in plan.events] == [("Warning", "Drifted")]
    tap.close(True)
    plan = op.tick(tap.report(), at(2.1))
    assert plan.events == []  # still drifted: the condition's message moves, no new event
    assert drifted(plan.status)["lastTransitionTime"] == conditions.timestamp(at(1.1))
    tap.close(False)
    plan = op.tick(tap.report(), at(3.1))
    assert [(e.type, e.reason) for e in plan.events] == [("Normal", "DriftCleared")]
    assert plan.drift["driftedFeatures"] == []


def test_jensen_shannon_scores_with_js() -> None:
    op, tap = Operator(modeldeployment(on_drift="Alert", method="JensenShannon")), Tap()
    tap.close(True)
    plan = op.tick(tap.report(), at(1.1))
    assert plan.drift["score"] == pytest.approx(0.06)


def test_unavailable_keeps_the_last_values_and_warns_once() -> None:
    op, tap = Operator(modeldeployment(on_drift="Alert")), Tap()
    tap.close(True)
    op.tick(tap.report(), at(1.1))
    before = copy.deepcopy(op.status["drift"])
    down = Unavailable("GET http://churn/v1/drift: HTTP 503: the monitor is unavailable, retry")
    plan = op.tick(down, at(1.2))
    cond = drifted(plan.status)
    assert (cond["status"], cond["reason"]) == ("Unknown", "DriftUnavailable")
    assert "503" in cond["message"]
    assert plan.drift == before
    assert [(e.type, e.reason) for e in plan.events] == [("Warning", "DriftUnavailable")]
    assert plan.requeue_after == 30.0
    assert op.tick(down, at(1.3)).events == []
    # Back: counting resumes where it was.
    tap.close(True)
    op.tick(tap.report(), at(2.1))
    assert op.status["drift"]["consecutiveDriftedWindows"] == 2


def test_nothing_serving_yet_and_settings_not_applied_are_quiet() -> None:
    op = Operator(modeldeployment())
    plan = op.tick(None, at(0.1))
    assert drifted(plan.status)["reason"] == "DriftUnavailable"
    assert plan.events == []
    report = Tap().report() | {"enabled": False, "status": "Disabled"}
    plan = op.tick(report, at(0.2))
    assert drifted(plan.status)["reason"] == "DriftUnavailable"
    assert "not applied" in drifted(plan.status)["message"]


def test_no_reference_profile() -> None:
    op, tap = Operator(modeldeployment()), Tap()
    tap.status = "NoReference"
    report = tap.report() | {"reason": "model version 3 has no reference profile"}
    plan = op.tick(report, at(0.5))
    cond = drifted(plan.status)
    assert (cond["status"], cond["reason"]) == ("Unknown", "NoReference")
    assert "version 3" in cond["message"]
    assert [(e.type, e.reason) for e in plan.events] == [("Warning", "NoReference")]


def test_disabled() -> None:
    md = modeldeployment(enabled=False)
    last = "2026-11-01T00:00:00Z"
    drift = {"score": 0.3, "consecutiveDriftedWindows": 2, "retrains": 2, "lastRetrain": last}
    status = {"phase": "Ready", "drift": drift}
    plan = reconcile_drift(md, status, None, [], at(1), uid=UID)
    cond = drifted(plan.status)
    assert (cond["status"], cond["reason"]) == ("Unknown", "Disabled")
    # Verdicts go; what numbers the next retrain stays.
    assert plan.drift == {"retrains": 2, "lastRetrain": last}
    assert plan.create is None and plan.requeue_after is None
    assert status["drift"]["score"] == 0.3  # the input is not changed
    assert plan.status["phase"] == "Ready"


# --- onDrift: Retrain -------------------------------------------------------------------------


def test_alert_never_creates() -> None:
    op, tap = Operator(modeldeployment(on_drift="Alert")), Tap()
    for hour in range(1, 6):
        tap.close(True)
        assert op.tick(tap.report(), at(hour + 0.1)).create is None
    assert op.jobs == {}


def test_retrain_after_n_consecutive_windows_with_owner_and_labels() -> None:
    op, tap = Operator(modeldeployment()), Tap()
    for hour in (1, 2):
        tap.close(True)
        assert op.tick(tap.report(), at(hour + 0.1)).create is None
    tap.close(True)
    plan = op.tick(tap.report(), at(3.1))
    job = plan.create
    assert job is not None
    assert check(job) == []
    meta = job["metadata"]
    assert meta["name"] == "churn-r1" and meta["namespace"] == "ml"
    assert meta["ownerReferences"] == [{
        "apiVersion": "mlplane.dev/v1alpha1", "kind": "ModelDeployment", "name": "churn",
        "uid": UID, "controller": True, "blockOwnerDeletion": True,
    }]  # fmt: skip
    # mlplane's labels win over the template's; the template's others are kept.
    assert meta["labels"] == {
        "team": "churn", lbl.MANAGED_BY: "mlplane", lbl.MODELDEPLOYMENT: "churn",
        lbl.RETRAIN: "1",
    }  # fmt: skip
    assert meta["annotations"]["owner"] == "ml-team"
    assert "3 consecutive windows" in meta["annotations"]["mlplane.dev/drift-trigger"]
    assert job["spec"]["entrypoint"] == "python -m churn.train"
    assert plan.drift["retrains"] == 1
    assert plan.drift["lastRetrain"] == conditions.timestamp(at(3.1))
    assert plan.drift["lastRetrainJob"] == "churn-r1"
    assert ("Normal", "RetrainCreated") in [(e.type, e.reason) for e in plan.events]
    # Looking again in the same window creates nothing more.
    assert op.tick(tap.report(), at(3.2)).create is None
    assert list(op.jobs) == ["churn-r1"]


def test_one_retrain_at_a_time() -> None:
    op, tap = Operator(modeldeployment(min_interval="1m", consecutive=1)), Tap()
    tap.close(True)
    op.tick(tap.report(), at(1.1))
    tap.close(True)
    plan = op.tick(tap.report(), at(2.1))
    assert plan.create is None
    [event] = [e for e in plan.events if e.reason == "RetrainSuppressed"]
    assert "churn-r1 has not finished" in event.message
    op.finish("churn-r1", "Failed")
    tap.close(True)
    plan = op.tick(tap.report(), at(3.1))
    assert plan.create is not None and plan.create["metadata"]["name"] == "churn-r2"


def test_rate_limited_by_min_interval() -> None:
    op, tap = Operator(modeldeployment(min_interval="6h", consecutive=2)), Tap()
    for hour in (1, 2):
        tap.close(True)
        op.tick(tap.report(), at(hour + 0.1))
    assert list(op.jobs) == ["churn-r1"]
    op.finish("churn-r1")
    for hour in (3, 4, 5, 6, 7):
        tap.close(True)
        plan = op.tick(tap.report(), at(hour + 0.1))
        assert plan.create is None
        [event] = [e for e in plan.events if e.reason == "RetrainSuppressed"]
        assert "minInterval 6h" in event.message
        assert conditions.timestamp(at(8.1)) in event.message
    tap.close(True)
    plan = op.tick(tap.report(), at(8.1))
    assert plan.create is not None and plan.create["metadata"]["name"] == "churn-r2"


def test_the_same_evidence_never_retrains_twice() -> None:
    """After a retrain finished and minInterval passed, no new drifted window: no new job."""
    op, tap = Operator(modeldeployment(min_interval="1m", consecutive=1)), Tap()
    tap.close(True)
    op.tick(tap.report(), at(1.1))
    op.finish("churn-r1")
    assert op.tick(tap.report(), at(1.5)).create is None
    assert list(op.jobs) == ["churn-r1"]


@pytest.mark.parametrize("listed", [True, False], ids=["job-listed", "list-lags"])
def test_a_retry_after_a_crash_yields_the_same_job(listed: bool) -> None:
    """The job was created but the status never written: the retry sees the job, or (when the
    list has not caught up) computes the same name, which the API server refuses."""
    op, tap = Operator(modeldeployment(consecutive=1)), Tap()
    tap.close(True)
    first = op.tick(tap.report(), at(1.1), crash_before_status=True)
    assert first.create is not None and list(op.jobs) == ["churn-r1"]
    observed = op.observed() if listed else []
    retry = reconcile_drift(op.md, op.status, tap.report(), observed, at(1.2), uid=UID)
    if listed:
        assert retry.create is None
        assert retry.drift["retrains"] == 1
        assert retry.drift["lastRetrainJob"] == "churn-r1"
        assert retry.drift["lastRetrain"] == conditions.timestamp(at(1.1))
    else:
        assert retry.create is not None
        assert retry.create["metadata"]["name"] == "churn-r1"
        assert retry.create["spec"] == first.create["spec"]


def test_same_inputs_same_plan() -> None:
    op, tap = Operator(modeldeployment(consecutive=1)), Tap()
    tap.close(True)
    args = (op.md, op.status, tap.report(), [], at(1.1))
    a, b = reconcile_drift(*args, uid=UID), reconcile_drift(*args, uid=UID)
    assert a.status == b.status and a.create == b.create and a.events == b.events


def test_numbers_continue_after_the_status_lost_them() -> None:
    """A recreated status (or one restored from a backup) never reuses a taken number."""
    op, tap = Operator(modeldeployment(consecutive=1, min_interval="1m")), Tap()
    op.jobs["churn-r4"] = {
        "metadata": {"name": "churn-r4", "labels": lbl.retrain_labels("churn", 4),
                     "creationTimestamp": "2026-11-01T00:00:00Z",
                     "ownerReferences": [lbl.owner_reference("ModelDeployment", "churn", UID)]},
        "status": {"phase": "Succeeded"},
    }  # fmt: skip
    tap.close(True)
    plan = op.tick(tap.report(), at(1.1))
    assert plan.create is not None and plan.create["metadata"]["name"] == "churn-r5"


def test_another_owners_leftover_job_does_not_block_but_keeps_its_number() -> None:
    """A job left by a deleted deployment of the same name (being garbage collected)."""
    op, tap = Operator(modeldeployment(consecutive=1)), Tap()
    op.jobs["churn-r1"] = {
        "metadata": {"name": "churn-r1", "labels": lbl.retrain_labels("churn", 1),
                     "creationTimestamp": conditions.timestamp(at(0.5)),
                     "ownerReferences": [lbl.owner_reference("ModelDeployment", "churn", "old")]},
        "status": {"phase": "Running"},
    }  # fmt: skip
    tap.close(True)
    plan = op.tick(tap.report(), at(1.1))
    assert plan.create is not None and plan.create["metadata"]["name"] == "churn-r2"


# --- the builder ------------------------------------------------------------------------------


def test_retrain_names_are_deterministic_valid_and_distinct() -> None:
    assert retrain_name("churn", 1) == "churn-r1"
    long_a, long_b = "m" * 38 + "xa", "m" * 38 + "xb"
    names = {retrain_name(n, k) for n in (long_a, long_b) for k in (1, 9, 123)}
    assert len(names) == 6
    for name in names:
        assert len(name) <= 40 and name[0].isalpha() and not name.endswith("-")
    assert retrain_name(long_a, 7) == retrain_name(long_a, 7)
    with pytest.raises(ValueError, match="numbered from 1"):
        retrain_name("churn", 0)


def test_built_job_of_a_long_named_deployment_validates() -> None:
    md = modeldeployment(name="a" + "-b" * 19 + "c")
    job = build_retrain_trainingjob(md, 12, owner_uid=UID)
    assert check(job) == []
    assert lbl.rayjob_name(job["metadata"]["name"], 99)  # its attempts' RayJobs are valid too


def test_builder_needs_a_template() -> None:
    with pytest.raises(ValueError, match="retrain"):
        build_retrain_trainingjob(modeldeployment(on_drift="Alert"), 1, owner_uid=UID)


def test_the_status_round_trips_through_the_crd_model() -> None:
    """What the handler reads back is the stored status parsed by the CRD's model: every field
    the core relies on must survive it, or windows are counted again and again."""
    from mlplane.crds.modeldeployment import ModelDeploymentStatus

    op, tap = Operator(modeldeployment(consecutive=2, min_interval="1m")), Tap(history=2)

    def look(when: datetime) -> None:
        op.tick(tap.report(), when)
        stored = ModelDeploymentStatus.model_validate(op.status)
        op.status = stored.model_dump(mode="json", by_alias=True, exclude_none=True)

    for hour in range(1, 5):
        tap.close(True)
        look(at(hour) + timedelta(minutes=5))
        for job in op.jobs:
            op.finish(job)
        look(at(hour) + timedelta(minutes=10))  # same evidence: no second job
    assert op.status["drift"]["consecutiveDriftedWindows"] == 4
    assert list(op.jobs) == ["churn-r1", "churn-r2", "churn-r3"]
