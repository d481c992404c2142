"""Backpressure at the Ray edge: a model deployment whose queue is full (Serve's
``max_queued_requests``) makes its handle raise ``BackPressureError``; the router turns that
into a shed request (503 + Retry-After, counted), not a failure nor a wait.

The Router deployment's ``_call_model`` is driven with a fake handle (no Ray cluster): the
mapping is what lives in ``serving/app.py``; what the router answers and counts for it is in
``test_router_core.py::test_overload_is_503_with_retry_after_and_counted``.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

import pytest
from ray.exceptions import RayActorError
from ray.serve.exceptions import BackPressureError

from mlplane.serving import app
from mlplane.serving.router import ModelUnavailable


class _Response:
    def __init__(self, error: BaseException) -> None:
        self.error = error
        self.cancelled = False

    def __await__(self) -> Generator[Any, None, Any]:
        raise self.error
        yield  # pragma: no cover (a generator: awaiting it raises at once)

    def cancel(self) -> None:
        self.cancelled = True


class _Handle:
    """``handle.predict.remote(...)`` answering with the given errors, in turn."""

    def __init__(self, *errors: BaseException) -> None:
        self.errors = list(errors)
        self.calls = 0
        self.predict = self

    def remote(self, *args: Any) -> _Response:
        self.calls += 1
        return _Response(self.errors.pop(0))


def _router(handle: _Handle) -> Any:
    router = object.__new__(app.Router.func_or_class)
    router._models = {"model-0": handle}
    return router


async def test_a_full_model_queue_is_shed_at_once_as_overload() -> None:
    handle = _Handle(BackPressureError(num_queued_requests=100, max_queued_requests=100))
    with pytest.raises(ModelUnavailable) as caught:
        await _router(handle)._call_model("model-0", {"x": [1.0]}, 1)
    assert (caught.value.status, caught.value.overloaded) == (503, True)
    assert "overloaded" in caught.value.message
    assert handle.calls == 1  # no retry: retrying an overloaded model adds to its load


async def test_a_dead_replica_is_retried_once_and_is_not_overload() -> None:
    died = RayActorError()
    handle = _Handle(died, RayActorError())
    with pytest.raises(ModelUnavailable) as caught:
        await _router(handle)._call_model("model-0", {"x": [1.0]}, 1)
    assert (caught.value.status, caught.value.overloaded) == (503, False)
    assert handle.calls == 2
