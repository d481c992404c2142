#!/usr/bin/env bash
# The main demo on the local platform: install what is missing, start Ray and MLflow on this
# machine, and check the example resources against the API. Stop everything with
# `.venv/bin/mlplane local down`.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
"$ROOT/scripts/setup.sh"
M=.venv/bin/mlplane

echo "== starting the local platform (Ray + MLflow on 127.0.0.1)"
$M local up
echo "== validating the example resources (schema, CEL rules, models)"
$M validate -f crds/examples
echo "== local platform status"
$M local status
cat <<TXT

The local platform is running:
  MLflow UI       http://127.0.0.1:5000
  Ray dashboard   http://127.0.0.1:8265
Try:   .venv/bin/mlplane validate -f tests/crds/invalid/abt-weights-sum.yaml
Stop:  .venv/bin/mlplane local down
TXT
