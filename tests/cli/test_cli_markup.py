"""User input in CLI messages is printed as text, never read as rich markup (found by the fuzz:
an unknown field named ``[bold]x`` was shown as ``x``, and one named ``[/x]`` crashed the
command with rich's MarkupError instead of naming the field)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from test_cli import mlplane

JOB = {"apiVersion": "mlplane.dev/v1alpha1", "kind": "TrainingJob",
       "metadata": {"name": "markup"}, "spec": {"entrypoint": "python train.py"}}  # fmt: skip


@pytest.mark.parametrize("field", ["[bold]x", "[/x]"])
@pytest.mark.parametrize("command", ["validate", "apply"])
def test_a_field_name_with_markup_is_shown_as_written(tmp_path: Path, command, field):
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump({**JOB, "spec": {**JOB["spec"], field: 1}}))
    extra = ["--state-dir", str(tmp_path / "state")] if command == "apply" else []
    result = mlplane(command, "-f", str(path), *extra)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert f"TrainingJob/markup: spec.{field}: unknown field" in result.stderr


def test_an_error_with_markup_in_a_file_name_is_shown_as_written(tmp_path: Path):
    missing = tmp_path / "[/x].yaml"
    result = mlplane("validate", "-f", str(missing))
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert f"error: {missing}: no such file or directory" in result.stderr
