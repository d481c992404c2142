"""Defects the fuzz (``tests/fuzz``) found in validation, each as a plain regression test.

Every one of these made ``check`` crash (a traceback in ``mlplane validate`` and a handler
exception in the operator) or accept what the API server refuses.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest

from mlplane.crds import validate
from mlplane.crds.validate import check, parse

#: Levels a value may nest below its field (``validate.MAX_DEPTH``).
MAX_DEPTH = 32


def job(**spec: Any) -> dict[str, Any]:
    return {"apiVersion": "mlplane.dev/v1alpha1", "kind": "TrainingJob",
            "metadata": {"name": "fuzz", "namespace": "ml"},
            "spec": {"entrypoint": "python train.py", **spec}}  # fmt: skip


def nested(depth: int) -> Any:
    value: Any = "x"
    for i in range(depth):
        value = [value] if i % 2 else {"k": value}
    return value


def test_valid_job_is_valid():
    assert check(job()) == []
    assert getattr(validate, "MAX_DEPTH", None) == MAX_DEPTH


@pytest.mark.parametrize("depth", [MAX_DEPTH + 1, 5000])
@pytest.mark.parametrize("field", ["entrypoint", "runtimeEnv", "backoffLimit"])
def test_deep_nesting_is_refused_naming_the_field(field, depth):
    """Was a RecursionError (deepcopy, jsonschema's repr of the value, the CEL converter)."""
    body = job(**{field: nested(depth)})
    problems = check(body)
    assert [(p.path, p.message) for p in problems] == [
        (f"spec.{field}", f"is nested more than {MAX_DEPTH} levels deep")
    ]


def test_free_form_fields_may_nest_within_the_bound():
    assert check(job(runtimeEnv={"env_vars": nested(MAX_DEPTH - 2)})) == []


@pytest.mark.parametrize(
    "value", [2**63, -(2**63) - 1, 10**30, 10**5000], ids=["2^63", "-2^63-1", "1e30", "1e5000"]
)
def test_integers_beyond_int64_are_refused_naming_the_field(value):
    """Was ``overflow`` from every CEL rule, at other fields' paths (and an uncaught
    ValueError for an integer of more than 4300 digits)."""
    body = job(tolerations=[{"operator": "Exists", "tolerationSeconds": value}])
    problems = check(body)
    assert [p.path for p in problems] == ["spec.tolerations[0].tolerationSeconds"]
    assert problems[0].message.startswith("must be a 64-bit integer (got ")
    assert len(problems[0].message) < 100


def test_int64_bounds_themselves_pass_the_shape_check():
    body = job(tolerations=[{"operator": "Exists", "tolerationSeconds": 2**63 - 1}])
    assert check(body) == []


@pytest.mark.parametrize("kind", [["TrainingJob"], {"a": 1}, 3, None])
def test_kind_of_the_wrong_type_is_refused(kind):
    """Was ``TypeError: unhashable type: 'list'``."""
    body = job()
    body["kind"] = kind
    problems = check(body)
    assert [p.path for p in problems] == ["kind"]


def test_deep_kind_and_api_version_are_refused_without_crashing():
    for field in ("kind", "apiVersion"):
        body = job()
        body[field] = nested(5000)
        assert [p.path for p in check(body)] == [field]


@pytest.mark.parametrize("namespace", ["../../etc", "a/b", "UPPER", "x" * 64, "ns\n", "é", 5])
def test_namespace_must_be_a_dns_label(namespace):
    """Was accepted: the local store files objects under ``resources/<plural>/<namespace>/``
    (``../../etc`` wrote outside it)."""
    body = job()
    body["metadata"]["namespace"] = namespace
    assert [p.path for p in check(body)] == ["metadata.namespace"]


@pytest.mark.parametrize("field", ["labels", "annotations"])
@pytest.mark.parametrize("value", ["x", ["a"], {"k": 1}, {"k": True}, {"k": None}, {"k": ["v"]}])
def test_labels_and_annotations_are_strings(field, value):
    """Was accepted (children copy the labels; the API server refuses such objects)."""
    body = job()
    body["metadata"][field] = value
    problems = check(body)
    assert problems
    assert all(p.path.startswith(f"metadata.{field}") for p in problems), problems


def test_a_huge_value_is_not_echoed_in_the_message():
    """A megabyte string made a megabyte message (the InvalidSpec condition's message is
    capped at 32768 characters by the status schema: the status write would be refused)."""
    body = job(workers=[{"name": "g", "accelerator": "A" * 1_000_000, "resources": {"gpu": 1}}])
    problems = check(body)
    assert [p.path for p in problems] == ["spec.workers[0].accelerator"] * len(problems)
    assert all(len(p.message) < 300 for p in problems), [len(p.message) for p in problems]


def test_parse_still_reads_objects_from_the_api_server():
    body = job()
    body["metadata"].update(labels={"team": "ml"}, annotations={"a": "b"}, uid="u",
                            managedFields=[{"manager": "kubectl"}])  # fmt: skip
    assert parse(copy.deepcopy(body)).metadata.labels == {"team": "ml"}


@pytest.mark.parametrize(
    ("spec", "path"),
    [
        (
            {"activeDeadlineSeconds": 60, "checkpoint": {"interval": "1h\n"}},
            "spec.checkpoint.interval",
        ),
        (
            {"workers": [{"name": "g", "resources": {"cpu": "2\n"}}]},
            "spec.workers[0].resources.cpu",
        ),
        ({"workers": [{"name": "g\n"}]}, "spec.workers[0].name"),
        ({"queueName": "q\n"}, "spec.queueName"),
    ],
    ids=["duration", "quantity", "dns-label", "queue"],
)
def test_a_trailing_newline_breaks_every_pattern(spec, path):
    """Was accepted: Python's ``$`` matches before a final newline, the API server's does not
    (so ``mlplane validate`` said valid to what ``kubectl apply`` refuses, and a quantity
    ``"2\\n"`` reached the pods)."""
    assert [p.path for p in check(job(**spec))] == [path]


def test_a_trailing_newline_in_a_decimal_is_refused():
    spec = {"model": {"name": "m", "alias": "a"}, "slo": {"availability": "50\n"}}
    body = {"apiVersion": "mlplane.dev/v1alpha1", "kind": "ModelDeployment",
            "metadata": {"name": "md"}, "spec": spec}  # fmt: skip
    assert [p.path for p in check(body)] == ["spec.slo.availability"]


def test_a_label_with_a_newline_in_the_name_stays_on_one_line() -> None:
    """Found by the fuzz: ``metadata.name: "ab\\n"`` split the CLI's problem line in two."""
    from mlplane.crds.validate import Document

    label = Document("f.yaml", {"kind": "ModelDeployment", "metadata": {"name": "ab\n"}}).label
    assert "\n" not in label
    assert label == "f.yaml: ModelDeployment/'ab\\n'"
