#!/usr/bin/env bash
# The main demo on the local platform: install what is missing, start Ray and MLflow on this
# machine, train the example model, serve it and send it a few predictions. Stop everything with
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
echo "== serving: a ModelDeployment of model churn @champion on Ray Serve"
$M apply -f crds/examples/modeldeployment-local.yaml --wait --timeout 600
$M get md
echo "== three predictions (crds/examples/churn-requests.json)"
$M predict churn -f crds/examples/churn-requests.json
echo "== A/B test: a candidate version against the champion, synthetic users converting"
$M apply -f crds/examples/trainingjob-local-candidate.yaml --wait
$M apply -f crds/examples/abtest-local.yaml
$M traffic churn -f crds/examples/churn-requests.json --requests 4000 \
  --conversion control=0.2 --conversion candidate=0.35 --until-concluded churn-candidate
$M get abt
$M describe abt churn-candidate
CANDIDATE=$($M get tj churn-candidate -o yaml | sed -n 's|^ *modelUri: models:/churn/||p')
if $M get abt churn-candidate -o yaml | grep -q 'decision: Promote'; then
  echo "== promoted: champion -> version $CANDIDATE; waiting for the deployment to serve it alone"
  for _ in $(seq 90); do
    MD=$($M get md churn -o yaml)
    grep -q "servedVersion: '$CANDIDATE'" <<<"$MD" && grep -q "phase: Ready" <<<"$MD" && break
    sleep 2
  done
fi
$M get md
$M predict churn -f crds/examples/churn-requests.json
ENDPOINT=$($M get md churn -o yaml | sed -n 's/^ *endpoint: //p')
cat <<TXT

The local platform is running:
  Model endpoint  $ENDPOINT   (POST /v1/predict, GET /v1/models, GET /v1/drift)
  MLflow UI       http://127.0.0.1:5000   (experiment "churn", model "churn" @champion)
  Ray dashboard   http://127.0.0.1:8265
Try:   curl -s -H 'content-type: application/json' -d @crds/examples/churn-requests.json \\
         $ENDPOINT/v1/predict
Look:  .venv/bin/mlplane describe tj churn-local      (conditions, events)
       .venv/bin/mlplane describe md churn
Stop:  .venv/bin/mlplane local down
TXT
