"""Leader election's decision (``operator/leader.py``): every transition, pure."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from mlplane.operator.config import LeaderElectionConfig, OperatorConfig
from mlplane.operator.leader import (
    Action,
    LeaseRecord,
    Observation,
    decide,
    identity,
    micro_time,
    release,
    still_leading,
    time_left,
)

SETTINGS = LeaderElectionConfig(lease_duration=10, renew_deadline=7, retry_period=2)
WALL = datetime(2026, 12, 3, 12, 0, 0, 123456, tzinfo=UTC)
ME, OTHER = "pod-a_1234", "pod-b_5678"


def lease(holder: str | None, *, renewed: datetime = WALL, duration: int = 10,
          transitions: int = 3, rv: str = "41") -> dict:  # fmt: skip
    spec = {"leaseDurationSeconds": duration, "acquireTime": micro_time(WALL),
            "renewTime": micro_time(renewed), "leaseTransitions": transitions}  # fmt: skip
    if holder is not None:
        spec["holderIdentity"] = holder
    return {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
            "metadata": {"name": "mlplane-operator", "namespace": "ops", "resourceVersion": rv},
            "spec": spec}  # fmt: skip


def run(observed, previous, now, *, me=ME, settings=SETTINGS, wall=WALL):
    return decide(observed, previous, now=now, wall=wall, me=me, settings=settings,
                  namespace="ops")  # fmt: skip


def test_no_lease_is_created_held_by_me():
    d = run(None, None, 100.0)
    assert d.action is Action.CREATE
    assert d.body["metadata"] == {"name": "mlplane-operator", "namespace": "ops"}
    assert d.body["spec"] == {"holderIdentity": ME, "leaseDurationSeconds": 10,
                              "acquireTime": "2026-12-03T12:00:00.123456Z",
                              "renewTime": "2026-12-03T12:00:00.123456Z",
                              "leaseTransitions": 0}  # fmt: skip
    assert d.wait == 2


def test_a_held_lease_first_seen_is_respected_for_its_whole_duration():
    d = run(lease(OTHER), None, 100.0)
    assert (d.action, d.body) == (Action.STANDBY, None)
    assert d.observation == Observation(LeaseRecord.of(lease(OTHER)), 100.0)
    assert d.wait == 2  # look again after the retry period
    # Unchanged for 9.5 s: still held; the next look is exactly when it would expire.
    d2 = run(lease(OTHER), d.observation, 109.5)
    assert d2.action is Action.STANDBY
    assert d2.observation.observed_at == 100.0
    assert d2.wait == pytest.approx(0.5)


def test_an_expired_lease_is_taken_over_with_the_version_read():
    first = run(lease(OTHER), None, 100.0)
    d = run(lease(OTHER), first.observation, 110.0)
    assert d.action is Action.ACQUIRE
    assert d.body["metadata"]["resourceVersion"] == "41"  # optimistic concurrency
    assert d.body["spec"]["holderIdentity"] == ME
    assert d.body["spec"]["leaseTransitions"] == 4
    assert d.body["spec"]["acquireTime"] == d.body["spec"]["renewTime"] == micro_time(WALL)
    assert "expired" in d.reason


def test_a_renewal_seen_resets_the_expiry():
    first = run(lease(OTHER), None, 100.0)
    renewed = lease(OTHER, renewed=WALL + timedelta(seconds=8), rv="42")
    d = run(renewed, first.observation, 109.0)
    assert d.action is Action.STANDBY
    assert d.observation.observed_at == 109.0  # the change starts a new lease duration
    assert run(renewed, d.observation, 118.9).action is Action.STANDBY
    assert run(renewed, d.observation, 119.0).action is Action.ACQUIRE


@pytest.mark.parametrize("skew", [timedelta(days=-365), timedelta(hours=2)])
def test_the_holders_clock_is_never_trusted(skew):
    """A renewTime far in the past (or the future) means nothing: only how long this candidate
    has seen the record unchanged counts (client-go's observedTime)."""
    skewed = lease(OTHER, renewed=WALL + skew)
    d = run(skewed, None, 100.0)
    assert d.action is Action.STANDBY  # an ancient renewTime is no reason to take it
    assert run(skewed, d.observation, 109.9).action is Action.STANDBY
    assert run(skewed, d.observation, 110.0).action is Action.ACQUIRE  # a future one no shield


def test_the_holders_declared_duration_is_respected():
    """A holder that declared 30 s is waited for 30 s, whatever this candidate's setting."""
    long = lease(OTHER, duration=30)
    d = run(long, None, 100.0)
    assert run(long, d.observation, 125.0).action is Action.STANDBY
    assert run(long, d.observation, 130.0).action is Action.ACQUIRE


def test_the_holder_renews_keeping_acquire_time_and_transitions():
    d = run(lease(ME), None, 100.0, wall=WALL + timedelta(seconds=2))
    assert d.action is Action.RENEW
    assert d.body["metadata"]["resourceVersion"] == "41"
    assert d.body["spec"]["holderIdentity"] == ME
    assert d.body["spec"]["renewTime"] == micro_time(WALL + timedelta(seconds=2))
    assert d.body["spec"]["acquireTime"] == micro_time(WALL)
    assert d.body["spec"]["leaseTransitions"] == 3
    assert d.wait == 2


def test_a_released_lease_is_taken_at_once():
    d = run(lease(None, duration=1), None, 100.0)
    assert d.action is Action.ACQUIRE
    assert d.body["spec"]["holderIdentity"] == ME
    assert d.body["spec"]["leaseDurationSeconds"] == 10
    assert d.body["spec"]["leaseTransitions"] == 4
    assert "released" in d.reason


def test_release_clears_the_holder_only_when_it_is_mine():
    body = release(lease(ME), me=ME, wall=WALL + timedelta(seconds=5))
    assert body is not None
    assert "holderIdentity" not in body["spec"]
    assert body["spec"]["leaseDurationSeconds"] == 1
    assert body["spec"]["leaseTransitions"] == 3
    assert body["metadata"]["resourceVersion"] == "41"  # never overwrites a newer holder
    assert release(lease(OTHER), me=ME, wall=WALL) is None
    assert release(lease(None), me=ME, wall=WALL) is None


def test_the_leader_stops_at_the_renew_deadline_counted_from_the_renew_start():
    assert still_leading(100.0, 106.9, SETTINGS)
    assert not still_leading(100.0, 107.0, SETTINGS)
    assert time_left(100.0, 105.0, SETTINGS) == pytest.approx(2.0)
    assert time_left(100.0, 110.0, SETTINGS) == 0.0


def test_the_leader_stops_before_a_standby_may_take_over():
    """Never two writers: a renewal that *started* at t is seen by a standby no earlier than
    t; the leader stops at t + renewDeadline, the standby takes over at t + leaseDuration."""
    started = 100.0
    seen = run(lease(OTHER), None, started)  # the standby sees it the moment it lands
    moment = started
    while still_leading(started, moment, SETTINGS):
        assert run(lease(OTHER), seen.observation, moment).action is Action.STANDBY
        moment += 0.1


def test_identity_is_the_pod_name_with_a_random_suffix():
    a, b = identity("mlplane-7f9c-abcde"), identity("mlplane-7f9c-abcde")
    assert a.startswith("mlplane-7f9c-abcde_") and b.startswith("mlplane-7f9c-abcde_")
    assert a != b


# --- settings ---------------------------------------------------------------------------------


def test_defaults_replace_a_killed_leader_within_15_seconds():
    leader = OperatorConfig.from_env({}).leader
    assert (leader.lease_name, leader.lease_namespace) == ("mlplane-operator", None)
    assert leader.pod_name is None
    # Expiry after the last renewal the standby saw (at most one retry period late), then
    # Kopf starts: well within 15 s.
    assert leader.lease_duration + leader.retry_period <= 12
    assert leader.renew_deadline < leader.lease_duration


def test_settings_come_from_the_environment():
    leader = OperatorConfig.from_env({
        "MLPLANE_LEADER_LEASE_NAME": "ops-lease", "MLPLANE_OPERATOR_NAMESPACE": "mlplane",
        "MLPLANE_LEADER_LEASE_DURATION": "3s", "MLPLANE_LEADER_RENEW_DEADLINE": "1500ms",
        "MLPLANE_LEADER_RETRY_PERIOD": "0.5", "POD_NAME": "mlplane-abc",
    }).leader  # fmt: skip
    assert leader == LeaderElectionConfig(lease_name="ops-lease", lease_namespace="mlplane",
                                          lease_duration=3, renew_deadline=1.5,
                                          retry_period=0.5, pod_name="mlplane-abc")  # fmt: skip
    explicit = OperatorConfig.from_env({"MLPLANE_LEADER_LEASE_NAMESPACE": "elsewhere",
                                        "MLPLANE_OPERATOR_NAMESPACE": "mlplane"})  # fmt: skip
    assert explicit.leader.lease_namespace == "elsewhere"


@pytest.mark.parametrize(
    ("env", "variable"),
    [
        ({"MLPLANE_LEADER_LEASE_DURATION": "2.5s"}, "MLPLANE_LEADER_LEASE_DURATION"),
        ({"MLPLANE_LEADER_LEASE_DURATION": "soon"}, "MLPLANE_LEADER_LEASE_DURATION"),
        ({"MLPLANE_LEADER_LEASE_DURATION": "0"}, "MLPLANE_LEADER_LEASE_DURATION"),
        ({"MLPLANE_LEADER_RENEW_DEADLINE": "10s"}, "MLPLANE_LEADER_RENEW_DEADLINE"),
        ({"MLPLANE_LEADER_RENEW_DEADLINE": "-1"}, "MLPLANE_LEADER_RENEW_DEADLINE"),
        ({"MLPLANE_LEADER_RETRY_PERIOD": "6s"}, "MLPLANE_LEADER_RETRY_PERIOD"),
        ({"MLPLANE_LEADER_RETRY_PERIOD": "0"}, "MLPLANE_LEADER_RETRY_PERIOD"),
    ],
)
def test_wrong_settings_name_the_variable(env, variable):
    with pytest.raises(ValueError, match=variable):
        OperatorConfig.from_env(env)
