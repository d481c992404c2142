"""TrainingJob spot economics in the pure core: Auto interval, GPU-hours, waste, cost, history."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import yaml

from mlplane.crds.validate import parse
from mlplane.monitoring import spot
from mlplane.operator.config import OperatorConfig
from mlplane.operator.reconcile.trainingjob import (
    Observed,
    ObservedAttempt,
    ObservedDisruption,
    ObservedRun,
    Plan,
    reconcile,
)

T0 = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)
UID = "uid-spot"
CONFIG = OperatorConfig()
PRICED = OperatorConfig(
    gpu_prices=(("nvidia-l4", (("OnDemand", 0.8), ("Spot", 0.3))),), price_currency="EUR"
)
POOL = spot.pool_key("nvidia-l4", None)


def body(interval: str | None = "Auto", capacity: str = "SpotWithFallback",
         replicas: int = 2, gpu: int = 1) -> dict[str, Any]:  # fmt: skip
    checkpoint: dict[str, Any] = {"uri": "s3://ckpt/churn"}
    if interval is not None:
        checkpoint["interval"] = interval
    return {
        "apiVersion": "mlplane.dev/v1alpha1", "kind": "TrainingJob",
        "metadata": {"name": "churn", "namespace": "ml", "uid": UID, "generation": 1},
        "spec": {
            "entrypoint": "python train.py",
            "workers": [{"name": "gpu", "replicas": replicas, "capacity": capacity,
                         "resources": {"gpu": gpu}, "accelerator": "nvidia-l4"}],
            "checkpoint": checkpoint,
            "preemption": {"maxPreemptions": 5},
        },
    }  # fmt: skip


class Job:
    def __init__(self, body: dict[str, Any], config: OperatorConfig = CONFIG) -> None:
        self.body, self.config, self.now = body, config, T0

    def step(self, observed: Observed, *, at: timedelta) -> Plan:
        self.now = T0 + at
        plan = reconcile(parse(self.body), observed, self.now, self.config, uid=UID)
        self.body["status"] = plan.status
        return plan

    @property
    def status(self) -> dict[str, Any]:
        return self.body["status"]


def env_of(plan: Plan) -> dict[str, str]:
    (rayjob,) = plan.create
    return yaml.safe_load(rayjob["spec"]["runtimeEnvYAML"])["env_vars"]


def running(n: int = 1, capacity: str = "Spot", **kw: Any) -> ObservedAttempt:
    return ObservedAttempt(number=n, capacity=capacity, job_status="RUNNING", **kw)  # type: ignore[arg-type]


def stamp(at: timedelta) -> str:
    return (T0 + at).strftime("%Y-%m-%dT%H:%M:%SZ")


# --- the interval --------------------------------------------------------------------------------


def test_auto_follows_young_daly_from_reported_c_and_the_history():
    history = spot.record({}, POOL, "other/1", spot.Exposure(50 * 3600.0, 50))
    run = ObservedRun("run-1", checkpoint_write_seconds=20.0)
    job = Job(body("Auto"))
    plan = job.step(Observed(run=run, reclaim_history=history), at=timedelta(0))
    node_m = spot.node_mtbr(history, POOL)
    job_m = node_m / 2  # two spot workers
    expected = math.sqrt(2 * 20.0 * job_m)
    env = env_of(plan)
    assert env["MLPLANE_CHECKPOINT_INTERVAL"] == "Auto"
    assert float(env["MLPLANE_CHECKPOINT_INTERVAL_SECONDS"]) == pytest.approx(expected, abs=1e-3)
    assert float(env["MLPLANE_RECLAIM_MTBR_SECONDS"]) == pytest.approx(job_m, abs=1e-3)
    assert float(env["MLPLANE_CHECKPOINT_WRITE_SECONDS"]) == 20.0
    checkpoint = job.status["checkpoint"]
    assert checkpoint["interval"] == "Auto"
    assert checkpoint["intervalSeconds"] == pytest.approx(expected, abs=1e-3)
    assert checkpoint["writeSeconds"] == 20.0
    assert checkpoint["meanTimeBetweenReclaimsSeconds"] == pytest.approx(job_m, abs=0.1)


def test_auto_recomputes_when_the_estimates_change():
    job = Job(body("Auto"))
    job.step(Observed(run=ObservedRun("run-1", checkpoint_write_seconds=10.0)), at=timedelta(0))
    first = job.status["checkpoint"]["intervalSeconds"]
    history = spot.record({}, POOL, "other/1", spot.Exposure(10 * 3600.0, 40))
    job.step(Observed(run=ObservedRun("run-1", checkpoint_write_seconds=40.0),
                      reclaim_history=history), at=timedelta(minutes=1))  # fmt: skip
    second = job.status["checkpoint"]
    assert second["intervalSeconds"] != first
    assert second["intervalSeconds"] == pytest.approx(
        math.sqrt(2 * 40.0 * spot.node_mtbr(history, POOL) / 2), abs=1e-3
    )


def test_auto_before_any_checkpoint_starts_at_the_lower_bound_and_is_clamped():
    config = OperatorConfig(checkpoint_interval_min=120.0, checkpoint_interval_max=900.0)
    job = Job(body("Auto"), config)
    plan = job.step(Observed(run=ObservedRun("run-1")), at=timedelta(0))
    assert float(env_of(plan)["MLPLANE_CHECKPOINT_INTERVAL_SECONDS"]) == 120.0
    assert "MLPLANE_CHECKPOINT_WRITE_SECONDS" not in env_of(plan)
    assert env_of(plan)["MLPLANE_CHECKPOINT_INTERVAL_MAX_SECONDS"] == "900.000"
    job.step(Observed(run=ObservedRun("run-1", checkpoint_write_seconds=300.0)),
             at=timedelta(minutes=1))  # fmt: skip
    assert job.status["checkpoint"]["intervalSeconds"] == 900.0  # sqrt(2*300*3h) > 900


def test_auto_without_spot_workers_checkpoints_at_the_upper_bound():
    job = Job(body("Auto", capacity="OnDemand"))
    plan = job.step(Observed(run=ObservedRun("run-1", checkpoint_write_seconds=5.0)),
                    at=timedelta(0))  # fmt: skip
    assert (
        float(env_of(plan)["MLPLANE_CHECKPOINT_INTERVAL_SECONDS"]) == CONFIG.checkpoint_interval_max
    )
    assert "meanTimeBetweenReclaimsSeconds" not in job.status["checkpoint"]


def test_a_duration_is_passed_as_is():
    job = Job(body("15m"))
    plan = job.step(Observed(run=ObservedRun("run-1", checkpoint_write_seconds=5.0)),
                    at=timedelta(0))  # fmt: skip
    env = env_of(plan)
    assert env["MLPLANE_CHECKPOINT_INTERVAL"] == "15m"
    assert float(env["MLPLANE_CHECKPOINT_INTERVAL_SECONDS"]) == 900.0
    assert job.status["checkpoint"]["intervalSeconds"] == 900.0


def test_no_interval_changes_nothing():
    job = Job(body(None))
    plan = job.step(Observed(run=ObservedRun("run-1")), at=timedelta(0))
    assert not any(k.startswith("MLPLANE_CHECKPOINT_INTERVAL") for k in env_of(plan))
    assert "checkpoint" not in job.status


def test_status_shows_the_interval_the_running_attempt_reported():
    job = Job(body("Auto"))
    job.step(Observed(run=ObservedRun("run-1")), at=timedelta(0))
    run = ObservedRun("run-1", checkpoint_write_seconds=8.0, checkpoint_interval_seconds=321.0,
                      checkpoint_interval_attempt=1)  # fmt: skip
    job.step(Observed(attempts=(running(),), run=run), at=timedelta(minutes=2))
    assert job.status["checkpoint"]["intervalSeconds"] == 321.0
    stale = ObservedRun("run-1", checkpoint_write_seconds=8.0, checkpoint_interval_seconds=321.0,
                        checkpoint_interval_attempt=0)  # fmt: skip
    job.step(Observed(attempts=(running(),), run=stale), at=timedelta(minutes=3))
    assert job.status["checkpoint"]["intervalSeconds"] != 321.0


# --- hours, waste, cost --------------------------------------------------------------------------


def test_gpu_hours_by_capacity_are_counted_once_in_ten_minute_steps():
    job = Job(body(), PRICED)
    job.step(Observed(run=ObservedRun("run-1")), at=timedelta(0))
    assert job.status["cost"] == {"spotGpuHours": 0.0, "onDemandGpuHours": 0.0,
                                  "lostGpuHours": 0.0, "estimatedCost": 0.0, "lostCost": 0.0,
                                  "currency": "EUR"}  # fmt: skip
    obs = Observed(attempts=(running(),), run=ObservedRun("run-1"))
    job.step(obs, at=timedelta(minutes=5))
    assert job.status["cost"]["spotGpuHours"] == 0.0  # not yet a step: no status write
    job.step(obs, at=timedelta(minutes=30))
    job.step(obs, at=timedelta(minutes=30))  # the same round again adds nothing
    cost = job.status["cost"]
    assert cost["spotGpuHours"] == pytest.approx(1.0)  # 2 GPUs x 30 min
    assert cost["estimatedCost"] == pytest.approx(0.3)
    assert cost["onDemandGpuHours"] == 0.0


def test_an_attempt_ending_is_counted_to_its_end_and_on_demand_after_fallback():
    job = Job(body(capacity="SpotWithFallback"), PRICED)
    job.body["spec"]["preemption"]["maxPreemptions"] = 1
    job.step(Observed(run=ObservedRun("run-1")), at=timedelta(0))
    job.step(Observed(attempts=(running(),), run=ObservedRun("run-1")), at=timedelta(minutes=1))
    reclaim = ObservedDisruption(1, "SpotNodeDeleted", node="n1", time=stamp(timedelta(minutes=60)))
    failed = ObservedAttempt(1, "Spot", job_status="FAILED", end_time=stamp(timedelta(minutes=60)))
    job.step(Observed(attempts=(failed,), disruptions=(reclaim,), run=ObservedRun("run-1")),
             at=timedelta(minutes=61))  # fmt: skip
    assert job.status["currentAttempt"]["capacity"] == "OnDemand"
    assert job.status["cost"]["spotGpuHours"] == pytest.approx(2.0)  # 2 GPUs x 60 min
    second = running(2, "OnDemand")
    job.step(Observed(attempts=(failed, second), run=ObservedRun("run-1")),
             at=timedelta(minutes=91))  # fmt: skip
    assert job.status["cost"]["onDemandGpuHours"] == pytest.approx(1.0)  # from 61 to 91 min
    assert job.status["cost"]["spotGpuHours"] == pytest.approx(2.0)


def test_a_reclaim_loses_the_work_since_the_last_checkpoint_and_the_restart():
    job = Job(body(), PRICED)
    job.step(Observed(run=ObservedRun("run-1")), at=timedelta(0))
    job.step(Observed(attempts=(running(),), run=ObservedRun("run-1")), at=timedelta(minutes=2))
    assert job.status["currentAttempt"]["runningTime"] == stamp(timedelta(minutes=2))
    run = ObservedRun("run-1", checkpoint_uri="s3://ckpt/churn/x", checkpoint_step=10,
                      checkpoint_time=stamp(timedelta(minutes=20)))  # fmt: skip
    reclaim = ObservedDisruption(1, "SpotNodeDeleted", node="n1", time=stamp(timedelta(minutes=32)))
    failed = ObservedAttempt(1, "Spot", job_status="FAILED", end_time=stamp(timedelta(minutes=33)))
    job.step(Observed(attempts=(failed,), disruptions=(reclaim,), run=run),
             at=timedelta(minutes=33))  # fmt: skip
    # 12 minutes since the checkpoint at 20 min, on 2 GPUs
    assert job.status["cost"]["lostGpuHours"] == pytest.approx(0.4)
    assert job.status["currentAttempt"]["afterPreemption"] is True
    job.step(Observed(attempts=(failed, running(2)), run=run), at=timedelta(minutes=39))
    # plus 6 minutes of restart (attempt 2 created at 33 min, running at 39) on 2 GPUs
    assert job.status["cost"]["lostGpuHours"] == pytest.approx(0.6)
    assert job.status["cost"]["lostCost"] == pytest.approx(0.6 * 0.3)
    job.step(Observed(attempts=(failed, running(2)), run=run), at=timedelta(minutes=45))
    assert job.status["cost"]["lostGpuHours"] == pytest.approx(0.6)  # counted once


def test_a_reclaim_before_any_checkpoint_of_the_attempt_loses_its_running_time():
    job = Job(body())
    job.step(Observed(run=ObservedRun("run-1")), at=timedelta(0))
    job.step(Observed(attempts=(running(),), run=ObservedRun("run-1")), at=timedelta(minutes=4))
    old = ObservedRun("run-1", checkpoint_uri="s3://x", checkpoint_time=stamp(-timedelta(hours=1)))
    reclaim = ObservedDisruption(1, "RayNodeDied", node="n1", time=stamp(timedelta(minutes=34)))
    job.step(Observed(attempts=(running(),), disruptions=(reclaim,), run=old),
             at=timedelta(minutes=35))  # fmt: skip
    assert job.status["cost"]["lostGpuHours"] == pytest.approx(1.0)  # 30 min x 2 GPUs
    assert "estimatedCost" not in job.status["cost"]  # no price table: hours only


def test_a_price_table_without_the_accelerator_says_what_is_unpriced():
    config = OperatorConfig(gpu_prices=(("nvidia-a100", (("Spot", 1.0),)),))
    job = Job(body(), config)
    job.step(Observed(run=ObservedRun("run-1")), at=timedelta(0))
    job.step(Observed(attempts=(running(),), run=ObservedRun("run-1")), at=timedelta(minutes=20))
    assert job.status["cost"]["unpriced"] == ["nvidia-l4:Spot"]
    assert job.status["cost"]["estimatedCost"] == 0.0


def test_cpu_only_jobs_carry_no_cost():
    job = Job(body(gpu=0) | {})
    job.body["spec"]["workers"][0].pop("accelerator")
    job.step(Observed(run=ObservedRun("run-1")), at=timedelta(0))
    assert "cost" not in job.status


# --- the reclaim history -------------------------------------------------------------------------


def test_a_running_spot_attempt_offers_its_exposure_and_reclaims():
    job = Job(body())
    job.step(Observed(run=ObservedRun("run-1")), at=timedelta(0))
    plan = job.step(Observed(attempts=(running(),), run=ObservedRun("run-1")),
                    at=timedelta(minutes=1))  # fmt: skip
    assert plan.reclaim_samples == []  # not seen running before this round: no spot nodes yet
    plan = job.step(Observed(attempts=(running(),), run=ObservedRun("run-1")),
                    at=timedelta(minutes=2))  # fmt: skip
    (sample,) = plan.reclaim_samples
    assert (sample.pool, sample.contribution) == (POOL, f"{UID}/1")
    assert sample.exposure == spot.Exposure(2 * 60.0, 0)
    reclaim = ObservedDisruption(1, "RayNodeDied", node="n1", time=stamp(timedelta(minutes=30)))
    plan = job.step(Observed(attempts=(running(),), disruptions=(reclaim,),
                             run=ObservedRun("run-1")), at=timedelta(minutes=31))  # fmt: skip
    (sample,) = plan.reclaim_samples
    # 2 nodes x 30 min, 1 reclaim, and when it happened (a return to spot waits for quiet)
    reclaimed_at = (T0 + timedelta(minutes=30)).timestamp()
    assert sample.exposure == spot.Exposure(2 * 30 * 60.0, 1, reclaimed_at)


def test_on_demand_attempts_offer_nothing_and_zone_comes_from_the_node_selector():
    on_demand = Job(body(capacity="OnDemand"))
    on_demand.step(Observed(run=ObservedRun("run-1")), at=timedelta(0))
    plan = on_demand.step(Observed(attempts=(running(1, "OnDemand"),), run=ObservedRun("run-1")),
                          at=timedelta(minutes=5))  # fmt: skip
    assert plan.reclaim_samples == []
    zoned = body()
    zoned["spec"]["nodeSelector"] = {"topology.kubernetes.io/zone": "eu-west-1b"}
    job = Job(zoned)
    job.step(Observed(run=ObservedRun("run-1")), at=timedelta(0))
    for minutes in (5, 6):
        plan = job.step(Observed(attempts=(running(),), run=ObservedRun("run-1")),
                        at=timedelta(minutes=minutes))  # fmt: skip
    assert [s.pool for s in plan.reclaim_samples] == ["nvidia-l4/eu-west-1b/spot"]
