"""The signing Secret's pure core: made once, rotated once per request, never adopted from
another owner; and the ModelDeployment reconcile deploys nothing while it conflicts."""

from __future__ import annotations

import base64
from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mlplane.crds.validate import parse
from mlplane.operator.builders import signing
from mlplane.operator.builders.signing import SigningKeys, next_keys
from mlplane.operator.config import OperatorConfig
from mlplane.operator.reconcile.modeldeployment import Observed, reconcile
from mlplane.operator.registry import ResolvedModel

UID = "md-uid"


def test_first_key_is_made_once_and_never_regenerated():
    made = next_keys(None, None, "k1")
    assert made == SigningKeys("k1", None, None)
    assert next_keys(made, None, "k2") is None  # exists: kept, whatever key is offered


def test_a_request_rotates_once_and_a_new_one_again():
    keys = SigningKeys("k1")
    rotated = next_keys(keys, "t1", "k2")
    assert rotated == SigningKeys("k2", "k1", "t1")
    assert next_keys(rotated, "t1", "k3") is None  # the same request: done already
    assert next_keys(rotated, "t2", "k3") == SigningKeys("k3", "k2", "t2")
    # A request standing when the Secret is first made counts as carried out.
    assert next_keys(None, "t1", "k1") == SigningKeys("k1", None, "t1")
    assert next_keys(SigningKeys("k1", None, "t1"), "t1", "k2") is None


@settings(max_examples=50, derandomize=True)
@given(st.lists(st.sampled_from(["a", "b", "c", None]), max_size=12))
def test_rotations_follow_distinct_consecutive_requests(requests):
    """Replaying a request any number of times (retries, timer rounds) changes nothing: the
    key changes exactly when the request differs from the last one carried out."""
    keys = next_keys(None, None, "k0")
    assert keys is not None
    counter, last = 0, None
    for request in requests:
        wanted = next_keys(keys, request, f"k{counter + 1}")
        if request is not None and request != last:
            assert wanted == SigningKeys(f"k{counter + 1}", keys.current, request)
            keys, counter, last = wanted, counter + 1, request
        else:
            assert wanted is None


def test_secret_round_trip_and_patch():
    built = signing.build_secret("churn", "ml", UID, SigningKeys("k1"))
    assert built["metadata"]["name"] == "churn-request-signing"
    assert built["metadata"]["ownerReferences"][0]["uid"] == UID
    assert built["metadata"]["ownerReferences"][0]["controller"] is True
    assert signing.secret_keys(built) == SigningKeys("k1")
    assert signing.ownership(built, UID) is None
    stored = {**built, "metadata": {**built["metadata"], "resourceVersion": "7"}}
    patch = signing.secret_patch(stored, SigningKeys("k2", "k1", "t1"))
    assert patch["metadata"] == {
        "annotations": {signing.ROTATED_FOR: "t1"},
        "resourceVersion": "7",
    }
    decoded = {k: base64.b64decode(v).decode() for k, v in patch["data"].items()}
    assert decoded == {"current": "k2", "previous": "k1"}
    assert signing.secret_keys({"data": {"current": "!!notbase64"}}) is None


@pytest.mark.parametrize(
    ("refs", "needle"),
    [
        ([{"kind": "ModelDeployment", "name": "churn", "uid": "old", "controller": True}],
         "uid old"),
        ([], "was not made by mlplane"),
        ([{"kind": "ModelDeployment", "name": "churn", "uid": UID}], "was not made by mlplane"),
    ],
)  # fmt: skip
def test_only_a_secret_this_deployment_controls_is_used(refs, needle):
    found = {"metadata": {"name": "churn-request-signing", "ownerReferences": refs}}
    message = signing.ownership(found, UID)
    assert message is not None and needle in message and "not adopted" in message


def test_rotate_request_reads_the_annotation():
    assert signing.rotate_request(None) is None
    assert signing.rotate_request({signing.ROTATE_ANNOTATION: "  "}) is None
    assert signing.rotate_request({signing.ROTATE_ANNOTATION: " 2026-12-03 "}) == "2026-12-03"


def _md():
    return parse({
        "apiVersion": "mlplane.dev/v1alpha1", "kind": "ModelDeployment",
        "metadata": {"name": "churn", "namespace": "ml", "uid": UID, "generation": 1},
        "spec": {"model": {"name": "m", "alias": "champion"}, "replicas": {"min": 1, "max": 2},
                 "resources": {"cpu": "1", "memory": "2Gi"}},
    })  # fmt: skip


def test_reconcile_deploys_nothing_while_the_secret_conflicts():
    model = ResolvedModel("m", 1, "run", "models:/m/1")
    now = datetime(2026, 12, 3, tzinfo=UTC)
    message = "Secret churn-request-signing ... is not adopted"
    plan = reconcile(
        _md(), Observed(model, signing_conflict=message), now, OperatorConfig(), uid=UID
    )
    assert not plan.create and plan.patch is None and plan.desired is None
    ready = next(c for c in plan.status["conditions"] if c["type"] == "Ready")
    assert (ready["status"], ready["reason"], ready["message"]) == (
        "False", "SigningSecretConflict", message)  # fmt: skip
    assert plan.status["phase"] == "Failed"
    assert plan.requeue_after is not None
    # Once it is resolved, the RayService is created as usual.
    assert reconcile(_md(), Observed(model), now, OperatorConfig(), uid=UID).create
