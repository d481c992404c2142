"""A refused status write does not stop an object's reconciles (found by ``bench/chaos.py``).

Kopf applies a timer handler's ``patch`` after the handler returns; when the API server refuses
that write (a 409, a 5xx), Kopf's timer task for the object ends and the object is never
reconciled again in that process. The operator writes status itself, so a refusal is a retry.
"""

from __future__ import annotations

import os

import aiohttp.web
import kmock
import pytest
from k8s.emulator import Emulator
from k8s.harness import create, example, stored, wait_for
from mlflow.tracking import MlflowClient

RAYJOBS = "ray.io/v1/rayjobs"
TIMEOUT = 30


@pytest.fixture(scope="module")
def mlflow_uri(tmp_path_factory):
    uri = f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"
    old = os.environ.get("MLPLANE_MLFLOW_TRACKING_URI")
    os.environ["MLPLANE_MLFLOW_TRACKING_URI"] = uri
    MlflowClient(uri).search_experiments()
    yield uri
    if old is None:
        os.environ.pop("MLPLANE_MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLPLANE_MLFLOW_TRACKING_URI"] = old


class Refusals:
    """The next ``count`` status writes of a kind are answered 409 (and not applied)."""

    def __init__(self, plural: str) -> None:
        self.plural, self.count, self.refused = plural, 0, 0

    def take(self, request: kmock.Request) -> bool:
        res = request.resource
        if (self.count > 0 and res is not None and res.plural == self.plural
                and request.subresource == "status"
                and request.action == kmock.action.UPDATE):  # fmt: skip
            self.count -= 1
            self.refused += 1
            return True
        return False


@pytest.fixture
def refusals(monkeypatch: pytest.MonkeyPatch) -> Refusals:
    refusals = Refusals("trainingjobs")
    original = Emulator._handle

    async def handle(self: Emulator, request: kmock.Request) -> aiohttp.web.StreamResponse:
        if refusals.take(request):
            body = {"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 409,
                    "reason": "Conflict", "message": "injected: modified"}  # fmt: skip
            return aiohttp.web.json_response(body, status=409)
        return await original(self, request)

    monkeypatch.setattr(Emulator, "_handle", handle)
    return refusals


def trainingjob(name: str) -> dict:
    body = example("trainingjob-gpu-spot")
    body["metadata"] = {"name": name, "namespace": "ml"}
    body["spec"]["mlflow"] = {"registeredModel": name, "alias": "candidate"}
    return body


async def test_a_refused_status_write_is_retried_and_the_job_goes_on(
    emulator, operator, mlflow_uri, refusals
):
    obj = await create(emulator, trainingjob("tj-refused"))

    def status() -> dict:
        return (stored(emulator, obj) or {}).get("status") or {}

    await wait_for(lambda: status().get("currentAttempt"), timeout=TIMEOUT,
                   message="attempt 1 in status", seen=status)  # fmt: skip
    refusals.count = 2  # the next rounds' writes (the timer's) are refused
    await emulator.patch_object(RAYJOBS, "ml", "tj-refused-a1",
                                {"status": {"jobStatus": "RUNNING",
                                            "jobDeploymentStatus": "Running"}},
                                subresource="status")  # fmt: skip
    await wait_for(lambda: status().get("phase") == "Running", timeout=TIMEOUT,
                   message="the job Running after its status writes were refused",
                   seen=status)  # fmt: skip
    assert refusals.refused == 2
