"""The handlers' verdict on a body, without Kopf or an API server: ``assess`` and friends."""

import copy
import logging
from datetime import UTC, datetime, timedelta

import kopf
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from k8s.harness import example

from mlplane.crds import ABTest, ModelDeployment, TrainingJob
from mlplane.operator import conditions, handlers

NOW = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)
LATER = NOW + timedelta(minutes=5)
EXAMPLES = {
    "TrainingJob": "trainingjob-gpu-spot",
    "ModelDeployment": "modeldeployment-autoscaled-drift",
    "ABTest": "abtest",
}


def served(name, generation=1, status=None):
    """An example as the API server returns it: server metadata, maybe a status."""
    body = example(name)
    body["metadata"].update(uid="u-1", resourceVersion="7", generation=generation)
    if status is not None:
        body["status"] = status
    return body


def invalid_tj(generation=1, status=None):
    body = served("trainingjob-gpu-spot", generation, status)
    body["spec"]["workers"][0]["minReplicas"] = 9  # replicas is 4
    return body


def apply(body, patch):
    """The body after Kopf applied the status merge patch."""
    body = copy.deepcopy(body)
    status = dict(body.get("status") or {})
    for key, value in patch.items():
        if value is None:
            status.pop(key, None)
        else:
            status[key] = value
    body["status"] = status
    return body


@pytest.mark.parametrize(("kind", "name"), EXAMPLES.items())
def test_valid_examples_pass_with_nothing_to_write(kind, name):
    result = handlers.assess(kind, served(name), NOW)
    assert result.valid
    assert result.resource.kind == kind
    assert (result.problems, result.status, result.warning) == ((), {}, None)


def test_assess_accepts_the_kind_class():
    assert handlers.assess(TrainingJob, served("trainingjob-gpu-spot"), NOW).valid
    assert handlers.assess(ModelDeployment, served("modeldeployment-autoscaled-drift"), NOW).valid
    assert handlers.assess(ABTest, served("abtest"), NOW).valid


def test_an_invalid_spec_is_failed_with_the_field_named():
    result = handlers.assess("TrainingJob", invalid_tj(generation=3), NOW)
    assert not result.valid
    message = "spec.workers[0].minReplicas: minReplicas must not exceed replicas"
    assert result.warning == message
    assert result.status == {
        "conditions": [
            {
                "type": "InvalidSpec",
                "status": "True",
                "reason": "InvalidSpec",
                "message": message,
                "lastTransitionTime": "2026-11-29T12:00:00Z",
                "observedGeneration": 3,
            }
        ],
        "phase": "Failed",
        "observedGeneration": 3,
    }


def test_every_problem_is_in_the_message():
    body = served("abtest")
    body["spec"]["variants"][0]["weight"] = 95  # weights no longer sum to 100
    body["spec"]["analysis"]["alpha"] = "0.9"
    problems = handlers.check(body)
    result = handlers.assess("ABTest", body, NOW)
    assert len(problems) >= 1
    for problem in problems:
        assert str(problem) in result.warning
    assert result.warning == "; ".join(str(p) for p in problems)


def test_the_same_verdict_again_writes_and_says_nothing():
    first = handlers.assess("TrainingJob", invalid_tj(), NOW)
    again = handlers.assess("TrainingJob", apply(invalid_tj(), first.status), LATER)
    assert not again.valid
    assert (again.status, again.warning) == ({}, None)


def test_a_new_generation_with_the_same_problem_is_a_new_verdict():
    first = handlers.assess("TrainingJob", invalid_tj(generation=1), NOW)
    body = apply(invalid_tj(generation=2), first.status)
    again = handlers.assess("TrainingJob", body, LATER)
    assert again.status["observedGeneration"] == 2
    assert again.warning is not None
    condition = conditions.find(again.status["conditions"], "InvalidSpec")
    # Still True: the transition time stays where the status flipped.
    assert condition["lastTransitionTime"] == "2026-11-29T12:00:00Z"
    assert condition["observedGeneration"] == 2


def test_fixing_the_spec_removes_the_condition_and_the_failure_it_caused():
    other = {
        "type": "Ready",
        "status": "False",
        "reason": "Waiting",
        "message": "",
        "lastTransitionTime": "2026-11-29T11:00:00Z",
    }
    invalid = handlers.assess("TrainingJob", invalid_tj(), NOW)
    status = apply(invalid_tj(), invalid.status)["status"]
    status["conditions"] = [other, *status["conditions"]]
    fixed = handlers.assess("TrainingJob", served("trainingjob-gpu-spot", 2, status), LATER)
    assert fixed.valid
    assert fixed.status == {"conditions": [other], "phase": "Pending"}
    assert fixed.warning is None


def test_a_valid_spec_keeps_a_failure_it_did_not_cause():
    status = {"phase": "Failed", "conditions": [], "observedGeneration": 1}
    result = handlers.assess("TrainingJob", served("trainingjob-gpu-spot", 1, status), NOW)
    assert result.valid
    assert result.status == {}


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (None, ""),
        ([], ""),
        ("a string", ""),
        ({}, "apiVersion"),
        ({"apiVersion": "mlplane.dev/v1alpha1", "kind": "TrainingJob"}, "metadata.name"),
        (
            {
                "apiVersion": "mlplane.dev/v1alpha1",
                "kind": "TrainingJob",
                "metadata": {"name": "x"},
                "spec": "oops",
            },
            "spec",
        ),
        (
            {
                "apiVersion": "mlplane.dev/v1alpha1",
                "kind": "TrainingJob",
                "metadata": ["x"],
                "spec": {},
            },
            "metadata.name",
        ),
        (
            {
                "apiVersion": "mlplane.dev/v1alpha1",
                "kind": "ABTest",
                "metadata": {"name": "x"},
                "spec": {},
            },
            "kind",
        ),
    ],
)
def test_bodies_of_the_wrong_shape_are_invalid_not_errors(body, field):
    result = handlers.assess("TrainingJob", body, NOW)
    assert not result.valid
    assert result.problems[0].path == field
    assert result.status["phase"] == "Failed"
    assert conditions.is_true(result.status["conditions"], "InvalidSpec")


@pytest.mark.parametrize(
    "status",
    ["garbage", {"conditions": "garbage"}, {"conditions": [1, "x", None]}, {"phase": 3}],
)
def test_a_garbled_status_is_overwritten_not_an_error(status):
    result = handlers.assess("TrainingJob", invalid_tj(status=status), NOW)
    assert conditions.is_true(result.status["conditions"], "InvalidSpec")
    assert [c["type"] for c in result.status["conditions"]] == ["InvalidSpec"]
    valid = handlers.assess("TrainingJob", served("trainingjob-gpu-spot", status=status), NOW)
    assert valid.valid


def test_a_validator_crash_is_an_invalid_spec_not_a_crash(monkeypatch):
    def broken(body):
        raise RuntimeError("bug")

    monkeypatch.setattr(handlers, "check", broken)
    result = handlers.assess("TrainingJob", served("trainingjob-gpu-spot"), NOW)
    assert not result.valid
    assert "could not validate" in result.warning


def test_long_messages_are_cut_to_fit_a_condition():
    problems = [handlers.Problem(f"spec.f{i}", "x" * 100) for i in range(200)]
    message = handlers.message_of(problems)
    assert len(message) <= handlers.MAX_MESSAGE
    assert message.startswith("spec.f0: ")
    assert message.endswith("(message cut)")


JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 5) | st.text(max_size=5),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=8,
)


def _paths(value, prefix=()):
    yield prefix
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _paths(item, (*prefix, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _paths(item, (*prefix, index))


@settings(
    max_examples=120, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow]
)
@given(data=st.data(), name=st.sampled_from(sorted(EXAMPLES.values())))
def test_any_mutation_of_a_valid_body_is_a_verdict_never_an_exception(data, name):
    body = served(name)
    paths = [p for p in _paths(body) if p]
    path = data.draw(st.sampled_from(paths))
    target = body
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = data.draw(JSON)
    kind = body["kind"] if isinstance(body.get("kind"), str) else "TrainingJob"
    result = handlers.assess(kind, body, NOW)
    if result.valid:
        assert result.status == {}
    else:
        assert result.problems
        assert result.warning
        assert conditions.is_true(result.status["conditions"], "InvalidSpec")
        assert result.status["phase"] == "Failed"


def test_validated_writes_into_the_patch_and_warns_once(monkeypatch):
    warnings = []
    monkeypatch.setattr(kopf, "warn", lambda body, **kw: warnings.append(kw))
    patch = kopf.Patch()
    body = invalid_tj()
    assert handlers.validated("TrainingJob", body, patch, now=NOW) is None
    assert patch["status"]["phase"] == "Failed"
    assert warnings == [
        {"reason": "InvalidSpec", "message": patch["status"]["conditions"][0]["message"]}
    ]
    again = kopf.Patch()
    assert handlers.validated("TrainingJob", apply(body, patch["status"]), again, now=LATER) is None
    assert dict(again) == {}
    assert len(warnings) == 1


def test_validated_returns_the_typed_resource(monkeypatch):
    monkeypatch.setattr(kopf, "warn", lambda body, **kw: pytest.fail("no warning expected"))
    patch = kopf.Patch()
    resource = handlers.validated("TrainingJob", served("trainingjob-gpu-spot"), patch)
    assert isinstance(resource, TrainingJob)
    assert resource.spec.workers[0].min_replicas == 2
    assert dict(patch) == {}


def test_reconciler_registration(monkeypatch):
    monkeypatch.setitem(handlers._RECONCILERS, "ModelDeployment", [])

    def first(resource, **_):
        pass

    async def second(resource, **_):
        pass

    handlers.reconciler("ModelDeployment")(first)
    handlers.reconciler(ModelDeployment)(second)
    handlers.reconciler("ModelDeployment")(first)  # idempotent
    assert handlers.reconcilers("ModelDeployment") == (first, second)
    with pytest.raises(ValueError, match="unknown kind 'Pod'"):
        handlers.reconciler("Pod")


def test_startup_configures_kopf_for_mlplane():
    settings_ = kopf.OperatorSettings()
    handlers.configure(settings=settings_)
    assert settings_.persistence.finalizer == "mlplane.dev/finalizer"
    assert isinstance(settings_.persistence.progress_storage, kopf.AnnotationsProgressStorage)
    assert settings_.persistence.progress_storage.prefix == "mlplane.dev"
    assert isinstance(settings_.persistence.diffbase_storage, kopf.AnnotationsDiffBaseStorage)
    assert settings_.persistence.diffbase_storage.prefix == "mlplane.dev"
    assert settings_.posting.level == logging.INFO
    assert settings_.posting.loggers is False
    assert settings_.peering.standalone is True


def test_every_kind_is_handled_on_create_update_and_resume():
    registry = kopf.get_default_registry()
    found = {}
    for handler in registry._changing.get_all_handlers():
        if handler.fn is handlers.handle:
            cause = "resume" if handler.initial else handler.reason.value
            found.setdefault(handler.selector.plural, set()).add(cause)
    assert found == {
        plural: {"create", "update", "resume"}
        for plural in ("trainingjobs", "modeldeployments", "abtests")
    }
