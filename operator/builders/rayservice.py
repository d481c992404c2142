"""ModelDeployment → KubeRay ``ray.io/v1`` RayService running the mlplane Serve app.

What changes where, and why it matters:

- The model version lives **only in** ``serveConfigV2``, and there only in the ``user_config``
  of the deployments: ``model-<i>`` gets ``{model_uri, version}``, the ``router`` gets the
  variants, weights, bucketing header and A/B test. KubeRay applies a ``serveConfigV2`` change
  to the running cluster in place, and Serve applies a change that touches only ``user_config``
  by calling ``reconfigure()`` on the running replicas — no restart: the model replicas load the
  new version in the background and swap it in atomically while the old one keeps serving, the
  router switches weights between two requests. So following an alias from version 3 to 4 needs
  no second cluster, no doubled GPUs and fails no request, and A/B weight changes restart
  nothing. The application ``args`` hold only what shapes the app (which model deployments
  exist, batching, SLO, drift): Serve hashes them into every deployment's code version, so a
  change there restarts all replicas (rolling) — it happens when the spec changes or an A/B
  test adds or removes a model deployment. Nothing else in the RayService (labels, annotations,
  cluster spec) depends on the version; a test diffs two builds to hold that.
- Cluster changes (image, resources, placement) go through KubeRay's zero-downtime upgrade:
  ``upgradeStrategy.type: NewCluster`` starts a new RayCluster, moves traffic when it serves,
  then deletes the old one. (``NewClusterWithIncrementalUpgrade`` would need the Gateway API and
  a ``gatewayClassName``; ``None`` would upgrade with downtime.) KubeRay leaves worker-group
  ``replicas``/``minReplicas``/``maxReplicas`` out of the cluster hash, so scaling changes
  (``kubectl scale``, an A/B test adding a variant) are applied in place too.
- The head runs on on-demand capacity, advertises ``num-cpus: "0"`` and is left out of the
  Serve service (``excludeHeadPodFromServeSvc``): it holds GCS and the Serve controller, whose
  loss takes the whole service down, so no replica, router or traffic lands on it. (The brief
  asked for this with GPUs; mlplane does it always, because the workers below are sized to
  hold every replica and the router, so the head's CPUs would only attract load to the one pod
  that must not fall over.)
- One worker group, ``serve``, one pod per model replica: each pod holds one replica
  (``resources`` of the CR) plus room for a router replica, the app's single ``monitor``
  replica (0.1 CPU, on one of the pods), the Serve proxy, the raylet and a small object store.
  ``minReplicas``/``maxReplicas`` are the CR's ``replicas`` times the number of variants
  (plus one pod per variant for the surge replica of a rolling restart, see
  :data:`MAX_SURGE_PERCENT`); Ray's autoscaler (``enableInTreeAutoscaling``) adds and removes
  pods as Serve's autoscaler adds and removes replicas.

- Closed by default (``builders/access.py``, ``builders/pods.py``): token authentication with
  the ModelDeployment's Secret ``<name>-ray-auth`` (kept across new clusters), restricted
  security contexts on every pod and container, the configured serving service account
  (``MLPLANE_SERVING_SERVICE_ACCOUNT``: the serving IRSA role) on head and workers.

The Serve application (``mlplane.serving.app:build_app``) is the contract with the serving
package; :func:`serve_args`, :func:`router_user_config` and :func:`model_user_config` document
its arguments and the deployments' ``user_config``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import yaml

from mlplane.crds import ABTest, ModelDeployment
from mlplane.crds.common import HeadResources, parse_duration
from mlplane.operator.builders import labels as lbl
from mlplane.operator.builders import quantities as q
from mlplane.operator.builders.access import auth_options
from mlplane.operator.builders.placement import NodeCapacity, head_placement, place
from mlplane.operator.builders.pods import (
    HEAD_CONTAINER,
    RAY_VERSION,
    WORKER_CONTAINER,
    autoscaler_options,
    int32,
    pod_template,
    ray_container,
)
from mlplane.operator.builders.signing import MOUNT_PATH as SIGNING_KEYS_PATH
from mlplane.operator.builders.signing import mount_signing_keys
from mlplane.operator.config import OperatorConfig
from mlplane.serving.flavors import ModelPolicy

APPLICATION = "mlplane"
IMPORT_PATH = "mlplane.serving.app:build_app"
ROUTE_PREFIX = "/"
ROUTER_DEPLOYMENT = "router"
#: The app's single aggregation replica: totals, feedback ledger, drift tap, metrics.
MONITOR_DEPLOYMENT = "monitor"
#: The variant of a deployment without an A/B test.
PRIMARY_VARIANT = "primary"
UPGRADE_STRATEGY = "NewCluster"
WORKER_GROUP = "serve"

#: Logical CPUs a router replica reserves; routers only await the model deployments.
ROUTER_NUM_CPUS = 0.25
#: Logical CPUs of the monitor replica (one per app; it merges counts a few times a second).
MONITOR_NUM_CPUS = 0.1
#: The monitor runs on the head pod (Ray's head-node resource: the head advertises no CPUs),
#: where its saved counts are: an emptyDir that outlives the replica and container restarts.
HEAD_NODE_RESOURCE = "node:__internal_head__"
MONITOR_STATE_PATH = "/var/lib/mlplane/monitor"
MONITOR_STATE_VOLUME = "monitor-state"
#: A router replica handles this many times a model replica's target of ongoing requests.
ROUTER_FAN_IN = 8
#: The routers' queue (at the Serve proxies) is this many times ``spec.maxQueuedRequests``.
ROUTER_QUEUE_FACTOR = 2
#: Added to each worker pod beyond the replica's own resources: a router replica, the Serve
#: proxy and the raylet (CPU); the router, proxy, raylet and agents (memory); the object store.
POD_EXTRA_MILLICORES = 500
POD_EXTRA_MEMORY = 2**30
OBJECT_STORE_BYTES = 512 * 2**20
#: Serve's ``max_surge_percent`` for the router and the model deployments: when their replicas
#: must restart (a change of the app's args, e.g. an A/B test adding a model deployment),
#: Serve starts ceil(1 % of the target) = ONE replacement before stopping an old replica, so
#: a deployment never drops to zero replicas and requests never wait for a model to load. The
#: worker group has one pod of headroom per model deployment for that surge replica.
MAX_SURGE_PERCENT = 1
#: Default drift thresholds by method (see the ModelDeployment API).
DEFAULT_DRIFT_THRESHOLD = {"StatisticalTest": 0.01, "PSI": 0.1, "JensenShannon": 0.1}
_CAPACITY: dict[str, NodeCapacity] = {
    "OnDemand": "OnDemand",
    "Spot": "Spot",
    "SpotWithFallback": "PreferSpot",
}


@dataclass(frozen=True)
class Variant:
    """One arm of the traffic split: a name, a resolved model version, an integer percent."""

    name: str
    version: int
    weight: int


def model_deployment_name(index: int) -> str:
    """Serve deployment of the ``index``-th variant: ``model-0`` (the control/only one), ...

    Named by position, not by version or variant name, so that moving an alias or starting an
    A/B test updates ``model-0`` in place (a rolling update) instead of deleting it.
    """
    return f"model-{index}"


def model_uri(name: str, version: int) -> str:
    """MLflow's URI of one registered model version."""
    return f"models:/{name}/{version}"


def _check_variants(variants: Sequence[Variant]) -> None:
    if not variants:
        raise ValueError("at least one variant is needed")
    names = [v.name for v in variants]
    if len(set(names)) != len(names):
        raise ValueError(f"variant names must be unique (got {names})")
    if any(v.version < 1 for v in variants):
        raise ValueError("model versions start at 1")
    if any(not 0 <= v.weight <= 100 for v in variants) or sum(v.weight for v in variants) != 100:
        raise ValueError(f"variant weights must be 0..100 and sum to 100 (got {variants})")


def abtest_variants(abtest: ABTest, aliases: Mapping[str, int]) -> list[Variant]:
    """The ABTest's variants with each alias resolved through ``aliases`` (alias → version)."""
    out = []
    for variant in abtest.spec.variants:
        if variant.model.version is not None:
            version = variant.model.version
        elif variant.model.alias is not None and variant.model.alias in aliases:
            version = aliases[variant.model.alias]
        else:
            raise ValueError(
                f"variant {variant.name}: alias {variant.model.alias!r} is not resolved to a "
                "version"
            )
        out.append(Variant(variant.name, version, variant.weight))
    return out


def serve_args(
    md: ModelDeployment,
    config: OperatorConfig,
    variants: Sequence[Variant],
) -> dict[str, Any]:
    """The ``args`` Serve passes to ``mlplane.serving.app:build_app(args: dict)``.

    Only what shapes the application; Serve restarts every replica when these change. Exactly
    these keys (the serving app refuses unknown or missing ones)::

        deployment: str            # "<namespace>/<name>" of the ModelDeployment (metric labels)
        model_name: str            # registered model name in MLflow
        tracking_uri: str          # MLflow tracking URI (the operator's configured one)
        model_deployments: [str]   # Serve deployments of the variants: ["model-0", "model-1", ...]
        batching: None | {max_batch_size: int, batch_wait_timeout_s: float}   # @serve.batch
        slo_latency_p99_ms: int|None   # latency objective (mlplane_requests_slow_total)
        drift:
          enabled: bool
          method: "StatisticalTest" | "PSI" | "JensenShannon"
          threshold: float         # resolved: the spec's, else the method's default
          window_s: float          # live window length in seconds
          min_samples: int         # no verdict below this many samples per window
        signing_keys: str          # directory of the request-id keys (the mounted Secret)
        state_dir: str             # where the monitor saves its counts (the head's emptyDir)
        feedback_token_file: str   # only with spec.feedback.tokenSecret: the mounted token
        model_policy:              # what the model deployments may load (serving/flavors.py)
          allowed: [str]           # the operator's allowed serialisations
          allow_unsafe: bool       # spec.model.allowUnsafeDeserialization
        allow_non_finite: true     # only when spec.model.allowNonFiniteInputs (NaN/Infinity
                                   # features); absent otherwise, so args of existing
                                   # deployments do not change (no restart on upgrade)

    What changes without a restart is in the deployments' ``user_config`` (see
    :func:`router_user_config`, :func:`model_user_config`). ``build_app`` binds an ingress
    deployment named ``router``, one deployment per name in ``model_deployments`` and one named
    ``monitor``: ``serveConfigV2`` sets their options by those names, and Serve rejects options
    for names the app lacks.
    """
    drift = md.spec.monitoring.drift
    threshold = (
        float(drift.threshold)
        if drift.threshold is not None
        else DEFAULT_DRIFT_THRESHOLD[drift.method]
    )
    batching = md.spec.batching
    args: dict[str, Any] = {
        "deployment": f"{md.metadata.namespace or 'default'}/{md.metadata.name}",
        "model_name": md.spec.model.name,
        "tracking_uri": config.mlflow_tracking_uri,
        "model_deployments": [model_deployment_name(i) for i in range(len(variants))],
        "batching": None
        if batching is None
        else {
            "max_batch_size": batching.max_batch_size,
            "batch_wait_timeout_s": batching.batch_wait_timeout_ms / 1000,
        },
        "slo_latency_p99_ms": md.spec.slo.latency_p99_ms,
        "drift": {
            "enabled": drift.enabled,
            "method": drift.method,
            "threshold": threshold,
            "window_s": parse_duration(drift.window),
            "min_samples": drift.min_samples,
        },
        "signing_keys": SIGNING_KEYS_PATH,
        # The monitor's saved counts and feedback ledger (an emptyDir on the head pod).
        "state_dir": MONITOR_STATE_PATH,
        "model_policy": ModelPolicy(
            config.allowed_model_flavors, md.spec.model.allow_unsafe_deserialization
        ).to_args(),
    }
    if md.spec.model.allow_non_finite_inputs:
        args["allow_non_finite"] = True
    if config.serving_scrape_token_sha256:
        # Prometheus' token for /admin/metrics (its hash only: the config is readable).
        args["scrape_token_sha256"] = config.serving_scrape_token_sha256
    if feedback_token_secret(md) is not None:
        args["feedback_token_file"] = f"{FEEDBACK_TOKEN_PATH}/{FEEDBACK_TOKEN_KEY}"
    return args


#: Where the Secret named by ``spec.feedback.tokenSecret`` is mounted, and the key read.
FEEDBACK_TOKEN_PATH = "/etc/mlplane/feedback-token"
FEEDBACK_TOKEN_KEY = "token"
FEEDBACK_TOKEN_VOLUME = "feedback-token"


def feedback_token_secret(md: ModelDeployment) -> str | None:
    """The Secret holding the feedback token (``spec.feedback.tokenSecret``), None when unset."""
    return md.spec.feedback.token_secret if md.spec.feedback is not None else None


def _with_feedback_token(rayservice: dict[str, Any], secret: str) -> dict[str, Any]:
    """Mount the user's feedback-token Secret (only its ``token`` key) read-only into the head
    and every worker group, where router replicas run."""
    cluster = rayservice["spec"]["rayClusterConfig"]
    for template in (
        cluster["headGroupSpec"]["template"],
        *(g["template"] for g in cluster["workerGroupSpecs"]),
    ):
        spec = template["spec"]
        spec.setdefault("volumes", []).append(
            {
                "name": FEEDBACK_TOKEN_VOLUME,
                "secret": {
                    "secretName": secret,
                    "defaultMode": 0o444,
                    "items": [{"key": FEEDBACK_TOKEN_KEY, "path": FEEDBACK_TOKEN_KEY}],
                },
            }
        )
        for container in spec["containers"]:
            container.setdefault("volumeMounts", []).append(
                {"name": FEEDBACK_TOKEN_VOLUME, "mountPath": FEEDBACK_TOKEN_PATH, "readOnly": True}
            )
    return rayservice


def router_user_config(
    model_name: str,
    variants: Sequence[Variant],
    *,
    bucketing_header: str | None = None,
    abtest: str | None = None,
    objective: str | None = None,
    outcome_range: tuple[float, float] | None = None,
) -> dict[str, Any]:
    """The router's ``user_config``: the traffic split, applied without a restart.

    Keys::

        variants:                  # in order; variants[i] is served by "model-<i>"
          - name: str              # "primary" without an A/B test, else the ABTest's variant
            deployment: str        # "model-0", "model-1", ...
            version: int           # model version this variant serves
            model_uri: str         # "models:/<model_name>/<version>"
            weight: int            # percent of traffic, 0..100; weights sum to 100
        bucketing_header: str|None # request header hashed for sticky assignment (A/B only)
        abtest: str|None           # name of the active ABTest (metric label, hash salt)
        objective: str|None        # the ABTest's objective metric; "Conversion": outcomes 0/1
        outcome_range: [min, max]  # only for a Mean objective: accepted outcomes
    """
    config: dict[str, Any] = {
        "variants": [
            {
                "name": v.name,
                "deployment": model_deployment_name(i),
                "version": v.version,
                "model_uri": model_uri(model_name, v.version),
                "weight": v.weight,
            }
            for i, v in enumerate(variants)
        ],
        "bucketing_header": bucketing_header,
        "abtest": abtest,
        "objective": objective,
    }
    if outcome_range is not None:
        config["outcome_range"] = [float(outcome_range[0]), float(outcome_range[1])]
    return config


def model_user_config(model_name: str, variant: Variant) -> dict[str, Any]:
    """A ``model-<i>`` deployment's ``user_config``: ``{model_uri, version}``.

    Changing it makes the running replicas load the new version and swap it in (zero downtime).
    """
    return {"model_uri": model_uri(model_name, variant.version), "version": variant.version}


def _num_cpus(value: int | str) -> float:
    return q.millicores(value) / 1000


def serve_config(
    md: ModelDeployment,
    config: OperatorConfig,
    variants: Sequence[Variant],
    *,
    bucketing_header: str | None = None,
    abtest: str | None = None,
    objective: str | None = None,
    outcome_range: tuple[float, float] | None = None,
) -> dict[str, Any]:
    """The Serve config (``serveConfigV2`` before YAML): one application, its deployments."""
    scaling = md.spec.autoscaling
    target = scaling.target_ongoing_requests
    batch = md.spec.batching.max_batch_size if md.spec.batching else 1
    resources = md.spec.resources
    model_name = md.spec.model.name
    delays = {
        "upscale_delay_s": scaling.upscale_delay_seconds,
        "downscale_delay_s": scaling.downscale_delay_seconds,
    }
    router_target = target * ROUTER_FAN_IN
    deployments: list[dict[str, Any]] = [
        {
            "name": ROUTER_DEPLOYMENT,
            "max_ongoing_requests": 2 * router_target,
            # The proxies' queue in front of the routers: twice the models' bound, so that
            # overload normally trips the model's queue first, where the router answers 503 +
            # Retry-After and counts it (past this one Serve's proxy answers 503 itself).
            "max_queued_requests": ROUTER_QUEUE_FACTOR * md.spec.max_queued_requests,
            "autoscaling_config": {
                # The ingress never scales to zero: it is what receives the first request.
                "min_replicas": 1,
                "max_replicas": max(1, md.spec.replicas.max),
                "target_ongoing_requests": router_target,
                **delays,
            },
            "max_surge_percent": MAX_SURGE_PERCENT,
            "ray_actor_options": {"num_cpus": ROUTER_NUM_CPUS},
            "user_config": router_user_config(
                model_name,
                variants,
                bucketing_header=bucketing_header,
                abtest=abtest,
                objective=objective,
                outcome_range=outcome_range,
            ),
        },
        {
            # Exactly one: the totals and the feedback ledger must live in one place (no surge
            # either: a restart stops the old one first; routers re-send what it missed).
            "name": MONITOR_DEPLOYMENT,
            "num_replicas": 1,
            "max_ongoing_requests": 256,
            # On the head, beside its state directory (args.state_dir): the head has no CPUs
            # to reserve, the head-node resource pins it there.
            "ray_actor_options": {"num_cpus": 0, "resources": {HEAD_NODE_RESOURCE: 0.001}},
        },
    ]
    for index, variant in enumerate(variants):
        deployments.append(
            {
                "name": model_deployment_name(index),
                # Room for a full batch, and for queueing beyond the autoscaling target.
                "max_ongoing_requests": max(2 * target, batch),
                # Backpressure: each router replica queues at most this many requests for
                # the model's replicas; beyond, the handle refuses and the router sheds (503).
                "max_queued_requests": md.spec.max_queued_requests,
                "autoscaling_config": {
                    "min_replicas": md.spec.replicas.min,
                    "max_replicas": md.spec.replicas.max,
                    "target_ongoing_requests": target,
                    **delays,
                },
                "max_surge_percent": MAX_SURGE_PERCENT,
                "ray_actor_options": {
                    "num_cpus": _num_cpus(resources.cpu),
                    "num_gpus": resources.gpu,
                    "memory": q.num_bytes(resources.memory),
                },
                "user_config": model_user_config(model_name, variant),
            }
        )
    return {
        "proxy_location": "EveryNode",
        "applications": [
            {
                "name": APPLICATION,
                "route_prefix": ROUTE_PREFIX,
                "import_path": IMPORT_PATH,
                "args": serve_args(md, config, variants),
                "deployments": deployments,
            }
        ],
    }


def _worker_group(
    md: ModelDeployment, config: OperatorConfig, n_variants: int, labels: Mapping[str, str]
) -> dict[str, Any]:
    spec = md.spec
    low = spec.replicas.min * n_variants
    # One pod of headroom per model deployment for its surge replica (MAX_SURGE_PERCENT).
    high = spec.replicas.max * n_variants + n_variants
    resources = spec.resources
    cpu = q.cpu(q.millicores(resources.cpu) + POD_EXTRA_MILLICORES)
    memory = q.memory(q.num_bytes(resources.memory) + POD_EXTRA_MEMORY + OBJECT_STORE_BYTES)
    container = ray_container(
        WORKER_CONTAINER,
        spec.image or config.default_serving_image,
        cpu=cpu,
        memory=memory,
        gpus=resources.gpu,
    )
    placement = place(
        config.capacity_labels,
        _CAPACITY[spec.capacity],
        accelerator=spec.accelerator,
        gpus=resources.gpu,
        node_selector=spec.node_selector,
        tolerations=spec.tolerations,
    )
    return {
        "groupName": WORKER_GROUP,
        # Start with the floor (at least one pod, for the router); the autoscaler takes over.
        "replicas": int32(min(max(low, 1), high), "replicas"),
        "minReplicas": int32(low, "replicas.min"),
        "maxReplicas": int32(high, "replicas.max"),
        "rayStartParams": {"object-store-memory": str(OBJECT_STORE_BYTES)},
        "template": pod_template(labels, container, placement, config.serving_service_account),
    }


def _with_signing_keys(rayservice: dict[str, Any], md_name: str) -> dict[str, Any]:
    """Mount the ModelDeployment's signing Secret into the head and every worker group (see
    :mod:`mlplane.operator.builders.signing`): router replicas may run on any of them."""
    cluster = rayservice["spec"]["rayClusterConfig"]
    mount_signing_keys(cluster["headGroupSpec"]["template"], md_name)
    for group in cluster["workerGroupSpecs"]:
        mount_signing_keys(group["template"], md_name)
    return rayservice


def _with_monitor_state(rayservice: dict[str, Any]) -> dict[str, Any]:
    """An emptyDir on the head pod for the monitor's saved counts: it outlives a restart of the
    monitor replica or of the head container, and goes with the pod (then the monitor starts
    a new count epoch and the operator keeps the old epoch's totals in the ABTest status)."""
    spec = rayservice["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]
    spec.setdefault("volumes", []).append({"name": MONITOR_STATE_VOLUME, "emptyDir": {}})
    for container in spec["containers"]:
        container.setdefault("volumeMounts", []).append(
            {"name": MONITOR_STATE_VOLUME, "mountPath": MONITOR_STATE_PATH}
        )
    return rayservice


def _rayservice(
    md: ModelDeployment,
    model_version: int,
    config: OperatorConfig,
    *,
    owner_uid: str | None,
    variants: Sequence[Variant] | None,
    bucketing_header: str | None,
    abtest: str | None,
    objective: str | None = None,
    outcome_range: tuple[float, float] | None = None,
) -> dict[str, Any]:
    if model_version < 1:
        raise ValueError(f"model versions start at 1 (got {model_version})")
    chosen = list(variants) if variants else [Variant(PRIMARY_VARIANT, model_version, 100)]
    _check_variants(chosen)
    name = str(md.metadata.name)
    labels = lbl.modeldeployment_labels(name)
    head_resources = HeadResources()
    head_container = ray_container(
        HEAD_CONTAINER,
        md.spec.image or config.default_serving_image,
        cpu=head_resources.cpu,
        memory=head_resources.memory,
        serve_port=True,  # the chart's serving PodMonitor scrapes the app's /admin/metrics there
    )
    metadata: dict[str, Any] = {
        "name": lbl.rayservice_name(name),
        "namespace": md.metadata.namespace or "default",
        "labels": dict(labels),
    }
    if owner_uid is not None:
        metadata["ownerReferences"] = [lbl.owner_reference("ModelDeployment", name, owner_uid)]
    serve = serve_config(
        md,
        config,
        chosen,
        bucketing_header=bucketing_header,
        abtest=abtest,
        objective=objective,
        outcome_range=outcome_range,
    )
    rayservice: dict[str, Any] = {
        "apiVersion": "ray.io/v1",
        "kind": "RayService",
        "metadata": metadata,
        "spec": {
            "serveConfigV2": yaml.safe_dump(serve, sort_keys=False, default_flow_style=False),
            "upgradeStrategy": {"type": UPGRADE_STRATEGY},
            "excludeHeadPodFromServeSvc": True,
            "rayClusterConfig": {
                "rayVersion": RAY_VERSION,
                "authOptions": auth_options(name),
                "enableInTreeAutoscaling": True,
                "autoscalerOptions": autoscaler_options(),
                "headGroupSpec": {
                    "rayStartParams": {"num-cpus": "0"},
                    "template": pod_template(
                        labels,
                        head_container,
                        head_placement(
                            config.capacity_labels,
                            node_selector=md.spec.node_selector,
                            tolerations=md.spec.tolerations,
                        ),
                        config.serving_service_account,
                    ),
                },
                "workerGroupSpecs": [_worker_group(md, config, len(chosen), labels)],
            },
        },
    }
    rayservice = _with_monitor_state(_with_signing_keys(rayservice, name))
    secret = feedback_token_secret(md)
    return rayservice if secret is None else _with_feedback_token(rayservice, secret)


def build_rayservice(
    md: ModelDeployment,
    model_version: int,
    config: OperatorConfig,
    *,
    owner_uid: str,
    variants: Sequence[Variant] | None = None,
    bucketing_header: str | None = None,
    abtest: str | None = None,
    objective: str | None = None,
    outcome_range: tuple[float, float] | None = None,
) -> dict[str, Any]:
    """The RayService of a validated ModelDeployment serving ``model_version``.

    ``variants`` (from :func:`abtest_variants`) replace the single ``primary`` variant while an
    ABTest runs; ``bucketing_header``, ``abtest`` and ``objective`` (its ``objective.metric``)
    come from that ABTest. ``owner_uid`` is the ModelDeployment's ``metadata.uid``.

    Raises ``ValueError`` (including ``PlacementConflict``) for what KubeRay would reject.
    """
    return _rayservice(
        md,
        model_version,
        config,
        owner_uid=owner_uid,
        variants=variants,
        bucketing_header=bucketing_header,
        abtest=abtest,
        objective=objective,
        outcome_range=outcome_range,
    )
