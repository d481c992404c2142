"""The reclaim history's keeper and its local adapter: load once, write when worth it, never
overwrite a history it could not read."""

from __future__ import annotations

import json

from mlplane.monitoring import spot
from mlplane.operator.platforms.reclaim_history import (
    FileHistoryStore,
    ReclaimHistoryKeeper,
    file_keeper,
)
from mlplane.operator.reconcile.spot import ReclaimSample

POOL = spot.pool_key("nvidia-l4", None)


def sample(seconds: float, reclaims: int = 0, contribution: str = "u/1") -> ReclaimSample:
    return ReclaimSample(POOL, contribution, spot.Exposure(seconds, reclaims))


class Flaky:
    """A store that fails reads or writes on demand (an API server outage)."""

    def __init__(self, data=None) -> None:
        self.data = data
        self.fail_load = self.fail_save = False
        self.saves = 0

    def load(self):
        if self.fail_load:
            raise ConnectionError("API server unreachable")
        return self.data

    def save(self, data) -> None:
        if self.fail_save:
            raise ConnectionError("API server unreachable")
        self.saves += 1
        self.data = dict(data)


def test_file_keeper_writes_and_a_new_keeper_reads_back(tmp_path):
    keeper = file_keeper(tmp_path)
    assert keeper.history() == {}
    assert keeper.offer([sample(600.0, 1)])
    again = file_keeper(tmp_path).history()
    assert again[POOL].recent["u/1"] == spot.Exposure(600.0, 1)
    assert set(json.loads((tmp_path / "reclaim-history.json").read_text())) == {spot.STORED_KEY}


def test_writes_only_when_the_estimate_changes():
    store = Flaky()
    keeper = ReclaimHistoryKeeper(store)
    assert keeper.offer([sample(60.0)])
    assert not keeper.offer([sample(120.0)])  # a minute more: not worth a write
    assert keeper.offer([sample(120.0, 1)])  # a reclaim is
    assert store.saves == 2


def test_an_unreadable_store_gives_the_prior_and_is_never_overwritten():
    store = Flaky(spot.dump_history(spot.record({}, POOL, "old/1", spot.Exposure(1e5, 9))))
    store.fail_load = True
    keeper = ReclaimHistoryKeeper(store)
    assert keeper.history() == {}  # the prior this round
    assert not keeper.offer([sample(6000.0, 1)])
    assert store.saves == 0
    store.fail_load = False  # the outage ends: read, then recorded on top
    assert keeper.offer([sample(6000.0, 1)])
    assert keeper.history()[POOL].total() == spot.Exposure(1e5 + 6000.0, 10)


def test_a_failed_write_is_offered_again():
    store = Flaky()
    keeper = ReclaimHistoryKeeper(store)
    store.fail_save = True
    assert not keeper.offer([sample(60.0, 1)])
    assert keeper.history() == {}
    store.fail_save = False
    assert keeper.offer([sample(60.0, 1)])
    assert store.saves == 1


def test_a_corrupt_file_starts_from_the_prior(tmp_path, caplog):
    (tmp_path / "h.json").write_text(json.dumps({spot.STORED_KEY: "{oops"}))
    keeper = ReclaimHistoryKeeper(FileHistoryStore(tmp_path / "h.json"))
    assert keeper.history() == {}
    assert "reclaim history" in caplog.text
    assert keeper.offer([sample(60.0)])
