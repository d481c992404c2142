"""The emulator behaves like an API server where Kopf and mlplane's operator depend on it.

Everything goes through HTTP, as the operator's requests do.
"""

import asyncio
import json
from urllib.parse import quote

import pytest

from k8s.harness import wait_for

TJ = "/apis/mlplane.dev/v1alpha1/namespaces/ns/trainingjobs"
EVENTS = "/api/v1/namespaces/ns/events"
MERGE = {"Content-Type": "application/merge-patch+json"}
JSON_PATCH = {"Content-Type": "application/json-patch+json"}


def tj(name="job", **spec):
    return {
        "apiVersion": "mlplane.dev/v1alpha1",
        "kind": "TrainingJob",
        "metadata": {"name": name},
        "spec": {"entrypoint": "python train.py", **spec},
    }


async def call(emulator, method, url, body=None, headers=None):
    async with emulator.request(method, url, json=body, headers=headers) as response:
        return response.status, await response.json()


async def test_create_sets_identity_version_generation_and_namespace(emulator):
    status, created = await call(emulator, "POST", TJ, tj(status={"phase": "Running"}))
    assert status == 200
    meta = created["metadata"]
    assert meta["namespace"] == "ns"  # from the URL
    assert meta["generation"] == 1
    assert meta["uid"] and meta["creationTimestamp"].endswith("Z")
    assert int(meta["resourceVersion"]) > 0
    _, again = await call(emulator, "POST", TJ, tj("other"))
    assert again["metadata"]["uid"] != meta["uid"]
    assert int(again["metadata"]["resourceVersion"]) > int(meta["resourceVersion"])
    assert emulator.get_object("mlplane.dev/v1alpha1/trainingjobs", "ns", "job") == created


async def test_create_drops_status_of_a_resource_with_the_status_subresource(emulator):
    body = tj()
    body["status"] = {"phase": "Succeeded"}
    _, created = await call(emulator, "POST", TJ, body)
    assert "status" not in created


async def test_create_twice_is_a_conflict_and_a_name_is_required(emulator):
    await call(emulator, "POST", TJ, tj())
    status, answer = await call(emulator, "POST", TJ, tj())
    assert (status, answer["reason"]) == (409, "AlreadyExists")
    status, _ = await call(emulator, "POST", TJ, {"metadata": {}, "spec": {}})
    assert status == 422


async def test_generate_name_gives_distinct_names(emulator):
    event = {"metadata": {"generateName": "mlplane-"}, "type": "Warning", "reason": "X"}
    _, first = await call(emulator, "POST", EVENTS, event)
    _, second = await call(emulator, "POST", EVENTS, event)
    assert first["metadata"]["name"].startswith("mlplane-")
    assert first["metadata"]["name"] != second["metadata"]["name"]
    assert len(emulator.list_objects("v1/events", "ns")) == 2


async def test_generation_moves_with_spec_but_not_with_metadata_or_status(emulator):
    await call(emulator, "POST", TJ, tj())
    _, labelled = await call(
        emulator, "PATCH", f"{TJ}/job", {"metadata": {"labels": {"a": "b"}}}, MERGE
    )
    assert labelled["metadata"]["generation"] == 1
    _, status = await call(
        emulator, "PATCH", f"{TJ}/job/status", {"status": {"phase": "Pending"}}, MERGE
    )
    assert status["metadata"]["generation"] == 1
    assert int(status["metadata"]["resourceVersion"]) > int(labelled["metadata"]["resourceVersion"])
    _, changed = await call(emulator, "PATCH", f"{TJ}/job", {"spec": {"backoffLimit": 5}}, MERGE)
    assert changed["metadata"]["generation"] == 2
    assert changed["status"] == {"phase": "Pending"}
    assert changed["metadata"]["labels"] == {"a": "b"}


async def test_status_subresource_is_separate_from_the_main_object(emulator):
    await call(emulator, "POST", TJ, tj())
    # Status through the main object is ignored, as the API server ignores it.
    _, main = await call(emulator, "PATCH", f"{TJ}/job", {"status": {"phase": "Failed"}}, MERGE)
    assert "status" not in main
    # Spec through /status is ignored.
    _, sub = await call(
        emulator,
        "PATCH",
        f"{TJ}/job/status",
        {"spec": {"entrypoint": "evil"}, "status": {"phase": "Running"}},
        MERGE,
    )
    assert sub["spec"]["entrypoint"] == "python train.py"
    assert sub["status"] == {"phase": "Running"}
    # A merge patch with null removes a status field.
    _, cleared = await call(
        emulator, "PATCH", f"{TJ}/job/status", {"status": {"phase": None}}, MERGE
    )
    assert cleared.get("status", {}) == {}


async def test_identity_cannot_be_patched(emulator):
    _, created = await call(emulator, "POST", TJ, tj())
    forged = {"metadata": {"uid": "forged", "generation": 42, "creationTimestamp": "x"}}
    _, patched = await call(emulator, "PATCH", f"{TJ}/job", forged, MERGE)
    for key in ("uid", "generation", "creationTimestamp"):
        assert patched["metadata"][key] == created["metadata"][key]


async def test_json_patch_test_failure_is_422_and_changes_nothing(emulator):
    _, created = await call(emulator, "POST", TJ, tj())
    ops = [
        {"op": "test", "path": "/metadata/resourceVersion", "value": "999999"},
        {"op": "add", "path": "/metadata/finalizers", "value": ["mlplane.dev/finalizer"]},
    ]
    status, answer = await call(emulator, "PATCH", f"{TJ}/job", ops, JSON_PATCH)
    assert (status, answer["code"]) == (422, 422)
    assert emulator.get_object("mlplane.dev/v1alpha1/trainingjobs", "ns", "job") == created
    # The same patch with the current version applies and moves the version.
    ops[0]["value"] = created["metadata"]["resourceVersion"]
    status, patched = await call(emulator, "PATCH", f"{TJ}/job", ops, JSON_PATCH)
    assert status == 200
    assert patched["metadata"]["finalizers"] == ["mlplane.dev/finalizer"]
    assert patched["metadata"]["resourceVersion"] != created["metadata"]["resourceVersion"]


async def test_stale_resource_version_is_a_conflict(emulator):
    _, created = await call(emulator, "POST", TJ, tj())
    await call(emulator, "PATCH", f"{TJ}/job", {"spec": {"backoffLimit": 3}}, MERGE)
    stale = {"metadata": {"resourceVersion": created["metadata"]["resourceVersion"]}}
    status, _ = await call(
        emulator, "PATCH", f"{TJ}/job", {**stale, "spec": {"suspend": True}}, MERGE
    )
    assert status == 409


async def test_put_replaces_with_optimistic_concurrency(emulator):
    _, created = await call(emulator, "POST", TJ, tj())
    replacement = tj(backoffLimit=7)
    replacement["metadata"]["resourceVersion"] = created["metadata"]["resourceVersion"]
    status, replaced = await call(emulator, "PUT", f"{TJ}/job", replacement)
    assert status == 200
    assert replaced["spec"] == {"entrypoint": "python train.py", "backoffLimit": 7}
    assert replaced["metadata"]["generation"] == 2
    status, _ = await call(emulator, "PUT", f"{TJ}/job", replacement)  # now stale
    assert status == 409


async def test_patching_a_missing_object_is_404(emulator):
    status, _ = await call(emulator, "PATCH", f"{TJ}/nope", {"spec": {}}, MERGE)
    assert status == 404


async def test_a_write_that_changes_nothing_emits_nothing(emulator):
    await call(emulator, "POST", TJ, tj())
    _, first = await call(
        emulator, "PATCH", f"{TJ}/job/status", {"status": {"phase": "Pending"}}, MERGE
    )
    _, second = await call(
        emulator, "PATCH", f"{TJ}/job/status", {"status": {"phase": "Pending"}}, MERGE
    )
    assert second["metadata"]["resourceVersion"] == first["metadata"]["resourceVersion"]
    _, listing = await call(emulator, "GET", TJ)
    assert listing["metadata"]["resourceVersion"] == first["metadata"]["resourceVersion"]


async def test_list_answers_the_current_resource_version(emulator):
    await call(emulator, "POST", TJ, tj("a"))
    _, b = await call(emulator, "POST", TJ, tj("b"))
    status, listing = await call(emulator, "GET", TJ)
    assert status == 200
    assert listing["metadata"]["resourceVersion"] == b["metadata"]["resourceVersion"]
    assert sorted(i["metadata"]["name"] for i in listing["items"]) == ["a", "b"]
    _, elsewhere = await call(
        emulator, "GET", "/apis/mlplane.dev/v1alpha1/namespaces/x/trainingjobs"
    )
    assert elsewhere["items"] == []


async def _watch(emulator, url, events, ready):
    async with emulator.request("GET", url) as response:
        ready.set()
        async for line in response.content:
            if line.strip():
                events.append(json.loads(line))


async def test_watch_from_a_version_replays_only_what_came_after(emulator):
    await call(emulator, "POST", TJ, tj("before"))
    _, listing = await call(emulator, "GET", TJ)
    since = listing["metadata"]["resourceVersion"]
    await call(emulator, "PATCH", f"{TJ}/before/status", {"status": {"phase": "Pending"}}, MERGE)
    await call(emulator, "POST", TJ, tj("between"))
    events, ready = [], asyncio.Event()
    watch = asyncio.create_task(
        _watch(emulator, f"{TJ}?watch=true&resourceVersion={since}", events, ready)
    )
    try:
        await wait_for(ready.is_set, message="the watch to open")
        await call(emulator, "DELETE", f"{TJ}/between")
        await wait_for(lambda: len(events) >= 3, message="three events", seen=lambda: events)
    finally:
        watch.cancel()
    seen = [(e["type"], e["object"]["metadata"]["name"]) for e in events]
    assert seen == [("MODIFIED", "before"), ("ADDED", "between"), ("DELETED", "between")]


async def test_watch_without_a_version_starts_with_what_exists(emulator):
    await call(emulator, "POST", TJ, tj("a"))
    await call(emulator, "DELETE", f"{TJ}/a")
    await call(emulator, "POST", TJ, tj("b"))
    events, ready = [], asyncio.Event()
    watch = asyncio.create_task(_watch(emulator, f"{TJ}?watch=true", events, ready))
    try:
        await wait_for(lambda: events, message="the initial event", seen=lambda: events)
        await call(emulator, "POST", TJ, tj("c"))
        await wait_for(lambda: len(events) >= 2, message="the live event", seen=lambda: events)
    finally:
        watch.cancel()
    assert [(e["type"], e["object"]["metadata"]["name"]) for e in events] == [
        ("ADDED", "b"),
        ("ADDED", "c"),
    ]


async def test_delete_waits_for_finalizers(emulator):
    body = tj()
    body["metadata"]["finalizers"] = ["mlplane.dev/finalizer"]
    await call(emulator, "POST", TJ, body)
    status, marked = await call(emulator, "DELETE", f"{TJ}/job")
    assert status == 200
    assert marked["metadata"]["deletionTimestamp"]
    assert emulator.get_object("mlplane.dev/v1alpha1/trainingjobs", "ns", "job") is not None
    await call(emulator, "PATCH", f"{TJ}/job", {"metadata": {"finalizers": []}}, MERGE)
    assert emulator.get_object("mlplane.dev/v1alpha1/trainingjobs", "ns", "job") is None
    status, _ = await call(emulator, "GET", f"{TJ}/job")
    assert status == 404


async def test_deleting_an_owner_deletes_its_dependents(emulator):
    _, owner = await call(emulator, "POST", TJ, tj())
    ref = {
        "apiVersion": "mlplane.dev/v1alpha1",
        "kind": "TrainingJob",
        "name": "job",
        "uid": owner["metadata"]["uid"],
        "controller": True,
    }
    child = {
        "apiVersion": "ray.io/v1",
        "kind": "RayJob",
        "metadata": {"name": "job-a1", "ownerReferences": [ref]},
        "spec": {},
    }
    unrelated = {"apiVersion": "ray.io/v1", "kind": "RayJob", "metadata": {"name": "x"}, "spec": {}}
    await call(emulator, "POST", "/apis/ray.io/v1/namespaces/ns/rayjobs", child)
    await call(emulator, "POST", "/apis/ray.io/v1/namespaces/ns/rayjobs", unrelated)
    await call(emulator, "DELETE", f"{TJ}/job")
    names = [o["metadata"]["name"] for o in emulator.list_objects("ray.io/v1/rayjobs")]
    assert names == ["x"]


async def test_cluster_scoped_resources_ignore_namespaces(emulator):
    node = {"apiVersion": "v1", "kind": "Node", "metadata": {"name": "n1", "namespace": "ns"}}
    status, created = await call(emulator, "POST", "/api/v1/nodes", node)
    assert status == 200
    assert "namespace" not in created["metadata"]
    status, _ = await call(
        emulator, "PATCH", "/api/v1/nodes/n1/status", {"status": {"a": 1}}, MERGE
    )
    assert status == 200
    assert emulator.get_object("v1/nodes", None, "n1")["status"] == {"a": 1}


async def test_discovery_serves_every_declared_resource(emulator):
    _, mlplane = await call(emulator, "GET", "/apis/mlplane.dev/v1alpha1")
    names = {r["name"] for r in mlplane["resources"]}
    assert {"trainingjobs", "trainingjobs/status", "modeldeployments/scale", "abtests"} <= names
    _, ray = await call(emulator, "GET", "/apis/ray.io/v1")
    assert {"rayjobs/status", "rayservices/status"} <= {r["name"] for r in ray["resources"]}
    _, core = await call(emulator, "GET", "/api/v1")
    core_names = {r["name"]: r for r in core["resources"]}
    assert {"pods", "nodes", "events", "namespaces"} <= set(core_names)
    assert core_names["nodes"]["namespaced"] is False
    _, groups = await call(emulator, "GET", "/apis")
    assert "events.k8s.io" in {g["name"] for g in groups["groups"]}


@pytest.mark.parametrize("status_first", [True, False])
async def test_direct_writes_go_through_the_same_path(emulator, status_first):
    created = await emulator.create_object(
        "ray.io/v1/rayjobs",
        {
            "apiVersion": "ray.io/v1",
            "kind": "RayJob",
            "metadata": {"name": "rj", "namespace": "ns"},
            "spec": {"entrypoint": "x"},
        },
    )
    assert created["metadata"]["generation"] == 1
    if status_first:
        patched = await emulator.patch_object(
            "ray.io/v1/rayjobs",
            "ns",
            "rj",
            {"status": {"jobStatus": "RUNNING"}},
            subresource="status",
        )
        assert patched["metadata"]["generation"] == 1
        assert patched["status"] == {"jobStatus": "RUNNING"}
    else:
        patched = await emulator.patch_object(
            "ray.io/v1/rayjobs", "ns", "rj", {"spec": {"entrypoint": "y"}}
        )
        assert patched["metadata"]["generation"] == 2
    await emulator.delete_object("ray.io/v1/rayjobs", "ns", "rj")
    assert emulator.list_objects("ray.io/v1/rayjobs") == []


@pytest.mark.parametrize(
    ("selector", "expected"),
    [
        ("team=a", ["a1", "a2"]),
        ("team==a,tier=gpu", ["a2"]),
        ("team!=a", ["b", "none"]),
        ("team in (a, b)", ["a1", "a2", "b"]),
        ("team notin (a),tier", []),
        ("tier", ["a2"]),
        ("!team", ["none"]),
        ("", ["a1", "a2", "b", "none"]),
    ],
)
async def test_list_honours_label_selectors(emulator, selector, expected):
    for name, labels in [
        ("a1", {"team": "a"}),
        ("a2", {"team": "a", "tier": "gpu"}),
        ("b", {"team": "b"}),
        ("none", {}),
    ]:
        body = tj(name)
        body["metadata"]["labels"] = labels
        await call(emulator, "POST", TJ, body)
    status, listing = await call(emulator, "GET", f"{TJ}?labelSelector={quote(selector)}")
    assert status == 200
    assert sorted(i["metadata"]["name"] for i in listing["items"]) == expected


async def test_a_malformed_label_selector_is_a_400(emulator):
    status, answer = await call(emulator, "GET", f"{TJ}?labelSelector={quote('team in a')}")
    assert status == 400, answer


async def test_watch_honours_label_selectors(emulator):
    events, ready = [], asyncio.Event()
    url = f"{TJ}?watch=true&labelSelector={quote('team=a')}"
    watch = asyncio.create_task(_watch(emulator, url, events, ready))
    try:
        await wait_for(ready.is_set, message="the watch to open")
        other, mine = tj("other"), tj("mine")
        other["metadata"]["labels"], mine["metadata"]["labels"] = {"team": "b"}, {"team": "a"}
        await call(emulator, "POST", TJ, other)
        await call(emulator, "POST", TJ, mine)
        await wait_for(lambda: events, message="the matching event", seen=lambda: events)
    finally:
        watch.cancel()
    assert [(e["type"], e["object"]["metadata"]["name"]) for e in events] == [("ADDED", "mine")]


async def test_fault_hooks_run_after_a_write_is_applied_or_instead_of_it(emulator):
    """What the restart tests build on: ``after_request`` sees the object already stored;
    ``before_request`` drops the write (503) and changes nothing; both run once."""
    res = "mlplane.dev/v1alpha1/trainingjobs"
    seen: list[object] = []

    def is_post(r):
        return r.method.value == "POST"

    emulator.after_request(is_post, lambda r: seen.append(emulator.get_object(res, "ns", "job")))
    status, _ = await call(emulator, "POST", TJ, tj())
    assert status == 200
    assert seen and seen[0]["metadata"]["name"] == "job"  # stored before the hook ran
    await call(emulator, "POST", TJ, tj("second"))
    assert len(seen) == 1  # once

    dropped: list[object] = []
    emulator.before_request(lambda r: r.name == "job" and r.subresource == "status",
                            dropped.append)  # fmt: skip
    status, _ = await call(emulator, "PATCH", f"{TJ}/job/status",
                           {"status": {"phase": "Running"}}, MERGE)  # fmt: skip
    assert (status, len(dropped)) == (503, 1)
    assert "status" not in emulator.get_object(res, "ns", "job")
    status, _ = await call(emulator, "PATCH", f"{TJ}/job/status",
                           {"status": {"phase": "Running"}}, MERGE)  # fmt: skip
    assert status == 200 and emulator.get_object(res, "ns", "job")["status"]["phase"] == "Running"


LEASES = "/apis/coordination.k8s.io/v1/namespaces/ops/leases"


async def test_two_candidates_cannot_both_take_a_lease(emulator):
    """Leader election relies on it: of two writes based on the same read, the second is a 409
    and changes nothing (the API server's optimistic concurrency)."""
    lease = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
             "metadata": {"name": "mlplane-operator"},
             "spec": {"holderIdentity": "old", "leaseDurationSeconds": 10}}  # fmt: skip
    status, created = await call(emulator, "POST", LEASES, lease)
    assert status == 200
    status, _ = await call(emulator, "POST", LEASES, lease)  # a second create: AlreadyExists
    assert status == 409
    takes = []
    for who in ("a", "b"):
        take = json.loads(json.dumps(created))  # both read the same version
        take["spec"]["holderIdentity"] = who
        takes.append(await call(emulator, "PUT", f"{LEASES}/mlplane-operator", take))
    (first, won), (second, refused) = takes
    assert (first, second) == (200, 409)
    assert refused["reason"] == "Conflict"
    assert won["metadata"]["resourceVersion"] != created["metadata"]["resourceVersion"]
    stored = emulator.get_object("coordination.k8s.io/v1/leases", "ops", "mlplane-operator")
    assert stored["spec"]["holderIdentity"] == "a"
