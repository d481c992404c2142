"""The operator's series: exactly the contract's names and labels, fed from status dicts."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from mlplane.crds import ABTestStatus, TrainingJobStatus
from mlplane.crds.modeldeployment import SLO
from mlplane.monitoring import names as n
from mlplane.operator import metrics as om

NS, TJ = "team-a", "churn"


@pytest.fixture
def m() -> om.OperatorMetrics:
    return om.OperatorMetrics(CollectorRegistry())


def samples(m: om.OperatorMetrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every exported sample, parsed back from the exposition text (what Prometheus reads)."""
    text = generate_latest(m.registry).decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if not s.name.endswith("_created")
    }


def value(m: om.OperatorMetrics, name: str, **labels: str) -> float | None:
    return samples(m).get((name, tuple(sorted(labels.items()))))


def names_of(m: om.OperatorMetrics, **labels: str) -> set[str]:
    """The sample names that carry all of ``labels``."""
    want = set(labels.items())
    return {name for name, lbls in samples(m) if want <= set(lbls)}


def status(**kw: object) -> dict[str, object]:
    return {"phase": "Running", "attempts": 1, "preemptions": 0, "failures": 0, **kw}


def test_every_series_matches_the_contract(m: om.OperatorMetrics) -> None:
    m.observe_reconcile("TrainingJob", True, 0.02)
    m.trainingjob(
        NS, TJ, status(lastCheckpoint={"uri": "s3://c/1", "time": "2025-01-02T03:04:05Z"},
                       **SPOT_STATUS)
    )  # fmt: skip
    m.modeldeployment(NS, "churn-md", {"availability": "99.5", "latencyP99Ms": 300})
    m.abtest(NS, "ab", {"decision": "Continue", "variants": [{"name": "b", "pValue": 0.2}]})

    exported = samples(m)
    seen_families = set()
    les: dict[str, set[float]] = {}
    for sample_name, labels in exported:
        family = next((f for f in n.METRICS.values() if sample_name in f.series), None)
        assert family is not None, f"{sample_name} is not in monitoring.names.METRICS"
        seen_families.add(family.name)
        label_names = {k for k, _ in labels} - {"le"}
        assert label_names == set(family.labels), sample_name
        if family.type == "histogram" and sample_name.endswith("_bucket"):
            les.setdefault(family.name, set()).update(float(v) for k, v in labels if k == "le")
    histogram = n.METRICS[n.OPERATOR_RECONCILE_DURATION_SECONDS]
    assert les == {histogram.name: {*histogram.buckets, float("inf")}}
    operator_families = {
        name for name, f in n.METRICS.items() if f.exporter in ("operator", "operator/runner")
    }
    assert seen_families == operator_families
    assert set(m.collectors) == operator_families


SPOT_STATUS = {
    "checkpoint": {"interval": "Auto", "intervalSeconds": 600.0, "writeSeconds": 12.5,
                   "meanTimeBetweenReclaimsSeconds": 14400.0},
    "cost": {"spotGpuHours": 3.5, "onDemandGpuHours": 1.25, "lostGpuHours": 0.5,
             "estimatedCost": 2.1, "currency": "USD"},
}  # fmt: skip


def test_spot_hours_waste_cost_and_interval_follow_status(m: om.OperatorMetrics) -> None:
    m.trainingjob(NS, TJ, status(**SPOT_STATUS))
    get = m.registry.get_sample_value
    labels = {"namespace": NS, "trainingjob": TJ}
    assert get(n.TRAININGJOB_GPU_HOURS, {**labels, "capacity": "spot"}) == 3.5
    assert get(n.TRAININGJOB_GPU_HOURS, {**labels, "capacity": "on_demand"}) == 1.25
    assert get(n.TRAININGJOB_LOST_GPU_HOURS, labels) == 0.5
    assert get(n.TRAININGJOB_ESTIMATED_COST, {**labels, "currency": "USD"}) == 2.1
    assert get(n.TRAININGJOB_CHECKPOINT_INTERVAL_SECONDS, labels) == 600.0
    assert get(n.TRAININGJOB_CHECKPOINT_WRITE_SECONDS, labels) == 12.5
    assert get(n.TRAININGJOB_MEAN_TIME_BETWEEN_RECLAIMS_SECONDS, labels) == 14400.0
    # the interval unset, no price table: those series go
    m.trainingjob(NS, TJ, status(cost={"spotGpuHours": 4.0, "onDemandGpuHours": 0.0,
                                       "lostGpuHours": 0.5}))  # fmt: skip
    assert get(n.TRAININGJOB_CHECKPOINT_INTERVAL_SECONDS, labels) is None
    assert get(n.TRAININGJOB_ESTIMATED_COST, {**labels, "currency": "USD"}) is None
    assert get(n.TRAININGJOB_GPU_HOURS, {**labels, "capacity": "spot"}) == 4.0


def test_registry_is_the_one_passed_in() -> None:
    a, b = om.OperatorMetrics(CollectorRegistry()), om.OperatorMetrics(CollectorRegistry())
    a.observe_reconcile("ABTest", False, 1.0)
    assert value(a, n.OPERATOR_RECONCILE_TOTAL, kind="ABTest", result="error") == 1
    assert value(b, n.OPERATOR_RECONCILE_TOTAL, kind="ABTest", result="error") == 0


def test_reconcile_series_exist_at_zero_for_every_kind(m: om.OperatorMetrics) -> None:
    for kind in ("TrainingJob", "ModelDeployment", "ABTest"):
        for result in ("success", "error"):
            assert value(m, n.OPERATOR_RECONCILE_TOTAL, kind=kind, result=result) == 0
        assert value(m, f"{n.OPERATOR_RECONCILE_DURATION_SECONDS}_count", kind=kind) == 0


def test_reconciling_counts_success_and_error_and_reraises(m: om.OperatorMetrics) -> None:
    with m.reconciling("ModelDeployment"):
        pass
    with pytest.raises(RuntimeError, match="boom"), m.reconciling("ModelDeployment"):
        raise RuntimeError("boom")
    with m.reconciling("ModelDeployment"):
        pass
    total = n.OPERATOR_RECONCILE_TOTAL
    assert value(m, total, kind="ModelDeployment", result="success") == 2
    assert value(m, total, kind="ModelDeployment", result="error") == 1
    count = f"{n.OPERATOR_RECONCILE_DURATION_SECONDS}_count"
    assert value(m, count, kind="ModelDeployment") == 3
    assert value(m, f"{n.OPERATOR_RECONCILE_DURATION_SECONDS}_sum", kind="ModelDeployment") >= 0


def test_observe_reconcile_buckets_the_duration(m: om.OperatorMetrics) -> None:
    m.observe_reconcile("TrainingJob", True, 0.3)
    bucket = f"{n.OPERATOR_RECONCILE_DURATION_SECONDS}_bucket"
    assert value(m, bucket, kind="TrainingJob", le="0.25") == 0
    assert value(m, bucket, kind="TrainingJob", le="0.5") == 1


def test_trainingjob_counters_follow_status_and_never_decrease(m: om.OperatorMetrics) -> None:
    def counts() -> tuple[float | None, ...]:
        return tuple(
            value(m, name, namespace=NS, trainingjob=TJ)
            for name in (
                n.TRAININGJOB_ATTEMPTS_TOTAL,
                n.TRAININGJOB_PREEMPTIONS_TOTAL,
                n.TRAININGJOB_FAILURES_TOTAL,
            )
        )

    m.trainingjob(NS, TJ, {"phase": "Pending"})
    assert counts() == (0, 0, 0)  # the series exist from 0, so increase() sees the first one
    m.trainingjob(NS, TJ, status(attempts=1))
    assert counts() == (1, 0, 0)
    m.trainingjob(NS, TJ, status(attempts=1))  # the same status again: nothing new
    assert counts() == (1, 0, 0)
    m.trainingjob(NS, TJ, status(attempts=3, preemptions=2, failures=0))
    assert counts() == (3, 2, 0)
    m.trainingjob(NS, TJ, status(attempts=2, preemptions=1))  # stale: never goes back
    assert counts() == (3, 2, 0)
    m.trainingjob(NS, TJ, status(attempts=4, preemptions=2, failures=1))
    assert counts() == (4, 2, 1)  # counted from the highest seen, not from the stale value


def test_a_new_process_starts_at_the_status_value() -> None:
    first, second = om.OperatorMetrics(CollectorRegistry()), om.OperatorMetrics(CollectorRegistry())
    first.trainingjob(NS, TJ, status(attempts=2))
    second.trainingjob(NS, TJ, status(attempts=5, preemptions=3))
    assert value(second, n.TRAININGJOB_ATTEMPTS_TOTAL, namespace=NS, trainingjob=TJ) == 5
    assert value(second, n.TRAININGJOB_PREEMPTIONS_TOTAL, namespace=NS, trainingjob=TJ) == 3


def test_trainingjob_accepts_the_status_model(m: om.OperatorMetrics) -> None:
    model = TrainingJobStatus.model_validate(
        status(
            attempts=2,
            lastCheckpoint={"uri": "s3://c/7", "step": 7, "time": "2025-01-02T03:04:05Z"},
        )
    )
    m.trainingjob(NS, TJ, model)
    assert value(m, n.TRAININGJOB_ATTEMPTS_TOTAL, namespace=NS, trainingjob=TJ) == 2
    got = value(m, n.TRAININGJOB_LAST_CHECKPOINT_TIMESTAMP_SECONDS, namespace=NS, trainingjob=TJ)
    assert got == 1735787045.0


def test_checkpoint_time(m: om.OperatorMetrics) -> None:
    name = n.TRAININGJOB_LAST_CHECKPOINT_TIMESTAMP_SECONDS
    m.trainingjob(NS, TJ, status())
    assert value(m, name, namespace=NS, trainingjob=TJ) is None  # no checkpoint yet: no series
    m.trainingjob(
        NS, TJ, status(lastCheckpoint={"uri": "s3://c/1", "time": "1970-01-01T00:01:40Z"})
    )
    assert value(m, name, namespace=NS, trainingjob=TJ) == 100.0
    ts = "2025-01-02T04:04:05+01:00"
    m.trainingjob(NS, TJ, status(lastCheckpoint={"uri": "s3://c/2", "time": ts}))
    assert value(m, name, namespace=NS, trainingjob=TJ) == 1735787045.0
    m.trainingjob(NS, TJ, status(lastCheckpoint={"uri": "s3://c/3"}))  # no time: no series
    assert value(m, name, namespace=NS, trainingjob=TJ) is None


def test_phase_is_a_state_set_over_every_crd_phase(m: om.OperatorMetrics) -> None:
    assert set(om.TRAININGJOB_PHASES) == {
        "Pending", "Suspended", "Running", "Retrying", "Registering", "Stalled", "Succeeded",
        "Failed",
    }  # fmt: skip
    for phase in ("Running", "Failed"):
        m.trainingjob(NS, TJ, status(phase=phase))
        got = {p: value(m, n.TRAININGJOB_PHASE, namespace=NS, trainingjob=TJ, phase=p)
               for p in om.TRAININGJOB_PHASES}  # fmt: skip
        assert got == {p: (1.0 if p == phase else 0.0) for p in om.TRAININGJOB_PHASES}


def test_forget_removes_a_trainingjob_and_its_counts(m: om.OperatorMetrics) -> None:
    m.trainingjob(
        NS, TJ, status(attempts=3, lastCheckpoint={"uri": "u", "time": "2025-01-01T00:00:00Z"})
    )
    m.trainingjob(NS, "other", status(attempts=1))
    m.forget("TrainingJob", NS, TJ)
    assert names_of(m, trainingjob=TJ) == set()
    assert value(m, n.TRAININGJOB_ATTEMPTS_TOTAL, namespace=NS, trainingjob="other") == 1
    # Re-created under the same name: counts from its own status again.
    m.trainingjob(NS, TJ, status(attempts=1))
    assert value(m, n.TRAININGJOB_ATTEMPTS_TOTAL, namespace=NS, trainingjob=TJ) == 1
    m.forget("TrainingJob", NS, "never-seen")  # deleting what was never exported is fine


@pytest.mark.parametrize(
    ("slo", "availability", "latency"),
    [
        ({"availability": "99.9", "latencyP99Ms": 250}, 0.999, 0.25),
        ({"availability": "99.95"}, 0.9995, None),
        ({"availability": "90", "latencyP99Ms": 1}, 0.9, 0.001),
        ({}, 0.999, None),  # the CRD's default
        (None, 0.999, None),
        (SLO(availability="99.99", latency_p99_ms=1500), 0.9999, 1.5),
    ],
)
def test_slo_targets(slo: object, availability: float, latency: float | None) -> None:
    assert om.slo_targets(slo) == (availability, latency)  # type: ignore[arg-type]


def test_modeldeployment_gauges_and_latency_removed(m: om.OperatorMetrics) -> None:
    dep = {"namespace": NS, "deployment": "churn-md"}
    m.modeldeployment(NS, "churn-md", {"availability": "99.9", "latencyP99Ms": 200})
    assert value(m, n.SLO_AVAILABILITY_TARGET, **dep) == 0.999
    assert value(m, n.SLO_LATENCY_TARGET_SECONDS, **dep) == 0.2
    m.modeldeployment(NS, "churn-md", {"availability": "99.5"})  # the latency objective dropped
    assert value(m, n.SLO_AVAILABILITY_TARGET, **dep) == 0.995
    assert value(m, n.SLO_LATENCY_TARGET_SECONDS, **dep) is None
    m.modeldeployment(NS, "other", {"latencyP99Ms": 100})
    m.forget("ModelDeployment", NS, "churn-md")
    assert names_of(m, deployment="churn-md") == set()
    assert value(m, n.SLO_LATENCY_TARGET_SECONDS, namespace=NS, deployment="other") == 0.1


def test_modeldeployment_refuses_a_bad_slo(m: om.OperatorMetrics) -> None:
    with pytest.raises(ValueError, match="availability"):
        m.modeldeployment(NS, "x", {"availability": "lots"})


def test_abtest_p_values_and_decision(m: om.OperatorMetrics) -> None:
    assert set(om.ABTEST_DECISIONS) == {"Continue", "Promote", "Rollback", "NoDifference"}
    m.abtest(NS, "ab", {"phase": "Pending"})
    assert {value(m, n.ABTEST_DECISION, namespace=NS, abtest="ab", decision=d)
            for d in om.ABTEST_DECISIONS} == {0.0}  # fmt: skip
    running = {
        "decision": "Continue",
        "variants": [
            {"name": "control", "requests": 10},  # no p-value: no series
            {"name": "b", "pValue": 0.4},
            {"name": "c", "pValue": 0.9},
        ],
    }
    m.abtest(NS, "ab", running)
    assert value(m, n.ABTEST_P_VALUE, namespace=NS, abtest="ab", variant="b") == 0.4
    assert value(m, n.ABTEST_P_VALUE, namespace=NS, abtest="ab", variant="control") is None
    assert value(m, n.ABTEST_DECISION, namespace=NS, abtest="ab", decision="Continue") == 1
    concluded = ABTestStatus.model_validate(
        {"decision": "Promote", "variants": [{"name": "control"}, {"name": "b", "pValue": 0.001}]}
    )
    m.abtest(NS, "ab", concluded)
    assert value(m, n.ABTEST_P_VALUE, namespace=NS, abtest="ab", variant="b") == 0.001
    assert value(m, n.ABTEST_P_VALUE, namespace=NS, abtest="ab", variant="c") is None  # gone
    got = {d: value(m, n.ABTEST_DECISION, namespace=NS, abtest="ab", decision=d)
           for d in om.ABTEST_DECISIONS}  # fmt: skip
    assert got == {"Continue": 0, "Promote": 1, "Rollback": 0, "NoDifference": 0}
    m.forget("ABTest", NS, "ab")
    assert names_of(m, abtest="ab") == set()


def test_kinds_do_not_forget_each_other(m: om.OperatorMetrics) -> None:
    m.trainingjob(NS, "same", status())
    m.modeldeployment(NS, "same", {"availability": "99"})
    m.forget("ModelDeployment", NS, "same")
    assert value(m, n.TRAININGJOB_ATTEMPTS_TOTAL, namespace=NS, trainingjob="same") == 1
    assert value(m, n.SLO_AVAILABILITY_TARGET, namespace=NS, deployment="same") is None


def test_module_functions_use_the_default_registry() -> None:
    from prometheus_client import REGISTRY

    om.trainingjob("default-registry-test", "tj", status(attempts=2))
    try:
        got = REGISTRY.get_sample_value(
            n.TRAININGJOB_ATTEMPTS_TOTAL,
            {"namespace": "default-registry-test", "trainingjob": "tj"},
        )
        assert got == 2
        assert om.default() is om.default()
    finally:
        om.forget("TrainingJob", "default-registry-test", "tj")
    labels = {"namespace": "default-registry-test", "trainingjob": "tj"}
    assert REGISTRY.get_sample_value(n.TRAININGJOB_ATTEMPTS_TOTAL, labels) is None


def body(kind: str, name: str, **parts: object) -> dict[str, object]:
    return {"kind": kind, "metadata": {"namespace": NS, "name": name}, **parts}


def test_export_dispatches_by_kind(m: om.OperatorMetrics) -> None:
    m.export(body("TrainingJob", "tj", status=status(attempts=2)))
    m.export(body("ModelDeployment", "md", spec={"slo": {"latencyP99Ms": 50}}))
    m.export(body("ABTest", "ab", status={"decision": "Rollback"}))
    assert value(m, n.TRAININGJOB_ATTEMPTS_TOTAL, namespace=NS, trainingjob="tj") == 2
    assert value(m, n.SLO_LATENCY_TARGET_SECONDS, namespace=NS, deployment="md") == 0.05
    assert value(m, n.SLO_AVAILABILITY_TARGET, namespace=NS, deployment="md") == 0.999
    assert value(m, n.ABTEST_DECISION, namespace=NS, abtest="ab", decision="Rollback") == 1
    # An unparseable SLO exports no made-up target, and drops the one it had.
    m.export(body("ModelDeployment", "md", spec={"slo": {"availability": "all of it"}}))
    assert names_of(m, deployment="md") == set()
    with pytest.raises(ValueError, match="Pod"):
        m.export(body("Pod", "p"))


def test_sync_forgets_what_is_no_longer_listed(m: om.OperatorMetrics) -> None:
    m.sync("TrainingJob", [body("TrainingJob", "a", status=status()),
                           body("TrainingJob", "b", status=status(attempts=2))])  # fmt: skip
    m.sync("ModelDeployment", [body("ModelDeployment", "a", spec={})])
    m.sync("TrainingJob", [body("TrainingJob", "b", status=status(attempts=3))])
    assert names_of(m, trainingjob="a") == set()
    assert value(m, n.TRAININGJOB_ATTEMPTS_TOTAL, namespace=NS, trainingjob="b") == 3
    assert value(m, n.SLO_AVAILABILITY_TARGET, namespace=NS, deployment="a") == 0.999
    m.sync("ModelDeployment", [])
    assert names_of(m, deployment="a") == set()
    with pytest.raises(ValueError, match="ABTest"):
        m.sync("TrainingJob", [body("ABTest", "x")])


def test_returns_to_spot_are_counted_apart_from_preemptions_and_failures(
    m: om.OperatorMetrics,
) -> None:
    returns = n.TRAININGJOB_RETURNS_TO_SPOT_TOTAL
    m.trainingjob(NS, TJ, status(attempts=2, preemptions=1))
    assert value(m, returns, namespace=NS, trainingjob=TJ) == 0  # from 0, for increase()
    m.trainingjob(NS, TJ, status(attempts=3, preemptions=1, returnsToSpot=1))
    assert value(m, returns, namespace=NS, trainingjob=TJ) == 1
    assert value(m, n.TRAININGJOB_PREEMPTIONS_TOTAL, namespace=NS, trainingjob=TJ) == 1
    assert value(m, n.TRAININGJOB_FAILURES_TOTAL, namespace=NS, trainingjob=TJ) == 0


def test_reclaim_notices_and_their_checkpoints_are_counted(m: om.OperatorMetrics) -> None:
    notices, answered = n.TRAININGJOB_RECLAIM_NOTICES_TOTAL, n.TRAININGJOB_NOTICE_CHECKPOINTS_TOTAL
    m.trainingjob(NS, TJ, status(attempts=1))
    assert value(m, notices, namespace=NS, trainingjob=TJ) == 0  # from 0, for increase()
    m.trainingjob(NS, TJ, status(attempts=1, reclaimNotices=1))
    assert value(m, notices, namespace=NS, trainingjob=TJ) == 1
    assert value(m, answered, namespace=NS, trainingjob=TJ) == 0
    m.trainingjob(NS, TJ, status(attempts=1, reclaimNotices=1, noticeCheckpoints=1))
    assert value(m, answered, namespace=NS, trainingjob=TJ) == 1
