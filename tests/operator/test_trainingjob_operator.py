"""TrainingJob through the real Kopf operator: the test plays KubeRay (RayJob status, pods)
and the training code (it logs the model into the run); MLflow is real (SQLite).

Covers what issue 3 asks: success and registration; two preemptions then success, resuming
on on-demand after SpotWithFallback's budget; a code failure exhausting backoffLimit while
preemptions did not count; a restart mid-attempt creating no duplicate; deletion.
"""

from __future__ import annotations

import asyncio
import os
from datetime import UTC, datetime, timedelta
from typing import Any

import mlflow
import pytest
import yaml
from k8s.harness import (
    create,
    events_for,
    example,
    more_timer_runs,
    run_operator_process,
    stored,
    wait_for,
)
from mlflow.tracking import MlflowClient
from sklearn.linear_model import LogisticRegression

from mlplane.operator.registry import process_uris

RAYJOBS = "ray.io/v1/rayjobs"
TIMEOUT = 30


@pytest.fixture(scope="module")
def mlflow_uri(tmp_path_factory):
    uri = f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"
    old = os.environ.get("MLPLANE_MLFLOW_TRACKING_URI")
    os.environ["MLPLANE_MLFLOW_TRACKING_URI"] = uri
    MlflowClient(uri).search_experiments()  # create the schema once, before any operator call
    yield uri
    if old is None:
        os.environ.pop("MLPLANE_MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLPLANE_MLFLOW_TRACKING_URI"] = old


def trainingjob(name: str, **spec: Any) -> dict[str, Any]:
    body = example("trainingjob-gpu-spot")
    body["metadata"] = {"name": name, "namespace": "ml"}
    body["spec"]["mlflow"] = {"registeredModel": name, "alias": "candidate"}
    body["spec"].update(spec)
    return body


def rayjob(emulator, name: str) -> dict[str, Any] | None:
    return emulator.get_object(RAYJOBS, "ml", name)


def status(emulator, obj) -> dict[str, Any]:
    return (stored(emulator, obj) or {}).get("status") or {}


def run_id_of(job: dict[str, Any]) -> str:
    return yaml.safe_load(job["spec"]["runtimeEnvYAML"])["env_vars"]["MLFLOW_RUN_ID"]


async def set_job_status(emulator, name: str, job_status: str, deployment: str) -> None:
    await emulator.patch_object(RAYJOBS, "ml", name,
                                {"status": {"jobStatus": job_status,
                                            "jobDeploymentStatus": deployment}},
                                subresource="status")  # fmt: skip


async def train(uri: str, run_id: str, step: int = 10) -> None:
    """What the training runtime does: checkpoint tags and the model, in the shared run."""

    def work() -> None:
        client = MlflowClient(uri)
        client.set_tag(run_id, "mlplane.checkpoint.uri", f"s3://ckpt/step-{step}")
        client.set_tag(run_id, "mlplane.checkpoint.step", str(step))
        with process_uris(uri), mlflow.start_run(run_id=run_id):
            model = LogisticRegression().fit([[0.0], [1.0], [2.0], [3.0]], [0, 0, 1, 1])
            mlflow.sklearn.log_model(model, name="model", pip_requirements=["scikit-learn"])

    await asyncio.to_thread(work)


async def preempt(emulator, job: str, attempt: int) -> None:
    """A worker pod of the attempt gets DisruptionTarget (spot reclaim), then the job fails."""
    await emulator.create_object("v1/pods", {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": f"{job}-a{attempt}-worker-x", "namespace": "ml",
                     "labels": {"mlplane.dev/trainingjob": job, "mlplane.dev/attempt": str(attempt),
                                "ray.io/node-type": "worker"}},
        "spec": {"nodeName": "spot-node-1", "containers": [{"name": "ray-worker", "image": "r"}]},
    })  # fmt: skip
    await emulator.patch_object("v1/pods", "ml", f"{job}-a{attempt}-worker-x",
                                {"status": {"conditions": [{
                                    "type": "DisruptionTarget", "status": "True",
                                    "reason": "DeletionByTaintManager"}]}},
                                subresource="status")  # fmt: skip
    obj = {"apiVersion": "mlplane.dev/v1alpha1", "kind": "TrainingJob",
           "metadata": {"name": job, "namespace": "ml"}}  # fmt: skip
    await wait_for(lambda: status(emulator, obj).get("preemptions", 0) >= attempt,
                   timeout=TIMEOUT, message=f"preemption {attempt} to be counted",
                   seen=lambda: status(emulator, obj))  # fmt: skip
    await set_job_status(emulator, f"{job}-a{attempt}", "FAILED", "Failed")


async def test_success_registers_one_version(emulator, operator, mlflow_uri):
    obj = await create(emulator, trainingjob("tj-ok"))
    job = await wait_for(lambda: rayjob(emulator, "tj-ok-a1"), timeout=TIMEOUT,
                         message="attempt 1's RayJob")  # fmt: skip
    assert job["metadata"]["ownerReferences"][0]["uid"] == obj["metadata"]["uid"]
    assert job["spec"]["backoffLimit"] == 0
    await set_job_status(emulator, "tj-ok-a1", "RUNNING", "Running")
    await wait_for(lambda: status(emulator, obj).get("phase") == "Running", timeout=TIMEOUT,
                   message="phase Running", seen=lambda: status(emulator, obj))  # fmt: skip
    await train(mlflow_uri, run_id_of(job))
    await set_job_status(emulator, "tj-ok-a1", "SUCCEEDED", "Complete")
    final = await wait_for(lambda: status(emulator, obj).get("phase") == "Succeeded"
                           and status(emulator, obj), timeout=TIMEOUT, message="Succeeded",
                           seen=lambda: status(emulator, obj))  # fmt: skip
    assert final["mlflow"]["modelVersion"] == "1"
    assert final["mlflow"]["modelUri"] == "models:/tj-ok/1"
    assert final["lastCheckpoint"] == {"uri": "s3://ckpt/step-10", "step": 10}
    assert (final["attempts"], final["preemptions"], final["failures"]) == (1, 0, 0)
    client = MlflowClient(mlflow_uri)
    assert str(client.get_model_version_by_alias("tj-ok", "candidate").version) == "1"
    # Two more timer runs that saw the Succeeded job: nothing may be registered again.
    await more_timer_runs(operator, obj, "follow", timeout=TIMEOUT)
    assert len(client.search_model_versions("name = 'tj-ok'")) == 1
    reasons = [e["reason"] for e in events_for(emulator, obj)]
    assert {"AttemptCreated", "Running", "ModelRegistered", "Succeeded"} <= set(reasons)
    # the change handler and the first timer tick both reconcile: one of them acts
    assert reasons.count("AttemptCreated") == 1
    assert reasons.count("Succeeded") == 1
    assert [j["metadata"]["name"] for j in emulator.list_objects(RAYJOBS, "ml")
            if j["metadata"]["name"].startswith("tj-ok-")] == ["tj-ok-a1"]  # fmt: skip


async def test_two_preemptions_then_fallback_to_on_demand(emulator, operator, mlflow_uri):
    obj = await create(emulator, trainingjob("tj-spot"))  # SpotWithFallback, maxPreemptions 2
    for attempt in (1, 2):
        job = await wait_for(lambda a=attempt: rayjob(emulator, f"tj-spot-a{a}"),
                             timeout=TIMEOUT, message=f"attempt {attempt}")  # fmt: skip
        assert job["metadata"]["labels"]["mlplane.dev/capacity"] == "Spot"
        await set_job_status(emulator, f"tj-spot-a{attempt}", "RUNNING", "Running")
        await preempt(emulator, "tj-spot", attempt)
    third = await wait_for(lambda: rayjob(emulator, "tj-spot-a3"), timeout=TIMEOUT,
                           message="attempt 3", seen=lambda: status(emulator, obj))  # fmt: skip
    assert third["metadata"]["labels"]["mlplane.dev/capacity"] == "OnDemand"
    workers = str(third["spec"]["rayClusterSpec"]["workerGroupSpecs"])
    assert "ON_DEMAND" in workers
    assert "'SPOT'" not in workers
    env = yaml.safe_load(third["spec"]["runtimeEnvYAML"])["env_vars"]
    assert env["MLPLANE_ATTEMPT"] == "3"
    # every attempt of this uid shares the uid's own folder (attempt 3 resumes 1 and 2)
    uid = obj["metadata"]["uid"]
    assert env["MLPLANE_CHECKPOINT_URI"] == f"s3://ml-team-checkpoints/churn-classifier/{uid}"
    await train(mlflow_uri, run_id_of(third), step=30)
    await set_job_status(emulator, "tj-spot-a3", "SUCCEEDED", "Complete")
    final = await wait_for(lambda: status(emulator, obj).get("phase") == "Succeeded"
                           and status(emulator, obj), timeout=TIMEOUT, message="Succeeded",
                           seen=lambda: status(emulator, obj))  # fmt: skip
    assert (final["attempts"], final["preemptions"], final["failures"]) == (3, 2, 0)
    assert final["currentAttempt"]["capacity"] == "OnDemand"
    assert [d["attempt"] for d in final["disruptions"]] == [1, 2]
    reasons = [e["reason"] for e in events_for(emulator, obj)]
    assert "FallbackToOnDemand" in reasons
    assert reasons.count("Preempted") == 2


async def test_code_failures_exhaust_backoff_limit_not_preemptions(emulator, operator,
                                                                  mlflow_uri):  # fmt: skip
    obj = await create(emulator, trainingjob("tj-bug", backoffLimit=1))
    for attempt in (1, 2):
        await wait_for(lambda a=attempt: rayjob(emulator, f"tj-bug-a{a}"), timeout=TIMEOUT,
                       message=f"attempt {attempt}")  # fmt: skip
        await set_job_status(emulator, f"tj-bug-a{attempt}", "FAILED", "Failed")
    final = await wait_for(lambda: status(emulator, obj).get("phase") == "Failed"
                           and status(emulator, obj), timeout=TIMEOUT, message="Failed",
                           seen=lambda: status(emulator, obj))  # fmt: skip
    assert (final["failures"], final["preemptions"]) == (2, 0)
    succeeded = next(c for c in final["conditions"] if c["type"] == "Succeeded")
    assert (succeeded["status"], succeeded["reason"]) == ("False", "BackoffLimitExceeded")
    await more_timer_runs(operator, obj, "follow", timeout=TIMEOUT)  # looked at it again
    assert rayjob(emulator, "tj-bug-a3") is None
    assert events_for(emulator, obj, "Warning")


def runs_of(uri: str, obj: dict[str, Any]) -> list[Any]:
    client = MlflowClient(uri)
    return client.search_runs(
        [e.experiment_id for e in client.search_experiments()],
        filter_string=f"tags.`mlplane.trainingjob.uid` = '{obj['metadata']['uid']}'",
    )


async def test_restart_mid_attempt_creates_no_duplicate(emulator, kubeconfig, mlflow_uri):
    """The operator SIGKILLed while an attempt runs; a new process (no memory) resumes it."""
    async with run_operator_process() as first:
        obj = await create(emulator, trainingjob("tj-restart"))
        await wait_for(lambda: rayjob(emulator, "tj-restart-a1"), timeout=TIMEOUT,
                       message="attempt 1")  # fmt: skip
        await set_job_status(emulator, "tj-restart-a1", "RUNNING", "Running")
        await wait_for(lambda: status(emulator, obj).get("phase") == "Running", timeout=TIMEOUT,
                       message="Running")  # fmt: skip
        # The handler writes status itself, before Kopf marks the creation handled: wait for
        # that mark, or the new process (rightly) sees a creation, not a resume. A kill inside
        # the creation cycle is test_kill_between_rayjob_create_and_status_write's.
        await wait_for(lambda: first.processed(obj, "creation"), timeout=TIMEOUT,
                       message="the creation cycle finished")  # fmt: skip
        first.kill()
    async with run_operator_process() as second:
        # A positive sign first: the new process resumed the job and its timer looked at it
        # twice (reading the RayJob each time); only then "nothing more happened" means it.
        await wait_for(lambda: second.processed(obj, "resuming"), timeout=TIMEOUT,
                       message="the resume")  # fmt: skip
        await wait_for(lambda: second.timer_runs(obj, "follow") >= 2, timeout=TIMEOUT,
                       message="two timer runs after the restart")  # fmt: skip
        jobs = [j for j in emulator.list_objects(RAYJOBS, "ml")
                if j["metadata"]["name"].startswith("tj-restart-")]  # fmt: skip
        assert [j["metadata"]["name"] for j in jobs] == ["tj-restart-a1"]
        assert status(emulator, obj)["attempts"] == 1
        assert status(emulator, obj)["phase"] == "Running"
    assert len(runs_of(mlflow_uri, obj)) == 1


async def test_kill_between_rayjob_create_and_status_write(emulator, kubeconfig, mlflow_uri):
    """SIGKILL right after the RayJob POST is applied, before the operator hears the answer
    or writes status: the new process adopts that RayJob (same owner), creates no second one
    and no second MLflow run, counts the attempt once, and status converges to the truth."""
    async with run_operator_process() as first:
        fired = first.kill_after(emulator, "POST", RAYJOBS, name="tj-killed-a1")
        obj = await create(emulator, trainingjob("tj-killed"))
        await wait_for(lambda: fired and not first.running, timeout=TIMEOUT,
                       message="the kill after the RayJob POST")  # fmt: skip
    job = rayjob(emulator, "tj-killed-a1")
    assert job is not None
    assert status(emulator, obj).get("attempts", 0) == 0  # killed before the status write
    async with run_operator_process() as second:
        await wait_for(lambda: status(emulator, obj).get("attempts") == 1, timeout=TIMEOUT,
                       message="attempt 1 recorded",
                       seen=lambda: status(emulator, obj))  # fmt: skip
        await set_job_status(emulator, "tj-killed-a1", "RUNNING", "Running")
        await wait_for(lambda: status(emulator, obj).get("phase") == "Running", timeout=TIMEOUT,
                       message="Running", seen=lambda: status(emulator, obj))  # fmt: skip
        await train(mlflow_uri, run_id_of(job))
        await set_job_status(emulator, "tj-killed-a1", "SUCCEEDED", "Complete")
        final = await wait_for(lambda: status(emulator, obj).get("phase") == "Succeeded"
                               and status(emulator, obj), timeout=TIMEOUT, message="Succeeded",
                               seen=lambda: status(emulator, obj))  # fmt: skip
        mark = second.timer_runs(obj, "follow")
        await wait_for(lambda: second.timer_runs(obj, "follow") >= mark + 2, timeout=TIMEOUT,
                       message="two timer runs after Succeeded")  # fmt: skip
    assert (final["attempts"], final["preemptions"], final["failures"]) == (1, 0, 0)
    assert [j["metadata"]["name"] for j in emulator.list_objects(RAYJOBS, "ml")
            if j["metadata"]["name"].startswith("tj-killed-")] == ["tj-killed-a1"]  # fmt: skip
    assert rayjob(emulator, "tj-killed-a1")["metadata"]["uid"] == job["metadata"]["uid"]
    assert len(runs_of(mlflow_uri, obj)) == 1
    client = MlflowClient(mlflow_uri)
    assert len(client.search_model_versions("name = 'tj-killed'")) == 1
    assert str(client.get_model_version_by_alias("tj-killed", "candidate").version) == "1"
    assert status(emulator, obj) == final


async def test_deletion_removes_the_attempts(emulator, operator, mlflow_uri):
    obj = await create(emulator, trainingjob("tj-gone"))
    await wait_for(lambda: rayjob(emulator, "tj-gone-a1"), timeout=TIMEOUT, message="attempt 1")
    await emulator.delete_object("mlplane.dev/v1alpha1/trainingjobs", "ml", "tj-gone")
    await wait_for(lambda: stored(emulator, obj) is None, timeout=TIMEOUT,
                   message="the TrainingJob to be gone")  # fmt: skip
    await wait_for(lambda: rayjob(emulator, "tj-gone-a1") is None, timeout=TIMEOUT,
                   message="its RayJob to be gone")  # fmt: skip


@pytest.fixture
def allow_unreachable(monkeypatch: pytest.MonkeyPatch) -> None:
    """Another MLflow than the operator's: the registry policy must allow it first (set before
    the ``operator`` fixture: the operator reads its settings once, at start)."""
    monkeypatch.setenv("MLPLANE_ALLOWED_TRACKING_URIS", "http://127.0.0.1:9")


async def test_unreachable_mlflow_is_reported_then_recovers(
    emulator, allow_unreachable, operator, mlflow_uri
):
    body = trainingjob("tj-nomlflow")
    body["spec"]["mlflow"]["trackingUri"] = "http://127.0.0.1:9"  # nothing listens there
    obj = await create(emulator, body)
    condition = await wait_for(
        lambda: next((c for c in status(emulator, obj).get("conditions", [])
                      if c["type"] == "RegistryAvailable"), None),
        timeout=TIMEOUT, message="the RegistryAvailable condition",
    )  # fmt: skip
    assert condition["status"] == "False"
    assert condition["reason"] == "MLflowUnreachable"
    assert rayjob(emulator, "tj-nomlflow-a1") is None  # nothing starts without the run
    await emulator.patch_object("mlplane.dev/v1alpha1/trainingjobs", "ml", "tj-nomlflow",
                                {"spec": {"mlflow": {"trackingUri": mlflow_uri}}})  # fmt: skip
    await wait_for(lambda: rayjob(emulator, "tj-nomlflow-a1"), timeout=TIMEOUT,
                   message="attempt 1 once MLflow answers")  # fmt: skip
    await wait_for(
        lambda: any(c["type"] == "RegistryAvailable" and c["status"] == "True"
                    for c in status(emulator, obj).get("conditions", [])),
        timeout=TIMEOUT, message="RegistryAvailable True", seen=lambda: status(emulator, obj),
    )  # fmt: skip


async def test_rayjob_of_an_earlier_incarnation_is_not_adopted(emulator, operator, mlflow_uri):
    """Issue 12, defect 6: a TrainingJob deleted and applied again (an Argo CD replace) meets
    its predecessor's RayJob before the garbage collector has removed it. It must wait for it
    to go, never take its result for its own."""
    from mlplane.operator.builders.labels import trainingjob_labels

    old_owner = {
        "apiVersion": "mlplane.dev/v1alpha1",
        "kind": "TrainingJob",
        "name": "tj-again",
        "uid": "uid-of-the-deleted-one",
        "controller": True,
        "blockOwnerDeletion": True,
    }
    await emulator.create_object(RAYJOBS, {
        "apiVersion": "ray.io/v1", "kind": "RayJob",
        "metadata": {"name": "tj-again-a1", "namespace": "ml",
                     "labels": trainingjob_labels("tj-again", 1, "Spot"),
                     "ownerReferences": [old_owner]},
        "spec": {"entrypoint": "python old.py"},
    })  # fmt: skip
    await set_job_status(emulator, "tj-again-a1", "SUCCEEDED", "Complete")
    obj = await create(emulator, trainingjob("tj-again"))

    def blocked() -> dict[str, Any] | None:
        running = next((c for c in status(emulator, obj).get("conditions", [])
                        if c["type"] == "Running"), None)  # fmt: skip
        return running if running and running["reason"] == "RayJobOwnedByOther" else None

    condition = await wait_for(blocked, timeout=TIMEOUT, message="Running=False RayJobOwnedByOther",
                               seen=lambda: status(emulator, obj))  # fmt: skip
    assert condition["status"] == "False"
    assert "tj-again-a1" in condition["message"]
    assert "uid-of-the-deleted-one" in condition["message"]
    # Two more reconciles that saw the old RayJob: its result is never taken for this job's.
    await more_timer_runs(operator, obj, "follow", timeout=TIMEOUT)
    assert status(emulator, obj).get("phase") == "Pending"
    assert blocked() is not None
    assert MlflowClient(mlflow_uri).search_model_versions("name = 'tj-again'") == []
    assert rayjob(emulator, "tj-again-a1")["metadata"]["ownerReferences"] == [old_owner]
    assert [e["reason"] for e in events_for(emulator, obj)].count("RayJobOwnedByOther") == 1

    await emulator.delete_object(RAYJOBS, "ml", "tj-again-a1")  # what the GC does on a cluster
    mine = await wait_for(
        lambda: (job := rayjob(emulator, "tj-again-a1"))
        and job["metadata"]["ownerReferences"][0]["uid"] == obj["metadata"]["uid"] and job,
        timeout=TIMEOUT, message="attempt 1's own RayJob", seen=lambda: status(emulator, obj),
    )  # fmt: skip
    assert "status" not in mine or not mine["status"]
    await wait_for(lambda: blocked() is None, timeout=TIMEOUT, message="the wait to end",
                   seen=lambda: status(emulator, obj))  # fmt: skip
    assert status(emulator, obj)["attempts"] == 1


async def test_create_answered_409_adopts_only_a_child_of_the_same_owner(emulator, kubeconfig):
    """The platform's create, when the watch-fed index lags and the API answers 409."""
    from mlplane.operator.platforms.base import ChildOwnedByOther
    from mlplane.operator.platforms.kuberay import KubeRayPlatform

    def child(owner_uid: str) -> dict[str, Any]:
        return {"apiVersion": "ray.io/v1", "kind": "RayJob",
                "metadata": {"name": "tj-409-a1", "namespace": "ml", "ownerReferences": [{
                    "apiVersion": "mlplane.dev/v1alpha1", "kind": "TrainingJob",
                    "name": "tj-409", "uid": owner_uid, "controller": True}]},
                "spec": {"entrypoint": "python train.py"}}  # fmt: skip

    platform = KubeRayPlatform()
    assert await asyncio.to_thread(platform.create, child("old-uid"), check_owner=True)
    assert not await asyncio.to_thread(platform.create, child("old-uid"), check_owner=True)
    with pytest.raises(ChildOwnedByOther, match="old-uid"):
        await asyncio.to_thread(platform.create, child("new-uid"), check_owner=True)
    assert rayjob(emulator, "tj-409-a1")["metadata"]["ownerReferences"][0]["uid"] == "old-uid"


async def test_queued_rayjob_is_left_to_kueue(emulator, operator, mlflow_uri):
    """Issue 12, defect 5: with queueName the RayJob is created suspended and only Kueue may
    unsuspend it (the test plays Kueue); the operator must not admit it on its own."""
    obj = await create(emulator, trainingjob("tj-queued", queueName="gpu-queue"))
    job = await wait_for(lambda: rayjob(emulator, "tj-queued-a1"), timeout=TIMEOUT,
                         message="attempt 1's RayJob")  # fmt: skip
    assert job["spec"]["suspend"] is True
    await set_job_status(emulator, "tj-queued-a1", "", "Suspended")

    def running_reason() -> str | None:
        found = [c for c in status(emulator, obj).get("conditions", []) if c["type"] == "Running"]
        return found[0]["reason"] if found else None

    await wait_for(lambda: running_reason() == "WaitingForKueue", timeout=TIMEOUT,
                   message="Running=False WaitingForKueue",
                   seen=lambda: status(emulator, obj))  # fmt: skip
    await more_timer_runs(operator, obj, "follow", timeout=TIMEOUT)  # nothing may unsuspend it
    assert rayjob(emulator, "tj-queued-a1")["spec"]["suspend"] is True
    assert status(emulator, obj)["phase"] == "Pending"
    # Kueue admits the Workload: it clears suspend, KubeRay starts the job
    await emulator.patch_object(RAYJOBS, "ml", "tj-queued-a1", {"spec": {"suspend": False}})
    await set_job_status(emulator, "tj-queued-a1", "RUNNING", "Running")
    await wait_for(lambda: status(emulator, obj).get("phase") == "Running", timeout=TIMEOUT,
                   message="phase Running", seen=lambda: status(emulator, obj))  # fmt: skip
    warnings = [e for e in events_for(emulator, obj, "Warning")
                if e["reason"] == "AutoscalingIgnoredUnderKueue"]  # fmt: skip
    assert len(warnings) == 1  # the example's workers set minReplicas/maxReplicas


# --- each Ray cluster closed: its token Secret and NetworkPolicy (issue 14, items 1 and 2) ------

SECRETS = "v1/secrets"
POLICIES = "networking.k8s.io/v1/networkpolicies"


async def test_rayjob_gets_an_owned_token_secret_and_network_policy(emulator, kubeconfig,
                                                                    mlflow_uri):  # fmt: skip
    """Made before the RayJob, owned by the TrainingJob, the token kept across a restart."""
    import base64

    async with run_operator_process():
        obj = await create(emulator, trainingjob("tj-closed"))
        job = await wait_for(lambda: rayjob(emulator, "tj-closed-a1"), timeout=TIMEOUT,
                             message="attempt 1's RayJob")  # fmt: skip
        await preempt(emulator, "tj-closed", 1)
    uid = obj["metadata"]["uid"]
    secret = emulator.get_object(SECRETS, "ml", "tj-closed-ray-auth")
    policy = emulator.get_object(POLICIES, "ml", "tj-closed-ray")
    assert secret is not None and policy is not None
    for child in (secret, policy):
        (owner,) = child["metadata"]["ownerReferences"]
        assert (owner["kind"], owner["uid"], owner["controller"]) == ("TrainingJob", uid, True)
    token = base64.b64decode(secret["data"]["auth_token"]).decode()
    assert len(token) >= 32
    assert job["spec"]["rayClusterSpec"]["authOptions"] == {
        "mode": "token", "secretName": "tj-closed-ray-auth"}  # fmt: skip
    assert policy["spec"]["podSelector"]["matchLabels"]["mlplane.dev/trainingjob"] == "tj-closed"
    # Created before the RayJob: its create request comes after both of theirs.
    log = list(emulator)

    def first_post(ref: str) -> int:
        posts = {id(r) for r in emulator.requests_to(ref, method="POST")}
        return next(i for i, r in enumerate(log) if id(r) in posts)

    assert first_post(SECRETS) < first_post(RAYJOBS)
    assert first_post(POLICIES) < first_post(RAYJOBS)
    # A restart and attempt 2 keep the same Secret and token (never regenerated).
    async with run_operator_process():
        await wait_for(lambda: rayjob(emulator, "tj-closed-a2"), timeout=TIMEOUT,
                       message="attempt 2's RayJob")  # fmt: skip
    again = emulator.get_object(SECRETS, "ml", "tj-closed-ray-auth")
    assert base64.b64decode(again["data"]["auth_token"]).decode() == token


async def test_token_secret_of_another_owner_is_not_adopted(emulator, operator, mlflow_uri):
    """A Secret of the same name controlled by another uid: no RayJob, a condition saying why;
    once it is gone the operator makes its own and the attempt starts."""
    foreign = {
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "tj-taken-ray-auth", "namespace": "ml", "ownerReferences": [{
            "apiVersion": "mlplane.dev/v1alpha1", "kind": "TrainingJob", "name": "tj-taken",
            "uid": "uid-of-someone-else", "controller": True}]},
        "data": {"auth_token": "c3RvbGVu"},
    }  # fmt: skip
    await emulator.create_object(SECRETS, foreign)
    obj = await create(emulator, trainingjob("tj-taken"))

    def access() -> dict[str, Any] | None:
        return next((c for c in status(emulator, obj).get("conditions", [])
                     if c["type"] == "RayClusterAccess"), None)  # fmt: skip

    condition = await wait_for(access, timeout=TIMEOUT, message="RayClusterAccess False",
                               seen=lambda: status(emulator, obj))  # fmt: skip
    assert (condition["status"], condition["reason"]) == ("False", "OwnedByOther")
    assert "tj-taken-ray-auth" in condition["message"]
    assert "uid-of-someone-else" in condition["message"]
    assert "Delete that Secret" in condition["message"]
    # Two more reconciles: still no cluster, the Secret untouched.
    await more_timer_runs(operator, obj, "follow", timeout=TIMEOUT)
    assert rayjob(emulator, "tj-taken-a1") is None
    kept = emulator.get_object(SECRETS, "ml", "tj-taken-ray-auth")
    assert kept["metadata"]["ownerReferences"][0]["uid"] == "uid-of-someone-else"
    assert kept["data"] == {"auth_token": "c3RvbGVu"}
    assert [e["reason"] for e in events_for(emulator, obj)].count("RayClusterAccessBlocked") == 1

    await emulator.delete_object(SECRETS, "ml", "tj-taken-ray-auth")
    await wait_for(lambda: rayjob(emulator, "tj-taken-a1"), timeout=TIMEOUT,
                   message="attempt 1's RayJob", seen=lambda: status(emulator, obj))  # fmt: skip
    mine = emulator.get_object(SECRETS, "ml", "tj-taken-ray-auth")
    assert mine["metadata"]["ownerReferences"][0]["uid"] == obj["metadata"]["uid"]
    await wait_for(lambda: access() is None, timeout=TIMEOUT, message="the condition removed",
                   seen=lambda: status(emulator, obj))  # fmt: skip


# --- spot evidence in either order, from pods and from real Node objects (issue 17) ----------

NODES = "v1/nodes"
SPOT_NODE_LABELS = {"karpenter.sh/capacity-type": "spot", "node.kubernetes.io/instance-type": "g5"}


async def spot_node(emulator, name: str) -> None:
    """A spot Node (Karpenter's label), Ready and untainted."""
    await emulator.create_object(NODES, {
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name, "labels": dict(SPOT_NODE_LABELS)},
        "spec": {"taints": []},
        "status": {"conditions": [{"type": "Ready", "status": "True"}]},
    })  # fmt: skip


async def worker_pod(emulator, job: str, attempt: int, node: str) -> str:
    """A running Ray worker pod of the attempt on ``node`` (what KubeRay makes)."""
    name = f"{job}-a{attempt}-worker-{node}"
    await emulator.create_object("v1/pods", {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": "ml",
                     "labels": {"mlplane.dev/trainingjob": job, "mlplane.dev/attempt": str(attempt),
                                "ray.io/node-type": "worker"}},
        "spec": {"nodeName": node, "containers": [{"name": "ray-worker", "image": "r"}]},
    })  # fmt: skip
    await emulator.patch_object("v1/pods", "ml", name, {"status": {"phase": "Running"}},
                                subresource="status")  # fmt: skip
    return name


async def reclaim(emulator, how: str, pod: str, node: str) -> None:
    """The spot reclaim as the cluster shows it: the pod's condition, the node's taint, or
    the Node object deleted."""
    if how == "pod-condition":
        await emulator.patch_object("v1/pods", "ml", pod, {"status": {"conditions": [{
            "type": "DisruptionTarget", "status": "True",
            "reason": "DeletionByTaintManager"}]}}, subresource="status")  # fmt: skip
    elif how == "node-taint":
        await emulator.patch_object(NODES, None, node, {"spec": {"taints": [
            {"key": "karpenter.sh/disrupted", "effect": "NoSchedule"}]}})  # fmt: skip
    else:
        await emulator.delete_object(NODES, None, node)


@pytest.mark.parametrize("how", ["pod-condition", "node-taint", "node-deleted"])
@pytest.mark.parametrize("order", ["evidence-first", "failure-first"])
async def test_spot_reclaim_counts_as_one_preemption_in_either_order(
    emulator, operator, mlflow_uri, how, order
):
    """A spot reclaim seen before the RayJob fails, or only after the operator has already
    seen the failure (watch events of pods and nodes lag, or the node controller is slow):
    either way one preemption, no code failure, and attempt 2 still on spot."""
    job = f"tj-{how}-{order}"  # unique: the ledger is keyed by name in the process
    node = f"{job}-node"
    obj = await create(emulator, trainingjob(job, backoffLimit=0))
    await wait_for(lambda: rayjob(emulator, f"{job}-a1"), timeout=TIMEOUT, message="attempt 1")
    await spot_node(emulator, node)
    pod = await worker_pod(emulator, job, 1, node)
    await set_job_status(emulator, f"{job}-a1", "RUNNING", "Running")
    await wait_for(lambda: status(emulator, obj).get("phase") == "Running", timeout=TIMEOUT,
                   message="Running", seen=lambda: status(emulator, obj))  # fmt: skip
    if order == "evidence-first":
        await reclaim(emulator, how, pod, node)
        await wait_for(lambda: status(emulator, obj).get("preemptions") == 1, timeout=TIMEOUT,
                       message="the preemption counted",
                       seen=lambda: status(emulator, obj))  # fmt: skip
        await set_job_status(emulator, f"{job}-a1", "FAILED", "Failed")
    else:
        await set_job_status(emulator, f"{job}-a1", "FAILED", "Failed")
        # The operator has looked at the failed job (a whole timer run after the failure)
        # before the evidence arrives.
        await more_timer_runs(operator, obj, "follow", timeout=TIMEOUT)
        await reclaim(emulator, how, pod, node)
    second = await wait_for(lambda: rayjob(emulator, f"{job}-a2"), timeout=TIMEOUT,
                            message="attempt 2", seen=lambda: status(emulator, obj))  # fmt: skip
    st = await wait_for(lambda: status(emulator, obj).get("attempts") == 2
                        and status(emulator, obj), timeout=TIMEOUT,
                        message="attempt 2 in status",
                        seen=lambda: status(emulator, obj))  # fmt: skip
    assert (st["preemptions"], st["failures"], st["phase"]) == (1, 0, "Retrying"), st
    assert second["metadata"]["labels"]["mlplane.dev/capacity"] == "Spot"
    (record,) = st["disruptions"]
    assert record["attempt"] == 1
    assert record.get("node") == node or record.get("pod") == pod
    reasons = [e["reason"] for e in events_for(emulator, obj)]
    assert reasons.count("Preempted") == 1
    assert "AttemptFailed" not in reasons


@pytest.mark.parametrize("how", ["pod-condition", "node-taint"])
async def test_evidence_that_landed_while_the_operator_was_down_is_read_not_missed(
    emulator, kubeconfig, mlflow_uri, how
):
    """The operator dies; meanwhile the spot attempt fails and its reclaim is recorded on the
    pod or node (the grace has long passed when it comes back). Its pod and node watches
    have not delivered anything yet (here: never, they are refused) when it judges the
    failure: the evidence in the API must be read, not taken as absent — else a reclaim
    spends backoffLimit (0 here: the job would fail). Found by bench/chaos.py (seed 3)."""
    job, node = f"tj-down-{how}", f"tj-down-{how}-node"
    async with run_operator_process() as first:
        obj = await create(emulator, trainingjob(job, backoffLimit=0))
        await wait_for(lambda: rayjob(emulator, f"{job}-a1"), timeout=TIMEOUT,
                       message="attempt 1")  # fmt: skip
        await spot_node(emulator, node)
        pod = await worker_pod(emulator, job, 1, node)
        await set_job_status(emulator, f"{job}-a1", "RUNNING", "Running")
        await wait_for(lambda: status(emulator, obj).get("phase") == "Running", timeout=TIMEOUT,
                       message="Running")  # fmt: skip
        first.kill()
    await reclaim(emulator, how, pod, node)
    # It failed 30 s ago: longer than the grace (8 s here), so the new process judges it in
    # its first round; within the minute in which a reclaim seen later still explains it.
    ended = datetime.now(UTC) - timedelta(seconds=30)
    await emulator.patch_object(RAYJOBS, "ml", f"{job}-a1", {"status": {
        "jobStatus": "FAILED", "jobDeploymentStatus": "Failed",
        "endTime": ended.strftime("%Y-%m-%dT%H:%M:%SZ")}}, subresource="status")  # fmt: skip
    # The new process's pod and node watches get nothing: only a request that names what it
    # looks for (a label selector or a name) is answered.
    refused: list[str] = []

    def watch(r: Any) -> bool:
        plural = getattr(r.resource, "plural", None)
        if plural in ("pods", "nodes") and not r.name and not r.params.get("labelSelector"):
            refused.append(plural)
            return True
        return False

    emulator.before_request(watch, lambda r: None, once=False)
    async with run_operator_process() as second:
        st = await wait_for(lambda: status(emulator, obj).get("attempts") == 2
                            and status(emulator, obj), timeout=TIMEOUT, message="attempt 2",
                            seen=lambda: status(emulator, obj))  # fmt: skip
        second.check()
    assert refused  # the watches really were cut off
    assert (st["preemptions"], st["failures"]) == (1, 0), st
    assert rayjob(emulator, f"{job}-a2")["metadata"]["labels"]["mlplane.dev/capacity"] == "Spot"


async def test_an_on_demand_attempts_eviction_is_read_from_the_api_not_taken_for_a_failure(
    emulator, kubeconfig, mlflow_uri
):
    """An on-demand attempt is judged as soon as it fails (no grace), so its eviction (the
    pod's ``DisruptionTarget``, recorded before the RayJob failed) must be read from the API
    when the pod watch has not delivered it: after a restart or a leader takeover, or a watch
    lagging under load. Else the eviction spends backoffLimit (0 here: the job would fail)
    and the same facts give other counts by timing. Found by bench/chaos.py (seed 7, 200 jobs,
    leader kills: attempts on on-demand capacity after the fallback)."""
    job, node = "tj-down-ondemand", "tj-down-ondemand-node"
    spot = example("trainingjob-gpu-spot")["spec"]["workers"]
    workers = [{**w, "capacity": "OnDemand"} for w in spot]
    async with run_operator_process() as first:
        obj = await create(emulator, trainingjob(job, backoffLimit=0, workers=workers))
        created = await wait_for(lambda: rayjob(emulator, f"{job}-a1"), timeout=TIMEOUT,
                                 message="attempt 1")  # fmt: skip
        assert created["metadata"]["labels"]["mlplane.dev/capacity"] == "OnDemand"
        pod = await worker_pod(emulator, job, 1, node)
        await set_job_status(emulator, f"{job}-a1", "RUNNING", "Running")
        await wait_for(lambda: status(emulator, obj).get("phase") == "Running", timeout=TIMEOUT,
                       message="Running")  # fmt: skip
        first.kill()
    await reclaim(emulator, "pod-condition", pod, node)
    await set_job_status(emulator, f"{job}-a1", "FAILED", "Failed")
    # The new process's pod watch gets nothing: only a request that names what it looks for
    # (a label selector or a name) is answered.
    refused: list[str] = []

    def watch(r: Any) -> bool:
        plural = getattr(r.resource, "plural", None)
        if plural in ("pods", "nodes") and not r.name and not r.params.get("labelSelector"):
            refused.append(plural)
            return True
        return False

    emulator.before_request(watch, lambda r: None, once=False)
    async with run_operator_process() as second:
        # Judged: attempt 2 (a preemption) or the end (a failure spent backoffLimit 0).
        await wait_for(lambda: status(emulator, obj).get("attempts") == 2
                       or status(emulator, obj).get("phase") == "Failed", timeout=TIMEOUT,
                       message="attempt 1 judged", seen=lambda: status(emulator, obj))  # fmt: skip
        st = status(emulator, obj)
        second.check()
    assert refused  # the watches really were cut off
    assert (st["preemptions"], st["failures"], st["phase"]) == (1, 0, "Retrying"), st
    assert rayjob(emulator, f"{job}-a2") is not None


async def checkpoint(uri: str, run_id: str, step: int) -> None:
    """What the runtime reports after a checkpoint: its URI, step and time on the run."""

    def work() -> None:
        client = MlflowClient(uri)
        client.set_tag(run_id, "mlplane.checkpoint.uri", f"s3://ckpt/step-{step}")
        client.set_tag(run_id, "mlplane.checkpoint.step", str(step))
        client.set_tag(run_id, "mlplane.checkpoint.time",
                       datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"))  # fmt: skip

    await asyncio.to_thread(work)


async def test_fallback_then_return_to_spot_at_a_checkpoint(emulator, operator, mlflow_uri):
    """returnToSpot: after the fallback and minOnDemand without a reclaim, the operator waits
    for a checkpoint newer than its decision, deletes the on-demand RayJob, and only then
    creates the next attempt on spot workers: one RayJob at a time, a planned move."""
    name = "tj-back"
    preemption = {"maxPreemptions": 1, "returnToSpot": {"minOnDemand": "10s"}}
    obj = await create(emulator, trainingjob(name, preemption=preemption))
    await wait_for(lambda: rayjob(emulator, f"{name}-a1"), timeout=TIMEOUT, message="attempt 1")
    await set_job_status(emulator, f"{name}-a1", "RUNNING", "Running")
    await preempt(emulator, name, 1)
    second = await wait_for(lambda: rayjob(emulator, f"{name}-a2"), timeout=TIMEOUT,
                            message="attempt 2", seen=lambda: status(emulator, obj))  # fmt: skip
    assert second["metadata"]["labels"]["mlplane.dev/capacity"] == "OnDemand"
    run_id = run_id_of(second)
    await checkpoint(mlflow_uri, run_id, 10)
    await set_job_status(emulator, f"{name}-a2", "RUNNING", "Running")
    st = await wait_for(lambda: (status(emulator, obj).get("spotReturn") or {}).get("decidedAt")
                        and status(emulator, obj), timeout=TIMEOUT, message="the decision",
                        seen=lambda: status(emulator, obj))  # fmt: skip
    assert st["spotReturn"]["checkpointAtDecision"] == "s3://ckpt/step-10"
    # No checkpoint since the decision: attempt 2 goes on, nothing new is created.
    await more_timer_runs(operator, obj, "follow", timeout=TIMEOUT)
    assert rayjob(emulator, f"{name}-a2") is not None and rayjob(emulator, f"{name}-a3") is None
    await checkpoint(mlflow_uri, run_id, 20)
    third = await wait_for(lambda: rayjob(emulator, f"{name}-a3"), timeout=TIMEOUT,
                           message="attempt 3", seen=lambda: status(emulator, obj))  # fmt: skip
    assert rayjob(emulator, f"{name}-a2") is None  # ended before attempt 3 was created
    assert third["metadata"]["labels"]["mlplane.dev/capacity"] == "Spot"
    workers = str(third["spec"]["rayClusterSpec"]["workerGroupSpecs"])
    assert "'SPOT'" in workers and "ON_DEMAND" not in workers
    st = await wait_for(lambda: status(emulator, obj).get("returnsToSpot") == 1
                        and status(emulator, obj), timeout=TIMEOUT, message="the return counted",
                        seen=lambda: status(emulator, obj))  # fmt: skip
    assert (st["attempts"], st["preemptions"], st["failures"]) == (3, 1, 0)
    assert st["currentAttempt"]["capacity"] == "Spot"
    # what the stored status says, not only this process: attempt 2's fields and the spent
    # decision are gone (a restarted operator must not take them for attempt 3's)
    assert "runningTime" not in st["currentAttempt"], st["currentAttempt"]
    assert "afterPreemption" not in st["currentAttempt"], st["currentAttempt"]
    assert not {"decidedAt", "checkpointAtDecision", "endingAttempt", "onDemandSince",
                "notBefore"} & set(st["spotReturn"]), st["spotReturn"]  # fmt: skip
    assert st["lastCheckpoint"]["uri"] == "s3://ckpt/step-20"
    spot_return = next(c for c in st["conditions"] if c["type"] == "SpotReturn")
    assert (spot_return["status"], spot_return["reason"]) == ("True", "ReturnedToSpot")
    await set_job_status(emulator, f"{name}-a3", "RUNNING", "Running")
    await train(mlflow_uri, run_id, step=30)
    await set_job_status(emulator, f"{name}-a3", "SUCCEEDED", "Complete")
    final = await wait_for(lambda: status(emulator, obj).get("phase") == "Succeeded"
                           and status(emulator, obj), timeout=TIMEOUT, message="Succeeded",
                           seen=lambda: status(emulator, obj))  # fmt: skip
    assert (final["attempts"], final["returnsToSpot"], final["failures"]) == (3, 1, 0)
    reasons = [e["reason"] for e in events_for(emulator, obj)]
    for reason in ("FallbackToOnDemand", "ReturningToSpot", "EndingOnDemandAttempt",
                   "ReturnedToSpot"):  # fmt: skip
        assert reasons.count(reason) == 1, reasons
    assert "AttemptFailed" not in reasons
    left = sorted(j["metadata"]["name"] for j in emulator.list_objects(RAYJOBS, "ml")
                  if j["metadata"]["name"].startswith(f"{name}-"))  # fmt: skip
    assert left == [f"{name}-a1", f"{name}-a3"]
