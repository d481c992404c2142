"""Nothing per object at module level, and nothing but the settings reads the environment."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

from mlplane import crds
from mlplane.operator import handlers
from mlplane.operator.handlers import abtest, ledger, modeldeployment, signing, state, trainingjob
from mlplane.operator.handlers.state import ObjectState, newer

ROOT = Path(__file__).resolve().parents[2]


def _environment_reads(tree: ast.AST) -> Iterator[tuple[int, str]]:
    """``os.environ.get("MLPLANE_...")``, ``os.environ["MLPLANE_..."]``, ``os.getenv(...)``."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and node.args:
            fn, arg = node.func, node.args[0]
            name = ast.unparse(fn)
            if name in ("os.environ.get", "os.getenv", "environ.get", "getenv"):
                yield node.lineno, ast.unparse(arg)
        if (
            isinstance(node, ast.Subscript)
            and ast.unparse(node.value) == "os.environ"
            and not isinstance(node.ctx, ast.Store)
        ):
            yield node.lineno, ast.unparse(node.slice)


def test_only_the_settings_read_the_environment():
    """No operator module reads an ``MLPLANE_*`` variable itself (at import or per call)."""
    found = []
    for path in sorted((ROOT / "operator").rglob("*.py")):
        if path.name == "config.py" and path.parent.name == "operator":
            continue
        tree = ast.parse(path.read_text())
        for line, arg in _environment_reads(tree):
            if "MLPLANE_" in arg:
                found.append(f"{path.relative_to(ROOT)}:{line} reads {arg}")
    assert found == []


def test_handler_modules_keep_no_mutable_state_but_registrations():
    """Per-object state lives in Kopf's memo (``handlers/state.py``), never in a module."""
    registrations = {"_RECONCILERS", "_PACED", "_OWNED"}  # what is registered, not per object
    found = []
    for module in (handlers, abtest, ledger, modeldeployment, signing, state, trainingjob):
        for name, value in vars(module).items():
            if name.startswith("__") or name in registrations or value is vars(crds).get(name):
                continue
            ours = type(value).__module__.startswith("mlplane.") and not callable(value)
            if isinstance(value, dict | list | set) or ours:
                found.append(f"{module.__name__}.{name}")
    assert found == []


# --- what the Kopf handlers trust of their own last write ---------------------------------------


def body(version: str, status: dict | None = None) -> dict:
    return {"metadata": {"resourceVersion": version}, "status": status or {}}


def test_resource_versions_compare_as_revisions_else_never_newer():
    assert newer("10", "9") and not newer("9", "10") and not newer("10", "10")
    assert newer("10", "10", or_same=True)
    assert not newer("abc", "1") and not newer("2", None) and not newer(None, "1")


def test_a_written_status_is_trusted_only_over_older_bodies():
    state = ObjectState()
    assert state.ahead_of(body("5")) is None
    state.wrote({"phase": "Running"}, "10")
    assert state.ahead_of(body("9")) == {"phase": "Running"}  # the body predates our write
    assert state.ahead_of(body("10")) is None  # the body is our write
    assert state.ahead_of(body("11", {"phase": "Failed"})) is None  # someone wrote after us
    state.wrote({"phase": "Pending"}, None)  # nothing written: the last write stays
    assert state.ahead_of(body("9")) == {"phase": "Running"}


def test_a_held_status_is_trusted_until_anyone_writes():
    state = ObjectState()
    state.hold({"phase": "Concluded"}, body("7"))
    assert state.ahead_of(body("7")) == {"phase": "Concluded"}  # the write has not landed
    assert state.ahead_of(body("8")) is None  # someone wrote since: the body wins
    state.wrote({"phase": "Concluded"}, "9")
    assert state.ahead_of(body("8")) == {"phase": "Concluded"}
