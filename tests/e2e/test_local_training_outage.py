"""An attempt lost to an S3 outage on the local platform, for real (issue #12, defect 7).

The sklearn example's checkpoint store points at an S3 endpoint where nothing listens; its
driver ends with the outage marker (exit 75), Ray puts that last line in the job message, and
the runner counts the attempt as an outage: no backoffLimit spent (it is 0 here, so a code
failure would fail the job), a condition saying what happened, the next attempt after the
backoff.

Runs inside a private network namespace (.ci/run does it).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from local_ports import free_port, isolated_ports

from mlplane.operator.platforms.local import LocalPlatform
from mlplane.operator.platforms.store import Store

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]


def wait(condition: Callable[[], Any], timeout: float, what: str) -> Any:
    """Poll until ``condition()`` is truthy; fail naming ``what`` at the deadline."""
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.5)
    return value


def status(platform: LocalPlatform, name: str) -> dict[str, Any]:
    return Store(platform.state_dir).get("TrainingJob", "default", name).get("status") or {}


@pytest.fixture(scope="module")
def platform(tmp_path_factory) -> Iterator[LocalPlatform]:
    ports = isolated_ports()
    local = LocalPlatform(tmp_path_factory.mktemp("platform") / "state", ports)
    local.up(num_cpus=1)
    try:
        yield local
    finally:
        local.down()


def test_attempt_lost_to_an_s3_outage_spends_no_backoff_limit(platform):
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    Store(platform.state_dir).apply({
        "apiVersion": "mlplane.dev/v1alpha1", "kind": "TrainingJob",
        "metadata": {"name": "s3-down"},
        "spec": {
            "entrypoint": "python -m mlplane.training.examples.sklearn_tabular --no-ray "
                          "--steps 10 --checkpoint-every 5",
            "runtimeEnv": {"env_vars": {"AWS_ENDPOINT_URL": dead, "AWS_ACCESS_KEY_ID": "test",
                                        "AWS_SECRET_ACCESS_KEY": "test",
                                        "AWS_DEFAULT_REGION": "us-east-1"}},
            "checkpoint": {"uri": "s3://ckpt/s3-down"},
            "backoffLimit": 0,
            "mlflow": {"experiment": "e2e-outage"},
        },
    })  # fmt: skip

    # boto3 retries (8 attempts, backoff) before the driver gives up: allow a few minutes
    def settled() -> dict[str, Any] | None:
        now = status(platform, "s3-down")
        return now if now.get("infrastructureFailures") or now.get("phase") == "Failed" else None

    lost = wait(settled, 300, "the attempt lost to the outage")
    assert lost["phase"] != "Failed", lost  # a code failure would have spent backoffLimit 0
    assert lost["failures"] == 0
    assert lost["phase"] == "Retrying"
    cond = next(c for c in lost["conditions"] if c["type"] == "InfrastructureAvailable")
    assert (cond["status"], cond["reason"]) == ("False", "AttemptLostToOutage")
    assert "S3 could not be reached" in cond["message"]
    uid = Store(platform.state_dir).get("TrainingJob", "default", "s3-down")["metadata"]["uid"]
    job = platform.job("default", "s3-down-a1", uid)
    assert job is not None and job["jobStatus"] == "FAILED"
    assert "exit code 75" in job["message"]
    assert job["message"].strip().splitlines()[-1].startswith("mlplane.failure=infrastructure: ")
    # after the backoff, attempt 2 (the outage goes on: it is lost too, still no budget spent)
    later = wait(lambda: status(platform, "s3-down").get("attempts") == 2
                 and status(platform, "s3-down"), 120, "attempt 2 after the backoff")  # fmt: skip
    assert later["failures"] == 0
    assert later["phase"] != "Failed"
