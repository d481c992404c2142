from __future__ import annotations

import pytest

from mlplane.operator.config import OperatorConfig


def test_defaults():
    config = OperatorConfig.from_env({})
    assert config.capacity_labels == "eks"
    assert config.default_training_image.startswith("rayproject/ray:")


def test_reads_environment():
    config = OperatorConfig.from_env({
        "MLPLANE_CAPACITY_LABELS": "karpenter",
        "MLPLANE_MLFLOW_TRACKING_URI": "http://mlflow.mlops:5000",
        "MLPLANE_ARTIFACTS_URI": "s3://bucket/prefix",
    })  # fmt: skip
    assert config.capacity_labels == "karpenter"
    assert config.mlflow_tracking_uri == "http://mlflow.mlops:5000"
    assert config.artifacts_uri == "s3://bucket/prefix"


@pytest.mark.parametrize(
    ("variable", "value"), [("MLPLANE_CAPACITY_LABELS", "aks"), ("MLPLANE_LOG_FORMAT", "xml")]
)
def test_bad_value_names_the_variable(variable, value):
    with pytest.raises(ValueError, match=variable):
        OperatorConfig.from_env({variable: value})


def test_checkpoint_base_from_its_variable_else_artifacts():
    config = OperatorConfig.from_env({"MLPLANE_CHECKPOINT_BASE_URI": "s3://ckpt/base/",
                                      "MLPLANE_ARTIFACTS_URI": "s3://art"})  # fmt: skip
    assert config.checkpoint_base == "s3://ckpt/base"
    assert OperatorConfig.from_env({"MLPLANE_ARTIFACTS_URI": "s3://art/"}).checkpoint_base == (
        "s3://art/checkpoints"
    )
    assert OperatorConfig.from_env({}).checkpoint_base is None
    assert OperatorConfig.from_env(
        {"MLPLANE_CHECKPOINT_BASE_URI": "/mnt/efs/ckpt"}
    ).checkpoint_base == ("/mnt/efs/ckpt")


@pytest.mark.parametrize("value", ["gs://bucket/x", "relative/path", "s3://"])
def test_bad_checkpoint_base_names_the_variable(value):
    with pytest.raises(ValueError, match="MLPLANE_CHECKPOINT_BASE_URI"):
        OperatorConfig.from_env({"MLPLANE_CHECKPOINT_BASE_URI": value})
