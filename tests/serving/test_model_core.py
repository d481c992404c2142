"""The model server's core: atomic swap on reconfigure, failed loads keep serving, batches."""

from __future__ import annotations

import threading

import numpy as np
import pandas as pd
import pytest

from mlplane.serving.config import ConfigError, ModelConfig
from mlplane.serving.inputs import ColumnSpec, InputSchema
from mlplane.serving.model import LoadedModel, ModelCore, predict_items, to_jsonable

SCHEMA = InputSchema((ColumnSpec("x", "double"), ColumnSpec("plan", "string")))


class Doubler:
    """Predicts ``version * x``; refuses negative inputs like a model's own validation would."""

    def __init__(self, version: int, fail: BaseException | None = None) -> None:
        self.version = version
        self.fail = fail
        self.calls = 0

    def predict(self, frame: pd.DataFrame):
        self.calls += 1
        if self.fail is not None:
            raise self.fail
        if (frame["x"] < 0).any():
            raise ValueError("x must be >= 0")
        return frame["x"].to_numpy() * self.version


def loaded(version: int = 1, model=None) -> LoadedModel:
    return LoadedModel(f"models:/m/{version}", version, model or Doubler(version), SCHEMA, 0.0)


def item(*xs):
    return ({"x": list(xs), "plan": ["pro"] * len(xs)}, len(xs))


def cfg(version: int) -> dict:
    return {"model_uri": f"models:/m/{version}", "version": version}


def test_predictions_carry_the_version():
    (answer,) = predict_items(loaded(3), [item(1.0, 2.0)])
    assert answer == {"status": 200, "predictions": [3.0, 6.0], "version": 3}


def test_a_batch_is_validated_per_request_and_predicted_once():
    model = Doubler(2)
    answers = predict_items(
        loaded(2, model), [item(1.0), ({"x": ["a"], "plan": ["pro"]}, 1), item(2.0, 3.0)]
    )
    assert [a["status"] for a in answers] == [200, 422, 200]
    assert "column 'x'" in answers[1]["error"]
    assert answers[2]["predictions"] == [4.0, 6.0]
    assert model.calls == 1


def test_one_refused_request_does_not_fail_its_batch():
    answers = predict_items(loaded(1), [item(1.0), item(-1.0), item(2.0)])
    assert [a["status"] for a in answers] == [200, 422, 200]
    assert "the model refused the input: x must be >= 0" in answers[1]["error"]


def test_model_failures_are_500_refusals_422():
    (failed,) = predict_items(loaded(1, Doubler(1, RuntimeError("boom"))), [item(1.0)])
    assert failed["status"] == 500 and "RuntimeError: boom" in failed["error"]
    assert predict_items(loaded(1, Doubler(1, KeyError("x"))), [item(1.0)])[0]["status"] == 422


def test_outputs_become_json_lists():
    assert to_jsonable(np.array([1, 2])) == [1, 2]
    assert to_jsonable(np.array([np.nan, 1.0])) == [None, 1.0]
    assert to_jsonable(pd.DataFrame({"p": [0.1], "q": [np.inf]})) == [{"p": 0.1, "q": None}]
    assert to_jsonable(pd.Series([1.5])) == [1.5]
    with pytest.raises(TypeError):
        to_jsonable(object())


class GatedLoader:
    """A loader whose loads wait for the test's go-ahead (a slow artifact download)."""

    def __init__(self) -> None:
        self.gates: dict[int, threading.Event] = {}
        self.entered: dict[int, threading.Event] = {}
        self.fail: set[int] = set()

    def __call__(self, tracking_uri: str, config: ModelConfig) -> LoadedModel:
        self.entered.setdefault(config.version, threading.Event()).set()
        gate = self.gates.get(config.version)
        if gate is not None:
            assert gate.wait(10)
        if config.version in self.fail:
            raise OSError(f"cannot download version {config.version}")
        return loaded(config.version)


def test_reconfigure_swaps_atomically_while_the_old_version_serves():
    loader = GatedLoader()
    core = ModelCore("sqlite:///x", loader)
    core.reconfigure(cfg(1))
    loader.gates[2] = threading.Event()
    thread = threading.Thread(target=core.reconfigure, args=(cfg(2),))
    thread.start()
    try:
        # While version 2 loads, requests are answered by version 1, and info says so.
        for _ in range(5):
            assert core.predict([item(1.0)])[0]["version"] == 1
        assert (core.info()["version"], core.info()["desiredVersion"]) == (1, 2)
    finally:
        loader.gates[2].set()
        thread.join(10)
    assert core.predict([item(1.0)])[0] == {"status": 200, "predictions": [2.0], "version": 2}
    assert core.info()["loadError"] is None


def test_a_failed_load_keeps_the_old_model_and_reports():
    loader = GatedLoader()
    core = ModelCore("sqlite:///x", loader)
    core.reconfigure(cfg(1))
    loader.fail.add(2)
    core.reconfigure(cfg(2))  # does not raise: raising would make Serve replace the replica
    assert core.predict([item(1.0)])[0]["version"] == 1
    assert "cannot download version 2" in core.info()["loadError"]
    core.reconfigure({"model_uri": "models:/m/3"})  # a broken config is refused the same way
    assert "user_config refused" in core.info()["loadError"]
    loader.fail.clear()
    core.reconfigure(cfg(2))
    assert core.predict([item(1.0)])[0]["version"] == 2


def test_the_first_load_must_succeed():
    loader = GatedLoader()
    loader.fail.add(1)
    core = ModelCore("sqlite:///x", loader)
    assert core.predict([item(1.0)])[0]["status"] == 503  # nothing loaded yet
    with pytest.raises(OSError, match="version 1"):
        core.reconfigure(cfg(1))
    with pytest.raises(ConfigError):
        core.reconfigure({"version": 1})


def test_a_superseded_load_is_not_published():
    loader = GatedLoader()
    core = ModelCore("sqlite:///x", loader)
    core.reconfigure(cfg(1))
    loader.gates[2] = threading.Event()
    loader.entered[2] = threading.Event()
    slow = threading.Thread(target=core.reconfigure, args=(cfg(2),))
    slow.start()
    assert loader.entered[2].wait(10)  # version 2 is loading when version 3 is asked for
    newer = threading.Thread(target=core.reconfigure, args=(cfg(3),))
    newer.start()
    loader.gates[2].set()
    slow.join(10)
    newer.join(10)
    assert core.predict([item(1.0)])[0]["version"] == 3
