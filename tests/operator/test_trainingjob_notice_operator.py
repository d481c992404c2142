"""Checkpoint on notice through the real Kopf operator on the emulator, S3 on moto (in-process).

Each notice signal on a running attempt's pod or node makes the operator write the notice
object into the job's checkpoint folder, where the runtime (``TrainingSession.notice_due``)
reads it; its checkpoint reaches ``status.lastNotice`` through the run's tags. Evidence after
the loss with no notice before it is counted as before, and nobody is told.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator

import boto3
import pytest
from k8s.harness import create, events_for, example, run_operator, stored, wait_for
from mlflow.tracking import MlflowClient
from moto import mock_aws

from mlplane.monitoring.notice import NOTICE_FILE, parse_notice
from mlplane.operator.platforms.notice import _s3_client
from mlplane.training import TrainingContext, TrainingSession
from mlplane.training.checkpoints import open_store

RAYJOBS = "ray.io/v1/rayjobs"
NODES = "v1/nodes"
TIMEOUT = 30
BUCKET = "ckpt-notice"


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


@pytest.fixture
def s3(monkeypatch) -> Iterator[None]:
    """S3 mocked in this process (the operator's thread included), with the job's bucket."""
    for name, value in (("AWS_ACCESS_KEY_ID", "test"), ("AWS_SECRET_ACCESS_KEY", "test"),
                        ("AWS_DEFAULT_REGION", "us-east-1")):  # fmt: skip
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    _s3_client.cache_clear()  # the operator's client is made under the mock, with its keys
    with mock_aws():
        boto3.client("s3", region_name="us-east-1").create_bucket(Bucket=BUCKET)
        yield
    _s3_client.cache_clear()


def trainingjob(name: str) -> dict:
    body = example("trainingjob-gpu-spot")
    body["metadata"] = {"name": name, "namespace": "ml"}
    body["spec"]["mlflow"] = {}
    body["spec"]["checkpoint"] = {"uri": f"s3://{BUCKET}/{name}"}
    return body


def status(emulator, obj) -> dict:
    return (stored(emulator, obj) or {}).get("status") or {}


async def running_attempt(emulator, job: str, node: str, taints: list[dict] | None = None) -> str:
    """Attempt 1 running with a worker pod on a spot node (with ``taints``)."""
    await wait_for(lambda: emulator.get_object(RAYJOBS, "ml", f"{job}-a1"), timeout=TIMEOUT,
                   message="attempt 1")  # fmt: skip
    await emulator.create_object(NODES, {
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": node, "labels": {"karpenter.sh/capacity-type": "spot"}},
        "spec": {"taints": taints or []},
        "status": {"conditions": [{"type": "Ready", "status": "True"}]},
    })  # fmt: skip
    pod = f"{job}-a1-worker-0"
    await emulator.create_object("v1/pods", {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": pod, "namespace": "ml",
                     "labels": {"mlplane.dev/trainingjob": job, "mlplane.dev/attempt": "1",
                                "ray.io/node-type": "worker"}},
        "spec": {"nodeName": node, "containers": [{"name": "ray-worker", "image": "r"}]},
    })  # fmt: skip
    await emulator.patch_object("v1/pods", "ml", pod, {"status": {"phase": "Running"}},
                                subresource="status")  # fmt: skip
    await emulator.patch_object(
        RAYJOBS,
        "ml",
        f"{job}-a1",
        {"status": {"jobStatus": "RUNNING", "jobDeploymentStatus": "Running"}},
        subresource="status",
    )
    return pod


def notice_in_s3(uri: str):
    data = open_store(uri).read_side(NOTICE_FILE)
    return parse_notice(data) if data else None


SIGNALS = [
    ("aws-node-termination-handler/spot-itn", "2026-12-01T12:02:00Z"),
    ("karpenter.sh/disrupted", None),
    ("karpenter.sh/disruption", None),
    ("cloud.google.com/impending-node-termination", "2026-12-01T12:00:30Z"),
]


@pytest.fixture
async def quiet_operator(emulator, kubeconfig, monkeypatch):
    """The operator with no resync (or timer) due within the test: only events wake a job."""
    monkeypatch.setenv("MLPLANE_RESYNC_INTERVAL", "600")
    monkeypatch.setenv("MLPLANE_RECONCILE_INTERVAL", "600")
    async with run_operator() as run:
        yield run


async def test_a_notice_taint_wakes_the_job_at_once_not_at_the_resync(
    emulator, quiet_operator, mlflow_uri, s3
):
    """The notice is delivered from the node's event: a resync of minutes would miss the
    reclaim window (the runtime must know within seconds)."""
    job = "tj-n-wake"
    obj = await create(emulator, trainingjob(job))
    await running_attempt(emulator, job, f"{job}-node")
    await wait_for(lambda: status(emulator, obj).get("phase") == "Running", timeout=TIMEOUT,
                   message="Running", seen=lambda: status(emulator, obj))  # fmt: skip
    uri = status(emulator, obj)["checkpointUri"]
    taint = {"key": SIGNALS[0][0], "effect": "NoSchedule", "timeAdded": "2026-12-01T12:00:00Z"}
    # A node with no capacity-type label: its taint is a notice, not (yet) reclaim evidence,
    # so only the notice can wake the job.
    labels = {"karpenter.sh/capacity-type": None}
    change = {"metadata": {"labels": labels}, "spec": {"taints": [taint]}}
    await emulator.patch_object(NODES, None, f"{job}-node", change)
    notice = await wait_for(lambda: notice_in_s3(uri), timeout=TIMEOUT,
                            message="the notice object (a 600 s resync is not due)",
                            seen=lambda: status(emulator, obj))  # fmt: skip
    assert (notice.attempt, notice.signal) == (1, SIGNALS[0][0])


@pytest.mark.parametrize(("signal", "deadline"), SIGNALS)
async def test_each_node_notice_taint_tells_the_running_attempt(
    emulator, operator, mlflow_uri, s3, signal, deadline
):
    job = f"tj-n-sig{[s for s, _ in SIGNALS].index(signal)}"
    obj = await create(emulator, trainingjob(job))
    await running_attempt(emulator, job, f"{job}-node")
    await wait_for(lambda: status(emulator, obj).get("phase") == "Running", timeout=TIMEOUT,
                   message="Running", seen=lambda: status(emulator, obj))  # fmt: skip
    await emulator.patch_object(
        NODES,
        None,
        f"{job}-node",
        {
            "spec": {
                "taints": [
                    {"key": signal, "effect": "NoSchedule", "timeAdded": "2026-12-01T12:00:00Z"}
                ]
            }
        },
    )
    uri = status(emulator, obj)["checkpointUri"]
    notice = await wait_for(
        lambda: notice_in_s3(uri),
        timeout=TIMEOUT,
        message="the notice object",
        seen=lambda: status(emulator, obj),
    )
    assert (notice.attempt, notice.signal, notice.node) == (1, signal, f"{job}-node")
    assert notice.deadline == deadline
    last = await wait_for(lambda: status(emulator, obj).get("lastNotice", {}).get("deliveredTime")
                          and status(emulator, obj)["lastNotice"], timeout=TIMEOUT,
                          message="the delivery in status")  # fmt: skip
    assert last["id"] == notice.id == "attempt-1-notice-1"
    # The runtime of attempt 1 learns of it at its next step boundary.
    session = TrainingSession(TrainingContext(checkpoint_uri=uri, attempt=1), None,
                              open_store(uri))  # fmt: skip
    assert session.notice_due()


async def test_a_pod_disruption_target_tells_the_attempt_and_its_checkpoint_is_recorded(
    emulator, operator, mlflow_uri, s3, tmp_path
):
    job = "tj-n-pod"
    obj = await create(emulator, trainingjob(job))
    pod = await running_attempt(emulator, job, f"{job}-node")
    await wait_for(lambda: status(emulator, obj).get("phase") == "Running", timeout=TIMEOUT,
                   message="Running")  # fmt: skip
    await emulator.patch_object("v1/pods", "ml", pod, {"status": {"conditions": [{
        "type": "DisruptionTarget", "status": "True", "reason": "EvictionByEvictionAPI",
        "lastTransitionTime": "2026-12-01T12:00:00Z"}]}}, subresource="status")  # fmt: skip
    uri = status(emulator, obj)["checkpointUri"]
    notice = await wait_for(lambda: notice_in_s3(uri), timeout=TIMEOUT,
                            message="the notice object")  # fmt: skip
    assert (notice.signal, notice.pod) == ("DisruptionTarget", pod)

    # The runtime answers with a checkpoint, tagged on the job's run: the operator records it.
    run_id = status(emulator, obj)["mlflow"]["runId"]
    context = TrainingContext(checkpoint_uri=uri, attempt=1, tracking_uri=mlflow_uri,
                              run_id=run_id)  # fmt: skip

    def answer() -> None:
        session = TrainingSession.start(context)
        session.notice_pending_file = tmp_path / "pending"
        assert session.notice_due()
        session.checkpoint(12, {"model": b"w"})

    await asyncio.to_thread(answer)
    last = await wait_for(lambda: status(emulator, obj).get("lastNotice", {}).get("checkpoint")
                          and status(emulator, obj)["lastNotice"], timeout=TIMEOUT,
                          message="the notice checkpoint in status",
                          seen=lambda: status(emulator, obj))  # fmt: skip
    assert last["checkpoint"] == {"uri": f"{uri}/step-000000000012", "step": 12}
    reasons = [e["reason"] for e in events_for(emulator, obj)]
    assert reasons.count("ReclaimNotice") == 1 and "NoticeCheckpointTaken" in reasons
    condition = next(c for c in status(emulator, obj)["conditions"]
                     if c["type"] == "ReclaimNotice")  # fmt: skip
    assert (condition["status"], condition["reason"]) == ("True", "CheckpointTaken")


async def test_evidence_without_a_notice_is_counted_as_before_and_nobody_is_told(
    emulator, operator, mlflow_uri, s3
):
    job = "tj-n-none"
    obj = await create(emulator, trainingjob(job))
    await running_attempt(emulator, job, f"{job}-node")
    await wait_for(lambda: status(emulator, obj).get("phase") == "Running", timeout=TIMEOUT,
                   message="Running")  # fmt: skip
    # The node is lost without a notice first (the node controller's taint, after the fact).
    await emulator.patch_object(NODES, None, f"{job}-node", {"spec": {"taints": [
        {"key": "node.kubernetes.io/unreachable", "effect": "NoExecute"}]}})  # fmt: skip
    await wait_for(
        lambda: status(emulator, obj).get("preemptions") == 1,
        timeout=TIMEOUT,
        message="the preemption counted",
        seen=lambda: status(emulator, obj),
    )
    st = status(emulator, obj)
    assert "lastNotice" not in st
    assert all(c["type"] != "ReclaimNotice" for c in st["conditions"])
    assert notice_in_s3(st["checkpointUri"]) is None
