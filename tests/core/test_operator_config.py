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


def test_preemption_evidence_grace_defaults_to_15_seconds_and_is_read():
    assert OperatorConfig.from_env({}).preemption_evidence_grace == 15.0
    env = {"MLPLANE_PREEMPTION_EVIDENCE_GRACE": "0"}
    assert OperatorConfig.from_env(env).preemption_evidence_grace == 0.0


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("MLPLANE_CAPACITY_LABELS", "aks"),
        ("MLPLANE_LOG_FORMAT", "xml"),
        ("MLPLANE_PREEMPTION_EVIDENCE_GRACE", "soon"),
        ("MLPLANE_PREEMPTION_EVIDENCE_GRACE", "-1"),
        ("MLPLANE_PREEMPTION_EVIDENCE_GRACE", "601"),
    ],
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


def test_registry_policy_settings():
    """Closed by default for flavors and tracking URIs; model names open unless configured."""
    from mlplane.operator.config import OperatorConfig as Config

    default = Config.from_env({"MLPLANE_MLFLOW_TRACKING_URI": "http://mlflow:5000"})
    assert default.allowed_model_flavors == ("sklearn:skops", "onnx")
    assert default.tracking_uri_allowed(None) and default.tracking_uri_allowed(
        "http://mlflow:5000/"
    )
    assert not default.tracking_uri_allowed("http://elsewhere:5000")
    assert default.model_name_allowed("any", "any-name")
    config = Config.from_env({
        "MLPLANE_ALLOWED_MODEL_FLAVORS": "onnx, sklearn:cloudpickle",
        "MLPLANE_ALLOWED_TRACKING_URIS": "http://other:5000",
        "MLPLANE_MODEL_NAME_POLICY": '{"team-a": ["churn-*", "fraud"], "*": ["shared-*"]}',
    })  # fmt: skip
    assert config.allowed_model_flavors == ("onnx", "sklearn:cloudpickle")
    assert config.tracking_uri_allowed("http://other:5000")
    assert config.model_name_allowed("team-a", "churn-x") and config.model_name_allowed(
        "team-a", "fraud"
    )
    assert not config.model_name_allowed("team-a", "fraud-x")
    assert config.model_name_allowed("team-b", "shared-y") and not config.model_name_allowed(
        "team-b", "churn-x"
    )
    with pytest.raises(ValueError, match="MLPLANE_MODEL_NAME_POLICY"):
        Config.from_env({"MLPLANE_MODEL_NAME_POLICY": '["team-a"]'})


def test_spot_settings_default_to_bounds_and_no_price_table():
    config = OperatorConfig.from_env({})
    assert (config.checkpoint_interval_min, config.checkpoint_interval_max) == (60.0, 14400.0)
    assert config.gpu_prices is None and config.gpu_price("nvidia-l4", "Spot") is None


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"MLPLANE_CHECKPOINT_INTERVAL_MIN": "soon"}, "MLPLANE_CHECKPOINT_INTERVAL_MIN"),
        ({"MLPLANE_CHECKPOINT_INTERVAL_MIN": "2h", "MLPLANE_CHECKPOINT_INTERVAL_MAX": "1h"},
         "at most MLPLANE_CHECKPOINT_INTERVAL_MAX"),
        ({"MLPLANE_GPU_PRICES": "cheap"}, "MLPLANE_GPU_PRICES"),
        ({"MLPLANE_GPU_PRICES": '{"nvidia-l4": {"Preemptible": 1}}'}, "MLPLANE_GPU_PRICES"),
        ({"MLPLANE_GPU_PRICES": '{"nvidia-l4": {"Spot": -1}}'}, "MLPLANE_GPU_PRICES"),
    ],
)  # fmt: skip
def test_bad_spot_settings_name_the_variable(env, message):
    with pytest.raises(ValueError, match=message):
        OperatorConfig.from_env(env)


def test_price_table_with_a_fallback_accelerator():
    config = OperatorConfig.from_env({
        "MLPLANE_GPU_PRICES": '{"nvidia-l4": {"Spot": 0.3, "OnDemand": 0.8}, "*": {"OnDemand": 2}}',
        "MLPLANE_PRICE_CURRENCY": "EUR",
    })  # fmt: skip
    assert config.gpu_price("nvidia-l4", "Spot") == 0.3
    assert config.gpu_price(None, "OnDemand") == 2.0
    assert config.gpu_price("nvidia-h100", "Spot") is None
    assert config.price_currency == "EUR"


def test_the_scrape_token_file_gives_the_apps_its_hash_or_stops_the_operator(tmp_path):
    """MLPLANE_SERVING_SCRAPE_TOKEN_FILE (the chart mounts its Secret there): the apps get the
    token's SHA-256; a named file that is missing or empty is refused at start, naming it."""
    import hashlib

    token = tmp_path / "token"
    token.write_text("s3cret-token\n")
    config = OperatorConfig.from_env({"MLPLANE_SERVING_SCRAPE_TOKEN_FILE": str(token)})
    assert config.serving_scrape_token_sha256 == hashlib.sha256(b"s3cret-token").hexdigest()
    assert OperatorConfig.from_env({}).serving_scrape_token_sha256 is None
    for bad in (tmp_path / "missing", tmp_path / "empty"):
        if bad.name == "empty":
            bad.write_text("\n")
        with pytest.raises(ValueError, match="MLPLANE_SERVING_SCRAPE_TOKEN_FILE"):
            OperatorConfig.from_env({"MLPLANE_SERVING_SCRAPE_TOKEN_FILE": str(bad)})
