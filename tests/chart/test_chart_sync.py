"""The chart ships exact copies of generated files: the CRDs, the rules and the dashboards.

Sources of truth: `crds/*.yaml` (written by `mlplane crds generate` from the pydantic types) and
`monitoring/generated/` (written by mlplane.monitoring's generators). The chart holds copies
because a chart can only package files inside its own folder; these tests fail when a copy
drifts from its source.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import kubernetes_validate
import yaml
from chart_support import CHART, REPO, template

CRD_FILES = {
    "mlplane.dev_trainingjobs.yaml",
    "mlplane.dev_modeldeployments.yaml",
    "mlplane.dev_abtests.yaml",
}
GENERATED = REPO / "monitoring" / "generated"


def _files(folder: Path, pattern: str) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.glob(pattern)) if p.is_file()}


def test_chart_crds_are_the_generated_crds() -> None:
    source = _files(REPO / "crds", "*.yaml")
    assert set(source) == CRD_FILES, (
        "crds/*.yaml missing or unexpected: run `mlplane crds generate`"
    )
    shipped = _files(CHART / "crds", "*")
    assert set(shipped) == CRD_FILES, "helm/mlplane/crds/ out of date: run `mlplane crds generate`"
    for name in CRD_FILES:
        assert shipped[name] == source[name], f"helm/mlplane/crds/{name} differs from crds/{name}"


def test_chart_crds_are_valid_crds() -> None:
    crds = [o for o in template("--include-crds") if o["kind"] == "CustomResourceDefinition"]
    assert sorted(c["spec"]["names"]["plural"] for c in crds) == [
        "abtests",
        "modeldeployments",
        "trainingjobs",
    ]
    for crd in crds:
        assert crd["spec"]["group"] == "mlplane.dev"
        kubernetes_validate.validate(crd, "1.30.0", strict=True)
        served = [v for v in crd["spec"]["versions"] if v["served"]]
        assert [v["name"] for v in served] == ["v1alpha1"]
        assert "status" in served[0]["subresources"]


def _is_rule_file(text: str) -> bool:
    """A Prometheus rule file (top-level ``groups``), the form the chart wraps itself.

    The generator also writes the same groups as a whole PrometheusRule (for users without the
    chart); shipping both would load every alert twice, so the chart takes the rule files only.
    Other YAML there (e.g. promtool test files) is not a rule file either.
    """
    doc: Any = yaml.safe_load(text)
    return isinstance(doc, dict) and "groups" in doc and "kind" not in doc


def test_chart_rules_are_the_generated_rules() -> None:
    assert GENERATED.is_dir(), f"{GENERATED} not found: generate the monitoring files first"
    source = {
        name: data
        for name, data in _files(GENERATED, "*.y*ml").items()
        if _is_rule_file(data.decode())
    }
    assert source, f"no rule files in {GENERATED}"
    assert _files(CHART / "files" / "rules", "*.y*ml") == source, (
        "helm/mlplane/files/rules/ differs from the rule files (top-level groups:) in "
        "monitoring/generated/: copy them (cp monitoring/generated/mlplane-rules.yaml "
        "helm/mlplane/files/rules/)"
    )


def test_chart_dashboards_are_the_generated_dashboards() -> None:
    source = _files(GENERATED / "dashboards", "*.json")
    assert source, f"no dashboards in {GENERATED / 'dashboards'}"
    assert _files(CHART / "files" / "dashboards", "*.json") == source, (
        "helm/mlplane/files/dashboards/ differs from monitoring/generated/dashboards/: copy "
        "them (cp monitoring/generated/dashboards/*.json helm/mlplane/files/dashboards/)"
    )
