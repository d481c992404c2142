"""Install a pinned checkov into its own virtualenv, `.tools/checkov`, for the static checks.

Why a separate venv: checkov pins old versions of libraries the project also uses (it would
downgrade boto3 below the project's floor, and packaging/importlib-metadata with it), so it
must not share the project's `.venv`. Tests find it at `.tools/checkov/bin/checkov` (or
`$CHECKOV`).

Idempotent: nothing happens when the pinned version is already installed.

    python tests/tools/install_checkov.py
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DEFAULT_VENV = REPO / ".tools" / "checkov"
VERSION = "3.3.30"


def installed_version(venv: Path) -> str | None:
    """The checkov version in `venv`, read from its metadata (running checkov takes seconds)."""
    if not (venv / "bin" / "checkov").exists():
        return None
    found = sorted(venv.glob("lib/python3*/site-packages/checkov-*.dist-info"))
    if not found:
        return None
    return found[-1].name.removeprefix("checkov-").removesuffix(".dist-info")


def install(venv: Path = DEFAULT_VENV) -> Path:
    """Ensure checkov==VERSION is installed in `venv`; return the checkov executable."""
    if installed_version(venv) != VERSION:
        if not (venv / "bin" / "python").exists():
            # cwd="/": a bare interpreter run from the repository root would import the
            # top-level folder operator/ instead of the standard library's operator.
            subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, cwd="/")
        pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet"]
        subprocess.run(
            [*pip, "--disable-pip-version-check", f"checkov=={VERSION}"], check=True, cwd="/"
        )
        if installed_version(venv) != VERSION:
            raise SystemExit(f"checkov {VERSION} did not install into {venv}")
    return venv / "bin" / "checkov"


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; prints the checkov path."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--venv", type=Path, default=DEFAULT_VENV, help="virtualenv to use")
    args = parser.parse_args(argv)
    print(install(args.venv))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
