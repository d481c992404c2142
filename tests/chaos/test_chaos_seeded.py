"""The seeded subset of ``bench/chaos.py`` in the suite: faults from a fixed seed, 0 violations.

The real operator in a child process against the emulator, a real MLflow server, operator
SIGKILLs, API faults (409, 500, 503, 429, slow, applied-then-503) and MLflow outages; at the
end the invariants of the bench (nothing duplicated, lost or double-counted, counters never
going back, everything converged, children gone after deletion, no crash loop). Small and
short (4 TrainingJobs, 30 faults) so that it fits the CI's budget; the figures of a large run
are in bench/README.md. The seed fixes the schedule of faults, not the timing: a failure prints
the seed and the resource, and the bench reruns it at any size.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"


@pytest.fixture
def chaos():
    sys.path.insert(0, str(BENCH))
    try:
        import chaos as module

        yield module
    finally:
        sys.path.remove(str(BENCH))


@pytest.mark.timeout(600)
async def test_seeded_chaos_run_has_no_invariant_violation(chaos, capsys):
    args = chaos.parse_args([
        "--seed", "11", "--resources", "4", "--faults", "30", "--api-share", "0.7",
        "--chaos-seconds", "30", "--converge-seconds", "180", "--attempt-seconds", "2",
        "--evidence-grace", "4",
    ])  # fmt: skip
    code = await chaos.run(args)
    out = capsys.readouterr().out
    report = out[out.index("faults injected") :] if "faults injected" in out else out[-4000:]
    assert code == 0, report
    assert "operator SIGKILL" in report  # the schedule really killed the operator
    assert "invariant violations: 0" in report
