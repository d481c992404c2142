"""Operator tests run the real Kopf operator against the in-memory API server of ``tests/k8s``."""

import os
import sys
from pathlib import Path

# The operator reads its settings when it starts (each test's operator): timers look every
# second, not every five, in tests.
os.environ.setdefault("MLPLANE_RECONCILE_INTERVAL", "1")
os.environ.setdefault("MLPLANE_RETRY_DELAY", "2")
# TrainingJobs have no timer: events wake them, and the resync (default 300 s) is the safety
# net. Tests that wait for "a round after this moment", or for MLflow progress (which no
# Kubernetes event announces), get one every 2 s; tests of the event-driven loop itself set
# a resync of minutes.
os.environ.setdefault("MLPLANE_RESYNC_INTERVAL", "2")
# ModelDeployments ask MLflow again every second, so a moved alias shows within a test.
os.environ.setdefault("MLPLANE_RESOLVE_INTERVAL", "1")
# A failed spot attempt waits this long for late preemption evidence (default 15 s).
os.environ.setdefault("MLPLANE_PREEMPTION_EVIDENCE_GRACE", "8")

# ``tests/`` holds the shared ``k8s`` harness package; make it importable from this folder.
_TESTS = str(Path(__file__).resolve().parents[1])
if _TESTS not in sys.path:
    sys.path.insert(0, _TESTS)

from k8s.harness import emulator, kubeconfig, operator  # noqa: E402, F401 - fixtures
