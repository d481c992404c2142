"""The registry is a code boundary: serving loads only allowed serialisations.

Pure classification of ``MLmodel`` flavors, then real MLflow (SQLite store in tmp): a pyfunc
whose loader writes a marker file, registered and aliased, is refused by default (no marker:
none of its code ran) and loads only with the deployment's opt-in.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import mlflow
import pytest
from mlflow.tracking import MlflowClient
from sklearn.linear_model import LogisticRegression

from mlplane.operator.registry import process_uris
from mlplane.serving.config import AppSettings, ConfigError, ModelConfig
from mlplane.serving.flavors import SAFE_SERIALIZATIONS, ModelPolicy, refusal, serialization_of
from mlplane.serving.model import ModelCore, UnsafeModelError, load_mlflow_model

SKOPS = {
    "python_function": {"loader_module": "mlflow.sklearn", "model_path": "model.skops"},
    "sklearn": {"serialization_format": "skops", "pickled_model": "model.skops"},
}


@pytest.mark.parametrize(
    ("flavors", "expected"),
    [
        (SKOPS, "sklearn:skops"),
        ({**SKOPS, "sklearn": {"serialization_format": "cloudpickle"}}, "sklearn:cloudpickle"),
        ({**SKOPS, "sklearn": {"serialization_format": "pickle"}}, "sklearn:pickle"),
        ({**SKOPS, "sklearn": {}}, "sklearn:pickle"),  # MLflow's default when absent
        (
            {
                **SKOPS,
                "sklearn": {
                    "serialization_format": "skops",
                    "skops_trusted_types": ["builtins.eval"],
                },
            },
            "sklearn:skops-untrusted",
        ),
        (
            {
                **SKOPS,
                "sklearn": {
                    "serialization_format": "skops",
                    "skops_trusted_types": ["sklearn.tree._tree.Tree"],
                },
            },
            "sklearn:skops",
        ),
        ({"python_function": {"loader_module": "mlflow.onnx"}, "onnx": {}}, "onnx"),
        (
            {
                "python_function": {
                    "loader_module": "mlflow.pyfunc.model",
                    "python_model": "python_model.pkl",
                }
            },
            "pyfunc:python_model",
        ),
        ({"python_function": {"loader_module": "evil_loader"}}, "loader:evil_loader"),
        ({"python_function": {"loader_module": "mlflow.sklearn", "code": "code"}}, "pyfunc:code"),
        (
            {
                "python_function": {"loader_module": "mlflow.pytorch"},
                "pytorch": {"serialization_format": "pickle"},
            },
            "pytorch:pickle",
        ),
        (
            {"python_function": {"loader_module": "mlflow.sklearn.evil"}},
            "loader:mlflow.sklearn.evil",
        ),
        ({"sklearn": {"serialization_format": "skops"}}, "unknown"),
        (None, "unknown"),
    ],
)
def test_serialization_names_what_loading_executes(flavors, expected):
    assert serialization_of(flavors) == expected


def test_default_allows_only_formats_that_execute_no_code():
    assert refusal(SKOPS) is None
    assert refusal({"python_function": {"loader_module": "mlflow.onnx"}}) is None
    pickled = {**SKOPS, "sklearn": {"serialization_format": "cloudpickle"}}
    message = refusal(pickled)
    assert message is not None
    assert "'sklearn:cloudpickle'" in message
    assert "spec.model.allowUnsafeDeserialization: true" in message
    assert refusal(pickled, allow_unsafe=True) is None
    assert refusal(pickled, ("sklearn:cloudpickle",)) is None
    assert refusal(SKOPS, ()) is not None  # an operator may allow nothing at all
    assert refusal(None) is not None  # unknown is unsafe


def test_app_args_carry_the_policy_closed_by_default():
    args = {
        "deployment": "ml/churn", "model_name": "churn", "tracking_uri": "sqlite:///x.db",
        "model_deployments": ["model-0"], "batching": None, "slo_latency_p99_ms": None,
        "drift": {"enabled": False, "method": "PSI", "threshold": 0.1, "window_s": 60.0,
                  "min_samples": 10},
    }  # fmt: skip
    assert AppSettings.parse(args).model_policy == ModelPolicy(SAFE_SERIALIZATIONS, False)
    policy = {"allowed": ["onnx"], "allow_unsafe": True}
    assert AppSettings.parse({**args, "model_policy": policy}).model_policy == ModelPolicy(
        ("onnx",), True
    )
    with pytest.raises(ConfigError, match="model_policy"):
        AppSettings.parse({**args, "model_policy": {"allowed": "onnx", "allow_unsafe": True}})


# --- a real registry ------------------------------------------------------------------------


class MarkerModel(mlflow.pyfunc.PythonModel):
    """Writes a marker file when loaded: stands in for code an attacker stored in a model."""

    def load_context(self, context):
        Path(context.model_config["marker"]).write_text("loaded")

    def predict(self, context, model_input, params=None):
        return model_input


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    folder = tmp_path_factory.mktemp("mlflow-policy")
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    marker = folder / "marker"
    client = MlflowClient(uri, registry_uri=uri)
    experiment = client.create_experiment("p", artifact_location=(folder / "a").as_uri())
    with process_uris(uri):  # MLflow's globals, restored exactly
        with mlflow.start_run(experiment_id=experiment):
            mlflow.pyfunc.log_model(
                name="model", python_model=MarkerModel(), model_config={"marker": str(marker)},
                registered_model_name="marker", pip_requirements=["mlflow"],
            )  # fmt: skip
        for fmt, name in (("skops", "skops-model"), ("cloudpickle", "pickled-model")):
            with mlflow.start_run(experiment_id=experiment):
                mlflow.sklearn.log_model(
                    LogisticRegression().fit([[0.0], [1.0], [2.0], [3.0]], [0, 0, 1, 1]),
                    name="model", registered_model_name=name, serialization_format=fmt,
                    pip_requirements=["scikit-learn"],
                )  # fmt: skip
    client.set_registered_model_alias("marker", "champion", "1")
    return uri, marker


@pytest.fixture(autouse=True)
def _process_uris_restored(registry):
    """The serving loader sets MLflow's process URIs (a replica serves one MLflow): put back."""
    with process_uris(registry[0]):
        yield


def test_a_pyfunc_with_loader_code_is_refused_by_default_and_loads_with_the_opt_in(registry):
    uri, marker = registry
    config = ModelConfig("models:/marker@champion", 1)
    with pytest.raises(UnsafeModelError, match="pyfunc:python_model"):
        load_mlflow_model(uri, config)
    assert not marker.exists()  # refused before any of the model's code ran

    core = ModelCore(uri)  # the serving deployment's default policy: closed
    with pytest.raises(UnsafeModelError):
        core.reconfigure({"model_uri": config.model_uri, "version": 1})
    assert core.loaded is None
    assert "allowUnsafeDeserialization" in (core.info()["loadError"] or "")
    assert not marker.exists()

    opted_in = ModelCore(uri, policy=ModelPolicy(allow_unsafe=True))
    opted_in.reconfigure({"model_uri": config.model_uri, "version": 1})
    assert opted_in.loaded is not None
    assert marker.read_text() == "loaded"


def test_sklearn_skops_loads_by_default_cloudpickle_does_not(registry):
    uri, _ = registry
    loaded = load_mlflow_model(uri, ModelConfig("models:/skops-model/1", 1))
    assert list(loaded.model.predict(__import__("pandas").DataFrame({"x": [0.0, 3.0]}))) == [0, 1]
    with pytest.raises(UnsafeModelError, match="sklearn:cloudpickle"):
        load_mlflow_model(uri, ModelConfig("models:/pickled-model/1", 1))
    allowed = ModelPolicy(("sklearn:cloudpickle",))
    assert load_mlflow_model(uri, ModelConfig("models:/pickled-model/1", 1), allowed).version == 1


def test_model_copies_do_not_pile_up_on_the_replica_disk(registry, tmp_path, monkeypatch):
    """Each load downloads the model's files: a refused or failed load removes its copy, and a
    version swapped out frees the old one, so a replica that follows many alias moves (or
    restarts on the same host, as on the local platform) keeps one copy, not one per load."""
    uri, _ = registry
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))

    def copies() -> list[str]:
        return sorted(p.name for p in scratch.iterdir() if p.name.startswith("mlplane-model-"))

    with pytest.raises(UnsafeModelError):
        load_mlflow_model(uri, ModelConfig("models:/pickled-model/1", 1))
    assert copies() == []  # refused: nothing kept

    core = ModelCore(uri)
    core.reconfigure({"model_uri": "models:/skops-model/1", "version": 1})
    first = copies()
    assert len(first) == 1
    core.reconfigure({"model_uri": "models:/pickled-model/1", "version": 2})  # refused
    assert copies() == first and core.loaded is not None and core.loaded.version == 1
    allowed = ModelCore(uri, policy=ModelPolicy(("sklearn:skops", "sklearn:cloudpickle")))
    for version in (1, 2, 3, 4):  # alias moves back and forth
        name = "skops-model" if version % 2 else "pickled-model"
        allowed.reconfigure({"model_uri": f"models:/{name}/1", "version": version})
        assert allowed.loaded is not None and allowed.loaded.version == version
    # core's copy, allowed's current one and the one before it (requests may still hold it).
    assert len(copies()) == 3
    frame = __import__("pandas").DataFrame({"x": [0.0, 3.0]})
    assert list(allowed.loaded.model.predict(frame)) == [0, 1]
