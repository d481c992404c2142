"""Operator tests run the real Kopf operator against the in-memory API server of ``tests/k8s``."""

import sys
from pathlib import Path

# ``tests/`` holds the shared ``k8s`` harness package; make it importable from this folder.
_TESTS = str(Path(__file__).resolve().parents[1])
if _TESTS not in sys.path:
    sys.path.insert(0, _TESTS)

from k8s.harness import emulator, kubeconfig, operator  # noqa: E402, F401 - fixtures
