"""Hypothesis strategies for valid TrainingJobs and ModelDeployments (as YAML-shaped dicts).

Everything generated passes ``mlplane.crds.validate.parse``; the tests assert it, so a strategy
that drifts from the API fails loudly instead of silently testing less.
"""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st

from mlplane.operator.config import OperatorConfig

NAMES = st.from_regex(r"[a-z][a-z0-9-]{0,30}[a-z0-9]", fullmatch=True)
NAMESPACES = st.sampled_from(["ml-team", "default", "research", "a"])
CPUS = st.sampled_from(["1", "2", "500m", "250m", "1.5", 4, 8, "16", "3500m"])
MEMORY = st.sampled_from(["1Gi", "4Gi", "512Mi", "16G", "1000000000", "32Gi", 2147483648, "1.5Gi"])
ACCELERATORS = st.sampled_from(["nvidia-a10g", "nvidia-l4", "nvidia-tesla-t4", "nvidia-a100-80gb"])
CAPACITIES = st.sampled_from(["OnDemand", "Spot", "SpotWithFallback"])
#: Selector keys that never collide with mlplane's own placement labels.
USER_SELECTORS = st.dictionaries(
    st.sampled_from(["team", "example.com/pool", "topology.kubernetes.io/zone", "tier"]),
    st.sampled_from(["a", "ml", "us-east-1a", "gold"]),
    max_size=2,
)
PARENT_LABELS = st.dictionaries(
    st.sampled_from(["app.kubernetes.io/instance", "team", "argocd.argoproj.io/x", "env"]),
    st.sampled_from(["churn", "prod", "ml-platform"]),
    max_size=3,
)


@st.composite
def tolerations(draw: st.DrawFn) -> dict[str, Any]:
    """A valid toleration (the API's CEL rules hold)."""
    operator = draw(st.sampled_from(["Exists", "Equal"]))
    out: dict[str, Any] = {"operator": operator}
    if operator == "Equal" or draw(st.booleans()):
        out["key"] = draw(st.sampled_from(["dedicated", "example.com/gpu-pool", "nvidia.com/gpu"]))
    if operator == "Equal":
        out["value"] = draw(st.sampled_from(["ml", "true", "x"]))
    effect = draw(st.sampled_from([None, "NoSchedule", "PreferNoSchedule", "NoExecute"]))
    if effect:
        out["effect"] = effect
        if effect == "NoExecute" and draw(st.booleans()):
            out["tolerationSeconds"] = draw(st.integers(0, 3600))
    return out


def _maybe(draw: st.DrawFn, strategy: st.SearchStrategy[Any]) -> Any:
    return draw(strategy) if draw(st.booleans()) else None


def _put(target: dict[str, Any], key: str, value: Any) -> None:
    if value is not None:
        target[key] = value


@st.composite
def worker_groups(draw: st.DrawFn, name: str) -> dict[str, Any]:
    """One valid worker group."""
    replicas = draw(st.integers(0, 8))
    group: dict[str, Any] = {"name": name, "replicas": replicas}
    if draw(st.booleans()):
        group["minReplicas"] = draw(st.integers(0, replicas))
    if draw(st.booleans()):
        group["maxReplicas"] = draw(st.integers(max(replicas, 1), 16))
    gpu = draw(st.sampled_from([0, 0, 1, 2, 4, 8]))
    group["resources"] = {"cpu": draw(CPUS), "memory": draw(MEMORY), "gpu": gpu}
    if gpu > 0 and draw(st.booleans()):
        group["accelerator"] = draw(ACCELERATORS)
    group["capacity"] = draw(CAPACITIES)
    return group


@st.composite
def trainingjobs(draw: st.DrawFn, *, max_groups: int = 4) -> dict[str, Any]:
    """A valid TrainingJob, with a wide mix of optional fields."""
    group_names = draw(
        st.lists(
            # "head" is valid but Kueue reserves it (a test covers that case on its own).
            st.from_regex(r"[a-z][a-z0-9-]{0,12}[a-z0-9]", fullmatch=True).filter(
                lambda n: n != "head"
            ),
            max_size=max_groups,
            unique=True,
        )
    )
    workers = [draw(worker_groups(n)) for n in group_names]
    spec: dict[str, Any] = {"entrypoint": draw(st.sampled_from(["python train.py", "python -m x"]))}
    _put(spec, "image", _maybe(draw, st.sampled_from(["ghcr.io/x/train:1", "repo/img@sha256:ab"])))
    if draw(st.booleans()):
        env = draw(
            st.dictionaries(
                st.sampled_from(["DATA_URI", "EPOCHS", "MLPLANE_ATTEMPT", "SEED"]),
                st.sampled_from(["s3://b/p", "20", "999", "x y"]),
                max_size=3,
            )
        )
        spec["runtimeEnv"] = {"env_vars": env}
        if draw(st.booleans()):
            spec["runtimeEnv"]["pip"] = ["scikit-learn==1.5.0"]
    if draw(st.booleans()):
        spec["head"] = {"resources": {"cpu": draw(CPUS), "memory": draw(MEMORY)}}
    spec["workers"] = workers
    _put(spec, "nodeSelector", _maybe(draw, USER_SELECTORS))
    _put(spec, "tolerations", _maybe(draw, st.lists(tolerations(), max_size=3)))
    if any(w["capacity"] != "OnDemand" for w in workers) or draw(st.booleans()):
        spec["checkpoint"] = {
            "uri": draw(st.sampled_from(["s3://ckpt-bucket/run", "/mnt/shared/ckpt"])),
            "keep": draw(st.integers(1, 10)),
        }
    spec["preemption"] = {
        "maxPreemptions": draw(st.integers(0, 5)),
        "maxWorkerFailures": draw(st.integers(0, 5)),
    }
    spec["backoffLimit"] = draw(st.integers(0, 5))
    _put(spec, "activeDeadlineSeconds", _maybe(draw, st.integers(1, 2**31 - 1)))
    _put(spec, "ttlSecondsAfterFinished", _maybe(draw, st.integers(0, 86400)))
    spec["suspend"] = draw(st.booleans())
    _put(spec, "queueName", _maybe(draw, st.sampled_from(["team-queue", "gpu.queue"])))
    mlflow: dict[str, Any] = {}
    _put(mlflow, "trackingUri", _maybe(draw, st.just("http://mlflow.mlflow:5000")))
    _put(mlflow, "experiment", _maybe(draw, st.just("churn")))
    if draw(st.booleans()):
        mlflow["registeredModel"] = "churn-classifier"
        _put(mlflow, "alias", _maybe(draw, st.just("candidate")))
    spec["mlflow"] = mlflow
    metadata: dict[str, Any] = {"name": draw(NAMES.filter(lambda n: len(n) <= 40))}
    _put(metadata, "namespace", _maybe(draw, NAMESPACES))
    _put(metadata, "labels", _maybe(draw, PARENT_LABELS))
    _put(metadata, "uid", _maybe(draw, st.uuids().map(str)))
    return {
        "apiVersion": "mlplane.dev/v1alpha1",
        "kind": "TrainingJob",
        "metadata": metadata,
        "spec": spec,
    }


@st.composite
def modeldeployments(draw: st.DrawFn) -> dict[str, Any]:
    """A valid ModelDeployment."""
    low = draw(st.integers(0, 6))
    high = draw(st.integers(max(low, 1), 12))
    model: dict[str, Any] = {"name": draw(st.sampled_from(["churn-classifier", "Fraud.v2", "m"]))}
    if draw(st.booleans()):
        model["alias"] = draw(st.sampled_from(["champion", "candidate", "_x"]))
    else:
        model["version"] = draw(st.integers(1, 500))
    gpu = draw(st.sampled_from([0, 0, 1, 2]))
    spec: dict[str, Any] = {
        "model": model,
        "replicas": {"min": low, "max": high},
        "autoscaling": {
            "targetOngoingRequests": draw(st.integers(1, 64)),
            "upscaleDelaySeconds": draw(st.integers(0, 600)),
            "downscaleDelaySeconds": draw(st.integers(0, 3600)),
        },
        "resources": {"cpu": draw(CPUS), "memory": draw(MEMORY), "gpu": gpu},
        "capacity": draw(CAPACITIES),
    }
    if gpu and draw(st.booleans()):
        spec["accelerator"] = draw(ACCELERATORS)
    _put(spec, "image", _maybe(draw, st.just("ghcr.io/x/serve:2")))
    _put(spec, "nodeSelector", _maybe(draw, USER_SELECTORS))
    _put(spec, "tolerations", _maybe(draw, st.lists(tolerations(), max_size=3)))
    if draw(st.booleans()):
        spec["batching"] = {
            "maxBatchSize": draw(st.integers(1, 128)),
            "batchWaitTimeoutMs": draw(st.integers(0, 100)),
        }
    spec["slo"] = {"availability": draw(st.sampled_from(["99.9", "99", "99.95"]))}
    _put(spec["slo"], "latencyP99Ms", _maybe(draw, st.integers(1, 5000)))
    drift: dict[str, Any] = {
        "enabled": draw(st.booleans()),
        "method": draw(st.sampled_from(["PSI", "JensenShannon", "StatisticalTest"])),
        "window": draw(st.sampled_from(["1h", "90s", "30m", "1d"])),
        "minSamples": draw(st.integers(10, 100000)),
    }
    _put(drift, "threshold", _maybe(draw, st.sampled_from(["0.01", "0.2", "1"])))
    spec["monitoring"] = {"drift": drift}
    metadata: dict[str, Any] = {"name": draw(NAMES.filter(lambda n: len(n) <= 40))}
    _put(metadata, "namespace", _maybe(draw, NAMESPACES))
    _put(metadata, "labels", _maybe(draw, PARENT_LABELS))
    return {
        "apiVersion": "mlplane.dev/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": metadata,
        "spec": spec,
    }


@st.composite
def configs(draw: st.DrawFn) -> OperatorConfig:
    """An operator config under each capacity-label convention."""
    return OperatorConfig(
        mlflow_tracking_uri=draw(st.sampled_from(["http://127.0.0.1:5000", "https://mlflow.x"])),
        capacity_labels=draw(st.sampled_from(["eks", "karpenter", "gke"])),
        artifacts_uri=draw(st.sampled_from([None, "s3://artifacts/mlplane", "/data/art/"])),
        training_service_account=draw(st.sampled_from([None, "ray-training"])),
        serving_service_account=draw(st.sampled_from([None, "ray-serving"])),
    )
