"""Fuzz tests: generated resources and request bodies (``bench/fuzz.py`` runs many more)."""

import os
import sys
from pathlib import Path

# ``tests/`` holds the shared ``k8s`` harness package; make it importable from this folder.
_TESTS = str(Path(__file__).resolve().parents[1])
if _TESTS not in sys.path:
    sys.path.insert(0, _TESTS)

# The operator process reads its settings at start: timers look every second in tests.
os.environ.setdefault("MLPLANE_RECONCILE_INTERVAL", "1")
os.environ.setdefault("MLPLANE_RETRY_DELAY", "2")
os.environ.setdefault("MLPLANE_RESOLVE_INTERVAL", "1")

from k8s.harness import emulator, kubeconfig  # noqa: E402, F401 - fixtures
