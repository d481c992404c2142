"""The local platform's signing keys (issue #14, item 5): the runner makes a key folder per
ModelDeployment laid out like a mounted Secret, hands it to the app, never regenerates it,
rotates it once per annotation value (the app's :class:`KeyFiles` follows), removes it with the
deployment. Without Ray: MLflow's answer and Serve's PUT are stood in for."""

from __future__ import annotations

import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from mlplane.operator import runner as runner_module
from mlplane.operator.builders.signing import SigningKeys
from mlplane.operator.platforms.local_signing import LocalSigningKeys
from mlplane.operator.platforms.store import Store
from mlplane.operator.registry import ResolvedModel
from mlplane.operator.runner import Runner
from mlplane.serving.request_id import KeyFiles, RequestIdSigner

NOW = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)
ROTATE = "mlplane.dev/rotate-signing-key"


def md_body(annotations: dict[str, str] | None = None) -> dict[str, Any]:
    return {
        "apiVersion": "mlplane.dev/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": "churn", "namespace": "team", "annotations": annotations or {}},
        "spec": {"model": {"name": "churn", "alias": "champion"}},
    }


class Clock:
    t = 0.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def runner(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Runner:
    resolved = ResolvedModel("churn", 1, "run", "models:/x")
    monkeypatch.setattr(runner_module, "resolve_model", lambda registry, ref: resolved)
    skops = {"python_function": {"loader_module": "mlflow.sklearn"},  # registry policy: allowed
             "sklearn": {"serialization_format": "skops"}}  # fmt: skip
    monkeypatch.setattr(
        runner_module, "flavors_of", lambda registry, name, versions: ({1: skops}, None)
    )
    r = Runner(tmp_path)
    r.serving.refresh = lambda: None  # type: ignore[method-assign]  # no Ray here
    r.serving.sync = lambda: False  # type: ignore[method-assign]
    return r


def test_runner_makes_rotates_and_removes_the_key_folder(runner: Runner, tmp_path: Path) -> None:
    store = Store(tmp_path)
    store.apply(md_body())
    runner.pass_once(NOW)
    folder = tmp_path / "signing" / "team" / "churn"
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    assert stat.S_IMODE((folder / "current").stat().st_mode) == 0o600
    # The app is told where the keys are.
    (app,) = runner.serving.desired_config()["applications"]
    assert app["args"]["signing_keys"] == str(folder)
    clock = Clock()
    files = KeyFiles(folder, clock=clock)
    first = files.keys()
    assert first.previous is None and len(first.current) == 64
    issued = RequestIdSigner(files, "team/churn").issue("primary", 1, None, 1.0)

    runner.pass_once(NOW)  # a second pass, and a new runner (a restart): the same key
    uid = store.get("ModelDeployment", "team", "churn")["metadata"]["uid"]
    assert Runner(tmp_path).serving.signing.ensure("team", "churn", uid, {}, NOW) == []
    clock.t += 5
    assert files.keys() == first

    store.apply(md_body({ROTATE: "2026-12-03"}))
    runner.pass_once(NOW)  # stage: accepted, not signing yet
    runner.pass_once(NOW + timedelta(seconds=1))
    clock.t += 5
    staged = files.keys()
    assert staged.current == first.current and staged.next not in (None, first.current)
    runner.pass_once(NOW + timedelta(seconds=6))  # settled: promoted
    runner.pass_once(NOW + timedelta(seconds=60))  # the same request again: nothing more
    clock.t += 5
    rotated = files.keys()
    assert rotated == type(rotated)(staged.next, first.current)
    assert RequestIdSigner(files, "team/churn").verify(issued).version == 1
    reasons = [e["reason"] for e in store.events("ModelDeployment", "team", "churn")]
    assert (reasons.count("SigningKeyStaged"), reasons.count("SigningKeyRotated")) == (1, 1)

    store.delete("ModelDeployment", "team", "churn")
    runner.pass_once(NOW)
    assert not folder.exists()


def test_a_folder_left_by_a_deleted_incarnation_is_replaced(tmp_path: Path) -> None:
    keys = LocalSigningKeys(tmp_path)
    keys.write("team", "churn", "old-uid", SigningKeys("a" * 64))
    assert keys.ensure("team", "churn", "new-uid", None, NOW) == []
    owner, now = keys.read("team", "churn")
    assert owner == "new-uid" and now is not None and now.current != "a" * 64
    assert keys.ensure("team", "churn", "new-uid", None, NOW) == []
    assert keys.read("team", "churn") == (owner, now)
