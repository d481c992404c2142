"""Guards for every test module: what one module changes in the process must not reach the next."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

_MLFLOW_ENV = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI", "MLPLANE_MLFLOW_TRACKING_URI")


def _mlflow_globals() -> tuple[object, ...]:
    from mlflow.tracking import fluent
    from mlflow.tracking._model_registry import utils as registry_utils
    from mlflow.tracking._tracking_service import utils as tracking_utils

    return (
        tracking_utils._tracking_uri,
        registry_utils._registry_uri,
        fluent._active_experiment_id,
        *(os.environ.get(name) for name in _MLFLOW_ENV),
    )


@pytest.fixture(autouse=True, scope="module")
def _mlflow_globals_restored(request: pytest.FixtureRequest) -> Iterator[None]:
    """MLflow's process-wide URIs, active experiment (and the operator's variable) as the
    module found them.

    A module that pinned them once made the next module's fluent ``log_model`` register into
    another module's MLflow, so its operator never found the model (order-dependent failures).
    A module that left an experiment active made another module's ``start_run(run_id=...)``
    fail ("active experiment ID does not match") once the order changed (pytest-xdist).
    Use ``mlplane.operator.registry.process_uris`` to set the URIs for a block.
    """
    before = _mlflow_globals()
    yield
    after = _mlflow_globals()
    assert after == before, f"{request.module.__name__} left MLflow's globals changed: {after}"
