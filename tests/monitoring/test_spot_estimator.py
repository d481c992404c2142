"""The reclaim-rate estimator and the Young/Daly interval: pure functions, state in and out."""

from __future__ import annotations

import math

import pytest

from mlplane.monitoring import spot
from mlplane.monitoring.spot import Exposure

POOL = spot.pool_key("nvidia-l4", "us-east-1a")


def test_pool_key_names_accelerator_zone_and_capacity():
    assert POOL == "nvidia-l4/us-east-1a/spot"
    assert spot.pool_key(None, None) == "cpu/*/spot"


def test_no_history_is_the_prior():
    assert spot.node_mtbr({}, POOL) == spot.PRIOR_NODE_MTBR_SECONDS


def test_history_outweighs_the_prior_as_it_grows():
    # 100 node-hours with 100 reclaims: a node is reclaimed about once an hour.
    history = spot.record({}, POOL, "uid/1", Exposure(100 * 3600.0, 100))
    m = spot.node_mtbr(history, POOL)
    expected = (spot.PRIOR_NODE_MTBR_SECONDS + 100 * 3600.0) / 101
    assert m == pytest.approx(expected)
    assert 3600 < m < 1.1 * 3600
    # one reclaim in a short exposure does not swing M to minutes
    one = spot.record({}, POOL, "uid/1", Exposure(600.0, 1))
    assert spot.node_mtbr(one, POOL) > 3 * 3600


def test_recording_a_contribution_again_replaces_it():
    history = spot.record({}, POOL, "uid/1", Exposure(600.0, 0))
    again = spot.record(history, POOL, "uid/1", Exposure(1200.0, 1))
    assert again[POOL].total() == Exposure(1200.0, 1)
    both = spot.record(again, POOL, "uid/2", Exposure(300.0, 0))
    assert both[POOL].total() == Exposure(1500.0, 1)
    assert history[POOL].total() == Exposure(600.0, 0)  # the input is not changed


def test_old_contributions_fold_into_the_settled_total():
    history: dict = {}
    for n in range(5):
        history = spot.record(history, POOL, f"uid/{n}", Exposure(100.0, 1), keep=3)
    assert list(history[POOL].recent) == ["uid/2", "uid/3", "uid/4"]
    assert history[POOL].settled == Exposure(200.0, 2)
    assert history[POOL].total() == Exposure(500.0, 5)


def test_history_survives_a_restart_through_its_stored_form():
    history = spot.record({}, POOL, "uid/1", Exposure(7200.0, 2))
    history = spot.record(history, "cpu/*/spot", "uid/9", Exposure(60.0, 0))
    for n in range(3):
        history = spot.record(history, POOL, f"old/{n}", Exposure(10.0, 1), keep=2)
    stored = spot.dump_history(history)
    assert set(stored) == {spot.STORED_KEY} and isinstance(stored[spot.STORED_KEY], str)
    back = spot.load_history(stored)
    assert back == history
    assert spot.node_mtbr(back, POOL) == spot.node_mtbr(history, POOL)


def test_the_newest_reclaim_time_of_a_pool_is_kept_and_stored():
    """Return to spot waits for a pool without recent reclaims: the history keeps when the
    newest one happened, through folding and the stored form; older stores (pairs) still load."""
    history = spot.record({}, POOL, "uid/1", Exposure(600.0, 1, 1_000.0))
    history = spot.record(history, POOL, "uid/2", Exposure(600.0, 1, 5_000.0))
    history = spot.record(history, POOL, "uid/3", Exposure(600.0, 0), keep=1)  # folds 1 and 2
    assert spot.last_reclaim(history, POOL) == 5_000.0
    assert spot.last_reclaim(history, "cpu/*/spot") is None
    back = spot.load_history(spot.dump_history(history))
    assert back == history and spot.last_reclaim(back, POOL) == 5_000.0
    old = spot.load_history({spot.STORED_KEY: '{"p": {"settled": [60, 1], "recent": {}}}'})
    assert old["p"].total() == Exposure(60.0, 1) and spot.last_reclaim(old, "p") is None


@pytest.mark.parametrize(
    "data", [{spot.STORED_KEY: "{not json"}, {spot.STORED_KEY: '{"p": {"settled": [1]}}'},
             {spot.STORED_KEY: '{"p": {"settled": [-5, 0], "recent": {}}}'}],
)  # fmt: skip
def test_unreadable_history_says_so(data):
    with pytest.raises(ValueError, match="reclaim history"):
        spot.load_history(data)


def test_nothing_stored_is_an_empty_history():
    assert spot.load_history(None) == {}
    assert spot.load_history({}) == {}


def test_a_job_is_reclaimed_as_often_as_all_its_nodes_together():
    assert spot.job_mtbr([(3600.0, 4)]) == pytest.approx(900.0)
    assert spot.job_mtbr([(3600.0, 1), (1800.0, 1)]) == pytest.approx(1200.0)
    assert spot.job_mtbr([]) is None
    assert spot.job_mtbr([(3600.0, 0)]) is None


def test_young_daly_interval_and_its_bounds():
    assert spot.young_daly(30.0, 3600.0) == pytest.approx(math.sqrt(2 * 30 * 3600))
    assert spot.young_daly(0.01, 600.0, min_seconds=60) == 60
    assert spot.young_daly(300.0, 1e7, max_seconds=7200) == 7200


def test_write_time_is_a_running_mean():
    c = spot.update_write_seconds(None, 10.0)
    assert c == 10.0
    c = spot.update_write_seconds(c, 20.0)
    assert c == pytest.approx(13.0)


def test_writes_are_worth_it_on_a_reclaim_or_ten_node_minutes():
    history = spot.record({}, POOL, "uid/1", Exposure(600.0, 0))
    assert not spot.worth_saving(history, POOL, "uid/1", Exposure(900.0, 0))
    assert spot.worth_saving(history, POOL, "uid/1", Exposure(600.0 + 600, 0))
    assert spot.worth_saving(history, POOL, "uid/1", Exposure(610.0, 1))
    assert spot.worth_saving(history, POOL, "uid/2", Exposure(1.0, 0))
    assert not spot.worth_saving(history, POOL, "uid/2", Exposure(0.0, 0))
