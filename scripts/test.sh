#!/usr/bin/env bash
# Install what is missing, then run every test: first everything that needs no Ray, then the
# end-to-end tests (real Ray, MLflow) inside a private network namespace so that nothing they
# start listens beyond this machine's loopback. Exits non-zero on any failure.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
"$ROOT/scripts/setup.sh"

export PATH="$ROOT/.tools/bin:$ROOT/.venv/bin:$PATH"

rc=0
# Static checks on the source tree (``mlplane/`` links the top-level folders, so both resolve
# ``mlplane.*`` from here): the import contracts, and the types of the operator and API types.
echo "== import contracts (lint-imports)"
.venv/bin/lint-imports || rc=$?
echo "== types (mypy: mlplane.operator, mlplane.crds)"
.venv/bin/mypy || rc=$?

echo "== unit and integration tests"
# Two worker processes, a whole module each at a time (module fixtures such as an emulator and
# its operator stay in one process); MLPLANE_TEST_WORKERS=0 runs them in this process.
workers=${MLPLANE_TEST_WORKERS:-2}
xdist=()
[ "$workers" != 0 ] && xdist=(-n "$workers" --dist loadfile)
.venv/bin/pytest -m "not e2e" -p no:cacheprovider "${xdist[@]}" "$@" || rc=$?

echo "== end-to-end tests (local platform: real Ray and MLflow, private network namespace)"
# Modules in a shuffled order (the seed is printed; `-p no:random_order` to turn it off):
# each must set up what it needs and leave nothing behind (tests/e2e/conftest.py).
e2e=(.venv/bin/pytest -m e2e -p no:cacheprovider --random-order-bucket=module "$@")
if [ "$(id -u)" = 0 ] && command -v unshare >/dev/null 2>&1; then
  unshare -n bash -c 'ip link set lo up && exec "$@"' bash "${e2e[@]}" || rc=$?
else
  echo "warning: not root, running e2e tests without a private network namespace" >&2
  "${e2e[@]}" || rc=$?
fi
exit $rc
