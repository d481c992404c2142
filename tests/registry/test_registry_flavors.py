"""Reading a model version's MLmodel flavors from a real MLflow (SQLite store, local files)."""

from __future__ import annotations

import mlflow
import pytest
from mlflow.tracking import MlflowClient
from sklearn.linear_model import LogisticRegression

from mlplane.operator.registry import Registry, flavors_of, process_uris
from mlplane.serving.flavors import serialization_of


class Echo(mlflow.pyfunc.PythonModel):
    def predict(self, context, model_input, params=None):
        return model_input


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    folder = tmp_path_factory.mktemp("mlflow-flavors")
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    client = MlflowClient(uri, registry_uri=uri)
    experiment = client.create_experiment("f", artifact_location=folder.as_uri())
    with process_uris(uri):  # MLflow's globals, restored exactly
        with mlflow.start_run(experiment_id=experiment):
            mlflow.sklearn.log_model(
                LogisticRegression().fit([[0.0], [1.0]], [0, 1]), name="model",
                registered_model_name="tabular", pip_requirements=["scikit-learn"],
            )  # fmt: skip
        with mlflow.start_run(experiment_id=experiment):
            mlflow.pyfunc.log_model(
                name="model", python_model=Echo(), registered_model_name="tabular",
                pip_requirements=["mlflow"],
            )  # fmt: skip
    return Registry(uri)


def test_flavors_of_each_version_are_read_from_its_mlmodel(registry):
    found, problem = flavors_of(registry, "tabular", (2, 1, 1))
    assert problem is None
    assert serialization_of(found[1]) == "sklearn:skops"  # MLflow 3's default for sklearn
    assert serialization_of(found[2]) == "pyfunc:python_model"


def test_a_missing_version_has_no_flavors(registry):
    found, problem = flavors_of(registry, "tabular", (7,))
    assert problem is None and found == {7: None}


def test_unreachable_mlflow_is_unavailable():
    _, problem = flavors_of(Registry("http://127.0.0.1:9", timeout=1), "m", (1,))
    assert problem is not None and problem.reason == "RegistryUnavailable"
