"""The long fuzz: ``tests/fuzz`` with many more examples and a seed of your choice.

The suite runs the same tests derandomized with a modest example count (well under a minute);
this runs them with ``--examples`` examples per test (``MLPLANE_FUZZ_EXAMPLES``), ``--objects``
objects of each kind through the one operator process (``MLPLANE_FUZZ_OPERATOR_OBJECTS``) and
hypothesis seeded with ``--seed`` (a new corpus per seed), then prints one line per test module:
outcome, time, and the examples per second against the suite's own derandomized run (``--vs-ci``
runs that too, as the baseline in the same run). A failure prints hypothesis' smallest example:
turn it into a plain regression test at the layer where the defect lives.

Run from the repository root::

    .venv/bin/python bench/fuzz.py [--seed 1] [--examples 2000] [--objects 40] [--vs-ci]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODULES = ("test_fuzz_resources.py", "test_fuzz_serving.py", "test_fuzz_operator.py")


def run(module: str, env: dict[str, str], seed: int | None) -> tuple[bool, float, str]:
    """One test module in a pytest of its own: passed, seconds, the end of its output."""
    args = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "-x",
            str(ROOT / "tests" / "fuzz" / module)]  # fmt: skip
    if seed is not None:
        args.append(f"--hypothesis-seed={seed}")
    started = time.monotonic()
    done = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, check=False)
    return done.returncode == 0, time.monotonic() - started, (done.stdout + done.stderr)[-6000:]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=1, help="hypothesis seed (a new corpus)")
    parser.add_argument("--examples", type=int, default=2000, help="examples per test")
    parser.add_argument(
        "--objects", type=int, default=40, help="objects of each kind through the operator"
    )
    parser.add_argument("--vs-ci", action="store_true",
                        help="also run the suite's derandomized size, as the baseline")  # fmt: skip
    parser.add_argument("--only", choices=MODULES, help="one module")
    options = parser.parse_args()
    long_env = {**os.environ, "MLPLANE_FUZZ_EXAMPLES": str(options.examples),
                "MLPLANE_FUZZ_OPERATOR_OBJECTS": str(options.objects)}  # fmt: skip
    ci_env = {k: v for k, v in os.environ.items() if not k.startswith("MLPLANE_FUZZ_")}
    failed = 0
    print(f"seed {options.seed}: {options.examples} examples per test, {options.objects} "
          f"objects of each kind through the operator")  # fmt: skip
    print(f"{'module':28} {'outcome':8} {'seconds':>8} {'ci seconds':>10} {'ratio':>6}")
    for module in [options.only] if options.only else MODULES:
        ok, seconds, tail = run(module, long_env, options.seed)
        base = run(module, ci_env, None)[1] if options.vs_ci else None
        ratio = f"{seconds / base:6.1f}" if base else "     -"
        print(f"{module:28} {'passed' if ok else 'FAILED':8} {seconds:8.1f} "
              f"{base if base is not None else float('nan'):10.1f} {ratio}")  # fmt: skip
        if not ok:
            failed += 1
            print(tail)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
