"""Helpers of the chart tests: run the pinned helm v4, render the chart, pick objects.

A module of its own (not conftest) so that `from chart_support import ...` can never pick up
another test folder's conftest.
"""

from __future__ import annotations

import importlib.util
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "helm" / "mlplane"
HERE = Path(__file__).resolve().parent
VALUES_ALL = HERE / "values-all.yaml"
FIXTURES = HERE / "fixtures"
NAMESPACE = "mlplane-system"
RELEASE = "mlplane"

_spec = importlib.util.spec_from_file_location("_mlplane_locate", REPO / "tests/tools/locate.py")
assert _spec is not None and _spec.loader is not None
locate = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(locate)


class HelmError(RuntimeError):
    """helm exited non-zero; the message is its stderr."""


def run_helm(*args: str) -> str:
    """Run helm; return stdout or raise HelmError with stderr."""
    try:
        helm = locate.helm()
    except FileNotFoundError as err:
        pytest.fail(str(err), pytrace=False)
    proc = subprocess.run(
        [str(helm), *args], capture_output=True, text=True, timeout=120, check=False
    )
    if proc.returncode != 0:
        raise HelmError(proc.stderr.strip() or proc.stdout.strip())
    return proc.stdout


def template(
    *args: str,
    chart: Path = CHART,
    values: Sequence[Path] = (),
    namespace: str = NAMESPACE,
) -> list[dict[str, Any]]:
    """`helm template` → the rendered objects (empty documents dropped)."""
    cmd = ["template", RELEASE, str(chart), "--namespace", namespace]
    for path in values:
        cmd += ["--values", str(path)]
    out = run_helm(*cmd, *args)
    return [doc for doc in yaml.safe_load_all(out) if doc]


def pod_specs(objects: list[dict[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
    """(kind/name, pod spec) of every workload among the objects."""
    found = []
    for obj in objects:
        kind = obj["kind"]
        spec = obj.get("spec", {})
        if kind == "Pod":
            found.append((f"Pod/{obj['metadata']['name']}", spec))
        elif kind in {"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"}:
            found.append((f"{kind}/{obj['metadata']['name']}", spec["template"]["spec"]))
        elif kind == "CronJob":
            pod = spec["jobTemplate"]["spec"]["template"]["spec"]
            found.append((f"CronJob/{obj['metadata']['name']}", pod))
    return found


def by_kind(objects: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [o for o in objects if o["kind"] == kind]


def one(objects: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = by_kind(objects, kind)
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]
