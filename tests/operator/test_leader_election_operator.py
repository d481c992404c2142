"""Two real operator processes with leader election against the emulator: one writes, the
other stands by and takes over when the leader is SIGKILLed, SIGTERMed, or cannot renew.

The processes tell themselves apart in the emulator's request log by the bearer token of
their kubeconfigs, so "the standby wrote nothing" and "never two writers" are read from what
the API server received, in the order it received it. Short lease settings keep it quick;
not so short that a loaded test machine (the emulator serves everyone from the test's event
loop) delays a renew past the deadline: then the leader rightly exits, and the test fails.
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

import kmock
import mlflow
import pytest
import yaml
from k8s.harness import OperatorProcess, create, example, run_operator_process, stored, wait_for
from mlflow.tracking import MlflowClient
from sklearn.linear_model import LogisticRegression

from mlplane.operator.leader_loop import BECAME_LEADER, RELEASED, STANDING_BY
from mlplane.operator.registry import process_uris

RAYJOBS = "ray.io/v1/rayjobs"
TJS = "mlplane.dev/v1alpha1/trainingjobs"
LEASES = "coordination.k8s.io/v1/leases"
LEASE_DURATION, RENEW_DEADLINE, RETRY_PERIOD = 6, 4.0, 1.0
TIMEOUT = 90  # bounds a broken run; a healthy one needs a fraction (a loaded 2-core machine)
JOBS = 20


def settings(pod: str, **extra: str) -> dict[str, str]:
    return {"POD_NAME": pod, "MLPLANE_LEADER_LEASE_DURATION": str(LEASE_DURATION),
            "MLPLANE_LEADER_RENEW_DEADLINE": str(RENEW_DEADLINE),
            "MLPLANE_LEADER_RETRY_PERIOD": str(RETRY_PERIOD), **extra}  # fmt: skip


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


def trainingjob(name: str) -> dict[str, Any]:
    body = example("trainingjob-gpu-spot")
    body["metadata"] = {"name": name, "namespace": "ml"}
    body["spec"]["mlflow"] = {"registeredModel": name, "alias": "candidate"}
    return body


def status(emulator, obj) -> dict[str, Any]:
    return (stored(emulator, obj) or {}).get("status") or {}


async def set_job_status(emulator, name: str, job_status: str, deployment: str) -> None:
    await emulator.patch_object(RAYJOBS, "ml", name,
                                {"status": {"jobStatus": job_status,
                                            "jobDeploymentStatus": deployment}},
                                subresource="status")  # fmt: skip


async def train(uri: str, job: dict[str, Any]) -> None:
    """What the training runtime does: a model in the run the operator made."""
    run_id = yaml.safe_load(job["spec"]["runtimeEnvYAML"])["env_vars"]["MLFLOW_RUN_ID"]

    def work() -> None:
        client = MlflowClient(uri)
        client.set_tag(run_id, "mlplane.checkpoint.uri", "s3://ckpt/step-10")
        client.set_tag(run_id, "mlplane.checkpoint.step", "10")
        with process_uris(uri), mlflow.start_run(run_id=run_id):
            model = LogisticRegression().fit([[0.0], [1.0], [2.0], [3.0]], [0, 0, 1, 1])
            mlflow.sklearn.log_model(model, name="model", pip_requirements=["scikit-learn"])

    await asyncio.to_thread(work)


def runs_of(uri: str, obj: dict[str, Any]) -> list[Any]:
    client = MlflowClient(uri)
    return client.search_runs(
        [e.experiment_id for e in client.search_experiments()],
        filter_string=f"tags.`mlplane.trainingjob.uid` = '{obj['metadata']['uid']}'",
    )


def is_lease(request: kmock.Request) -> bool:
    return request.resource == kmock.resource(LEASES)


def first_write(emulator, proc: OperatorProcess) -> int | None:
    """Position in the emulator's log of ``proc``'s first request that is not about the
    Lease (None: it sent none)."""
    mine = f"Bearer {proc.token}"
    for i, r in enumerate(emulator):
        if r.headers.get("Authorization") == mine and not is_lease(r):
            return i
    return None


def last_request(emulator, proc: OperatorProcess) -> int:
    mine = f"Bearer {proc.token}"
    return max(i for i, r in enumerate(emulator) if r.headers.get("Authorization") == mine)


def attempts_history(emulator, name: str) -> list[int]:
    """``status.attempts`` in every version the API server stored of a TrainingJob."""
    versions = emulator.objects[kmock.resource(TJS), "ml", name].history
    return [int((dict(v).get("status") or {}).get("attempts", 0)) for v in versions if v]


async def leader_and_standby(a: OperatorProcess, b: OperatorProcess) -> None:
    await wait_for(lambda: a.ready, timeout=TIMEOUT, message="a to lead with Kopf ready")
    assert b.said(STANDING_BY) and not b.ready and not b.said(BECAME_LEADER)


async def test_standby_takes_over_a_killed_leader_and_converges_every_job(
    emulator, kubeconfig, mlflow_uri
):
    async with (
        run_operator_process(leader_elect=True, token="a", env=settings("op-a"), tag="a") as a,
    ):
        await wait_for(lambda: a.ready, timeout=TIMEOUT, message="a to lead with Kopf ready")
        async with run_operator_process(leader_elect=True, token="b", env=settings("op-b"),
                                        tag="b") as b:  # fmt: skip
            await leader_and_standby(a, b)
            objs = [await create(emulator, trainingjob(f"ha-{i:02d}")) for i in range(JOBS)]
            await wait_for(
                lambda: all(status(emulator, o).get("attempts") == 1 for o in objs),
                timeout=TIMEOUT,
                message="attempt 1 of every job",
                seen=lambda: [status(emulator, o).get("attempts") for o in objs],
            )
            # KubeRay starts the jobs; a is SIGKILLed right after its status write of the
            # middle one lands, with the others at various stages.
            fired = a.kill_after(emulator, "PATCH", TJS, name=f"ha-{JOBS // 2:02d}",
                                 subresource="status")  # fmt: skip
            for i in range(JOBS):
                await set_job_status(emulator, f"ha-{i:02d}-a1", "RUNNING", "Running")
            await wait_for(lambda: fired and not a.running, timeout=TIMEOUT,
                           message="a killed in the middle")  # fmt: skip
            killed_at = time.monotonic()
            await wait_for(lambda: b.said(BECAME_LEADER), timeout=15,
                           message="b to take over within 15 s")  # fmt: skip
            takeover = time.monotonic() - killed_at
            print(f"takeover after the kill: {takeover:.1f}s")
            await wait_for(
                lambda: all(status(emulator, o).get("phase") == "Running" for o in objs),
                timeout=TIMEOUT,
                message="every job Running under b",
                seen=lambda: [status(emulator, o).get("phase") for o in objs],
            )
            # b finishes two of them: one model version each.
            for o in objs[:2]:
                name = o["metadata"]["name"]
                await train(mlflow_uri, emulator.get_object(RAYJOBS, "ml", f"{name}-a1"))
                await set_job_status(emulator, f"{name}-a1", "SUCCEEDED", "Complete")
            await wait_for(lambda: all(status(emulator, o).get("phase") == "Succeeded"
                                       for o in objs[:2]), timeout=TIMEOUT,
                           message="two jobs Succeeded under b",
                           seen=lambda: (b.said_about(objs[0]), b.stderr.read_text()[-3000:],
                                         [status(emulator, o) for o in objs[:2]]))  # fmt: skip
            assert b.running
    # The lease expired (a was killed, never released) before b took it: well within 15 s.
    assert takeover < LEASE_DURATION + 2 * RETRY_PERIOD + 5, takeover
    # Never two writers: b sent nothing but lease reads until a was dead.
    requests = list(emulator)
    b_first = first_write(emulator, b)
    assert b_first is not None and b_first > last_request(emulator, a)
    b_lease = [r for r in requests[:b_first] if r.headers.get("Authorization") == "Bearer b"]
    assert all(is_lease(r) for r in b_lease)
    assert [r.method for r in b_lease].count(kmock.method.GET) >= 2  # it stood by, looking
    assert all(r.method in (kmock.method.GET, kmock.method.PUT) for r in b_lease)
    # Every job converged with one RayJob, one MLflow run; attempts never went back.
    names = sorted(j["metadata"]["name"] for j in emulator.list_objects(RAYJOBS, "ml"))
    assert names == [f"ha-{i:02d}-a1" for i in range(JOBS)]
    for o in objs:
        history = attempts_history(emulator, o["metadata"]["name"])
        assert history == sorted(history) and history[-1] == 1, history
        assert len(runs_of(mlflow_uri, o)) == 1
    client = MlflowClient(mlflow_uri)
    for o in objs[:2]:
        assert len(client.search_model_versions(f"name = '{o['metadata']['name']}'")) == 1
    lease = emulator.get_object(LEASES, "mlplane-system", "mlplane-operator")
    assert lease["spec"]["holderIdentity"].startswith("op-b_")
    assert lease["spec"]["leaseTransitions"] == 1


async def test_a_terminated_leader_releases_and_one_that_cannot_renew_exits(emulator, kubeconfig):
    """SIGTERM: the leader stops Kopf, releases the Lease, exits 0; the standby takes over at
    once, not after the lease duration. Then the new leader's lease requests fail (503): it
    exits 1 within its renew deadline, before its lease could expire for the next standby."""
    async with run_operator_process(leader_elect=True, token="a", env=settings("op-a"),
                                    tag="a") as a:  # fmt: skip
        await wait_for(lambda: a.ready, timeout=TIMEOUT, message="a to lead with Kopf ready")
        async with run_operator_process(leader_elect=True, token="b", env=settings("op-b"),
                                        tag="b") as b:  # fmt: skip
            await leader_and_standby(a, b)
            a.terminate()
            asked = time.monotonic()
            await wait_for(lambda: not a.running, timeout=TIMEOUT, message="a to exit")
            exited = time.monotonic() - asked
            assert (a.popen.returncode, a.said(RELEASED)) == (0, True)
            await wait_for(lambda: b.said(BECAME_LEADER), timeout=TIMEOUT,
                           message="b to take over")  # fmt: skip
            takeover = time.monotonic() - asked
            await wait_for(lambda: b.ready, timeout=TIMEOUT, message="b's Kopf to be ready")
            assert exited < 5, exited
            assert takeover < LEASE_DURATION, takeover  # the release, not an expiry
            b_first = first_write(emulator, b)
            assert b_first is None or b_first > last_request(emulator, a)

            async with run_operator_process(leader_elect=True, token="c",
                                            env=settings("op-c"), tag="c") as c:  # fmt: skip
                await leader_and_standby(b, c)
                # From now on the API server answers b's lease requests with 503.
                emulator.before_request(
                    lambda r: is_lease(r) and r.headers.get("Authorization") == "Bearer b",
                    lambda r: None,
                    once=False,
                )
                faulted = time.monotonic()
                await wait_for(lambda: not b.running, timeout=TIMEOUT, message="b to exit")
                stopped = time.monotonic() - faulted
                assert b.popen.returncode == 1
                assert b.said("Leader election: lost the lease")
                await wait_for(lambda: c.said(BECAME_LEADER), timeout=TIMEOUT,
                               message="c to take over")  # fmt: skip
                # b stopped within its renew deadline (its last renew was at most one retry
                # period before the fault), before its lease could expire for c.
                assert stopped < RENEW_DEADLINE + 0.5, stopped
                c_first = first_write(emulator, c)
                assert c_first is None or c_first > last_request(emulator, b)
