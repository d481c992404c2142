"""Generated resources through the real operator (a process of its own) on the emulator.

One operator process for the module and many generated objects through it at once: every
mutated one must end ``phase: Failed`` with ``InvalidSpec`` naming the broken field and nothing
created for it; every valid one must progress (a TrainingJob gets its RayJob, a
ModelDeployment its RayService, an ABTest a status whose conditions say what it waits for);
every status the operator writes must pass the CRD's status schema (what the API server would
refuse to store: a stuck object); and the operator must log no error and no traceback.
"""

from __future__ import annotations

import os
from typing import Any

import jsonschema
import mlflow
import pytest
from fuzz_strategies import KINDS, mutated, names_field, schemas, valid
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from k8s.harness import create, run_operator_process, stored, wait_for
from mlflow.tracking import MlflowClient
from sklearn.linear_model import LogisticRegression

from mlplane.operator import conditions
from mlplane.operator.registry import process_uris

NAMESPACE = "fuzz"
MODEL = "fuzz-model"
#: Objects of each kind through the one operator (more with MLPLANE_FUZZ_EXAMPLES).
PER_KIND = int(os.environ.get("MLPLANE_FUZZ_OPERATOR_OBJECTS", "4"))
EXAMPLES = int(os.environ.get("MLPLANE_FUZZ_EXAMPLES", "0"))
#: The operator settles a dozen objects a second here; the bound only stops a stuck run.
TIMEOUT = max(60, 15 * PER_KIND)
CHILDREN = {"TrainingJob": "ray.io/v1/rayjobs", "ModelDeployment": "ray.io/v1/rayservices"}


@pytest.fixture(scope="module")
def mlflow_uri(tmp_path_factory):
    """A registry with one real model version and the alias ``champion`` on it."""
    folder = tmp_path_factory.mktemp("mlflow-fuzz")
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    old = os.environ.get("MLPLANE_MLFLOW_TRACKING_URI")
    os.environ["MLPLANE_MLFLOW_TRACKING_URI"] = uri
    client = MlflowClient(uri)
    experiment = client.create_experiment("fuzz", artifact_location=(folder / "a").as_uri())
    with process_uris(uri), mlflow.start_run(experiment_id=experiment):
        mlflow.sklearn.log_model(LogisticRegression().fit([[0.0], [1.0]], [0, 1]), name="model",
                                 registered_model_name=MODEL, pip_requirements=["scikit-learn"],
                                 serialization_format="skops")  # fmt: skip
    client.set_registered_model_alias(MODEL, "champion", "1")
    yield uri
    if old is None:
        os.environ.pop("MLPLANE_MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLPLANE_MLFLOW_TRACKING_URI"] = old


def _depth(value: Any) -> int:
    depth, level = 0, [value]
    while level:
        depth += 1
        level = [v for x in level for v in (x.values() if isinstance(x, dict) else
                                             x if isinstance(x, list) else ())]  # fmt: skip
    return depth


def _runnable(obj: dict[str, Any]) -> dict[str, Any]:
    """A valid object this operator can act on: its namespace, the registered model, the
    operator's own MLflow (another tracking URI is refused by policy, tested elsewhere)."""
    obj["metadata"]["namespace"] = NAMESPACE
    spec = obj["spec"]
    if obj["kind"] == "TrainingJob":
        spec.get("mlflow", {}).pop("trackingUri", None)
    if obj["kind"] == "ModelDeployment":
        ref = spec["model"]
        ref["name"] = MODEL
        ref.pop("allowUnsafeDeserialization", None)
        if "alias" in ref:
            ref["alias"] = "champion"
        else:
            ref["version"] = 1
        spec.pop("feedback", None)  # its token Secret would have to exist first
    return obj


def _examples(strategy: st.SearchStrategy[Any], count: int) -> list[Any]:
    """``count`` examples of a derandomized hypothesis run (hypothesis as a generator: the
    checks below need all objects in the operator at once, not one example at a time)."""
    found: list[Any] = []

    @settings(max_examples=count, derandomize=not EXAMPLES, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))  # fmt: skip
    @given(strategy)
    def take(example: Any) -> None:
        found.append(example)

    take()
    return found


def _operator_can_store(bad: dict[str, Any], mutation: Any) -> bool:
    """Mutations the API server itself refuses before any CRD schema (routing, naming,
    metadata, bodies nested too deep to decode) never reach an operator."""
    return mutation.path.split(".")[0] not in ("apiVersion", "kind", "metadata") and (
        _depth(bad) <= 60
    )


def draw_corpus() -> list[tuple[dict[str, Any], Any]]:
    """PER_KIND valid and up to PER_KIND mutated objects of every kind, uniquely named."""
    out: list[tuple[dict[str, Any], Any]] = []
    for kind in KINDS:
        prefix = kind.lower()[:5]
        goods = _examples(valid(kind), PER_KIND * 2)[-PER_KIND:]
        for i, good in enumerate(goods):
            good = _runnable(good)
            good["metadata"]["name"] = f"{prefix}-ok-{i}"
            out.append((good, None))
        bads = [(b, m) for b, m in _examples(mutated(kind), PER_KIND * 4)
                if _operator_can_store(b, m)][-PER_KIND:]  # fmt: skip
        for i, (bad, mutation) in enumerate(bads):
            bad["metadata"] = {"name": f"{prefix}-bad-{i}", "namespace": NAMESPACE}
            out.append((bad, mutation))
    return out


def status_problems(obj: dict[str, Any]) -> list[str]:
    """What the API server would refuse in the status the operator wrote (the status
    subresource is validated against the CRD's schema: a refused write is a stuck object)."""
    current = stored_any(obj)
    status = (current or {}).get("status")
    if not status:
        return []
    schema = schemas()[obj["kind"]]["properties"]["status"]
    return [f"{list(e.absolute_path)}: {e.message[:200]}"
            for e in jsonschema.Draft7Validator(schema).iter_errors(status)]  # fmt: skip


_EMULATOR: list[Any] = []


def stored_any(obj: dict[str, Any]) -> dict[str, Any] | None:
    return stored(_EMULATOR[0], obj)


def settled(obj: dict[str, Any], mutation: Any) -> bool:
    current = stored_any(obj) or {}
    status = current.get("status") or {}
    if mutation is not None:
        return conditions.find(status.get("conditions"), "InvalidSpec") is not None
    kind = obj["kind"]
    if kind in CHILDREN and not obj["spec"].get("suspend"):
        return bool(children_of(obj))
    return bool(status.get("phase")) and bool(status.get("conditions"))


def children_of(obj: dict[str, Any]) -> list[dict[str, Any]]:
    if obj["kind"] not in CHILDREN:
        return []
    name = obj["metadata"]["name"]
    return [
        c
        for c in _EMULATOR[0].list_objects(CHILDREN[obj["kind"]], NAMESPACE)
        if any(r.get("name") == name for r in c["metadata"].get("ownerReferences", []))
    ]


async def test_generated_objects_through_the_operator(emulator, kubeconfig, mlflow_uri):
    _EMULATOR[:] = [emulator]
    objects = draw_corpus()
    assert sum(m is None for _, m in objects) == PER_KIND * len(KINDS)
    assert sum(m is not None for _, m in objects) >= PER_KIND  # most survive the filters
    async with run_operator_process(tag="fuzz") as operator:
        uids = {}
        for body, _ in objects:
            uids[body["kind"], body["metadata"]["name"]] = (await create(emulator, body))[
                "metadata"
            ]["uid"]

        def said(o: dict[str, Any]) -> list[str]:
            uid = uids[o["kind"], o["metadata"]["name"]]
            return operator.said_about({"metadata": {"uid": uid}})[-3:]

        def pending() -> list[str]:
            operator.check()
            return [f"{o['kind']}/{o['metadata']['name']} ({m}): {said(o)}"
                    for o, m in objects if not settled(o, m)]  # fmt: skip

        await wait_for(lambda: not pending(), timeout=TIMEOUT, message="every object to settle",
                       seen=pending)  # fmt: skip
        for obj, mutation in objects:
            current = stored_any(obj)
            status = current.get("status") or {}
            what = f"{obj['kind']}/{obj['metadata']['name']}"
            assert status_problems(obj) == [], f"{what}: status refused by the schema"
            invalid = conditions.find(status.get("conditions"), "InvalidSpec")
            if mutation is None:
                assert invalid is None, f"{what}: valid but refused: {invalid}"
                assert status.get("phase") != "Failed", f"{what}: {status}"
                continue
            assert status["phase"] == "Failed", f"{what} ({mutation}): {status}"
            problems = [p.partition(": ") for p in invalid["message"].split("; ")]
            assert any(names_field(path, msg, mutation.path) or mutation.path in msg
                       for path, _, msg in problems), (
                f"{what} ({mutation}): {invalid['message'][:1000]}")  # fmt: skip
            assert children_of(obj) == [], f"{what}: children created for an invalid object"
        # A write the emulator answered late is retried and logged ("failed temporarily ...
        # tried again"): allowed, the object settled. A handler that crashed is not.
        errors = [r.getMessage()[:500] for r in operator.records if r.levelname == "ERROR"
                  and "failed temporarily" not in r.getMessage()]  # fmt: skip
        assert errors == []
        assert "Traceback" not in operator.stderr.read_text(errors="replace")[-20000:]
