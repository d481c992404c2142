"""Request-id keys from the mounted Secret: sign with ``current``, accept ``previous``, follow a
rotation without a restart, refuse any other key (issue #14, item 5)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from mlplane.serving.app import signing_keys
from mlplane.serving.config import AppSettings, ConfigError
from mlplane.serving.request_id import (
    KEY_ENV,
    InvalidRequestId,
    KeyFiles,
    RequestIdSigner,
    SigningKeys,
)

DEPLOYMENT = "ml-team/churn"
K1, K2, K3, K4 = (c * 64 for c in "abcd")


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def write_secret(
    directory: Path, current: str, previous: str | None = None, next_: str | None = None
) -> None:
    """Write the keys the way the kubelet updates a mounted Secret: a new timestamped folder
    with the files, then the ``..data`` symlink swapped atomically (the key files are links
    through it), so a reader sees the old set or the new one, never half of each."""
    directory.mkdir(parents=True, exist_ok=True)
    n = len(list(directory.glob("..2*")))
    new = directory / f"..2026_{n:04d}"
    new.mkdir()
    (new / "current").write_text(current)
    if previous is not None:
        (new / "previous").write_text(previous)
    if next_ is not None:
        (new / "next").write_text(next_)
    tmp = directory / "..data_tmp"
    tmp.symlink_to(new.name)
    os.replace(tmp, directory / "..data")
    for name in ("current", "previous", "next"):
        link = directory / name
        if not link.is_symlink():
            link.symlink_to(f"..data/{name}")


def test_signs_with_current_and_verifies_current_and_previous():
    old = RequestIdSigner(SigningKeys(K1.encode()), DEPLOYMENT)
    rotated = RequestIdSigner(SigningKeys(K2.encode(), K1.encode()), DEPLOYMENT)
    before = old.issue("primary", 3, None, 1.8e9)
    after = rotated.issue("primary", 3, None, 1.8e9)
    assert rotated.verify(before).variant == "primary"  # issued before the rotation: accepted
    assert rotated.verify(after).variant == "primary"
    # Signed with the new current key, not the old one: a replica with only K1 refuses it.
    with pytest.raises(InvalidRequestId, match="signature"):
        old.verify(after)


def test_a_staged_key_is_accepted_before_anyone_signs_with_it():
    """Stage 1 of a rotation: K2 is ``next`` here while a pod that already got the promotion
    signs with it; this replica must accept those ids, and itself still signs with K1."""
    staged = RequestIdSigner(SigningKeys(K1.encode(), None, K2.encode()), DEPLOYMENT)
    promoted = RequestIdSigner(SigningKeys(K2.encode(), K1.encode()), DEPLOYMENT)
    assert staged.verify(promoted.issue("primary", 2, None, 1.0)).version == 2
    assert promoted.verify(staged.issue("primary", 2, None, 1.0)).version == 2
    only_k1 = RequestIdSigner(SigningKeys(K1.encode()), DEPLOYMENT)
    assert only_k1.verify(staged.issue("primary", 2, None, 1.0)).version == 2


def test_a_key_neither_current_nor_previous_is_refused():
    third = RequestIdSigner(SigningKeys(K3.encode()), DEPLOYMENT).issue("a", 1, None, 1.0)
    twice_rotated = RequestIdSigner(SigningKeys(K3.encode()), DEPLOYMENT)
    first = RequestIdSigner(SigningKeys(K1.encode()), DEPLOYMENT).issue("a", 1, None, 1.0)
    signer = RequestIdSigner(SigningKeys(K2.encode(), K1.encode()), DEPLOYMENT)
    with pytest.raises(InvalidRequestId, match="signature"):
        signer.verify(third)
    # Two rotations later, K1 is neither current nor previous: its ids are refused.
    signer = RequestIdSigner(SigningKeys(K4.encode(), K3.encode()), DEPLOYMENT)
    with pytest.raises(InvalidRequestId, match="signature"):
        signer.verify(first)
    assert twice_rotated.verify(third).version == 1


def test_key_files_follow_a_rotation_of_the_mounted_secret(tmp_path):
    keys_dir = tmp_path / "request-signing"
    write_secret(keys_dir, K1)
    clock = Clock()
    signer = RequestIdSigner(KeyFiles(keys_dir, recheck_s=1.0, clock=clock), DEPLOYMENT)
    before = signer.issue("primary", 3, None, 1.8e9)
    assert signer.keys() == SigningKeys(K1.encode())

    write_secret(keys_dir, K1, None, K2)  # the operator staged K2; the kubelet updated the volume
    assert signer.keys().next is None  # looked at no more than once a second
    clock.t += 1.0
    assert signer.keys() == SigningKeys(K1.encode(), None, K2.encode())
    assert signer.verify(RequestIdSigner(SigningKeys(K2.encode()), DEPLOYMENT)
                         .issue("primary", 3, None, 1.0)).version == 3  # fmt: skip
    write_secret(keys_dir, K2, K1)  # promoted
    clock.t += 1.0
    assert signer.keys() == SigningKeys(K2.encode(), K1.encode())
    after = signer.issue("primary", 3, None, 1.8e9)
    assert signer.verify(before).version == 3
    assert signer.verify(after).version == 3
    assert RequestIdSigner(SigningKeys(K2.encode()), DEPLOYMENT).verify(after).version == 3

    write_secret(keys_dir, K3, K2)  # rotated again: ids of K1 are now refused
    clock.t += 1.0
    with pytest.raises(InvalidRequestId, match="signature"):
        signer.verify(before)
    assert signer.verify(after).version == 3


def test_a_replica_that_has_not_looked_yet_rereads_when_an_id_fails(tmp_path):
    """Another replica already signs with the new key: the id fails with the cached keys,
    the files are looked at once more at once, and the id verifies."""
    keys_dir = tmp_path / "keys"
    write_secret(keys_dir, K1)
    clock = Clock()
    slow = RequestIdSigner(KeyFiles(keys_dir, recheck_s=60.0, clock=clock), DEPLOYMENT)
    write_secret(keys_dir, K2, K1)
    fresh = RequestIdSigner(KeyFiles(keys_dir, clock=clock), DEPLOYMENT)
    assert slow.verify(fresh.issue("primary", 1, None, 1.0)).version == 1


def test_unreadable_keys_are_refused_at_start_and_kept_after(tmp_path):
    with pytest.raises(ValueError, match="no signing key"):
        KeyFiles(tmp_path / "missing")
    short = tmp_path / "short"
    write_secret(short, "too-short")
    with pytest.raises(ValueError, match="at least 16 bytes"):
        KeyFiles(short)
    keys_dir = tmp_path / "keys"
    write_secret(keys_dir, K1)
    clock = Clock()
    files = KeyFiles(keys_dir, clock=clock)
    write_secret(keys_dir, "")  # a broken update: the last good keys stay
    clock.t += 5
    assert files.keys() == SigningKeys(K1.encode())


def _settings(**changes) -> AppSettings:
    args = {
        "deployment": DEPLOYMENT,
        "model_name": "churn",
        "tracking_uri": "sqlite:///unused",
        "model_deployments": ["model-0"],
        "batching": None,
        "slo_latency_p99_ms": None,
        "drift": {"enabled": False, "method": "PSI", "threshold": 0.1, "window_s": 60,
                  "min_samples": 10},
        **changes,
    }  # fmt: skip
    return AppSettings.parse(args)


def test_the_app_reads_the_key_directory_it_is_given(tmp_path, monkeypatch):
    monkeypatch.delenv(KEY_ENV, raising=False)
    write_secret(tmp_path, K1)
    source = signing_keys(_settings(signing_keys=str(tmp_path)))
    assert isinstance(source, KeyFiles)
    assert source.keys() == SigningKeys(K1.encode())
    # No directory and no variable: the replica refuses to start (no key made up on the spot,
    # none kept in Ray's key-value store).
    with pytest.raises(ConfigError, match="signing key"):
        signing_keys(_settings())
    monkeypatch.setenv(KEY_ENV, K2)
    assert signing_keys(_settings()) == K2.encode()
    with pytest.raises(ConfigError, match=r"args\.signing_keys"):
        _settings(signing_keys="")
