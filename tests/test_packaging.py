"""The distribution's shape: import names, layering, lint. Run as subprocesses, like users do."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def run(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=300, check=False)


def test_stdlib_operator_is_not_shadowed(tmp_path):
    code = "import operator, mlplane.operator; operator.itemgetter; print(operator.__file__)"
    for cwd in (REPO, tmp_path):
        result = run(sys.executable, "-c", code, cwd=cwd)
        assert result.returncode == 0, result.stderr
        assert "mlplane" not in result.stdout and "site-packages" not in result.stdout


def test_no_top_level_operator_package_is_installed():
    import importlib.metadata

    files = importlib.metadata.files("mlplane") or []
    tops = {f.parts[0] for f in files if f.suffix in ("", ".py", ".pth")}
    assert not {"operator", "crds", "serving", "training", "monitoring"} & tops


def test_subpackages_map_to_the_top_level_folders():
    import mlplane.crds
    import mlplane.monitoring
    import mlplane.operator
    import mlplane.serving
    import mlplane.training

    for module, folder in ((mlplane.crds, "crds"), (mlplane.operator, "operator"),
                           (mlplane.serving, "serving"), (mlplane.training, "training"),
                           (mlplane.monitoring, "monitoring")):  # fmt: skip
        assert Path(module.__file__).parent == REPO / folder


def test_import_linter_contracts_hold(tmp_path):
    """Checked on the layout a wheel installs (mlplane/crds, mlplane/operator, ...).

    grimp walks a package's folder and cannot follow the editable install's package-dir
    mapping, so the Python files are laid out as in the wheel, away from the repository root
    (lint-imports puts its working directory first on the path).
    """
    import shutil

    root = tmp_path / "mlplane"
    shutil.copytree(REPO / "mlplane", root, ignore=shutil.ignore_patterns("__pycache__"))
    for folder in ("crds", "operator", "serving", "training", "monitoring"):
        shutil.copytree(
            REPO / folder,
            root / folder,
            ignore=shutil.ignore_patterns("__pycache__", "*.yaml", "*.json"),
        )
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    command = [str(BIN / "lint-imports"), str(REPO / "pyproject.toml")]
    result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True,
                            timeout=300, check=False)  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


def test_ruff_is_clean():
    result = run(str(BIN / "ruff"), "check", ".")
    assert result.returncode == 0, result.stdout + result.stderr


def test_console_script_runs():
    result = run(str(BIN / "mlplane"), "--help")
    assert result.returncode == 0, result.stderr
    for command in ("crds", "validate", "render", "local", "operator"):
        assert command in result.stdout
