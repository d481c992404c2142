"""Where the test toolchain lives: helm (v4) and checkov, outside the project's venv.

Tests fail (not skip) when a tool is missing: a silently skipped chart test would hide a broken
chart. The message says how to install the tool.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _find(env: str, local: Path, on_path: str | None = None) -> Path | None:
    if os.environ.get(env):
        return Path(os.environ[env])
    if local.exists():
        return local
    found = shutil.which(on_path) if on_path else None
    return Path(found) if found else None


def helm() -> Path:
    """The helm binary: $HELM, else .tools/bin/helm; raises with instructions if absent.

    A helm on PATH is not used: it may be v3, and the chart is tested with the pinned v4.
    """
    path = _find("HELM", REPO / ".tools" / "bin" / "helm")
    if path is None or not path.exists():
        raise FileNotFoundError(
            "helm not found: run `python tests/tools/install_helm.py` (installs the pinned "
            "helm v4 into .tools/bin/helm) or set $HELM to a helm v4 binary"
        )
    return path


def checkov() -> Path:
    """The checkov executable: $CHECKOV, else .tools/checkov/bin/checkov, else on PATH."""
    path = _find("CHECKOV", REPO / ".tools" / "checkov" / "bin" / "checkov", "checkov")
    if path is None or not path.exists():
        raise FileNotFoundError(
            "checkov not found: run `python tests/tools/install_checkov.py` (installs the "
            "pinned checkov into its own venv, .tools/checkov) or set $CHECKOV"
        )
    return path
