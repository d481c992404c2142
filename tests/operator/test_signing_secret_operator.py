"""The request-id signing Secret through the real Kopf operator on the emulator (issue #14,
item 5): made once per ModelDeployment before its RayService, owned by it, mounted into the
RayService, never regenerated (a second reconcile, an operator restart), rotated once per
request on the annotation, and a Secret of that name owned by another uid never adopted."""

from __future__ import annotations

import base64
import os
from typing import Any

import mlflow
import pytest
from k8s.harness import create, events_for, run_operator_process, stored, wait_for
from mlflow.tracking import MlflowClient
from sklearn.linear_model import LogisticRegression

from mlplane.operator import conditions
from mlplane.operator.registry import process_uris

RAYSERVICES = "ray.io/v1/rayservices"
SECRETS = "v1/secrets"
MDS = "mlplane.dev/v1alpha1/modeldeployments"
MODEL = "churn-signing"
NAMESPACE = "serving"
ROTATE = "mlplane.dev/rotate-signing-key"
TIMEOUT = 30


@pytest.fixture(scope="module")
def mlflow_uri(tmp_path_factory):
    """A registry with one version of MODEL aliased ``champion`` (a real sklearn model)."""
    folder = tmp_path_factory.mktemp("mlflow-signing")
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    old_env = os.environ.get("MLPLANE_MLFLOW_TRACKING_URI")
    os.environ["MLPLANE_MLFLOW_TRACKING_URI"] = uri
    client = MlflowClient(uri)
    experiment = client.create_experiment("sig", artifact_location=(folder / "a").as_uri())
    # MLflow's globals set for the fluent API, then restored exactly
    with process_uris(uri), mlflow.start_run(experiment_id=experiment):
        mlflow.sklearn.log_model(
            LogisticRegression().fit([[0.0], [1.0]], [0, 1]),
            name="model",
            registered_model_name=MODEL,
            pip_requirements=["scikit-learn"],
        )
    client.set_registered_model_alias(MODEL, "champion", "1")
    yield uri
    if old_env is None:
        os.environ.pop("MLPLANE_MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLPLANE_MLFLOW_TRACKING_URI"] = old_env


def modeldeployment(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "mlplane.dev/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": name, "namespace": NAMESPACE},
        "spec": {
            "model": {"name": MODEL, "alias": "champion"},
            "replicas": {"min": 1, "max": 2},
            "resources": {"cpu": "1", "memory": "2Gi"},
        },
    }


def secret(emulator, md: str) -> dict[str, Any] | None:
    return emulator.get_object(SECRETS, NAMESPACE, f"{md}-request-signing")


def keys(found: dict[str, Any] | None) -> dict[str, str]:
    data = (found or {}).get("data") or {}
    return {k: base64.b64decode(v).decode() for k, v in data.items() if v}


def secret_writes(emulator, md: str) -> list[Any]:
    name = f"{md}-request-signing"
    return [
        r
        for method in ("POST", "PATCH", "PUT")
        for r in emulator.requests_to(SECRETS, method=method)
        if r.name == name or (method == "POST" and (r.data or {}).get("metadata", {}).get("name")
                              == name)
    ]  # fmt: skip


def condition(emulator, obj, type_: str) -> dict[str, Any]:
    st = (stored(emulator, obj) or {}).get("status") or {}
    return conditions.find(st.get("conditions"), type_) or {}


def timer_runs(run, obj) -> int:
    uid = obj["metadata"]["uid"]
    return sum(
        1
        for r in list(run.records)
        if getattr(r, "k8s_ref", {}).get("uid") == uid
        and r.getMessage() == "Timer 'follow' succeeded."
    )


async def test_secret_made_once_owned_mounted_and_kept_across_a_restart(
    emulator, kubeconfig, mlflow_uri
):
    async with run_operator_process() as first:
        obj = await create(emulator, modeldeployment("signed"))
        rs = await wait_for(
            lambda: emulator.get_object(RAYSERVICES, NAMESPACE, "signed"),
            timeout=TIMEOUT,
            message="the RayService",
        )
        made = secret(emulator, "signed")
        assert made is not None, "the RayService exists before its signing Secret"
        assert made["metadata"]["ownerReferences"] == [
            {"apiVersion": "mlplane.dev/v1alpha1", "kind": "ModelDeployment", "name": "signed",
             "uid": obj["metadata"]["uid"], "controller": True, "blockOwnerDeletion": True}
        ]  # fmt: skip
        assert made["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "mlplane"
        key = keys(made)
        assert set(key) == {"current"} and len(key["current"]) == 64
        int(key["current"], 16)  # hex: random bytes, printable
        # Every Ray container mounts it where the app reads it.
        cluster = rs["spec"]["rayClusterConfig"]
        for template in [cluster["headGroupSpec"]["template"]] + [
            g["template"] for g in cluster["workerGroupSpecs"]
        ]:
            assert {"name": "request-signing",
                    "secret": {"secretName": "signed-request-signing", "defaultMode": 0o444}
                    } in template["spec"]["volumes"]  # fmt: skip
        # More rounds (the timer runs every second here) never regenerate the key.
        start = timer_runs(first, obj)
        await wait_for(lambda: timer_runs(first, obj) >= start + 3, timeout=TIMEOUT,
                       message="three more timer rounds")  # fmt: skip
        assert keys(secret(emulator, "signed")) == key
        assert len(secret_writes(emulator, "signed")) == 1
    version = secret(emulator, "signed")["metadata"]["resourceVersion"]
    async with run_operator_process() as second:
        await wait_for(lambda: timer_runs(second, obj) >= 3, timeout=TIMEOUT,
                       message="three timer runs after the restart")  # fmt: skip
    assert secret(emulator, "signed")["metadata"]["resourceVersion"] == version
    assert keys(secret(emulator, "signed")) == key
    assert len(secret_writes(emulator, "signed")) == 1
    signing = [s for s in emulator.list_objects(SECRETS, NAMESPACE)
               if s["metadata"]["name"].endswith("-request-signing")]  # fmt: skip
    assert len(signing) == 1  # (the Ray token Secret of the cluster is another one)


@pytest.fixture
def short_settle(monkeypatch: pytest.MonkeyPatch) -> None:
    """Staged keys settle in 3 s (the kubelet's minute or two, in brief). Request it before the
    ``operator`` fixture: the operator reads its settings once, at start."""
    monkeypatch.setenv("MLPLANE_SIGNING_KEY_SETTLE", "3")


async def test_rotation_stages_then_promotes_once_per_value(
    emulator, short_settle, operator, mlflow_uri
):
    """The annotation stages a new key (accepted, not signing), which is promoted once it has
    settled; the same value never rotates again, a new value does."""
    obj = await create(emulator, modeldeployment("rotating"))
    await wait_for(lambda: secret(emulator, "rotating"), timeout=TIMEOUT, message="the Secret")
    original = keys(secret(emulator, "rotating"))["current"]

    request = {"metadata": {"annotations": {ROTATE: "2026-12-03T09:00Z"}}}
    await emulator.patch_object(MDS, NAMESPACE, "rotating", request)
    staged = await wait_for(
        lambda: keys(secret(emulator, "rotating")).get("next") and secret(emulator, "rotating"),
        timeout=TIMEOUT,
        message="the staged key",
        seen=lambda: keys(secret(emulator, "rotating")),
    )
    assert keys(staged)["current"] == original and "previous" not in keys(staged)
    new_key = keys(staged)["next"]
    assert new_key != original and len(new_key) == 64
    annotations = staged["metadata"]["annotations"]
    assert annotations["mlplane.dev/signing-key-rotated-for"] == "2026-12-03T09:00Z"
    assert "mlplane.dev/signing-key-staged-at" in annotations

    promoted = await wait_for(
        lambda: (
            keys(secret(emulator, "rotating")) == {"current": new_key, "previous": original}
            and secret(emulator, "rotating")
        ),
        timeout=TIMEOUT,
        message="the promotion",
        seen=lambda: keys(secret(emulator, "rotating")),
    )
    assert "mlplane.dev/signing-key-staged-at" not in (promoted["metadata"]["annotations"] or {})
    # The same request again (more timer rounds) rotates nothing more.
    writes = len(secret_writes(emulator, "rotating"))
    looks = len(emulator.requests_to(SECRETS, method="GET"))
    await wait_for(
        lambda: len(emulator.requests_to(SECRETS, method="GET")) >= looks + 3,
        timeout=TIMEOUT,
        message="three more looks at the Secret",
    )
    assert keys(secret(emulator, "rotating")) == {"current": new_key, "previous": original}
    assert len(secret_writes(emulator, "rotating")) == writes
    # A new value rotates again: the first key goes, the second becomes previous.
    await emulator.patch_object(MDS, NAMESPACE, "rotating",
                                {"metadata": {"annotations": {ROTATE: "second"}}})  # fmt: skip
    await wait_for(
        lambda: keys(secret(emulator, "rotating")).get("previous") == new_key,
        timeout=TIMEOUT,
        message="the second rotation",
    )
    assert original not in keys(secret(emulator, "rotating")).values()

    def counts() -> tuple[int, int]:
        reasons = [e["reason"] for e in events_for(emulator, obj)]
        return reasons.count("SigningKeyStaged"), reasons.count("SigningKeyRotated")

    # Events are posted after the Secret is written (at the end of the round): wait for them.
    await wait_for(lambda: counts() == (2, 2), timeout=TIMEOUT, message="both events of each "
                   "rotation", seen=counts)  # fmt: skip
    assert counts() == (2, 2)


async def test_a_secret_owned_by_another_uid_is_not_adopted(emulator, operator, mlflow_uri):
    foreign = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {
            "name": "taken-request-signing",
            "namespace": NAMESPACE,
            "ownerReferences": [{"apiVersion": "mlplane.dev/v1alpha1", "kind": "ModelDeployment",
                                 "name": "taken", "uid": "an-earlier-incarnation",
                                 "controller": True}],
        },
        "data": {"current": base64.b64encode(b"k" * 64).decode()},
    }  # fmt: skip
    await create(emulator, foreign)
    obj = await create(emulator, modeldeployment("taken"))
    ready = await wait_for(
        lambda: (
            condition(emulator, obj, "Ready").get("reason") == "SigningSecretConflict"
            and condition(emulator, obj, "Ready")
        ),
        timeout=TIMEOUT,
        message="the SigningSecretConflict condition",
        seen=lambda: condition(emulator, obj, "Ready"),
    )
    assert ready["status"] == "False"
    assert "taken-request-signing" in ready["message"]
    assert "an-earlier-incarnation" in ready["message"]
    assert "not adopted" in ready["message"]
    assert (stored(emulator, obj) or {})["status"]["phase"] == "Failed"
    # Nothing deployed, the foreign Secret untouched.
    assert emulator.get_object(RAYSERVICES, NAMESPACE, "taken") is None
    assert keys(secret(emulator, "taken")) == {"current": "k" * 64}
    assert secret_writes(emulator, "taken") == [
        r for r in secret_writes(emulator, "taken") if r.method == "POST"
    ]
