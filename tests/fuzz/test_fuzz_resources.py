"""Generated resources through ``check``, ``mlplane validate`` and the local ``mlplane apply``.

Valid objects (any field of the API types) must be accepted, applied into the local store as
written, and said valid; every mutated one must be refused with a problem naming the broken
field (or a parent of it), with nothing applied and never a traceback.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
from pathlib import Path
from typing import Any

import pytest
import yaml
from fuzz_strategies import KINDS, Mutation, mutated, names_field, valid
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from mlplane.crds import BY_KIND
from mlplane.crds.validate import Document, InvalidResource, check, parse
from mlplane.operator.cli import app

#: ``MLPLANE_FUZZ_EXAMPLES`` (bench/fuzz.py sets it) runs many more examples.
EXAMPLES = int(os.environ.get("MLPLANE_FUZZ_EXAMPLES", "0"))
FUZZ = settings(
    max_examples=EXAMPLES or 60,
    derandomize=not EXAMPLES,
    deadline=None,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.filter_too_much,
    ],
    database=None,
    # MLPLANE_FUZZ_NO_SHRINK=1: report the first failing example as found (faster to triage).
    phases=[p for p in Phase if p != Phase.shrink or not os.environ.get("MLPLANE_FUZZ_NO_SHRINK")],
)


def cli(*args: str) -> tuple[int, str, str]:
    """``mlplane ARGS`` in this process: exit code, stdout, stderr (an exception propagates:
    a traceback is a failure of the test)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = app(list(args), standalone_mode=False)
    return int(code or 0), out.getvalue(), err.getvalue()


def write(folder: Path, obj: Any) -> Path:
    path = folder / "resource.yaml"
    path.write_text(yaml.safe_dump(obj, sort_keys=False, allow_unicode=True))
    return path


def named(problems: list[Any], mutation: Mutation) -> bool:
    return any(names_field(p.path, p.message, mutation.path) for p in problems)


@pytest.mark.parametrize("kind", KINDS)
@FUZZ
@given(data=st.data())
def test_generated_valid_objects_pass_check_and_parse(kind: str, data: st.DataObject) -> None:
    obj = data.draw(valid(kind))
    assert check(obj) == [], json.dumps(obj)
    assert isinstance(parse(obj), BY_KIND[kind])


@pytest.mark.parametrize("kind", KINDS)
@FUZZ
@given(data=st.data())
def test_mutated_objects_are_refused_naming_the_field(kind: str, data: st.DataObject) -> None:
    obj, mutation = data.draw(mutated(kind))
    problems = check(obj)
    assert problems, f"{mutation}: accepted: {str(obj)[:2000]}"
    assert named(problems, mutation), f"{mutation}: {[str(p)[:300] for p in problems]}"
    with pytest.raises(InvalidResource):
        parse(obj)


def _yaml_safe(obj: Any) -> bool:
    """Whether the object can be written as a YAML file at all (5000 levels cannot)."""
    try:
        yaml.safe_dump(obj)
    except RecursionError:
        return False
    return True


@pytest.mark.parametrize("kind", KINDS)
@settings(FUZZ, max_examples=EXAMPLES or 12)  # each example runs the CLI three times
@given(data=st.data())
def test_validate_and_apply_cli(kind: str, data: st.DataObject, tmp_path_factory) -> None:
    """``mlplane validate`` and ``mlplane apply`` (the local store; no Ray) on one valid and
    one mutated object: the valid one is applied as written, the mutated one is refused with
    a line naming the field and the store is left as it was."""
    folder = tmp_path_factory.mktemp("fuzz")
    state = folder / "state"
    good = data.draw(valid(kind))
    code, out, err = cli("validate", "-f", str(write(folder, good)))
    assert code == 0, err
    assert all(": warning: " in line for line in err.splitlines()), err
    assert out.strip().endswith(": valid")
    code, out, err = cli("apply", "-f", str(write(folder, good)), "--state-dir", str(state))
    assert code == 0, err
    namespace = good["metadata"].get("namespace") or "default"
    stored = yaml.safe_load(
        (
            state
            / "resources"
            / BY_KIND[kind].plural
            / namespace
            / f"{good['metadata']['name']}.yaml"
        ).read_text()
    )
    assert stored["spec"] == good["spec"]
    before = sorted(p.relative_to(folder) for p in folder.rglob("*") if p.is_file())

    bad, mutation = data.draw(mutated(kind))
    if not _yaml_safe(bad):
        return
    path = write(folder, bad)
    for args in (("validate",), ("apply", "--state-dir", str(state))):
        code, out, err = cli(*args, "-f", str(path))
        assert code == 1, f"{mutation}: {args[0]} said {out!r} {err!r}"
        lines = [line for line in err.splitlines() if line.strip()]
        assert lines, f"{mutation}: {args[0]} exited 1 without saying why"
        label = Document(str(path), bad).label
        assert any(_names(line, label, mutation) for line in lines), (
            f"{mutation}: {args[0]} said {err[:2000]!r}"
        )
        assert "Traceback" not in err
    after = sorted(p.relative_to(folder) for p in folder.rglob("*") if p.is_file())
    assert after == before, f"{mutation}: apply changed files"


def _names(line: str, label: str, mutation: Mutation) -> bool:
    """A ``file: Kind/name: path: message`` line naming the field or a parent of it."""
    if not line.startswith(label + ": "):
        return False
    rest = line[len(label) + 2 :]
    path, _, message = rest.partition(": ")
    return names_field(path, message, mutation.path) or names_field("", rest, mutation.path)
