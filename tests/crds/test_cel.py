"""The CEL rules in the CRDs compile and mean what their messages say.

Evaluated with cel-python (standard CEL) plus the one Kubernetes list function our rules use
(`sum()`); a rule using any other Kubernetes-only function fails to compile here.
"""

from __future__ import annotations

import pytest

from mlplane.crds import KINDS
from mlplane.crds import cel as cel_rules
from mlplane.crds.schema import openapi_schema

ALL_RULES = sorted({rule for kind in KINDS for rule in cel_rules.rules(openapi_schema(kind))})


def test_there_are_rules():
    assert len(ALL_RULES) >= 15


@pytest.mark.parametrize("rule", ALL_RULES)
def test_every_rule_compiles(rule):
    cel_rules._program(rule)


@pytest.mark.parametrize(
    ("rule", "value", "expected"),
    [
        ("self.variants.map(v, v.weight).sum() == 100",
         {"variants": [{"weight": 90}, {"weight": 10}]}, True),
        ("self.variants.map(v, v.weight).sum() == 100",
         {"variants": [{"weight": 90}, {"weight": 20}]}, False),
        ("has(self.alias) != has(self.version)", {"alias": "champion"}, True),
        ("has(self.alias) != has(self.version)", {"version": 3}, True),
        ("has(self.alias) != has(self.version)", {"alias": "a", "version": 3}, False),
        ("has(self.alias) != has(self.version)", {}, False),
        ("self.min <= self.max", {"min": 2, "max": 2}, True),
        ("self.min <= self.max", {"min": 3, "max": 2}, False),
        ("double(self) > 0.0 && double(self) < 100.0", "99.95", True),
        ("double(self) > 0.0 && double(self) < 100.0", "100", False),
        ("self.workers.all(w, self.workers.exists_one(x, x.name == w.name))",
         {"workers": [{"name": "a"}, {"name": "b"}]}, True),
        ("self.workers.all(w, self.workers.exists_one(x, x.name == w.name))",
         {"workers": [{"name": "a"}, {"name": "a"}]}, False),
    ],
)  # fmt: skip
def test_rule_truth_table(rule, value, expected):
    assert rule in ALL_RULES or rule.startswith("double(self)")
    assert cel_rules.evaluate(rule, value) is expected


def test_unevaluable_rule_is_an_error_not_a_pass():
    with pytest.raises(ValueError, match="could not be evaluated"):
        cel_rules.evaluate("self.missing.size() > 0", {})


def test_unknown_kubernetes_function_does_not_silently_pass():
    with pytest.raises(Exception):  # noqa: B017,PT011 - any failure is right; passing is not
        cel_rules.evaluate("self.items.isSorted()", {"items": [1, 2]})
