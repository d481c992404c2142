"""The signing Secret's pure core: made once, rotated once per request, never adopted from
another owner; and the ModelDeployment reconcile deploys nothing while it conflicts."""

from __future__ import annotations

import base64
import itertools
from datetime import UTC, datetime, timedelta

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


T0 = datetime(2026, 12, 3, 9, 0, tzinfo=UTC)
SETTLE = 150.0


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def test_first_key_is_made_once_and_never_regenerated():
    made = next_keys(None, None, "k1", T0)
    assert made == SigningKeys("k1")
    assert next_keys(made, None, "k2", at(10**6)) is None  # exists: kept, whatever is offered


def test_a_rotation_stages_then_promotes_after_the_settling_time():
    keys = SigningKeys("k1")
    staged = next_keys(keys, "t1", "k2", T0, SETTLE)
    # Staged: accepted from now on, not signed with (current unchanged).
    assert staged == SigningKeys("k1", None, "k2", "t1", "2026-12-03T09:00:00Z")
    assert next_keys(staged, "t1", "k3", at(SETTLE - 1), SETTLE) is None  # not yet
    assert next_keys(staged, "t2", "k3", at(SETTLE - 1), SETTLE) is None  # a new request waits
    promoted = next_keys(staged, "t1", "k3", at(SETTLE), SETTLE)
    assert promoted == SigningKeys("k2", "k1", None, "t1", None)  # the staged key, not k3
    assert next_keys(promoted, "t1", "k3", at(10 * SETTLE), SETTLE) is None  # the same request
    again = next_keys(promoted, "t2", "k3", at(SETTLE + 1), SETTLE)
    assert again is not None and (again.current, again.next) == ("k2", "k3")
    # A request standing when the keys are first made counts as carried out.
    assert next_keys(None, "t1", "k1", T0) == SigningKeys("k1", rotated_for="t1")
    assert next_keys(SigningKeys("k1", rotated_for="t1"), "t1", "k2", T0) is None
    # An unreadable staging time does not leave the key staged for ever.
    odd = SigningKeys("k1", None, "k2", "t1", "yesterday")
    assert next_keys(odd, "t1", "k3", T0, SETTLE) == SigningKeys("k2", "k1", None, "t1")


@settings(max_examples=50, derandomize=True)
@given(st.lists(st.tuples(st.sampled_from(["a", "b", "c", None]), st.integers(0, 400)),
                max_size=12))  # fmt: skip
def test_replays_never_rotate_twice_and_no_key_signs_before_it_settled(steps):
    """Rounds with any requests at any pace (retries, timer rounds, restarts): the key that
    signs was staged at least SETTLE seconds earlier, each request value is acted on once, and
    the keys accepted always include the one that signed a moment ago."""
    keys = next_keys(None, None, "k0", T0)
    assert keys is not None
    staged_when: dict[str, datetime] = {"k0": T0 - timedelta(days=1)}
    t, counter, acted = T0, 0, []
    for request, pause in steps:
        t += timedelta(seconds=pause)
        before = keys
        wanted = next_keys(keys, request, f"k{counter + 1}", t, SETTLE)
        if wanted is None:
            continue
        if wanted.next is not None and wanted.next != before.next:
            counter += 1
            staged_when[wanted.next] = t
            acted.append(request)
        assert (t - staged_when[wanted.current]).total_seconds() >= SETTLE
        accepted = {wanted.current, wanted.previous, wanted.next}
        assert before.current in accepted
        keys = wanted
    assert all(a != b for a, b in itertools.pairwise(acted))


def test_secret_round_trip_and_patch():
    built = signing.build_secret("churn", "ml", UID, SigningKeys("k1"))
    assert built["metadata"]["name"] == "churn-request-signing"
    assert built["metadata"]["ownerReferences"][0]["uid"] == UID
    assert built["metadata"]["ownerReferences"][0]["controller"] is True
    assert signing.secret_keys(built) == SigningKeys("k1")
    assert signing.ownership(built, UID) is None
    stored = {**built, "metadata": {**built["metadata"], "resourceVersion": "7"}}
    staged = SigningKeys("k1", None, "k2", "t1", "2026-12-03T09:00:00Z")
    patch = signing.secret_patch(stored, staged)
    assert patch["metadata"] == {
        "annotations": {signing.ROTATED_FOR: "t1", signing.STAGED_AT: "2026-12-03T09:00:00Z"},
        "resourceVersion": "7",
    }
    decoded = {k: v and base64.b64decode(v).decode() for k, v in patch["data"].items()}
    assert decoded == {"current": "k1", "next": "k2", "previous": None}
    after = {
        **stored,
        "data": {k: v for k, v in patch["data"].items() if v},
        "metadata": {**stored["metadata"], "annotations": patch["metadata"]["annotations"]},
    }
    assert signing.secret_keys(after) == staged
    # The promotion removes the staged key and its time (merge-patch nulls).
    patch = signing.secret_patch(after, SigningKeys("k2", "k1", None, "t1"))
    assert (
        patch["data"]["next"] is None
        and patch["metadata"]["annotations"][signing.STAGED_AT] is None
    )
    decoded = {k: v and base64.b64decode(v).decode() for k, v in patch["data"].items()}
    assert decoded == {"current": "k2", "previous": "k1", "next": None}
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
    skops = {1: {"python_function": {"loader_module": "mlflow.sklearn"},  # an allowed format
                 "sklearn": {"serialization_format": "skops"}}}  # fmt: skip
    assert reconcile(_md(), Observed(model, flavors=skops), now, OperatorConfig(), uid=UID).create
