"""The real Kopf operator, with mlplane's handlers, against the in-memory API server.

What a user sees after ``kubectl apply``: valid objects are left alone by the base handlers;
an invalid one is marked ``InvalidSpec`` with the field named, gets a Warning Event, and nothing
is created for it; fixing the spec clears the verdict; the operator never writes ``spec`` and
writes ``status`` only when it changes.
"""

import asyncio

import kopf
import pytest
import pytest_asyncio
from k8s.emulator import Emulator
from k8s.harness import (
    create,
    events_for,
    example,
    resource_of,
    run_operator,
    run_operator_process,
    stored,
    wait_for,
)

from mlplane.operator import conditions, handlers

HANDLED = "mlplane.dev/last-handled-configuration"
CHILD_RESOURCES = ("ray.io/v1/rayjobs", "ray.io/v1/rayservices", "ray.io/v1/rayclusters", "v1/pods")


def handled(emulator, obj, generation=None):
    """Kopf has finished with the object (for a generation): its diff-base is written."""

    def check():
        current = stored(emulator, obj)
        if current is None or HANDLED not in current["metadata"].get("annotations", {}):
            return None
        if generation is not None and current["metadata"]["generation"] != generation:
            return None
        return current

    return check


@pytest_asyncio.fixture
async def validation_only(emulator, kubeconfig):
    """The operator with the validation layer alone: a test that replaces a kind's reconcilers
    must not race that kind's real timers (which also write status)."""
    registry = handlers.register_validation(kopf.OperatorRegistry())
    kopf.on.login(registry=registry)(kopf.login_via_client)  # the default registry has it built in
    async with run_operator(registry=registry) as run:
        yield run


def invalid_condition(emulator, obj):
    current = stored(emulator, obj) or {}
    return conditions.find((current.get("status") or {}).get("conditions"), "InvalidSpec")


def invalid_training_job(name="churn-bad"):
    body = example("trainingjob-gpu-spot")
    body["metadata"]["name"] = name
    body["spec"]["workers"][0]["minReplicas"] = 9  # replicas is 4
    return body


def spec_writes(emulator: Emulator, obj):
    """Every request that tried to write the object's spec (there must be none)."""
    res = resource_of(obj["apiVersion"], obj["kind"])
    out = []
    for request in emulator.requests_to(res, method="PATCH", name=obj["metadata"]["name"]):
        data = request.data
        if isinstance(data, dict) and "spec" in data:
            out.append(data)
        if isinstance(data, list) and any(op.get("path", "").startswith("/spec") for op in data):
            out.append(data)
    for request in emulator.requests_to(res, method="PUT", name=obj["metadata"]["name"]):
        out.append(request.data)
    return out


async def test_valid_examples_are_left_alone_by_validation(emulator, operator):
    """Validation gives valid objects no verdict of its own (what the kinds' reconcilers write
    — an ABTest waiting for its ModelDeployment here — is covered by their own tests)."""
    objs = [await create(emulator, example("abtest"))]
    for obj in objs:
        await wait_for(handled(emulator, obj), message=f"{obj['kind']} to be handled")
    # A Warning for an invalid object created afterwards arrives: anything queued before it
    # for the valid ones would have been posted by then.
    sentinel = await create(emulator, invalid_training_job())
    await wait_for(
        lambda: events_for(emulator, sentinel, "Warning"), message="the sentinel Warning"
    )
    for obj in objs:
        current = stored(emulator, obj)
        assert invalid_condition(emulator, obj) is None, f"{obj['kind']}: judged invalid"
        assert (current.get("status") or {}).get("phase") != "Failed"
        assert "InvalidSpec" not in {e["reason"] for e in events_for(emulator, obj)}
        assert current["spec"] == obj["spec"]
    for res in CHILD_RESOURCES:
        assert emulator.list_objects(res) == []


async def test_an_invalid_training_job_is_failed_warned_and_left_without_children(
    emulator, operator
):
    body = invalid_training_job()
    obj = await create(emulator, body)
    condition = await wait_for(
        lambda: invalid_condition(emulator, obj),
        message="the InvalidSpec condition",
        seen=lambda: stored(emulator, obj),
    )
    message = "spec.workers[0].minReplicas: minReplicas must not exceed replicas"
    assert condition["status"] == "True"
    assert condition["reason"] == "InvalidSpec"
    assert condition["message"] == message
    assert condition["observedGeneration"] == 1
    current = stored(emulator, obj)
    assert current["status"]["phase"] == "Failed"
    assert current["status"]["observedGeneration"] == 1

    warnings = await wait_for(
        lambda: events_for(emulator, obj, "Warning"), message="the Warning event"
    )
    assert [(e["reason"], e["message"]) for e in warnings] == [("InvalidSpec", message)]
    assert warnings[0]["involvedObject"]["uid"] == obj["metadata"]["uid"]

    # Nothing else exists: no KubeRay objects, no pods; only the job and its event.
    for res in CHILD_RESOURCES:
        assert emulator.list_objects(res) == []
    # The spec is byte for byte what the user wrote, and nobody tried to write it.
    assert Emulator.dump(current["spec"]) == Emulator.dump(body["spec"])
    assert spec_writes(emulator, obj) == []
    assert current["metadata"]["generation"] == 1
    assert operator.processed(obj, "creation") == 1


async def test_fixing_the_spec_clears_the_verdict(emulator, operator):
    obj = await create(emulator, invalid_training_job())
    await wait_for(lambda: invalid_condition(emulator, obj), message="the InvalidSpec condition")
    await wait_for(lambda: events_for(emulator, obj, "Warning"), message="the Warning event")

    fixed = example("trainingjob-gpu-spot")["spec"]["workers"]
    res = resource_of(obj["apiVersion"], obj["kind"])
    await emulator.patch_object(
        res, "ml-team", obj["metadata"]["name"], {"spec": {"workers": fixed}}
    )

    # "Processed" is logged before Kopf applies the handler's patch: wait for the patch.
    current = await wait_for(
        lambda: handled(emulator, obj, generation=2)() and invalid_condition(emulator, obj) is None,
        message="the fixed spec to clear InvalidSpec",
        seen=lambda: stored(emulator, obj),
    )
    current = stored(emulator, obj)
    assert current["status"]["phase"] == "Pending"
    assert current["status"]["conditions"] == []
    assert len(events_for(emulator, obj, "Warning")) == 1  # no new warning for a valid spec
    assert spec_writes(emulator, obj) == []


async def test_a_new_invalid_generation_is_a_new_verdict(emulator, operator):
    obj = await create(emulator, invalid_training_job())
    await wait_for(lambda: events_for(emulator, obj, "Warning"), message="the first Warning")
    res = resource_of(obj["apiVersion"], obj["kind"])
    await emulator.patch_object(
        res, "ml-team", obj["metadata"]["name"], {"spec": {"backoffLimit": 500}}
    )
    warnings = await wait_for(
        lambda: (lambda w: w if len(w) == 2 else None)(events_for(emulator, obj, "Warning")),
        message="a second Warning",
        seen=lambda: events_for(emulator, obj),
    )
    # The schema layer reports first: the CEL problem shows again once this one is fixed.
    assert warnings[1]["message"] == "spec.backoffLimit: must be at most 100 (got 500)"
    condition = invalid_condition(emulator, obj)
    assert condition["observedGeneration"] == 2
    assert stored(emulator, obj)["status"]["observedGeneration"] == 2


async def test_objects_of_the_wrong_shape_are_invalid_and_the_operator_serves_on(
    emulator, validation_only, monkeypatch
):
    seen = []
    monkeypatch.setitem(
        handlers._RECONCILERS, "TrainingJob", [lambda resource, **_: seen.append(resource)]
    )
    garbage = example("trainingjob-gpu-spot")
    garbage["metadata"]["name"] = "garbage"
    garbage["spec"] = "oops"
    impostor = example("trainingjob-gpu-spot")
    impostor["metadata"]["name"] = "impostor"
    impostor["kind"] = "Banana"  # stored under trainingjobs all the same
    bad = [
        await create(emulator, garbage),
        await emulator.create_object(resource_of("mlplane.dev/v1alpha1", "TrainingJob"), impostor),
        await create(emulator, invalid_training_job()),
    ]
    good = await create(emulator, example("trainingjob-gpu-spot"))
    bad[1] = {**bad[1], "kind": "TrainingJob"}  # where the test finds it: trainingjobs

    await wait_for(lambda: seen, message="the valid job's reconciler to run")
    assert [r.metadata.name for r in seen] == ["churn-classifier"]
    for obj in bad:
        condition = await wait_for(
            lambda obj=obj: invalid_condition(emulator, obj),
            message=f"InvalidSpec on {obj['metadata']['name']}",
            seen=lambda obj=obj: stored(emulator, obj),
        )
        assert condition["status"] == "True"
    assert invalid_condition(emulator, bad[0])["message"] == "spec: must be object (got str 'oops')"
    assert invalid_condition(emulator, bad[1])["message"].startswith("kind: must be TrainingJob")
    assert invalid_condition(emulator, good) is None
    assert validation_only.running
    assert len(seen) == 1  # reconcilers never see invalid objects


async def test_a_reconciler_gets_the_typed_resource_and_writes_status(
    emulator, validation_only, monkeypatch
):
    res = resource_of("mlplane.dev/v1alpha1", "TrainingJob")

    def status_writes():
        return emulator.requests_to(res, method="PATCH", subresource="status")

    async def reconcile(resource, *, patch, now, api_resource, **_):
        # The worst interleaving for this test: let anything else that would write this
        # object's status (a kind's timer ticks every second here) go first.
        deadline = asyncio.get_running_loop().time() + 2.5
        while not status_writes() and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.05)
        patch.status["observedGeneration"] = resource.metadata.model_extra["generation"]
        patch.status["phase"] = "Running" if resource.spec.backoff_limit == 1 else "Pending"
        assert api_resource.plural == "trainingjobs"

    monkeypatch.setitem(handlers._RECONCILERS, "TrainingJob", [reconcile])
    obj = await create(emulator, example("trainingjob-gpu-spot"))
    current = await wait_for(
        lambda: (stored(emulator, obj) or {}).get("status"),
        message="the reconciler's status",
        seen=lambda: stored(emulator, obj),
    )
    assert current == {"observedGeneration": 1, "phase": "Running"}
    assert len(status_writes()) == 1  # the reconciler's, and nobody else's


async def test_status_is_written_only_when_it_changes(emulator, kubeconfig):
    """A cycle with the same verdict writes nothing. Kopf handles one object's cycles in
    order, so a later cycle that does write proves the earlier one had finished writing."""
    res = resource_of("mlplane.dev/v1alpha1", "TrainingJob")
    name = "churn-bad"

    def status_writes():
        return len(emulator.requests_to(res, method="PATCH", name=name, subresource="status"))

    async def break_again(limit, warnings):
        await emulator.patch_object(res, "ml-team", name, {"spec": {"backoffLimit": limit}})
        await wait_for(
            lambda: (
                len(events_for(emulator, obj, "Warning")) == warnings
                and f"got {limit}" in (invalid_condition(emulator, obj) or {}).get("message", "")
            ),
            message=f"the verdict on backoffLimit {limit}",
            seen=lambda: stored(emulator, obj),
        )

    async with run_operator_process() as first:
        obj = await create(emulator, invalid_training_job(name))
        await wait_for(lambda: invalid_condition(emulator, obj), message="InvalidSpec")
        await wait_for(lambda: events_for(emulator, obj, "Warning"), message="the Warning")
        assert status_writes() == 1

        # Labels are part of what Kopf watches: the handler runs again, same verdict.
        labels = {"metadata": {"labels": {"team": "churn"}}}
        await emulator.patch_object(res, "ml-team", name, labels)
        await wait_for(lambda: first.processed(obj, "updating"), message="the label update")
        await break_again(500, warnings=2)
        assert status_writes() == 2  # the label cycle wrote no status

    # A restart resumes every object: the same verdict again, so no write and no warning.
    async with run_operator_process() as second:
        await wait_for(lambda: second.processed(obj, "resuming"), message="the resume")
        await break_again(600, warnings=3)
        assert status_writes() == 3  # the resume wrote no status


@pytest.mark.parametrize(
    ("name", "edit", "field"),
    [
        ("modeldeployment-autoscaled-drift", {"replicas": {"min": 5, "max": 2}}, "spec.replicas"),
        (
            "abtest",
            {"variants": [{"name": "only", "model": {"alias": "a"}, "weight": 100}]},
            "spec.variants",
        ),
    ],
)
async def test_other_kinds_are_validated_too(emulator, operator, name, edit, field):
    body = example(name)
    body["spec"].update(edit)
    obj = await create(emulator, body)
    condition = await wait_for(
        lambda: invalid_condition(emulator, obj),
        message=f"InvalidSpec on the {obj['kind']}",
        seen=lambda: stored(emulator, obj),
    )
    assert field in condition["message"]
    assert stored(emulator, obj)["status"]["phase"] == "Failed"
    warnings = await wait_for(lambda: events_for(emulator, obj, "Warning"), message="a Warning")
    assert warnings[0]["message"] == condition["message"]
