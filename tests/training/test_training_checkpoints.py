"""Checkpoint store, on a local folder and on S3 (moto): newest complete wins, keep N, debris."""

from __future__ import annotations

import json
import pickle
from datetime import UTC, datetime

import pytest

from mlplane.training.checkpoints import (
    MARKER,
    LocalCheckpointStore,
    S3CheckpointStore,
    open_store,
    step_dir,
)


@pytest.fixture(params=["local", "s3"])
def store(request, tmp_path):
    if request.param == "local":
        return LocalCheckpointStore(tmp_path / "ckpt")
    bucket = request.getfixturevalue("s3_bucket")
    return S3CheckpointStore(f"s3://{bucket}/team/job")


def keys(store) -> set[str]:
    return set(store._list())


def test_empty_store_has_no_checkpoint(store):
    assert store.latest() is None
    assert store.checkpoints() == []
    assert store.prune(2) == []


def test_save_then_latest_reads_back_files(store):
    when = datetime(2026, 11, 29, 21, 58, 3, 123000, tzinfo=UTC)
    info = store.save(5, {"model.pkl": b"abc", "sub/opt.bin": b"\x00" * 10}, attempt=2,
                      metadata={"rows": 7}, now=when)  # fmt: skip
    assert info.uri == f"{store.uri}/step-000000000005"
    assert info.time == "2026-11-29T21:58:03.123Z"
    latest = store.latest()
    assert latest == info
    assert latest.files == {"model.pkl": 3, "sub/opt.bin": 10}
    assert latest.attempt == 2 and latest.metadata == {"rows": 7}
    assert store.read_all(latest) == {"model.pkl": b"abc", "sub/opt.bin": b"\x00" * 10}


def test_newest_step_wins_not_newest_write(store):
    store.save(20, {"m": b"20"})
    store.save(10, {"m": b"10"})  # written later, but an older step
    assert store.latest().step == 20
    assert [c.step for c in store.checkpoints()] == [10, 20]


def test_keep_n_deletes_older_and_their_files(store):
    for step in range(1, 6):
        store.save(step * 10, {"m": str(step).encode()})
    deleted = store.prune(2)
    assert deleted == [10, 20, 30]
    assert [c.step for c in store.checkpoints()] == [40, 50]
    assert {k.split("/")[0] for k in keys(store)} == {step_dir(40), step_dir(50)}


def test_checkpoint_without_marker_is_ignored(store):
    store.save(10, {"m": b"ten"})
    store._put(f"{step_dir(20)}/m", b"cut mid-write")  # the marker never came
    assert store.latest().step == 10


def test_missing_or_truncated_file_makes_it_incomplete(store):
    store.save(10, {"m": b"ten"})
    store.save(20, {"m": b"twenty", "n": b"x"})
    store._delete([f"{step_dir(20)}/n"])
    assert store.latest().step == 10
    store.save(30, {"m": b"thirty"})
    store._put(f"{step_dir(30)}/m", b"thi")  # same name, other size
    assert store.latest().step == 10


def test_corrupt_or_foreign_marker_is_ignored(store):
    store.save(10, {"m": b"ten"})
    store._put(f"{step_dir(20)}/m", b"x")
    store._put(f"{step_dir(20)}/{MARKER}", b"{not json")
    store._put(f"{step_dir(30)}/m", b"x")
    marker = {"format": "mlplane.checkpoint/v1", "step": 99, "files": {"m": 1}}
    store._put(f"{step_dir(30)}/{MARKER}", json.dumps(marker).encode())  # wrong step
    assert store.latest().step == 10


def test_prune_sweeps_debris_below_newest_but_not_above(store):
    store._put(f"{step_dir(5)}/m", b"debris of a crashed write")
    store.save(10, {"m": b"ten"})
    store.save(20, {"m": b"twenty"})
    store._put(f"{step_dir(30)}/m", b"in progress")
    store.prune(5)
    folders = {k.split("/")[0] for k in keys(store)}
    assert folders == {step_dir(10), step_dir(20), step_dir(30)}


def test_resaving_a_step_replaces_it_entirely(store):
    store.save(10, {"a": b"1", "b": b"2"})
    store.save(10, {"a": b"one"})
    latest = store.latest()
    assert latest.files == {"a": 3}
    assert keys(store) == {f"{step_dir(10)}/a", f"{step_dir(10)}/{MARKER}"}


def test_unrelated_keys_are_left_alone(store):
    store._put("notes.txt", b"mine")
    store._put("step-abc/m", b"not a step folder")
    store.save(1, {"m": b"x"})
    store.save(2, {"m": b"y"})
    store.prune(1)
    assert {"notes.txt", "step-abc/m"} <= keys(store)
    assert store.latest().step == 2


def test_download_and_directory_round_trip(store, tmp_path):
    src = tmp_path / "src"
    (src / "nested").mkdir(parents=True)
    (src / "a.bin").write_bytes(b"A")
    (src / "nested" / "b.bin").write_bytes(b"BB")
    info = store.save_directory(3, src)
    assert info.files == {"a.bin": 1, "nested/b.bin": 2}
    out = store.download(store.latest(), tmp_path / "out")
    assert (out / "nested" / "b.bin").read_bytes() == b"BB"


@pytest.mark.parametrize("name", ["", "/abs", "../up", "a/../b", "./a", MARKER])
def test_bad_file_names_are_refused(store, name):
    with pytest.raises(ValueError, match="invalid checkpoint file name"):
        store.save(1, {name: b"x"})
    assert store.latest() is None


def test_store_survives_pickling(store):
    store.save(1, {"m": b"x"})
    clone = pickle.loads(pickle.dumps(store))
    assert clone.latest().step == 1


def test_local_write_leaves_no_temporary_files(tmp_path):
    store = LocalCheckpointStore(tmp_path / "c")
    store.save(1, {"m": b"x" * 1000})
    names = [p.name for p in (tmp_path / "c").rglob("*") if p.is_file()]
    assert sorted(names) == sorted(["m", MARKER])


def test_local_prune_removes_empty_folders(tmp_path):
    store = LocalCheckpointStore(tmp_path / "c")
    store.save(1, {"deep/er/m": b"x"})
    store.save(2, {"m": b"y"})
    store.prune(1)
    assert sorted(p.name for p in (tmp_path / "c").iterdir()) == [step_dir(2)]


def test_open_store_picks_the_backend(tmp_path, s3_bucket):
    s3 = open_store(f"s3://{s3_bucket}/p/")
    assert isinstance(s3, S3CheckpointStore)
    assert (s3.bucket, s3.prefix, s3.uri) == (s3_bucket, "p", f"s3://{s3_bucket}/p")
    local = open_store(f"file://{tmp_path}/x")
    assert isinstance(local, LocalCheckpointStore) and local.uri == str(tmp_path / "x")
    rel = open_store("relative/dir")
    assert rel.uri == str(tmp_path / "relative" / "dir")


def test_s3_store_at_bucket_root(s3_bucket):
    store = S3CheckpointStore(f"s3://{s3_bucket}")
    store.save(7, {"m": b"x"})
    assert store.latest().uri == f"s3://{s3_bucket}/step-000000000007"
