"""The PyTorch example's pieces that need no Ray: the model, and what gets logged to MLflow.

The Ray Train loop itself runs in the e2e test (test_training_ray_e2e.py).
"""

from __future__ import annotations

from pathlib import Path

import mlflow
import numpy as np
import pytest
from mlflow import MlflowClient

torch = pytest.importorskip("torch")

from mlplane.monitoring.profile import PROFILE_ARTIFACT_PATH, Profile  # noqa: E402
from mlplane.training import RunReporter, TrainingContext, TrainingSession  # noqa: E402
from mlplane.training.examples import torch_mlp as ex  # noqa: E402


def test_first_layer_standardises_the_raw_features():
    frame, _ = ex.make_data(2000, seed=1)
    x = frame[ex.FEATURES]
    model = ex.build_model(x.mean().to_numpy(), x.std().to_numpy(), hidden=8)
    with torch.no_grad():
        z = model[0](torch.tensor(x.to_numpy(dtype=np.float32))).numpy()
    np.testing.assert_allclose(z.mean(axis=0), 0.0, atol=1e-4)
    np.testing.assert_allclose(z.std(axis=0, ddof=1), 1.0, atol=1e-3)
    assert not any(p.requires_grad for p in model[0].parameters())


def test_logged_model_loads_without_mlplane_and_predicts_probabilities(mlflow_uri, operator_run):
    config = ex.Config(rows=400, steps=30, hidden=8)
    frame, label = ex.make_data(config.rows, config.seed)
    x_train, y_train, _, _ = ex.split(frame, label, config.validation_fraction, config.seed)
    logits = ex.build_model(
        x_train.mean().to_numpy(), x_train.std().to_numpy(), hidden=config.hidden
    )
    x, y = ex.tensors(x_train, y_train)
    optimizer = torch.optim.Adam([p for p in logits.parameters() if p.requires_grad], lr=0.05)
    for _ in range(config.steps):  # a few full-batch steps: enough to beat chance
        optimizer.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits(x).squeeze(1), y)
        loss.backward()
        optimizer.step()

    session = TrainingSession(
        TrainingContext(tracking_uri=mlflow_uri), RunReporter(operator_run, mlflow_uri), None
    )
    final = ex.log_results(session, logits.eval(), config)
    assert final["final_val_accuracy"] > 0.6

    model = mlflow.pyfunc.load_model(f"runs:/{operator_run}/model")
    assert model.metadata.get_input_schema().input_names() == ex.FEATURES
    batch, _ = ex.make_data(25, seed=5)  # float64 columns, as JSON requests arrive
    out = np.asarray(model.predict(batch)).reshape(-1)
    assert out.shape == (25,) and ((out >= 0) & (out <= 1)).all()

    # Only torch's own classes are pickled: the serving image needs no mlplane code.
    local = Path(mlflow.artifacts.download_artifacts(f"runs:/{operator_run}/model"))
    pickled = b"".join(p.read_bytes() for p in local.rglob("*.pth"))
    assert pickled and b"mlplane" not in pickled

    profile = Profile.from_json(
        mlflow.artifacts.load_text(f"runs:/{operator_run}/{PROFILE_ARTIFACT_PATH}")
    )
    assert profile.names == ex.FEATURES
    assert MlflowClient(mlflow_uri).get_run(operator_run).data.metrics["final_val_accuracy"] > 0.6
