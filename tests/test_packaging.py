"""The distribution's shape: import names, layering, lint. Run as subprocesses, like users do."""

from __future__ import annotations

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


FOLDERS = ("crds", "operator", "serving", "training", "monitoring")


def test_subpackages_map_to_the_top_level_folders():
    import mlplane.crds
    import mlplane.monitoring
    import mlplane.operator
    import mlplane.serving
    import mlplane.training

    for module, folder in ((mlplane.crds, "crds"), (mlplane.operator, "operator"),
                           (mlplane.serving, "serving"), (mlplane.training, "training"),
                           (mlplane.monitoring, "monitoring")):  # fmt: skip
        assert Path(module.__file__).resolve().parent == REPO / folder


def test_the_source_tree_is_the_import_tree():
    """``mlplane/<folder>`` links each top-level folder, so tools that walk a package's folder
    (import-linter's grimp, mypy) see ``mlplane.*`` in the source tree itself."""
    for folder in FOLDERS:
        link = REPO / "mlplane" / folder
        assert link.is_symlink() and link.resolve() == REPO / folder, link


def test_import_linter_contracts_hold_on_the_source_tree():
    """Run from the repository root, as a developer would (lint-imports puts its working
    directory first on the path: ``mlplane/`` and its links are what it analyses)."""
    result = run(str(BIN / "lint-imports"))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout
    # The contracts looked at the whole tree, not at an empty anchor package.
    analysed = int(result.stdout.split("Analyzed ")[1].split(" files")[0])
    sources = {p.resolve() for f in FOLDERS for p in (REPO / f).rglob("*.py")}
    assert analysed >= len(sources), (analysed, len(sources))


def _source_packages() -> set[str]:
    """Every package of the source tree: ``mlplane`` and each folder with an ``__init__.py``."""
    out = {"mlplane"}
    for folder in FOLDERS:
        for init in (REPO / folder).rglob("__init__.py"):
            parts = init.parent.relative_to(REPO).parts
            out.add(".".join(("mlplane", *parts)))
    return out


def test_every_package_is_in_the_wheel(tmp_path):
    """Build the wheel as a user's pip would and compare: a package missing from
    ``[tool.setuptools] packages`` would install without its modules."""
    import zipfile

    result = run(str(BIN / "pip"), "wheel", "--quiet", "--no-deps", "--no-build-isolation",
                 "--wheel-dir", str(tmp_path), str(REPO))  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    [wheel] = tmp_path.glob("mlplane-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    inits = {n[: -len("/__init__.py")].replace("/", ".") for n in names
             if n.endswith("/__init__.py")}  # fmt: skip
    assert inits == _source_packages()
    # Every module of every package, and the data the code reads at run time.
    modules = {n for n in names if n.endswith(".py")}
    for folder in FOLDERS:
        for source in (REPO / folder).rglob("*.py"):
            if "__pycache__" not in source.parts:
                assert f"mlplane/{source.relative_to(REPO)}" in modules, source
    assert any(n.startswith("mlplane/crds/") and n.endswith(".yaml") for n in names)
    assert any(n.startswith("mlplane/monitoring/generated/") for n in names)


def test_ruff_is_clean():
    result = run(str(BIN / "ruff"), "check", ".")
    assert result.returncode == 0, result.stdout + result.stderr


def test_console_script_runs():
    result = run(str(BIN / "mlplane"), "--help")
    assert result.returncode == 0, result.stderr
    for command in ("crds", "validate", "render", "local", "operator"):
        assert command in result.stdout
