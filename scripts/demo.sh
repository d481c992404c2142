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
echo "== training: a TrainingJob on the local Ray, checkpointed, registered in MLflow"
$M apply -f crds/examples/trainingjob-local-sklearn.yaml --wait
$M get tj
cat <<TXT

The local platform is running:
  MLflow UI       http://127.0.0.1:5000   (experiment "churn", model "churn" @champion)
  Ray dashboard   http://127.0.0.1:8265
Look:  .venv/bin/mlplane describe tj churn-local      (conditions, events)
Stop:  .venv/bin/mlplane local down
TXT
