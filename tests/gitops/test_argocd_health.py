"""The Argo CD health checks, run in Lua 5.1 (what Argo CD's gopher-lua implements) via lupa.

Each kind's `health_test.yaml` lists fixtures and the health Argo CD must report for them, in
the format of Argo CD's own resource_customizations tests. The fixtures are realistic objects:
their spec and status validate against mlplane's CRD schemas.
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from lupa import lua51

from mlplane.crds.schema import schema_by_kind
from mlplane.crds.validate import check, unknown_fields

REPO = Path(__file__).resolve().parents[2]
ARGOCD = REPO / "gitops" / "argocd"
HEALTH = ARGOCD / "health"
KINDS = ("TrainingJob", "ModelDeployment", "ABTest")
STATUSES = {"Healthy", "Progressing", "Degraded", "Suspended", "Missing", "Unknown"}

_spec = importlib.util.spec_from_file_location("_render_cm", ARGOCD / "render_cm.py")
assert _spec is not None and _spec.loader is not None
render_cm = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(render_cm)


def script_path(kind: str) -> Path:
    return HEALTH / "mlplane.dev" / kind / "health.lua"


def _to_lua(runtime: Any, value: Any) -> Any:
    """JSON-like Python → Lua, as Argo CD converts objects: lists 1-based, null dropped."""
    if isinstance(value, dict):
        table = runtime.table()
        for key, item in value.items():
            if item is not None:
                table[key] = _to_lua(runtime, item)
        return table
    if isinstance(value, list):
        table = runtime.table()
        for i, item in enumerate(value, start=1):
            table[i] = _to_lua(runtime, item)
        return table
    return value


def run_health(kind: str, obj: dict[str, Any]) -> dict[str, str]:
    """Run a kind's health.lua on an object the way Argo CD does; return {status, message}."""
    runtime = lua51.LuaRuntime(unpack_returned_tuples=False, register_eval=False)
    g = runtime.globals()
    # Argo CD offers no file, OS or module access to health scripts; neither do we.
    for name in ("io", "os", "require", "dofile", "loadfile", "package", "debug"):
        g[name] = None
    g.obj = _to_lua(runtime, obj)
    result = runtime.execute(script_path(kind).read_text())
    assert lua51.lua_type(result) == "table", f"{kind}: health.lua returned {result!r}"
    out = {str(k): v for k, v in result.items()}
    assert set(out) <= {"status", "message"}, out
    assert out.get("status") in STATUSES, out
    assert isinstance(out.get("message", ""), str), out
    return out


def health_tests(kind: str) -> list[dict[str, Any]]:
    path = HEALTH / "mlplane.dev" / kind / "health_test.yaml"
    return yaml.safe_load(path.read_text())["tests"]


CASES = [(kind, case) for kind in KINDS for case in health_tests(kind)]


@pytest.mark.parametrize(
    ("kind", "case"), CASES, ids=[f"{k}-{Path(c['inputPath']).stem}" for k, c in CASES]
)
def test_fixture_health(kind: str, case: dict[str, Any]) -> None:
    obj = yaml.safe_load((HEALTH / "mlplane.dev" / kind / case["inputPath"]).read_text())
    assert run_health(kind, obj) == case["healthStatus"]


@pytest.mark.parametrize("kind", KINDS)
def test_each_kind_covers_healthy_progressing_degraded(kind: str) -> None:
    seen = {case["healthStatus"]["status"] for case in health_tests(kind)}
    assert {"Healthy", "Progressing", "Degraded"} <= seen
    messages = [c["inputPath"] for c in health_tests(kind)]
    assert any("invalid_spec" in m for m in messages), "InvalidSpec → Degraded is not covered"
    assert any("stale_generation" in m for m in messages), "stale generation is not covered"


@pytest.mark.parametrize("kind", KINDS)
def test_every_fixture_is_listed_once(kind: str) -> None:
    folder = HEALTH / "mlplane.dev" / kind
    listed = [c["inputPath"] for c in health_tests(kind)]
    assert len(listed) == len(set(listed))
    on_disk = sorted(str(p.relative_to(folder)) for p in (folder / "testdata").glob("*.yaml"))
    assert sorted(listed) == on_disk


@pytest.mark.parametrize(
    ("kind", "case"), CASES, ids=[f"{k}-{Path(c['inputPath']).stem}" for k, c in CASES]
)
def test_fixtures_are_valid_mlplane_objects(kind: str, case: dict[str, Any]) -> None:
    obj = yaml.safe_load((HEALTH / "mlplane.dev" / kind / case["inputPath"]).read_text())
    assert obj["kind"] == kind
    assert check(obj) == []
    if "status" in obj:
        schema = schema_by_kind()[kind]["properties"]["status"]
        jsonschema.validate(obj["status"], schema)
        assert list(unknown_fields(schema, obj["status"])) == []


def _common_block(source: str) -> str:
    match = re.search(r"-- common:.*?-- end common[^\n]*\n", source, re.S)
    assert match, "the common block markers are missing"
    return match.group(0)


def test_common_block_is_identical_in_every_script() -> None:
    blocks = {kind: _common_block(script_path(kind).read_text()) for kind in KINDS}
    assert len(set(blocks.values())) == 1, "edit the common block in all three scripts alike"


def test_argocd_cm_is_current_and_holds_the_scripts() -> None:
    assert render_cm.main(["--check"]) == 0, "run: python gitops/argocd/render_cm.py"
    cm = yaml.safe_load((ARGOCD / "argocd-cm.yaml").read_text())
    assert cm["metadata"]["name"] == "argocd-cm"
    expected = {
        f"resource.customizations.health.mlplane.dev_{kind}": script_path(kind).read_text()
        for kind in KINDS
    }
    assert cm["data"] == expected


# --- properties over arbitrary (schema-shaped) statuses ----------------------------------------

CONDITION_TYPES = [
    "Succeeded", "Ready", "Drifted", "InvalidSpec", "Running", "Retrying", "Stalled",
]  # fmt: skip
_condition = st.fixed_dictionaries(
    {
        "type": st.sampled_from(CONDITION_TYPES),
        "status": st.sampled_from(["True", "False", "Unknown"]),
        "reason": st.sampled_from(["Running", "Failed", "Serving", "Because"]),
        "lastTransitionTime": st.just("2026-11-20T10:00:00Z"),
    },
    optional={"message": st.text(max_size=20), "observedGeneration": st.integers(0, 5)},
)
_status = st.fixed_dictionaries(
    {},
    optional={
        "phase": st.sampled_from(
            ["Pending", "Suspended", "Running", "Succeeded", "Failed", "Ready", "Deploying"]
        ),
        "observedGeneration": st.integers(1, 4),
        "conditions": st.lists(_condition, max_size=4, unique_by=lambda c: c["type"]),
        "attempts": st.integers(0, 5),
        "preemptions": st.integers(0, 5),
        "servedVersion": st.sampled_from(["1", "7"]),
        "decision": st.sampled_from(["Continue", "Promote"]),
    },
)


def _cond(status: dict[str, Any], kind: str) -> str | None:
    for c in status.get("conditions", []):
        if c["type"] == kind:
            return c["status"]
    return None


@settings(max_examples=150, deadline=None, derandomize=True)
@given(
    kind=st.sampled_from(KINDS),
    generation=st.integers(1, 4),
    status=st.one_of(st.none(), _status),
)
def test_health_rules_hold_for_any_status(
    kind: str, generation: int, status: dict[str, Any] | None
) -> None:
    obj: dict[str, Any] = {
        "apiVersion": "mlplane.dev/v1alpha1",
        "kind": kind,
        "metadata": {"name": "x", "namespace": "ns", "generation": generation},
        "spec": {},
    }
    if status is not None:
        obj["status"] = status
    health = run_health(kind, obj)["status"]
    if status is None or status.get("observedGeneration") != generation:
        assert health == "Progressing"
        return
    if _cond(status, "InvalidSpec") == "True":
        assert health == "Degraded"
        return
    key = "Succeeded" if kind == "TrainingJob" else "Ready"
    outcome = _cond(status, key)
    if outcome == "True":
        assert health == "Healthy"
    elif outcome == "False" or (kind == "TrainingJob" and _cond(status, "Stalled") == "True"):
        assert health == "Degraded"  # failed, or stalled: someone must act
    elif kind == "TrainingJob" and status.get("phase") == "Suspended":
        assert health == "Suspended"
    else:
        assert health == "Progressing"
