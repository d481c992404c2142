"""checkov finds nothing in the rendered manifests, and every exception says why.

checkov runs from its own venv (see tests/tools/install_checkov.py) with --skip-download, so it
works offline and uses only its built-in Kubernetes checks.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from chart_support import VALUES_ALL, locate, pod_specs, template

#: A reason must say something: at least a few words.
MIN_REASON = 20


def checkov_kubernetes(objects: list[dict[str, Any]], where: Path) -> dict[str, Any]:
    try:
        checkov = locate.checkov()
    except FileNotFoundError as err:
        pytest.fail(str(err), pytrace=False)
    where.mkdir(parents=True)
    (where / "rendered.yaml").write_text(yaml.safe_dump_all(objects, sort_keys=False))
    proc = subprocess.run(
        [str(checkov), "-d", str(where), "--framework", "kubernetes", "--skip-download",
         "--output", "json"],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert proc.returncode in (0, 1), proc.stderr[-3000:]
    report = json.loads(proc.stdout)
    assert isinstance(report, dict) and report.get("check_type") == "kubernetes", proc.stdout[:500]
    return report


@pytest.mark.parametrize("values", ["default", "all-features-with-monitoring-files"])
def test_checkov_passes_rendered_manifests(
    values: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    if values == "default":
        objects = template()
    else:
        objects = template(chart=request.getfixturevalue("chart_with_monitoring"),
                           values=[VALUES_ALL])  # fmt: skip
    report = checkov_kubernetes(objects, tmp_path / "manifests")
    summary = report["summary"]
    # checkov counts each workload's pod template as a resource of its own, too.
    assert summary["resource_count"] == len(objects) + len(pod_specs(objects))
    assert summary["parsing_errors"] == 0
    failed = [
        f"{c['check_id']} {c['check_name']} on {c['resource']}"
        for c in report["results"]["failed_checks"]
    ]
    assert failed == []
    assert summary["passed"] > 50
    for check in report["results"]["skipped_checks"]:
        reason = check["check_result"].get("suppress_comment", "")
        assert len(reason) >= MIN_REASON and reason != "No comment provided", check["check_id"]


def test_skips_go_away_when_the_values_make_them_moot() -> None:
    """With a digest and pullPolicy Always, checkov checks those for real (no skip left)."""
    deployment = next(o for o in template(values=[VALUES_ALL]) if o["kind"] == "Deployment")
    skipped = {v.split("=")[0] for v in deployment["metadata"]["annotations"].values()}
    assert skipped == {"CKV_K8S_38"}


def test_checkov_catches_a_privileged_container(tmp_path: Path) -> None:
    """The check above can fail: make the operator privileged and checkov says so."""
    objects = template()
    deployment = next(o for o in objects if o["kind"] == "Deployment")
    deployment["spec"]["template"]["spec"]["containers"][0]["securityContext"]["privileged"] = True
    report = checkov_kubernetes(objects, tmp_path / "manifests")
    failed = {c["check_id"] for c in report["results"]["failed_checks"]}
    assert "CKV_K8S_16" in failed  # "Container should not be privileged"
