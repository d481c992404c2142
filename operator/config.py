"""Operator settings, read once from the environment (the Helm chart sets them).

- ``MLPLANE_MLFLOW_TRACKING_URI``: MLflow for resources that name none
  (default ``http://127.0.0.1:5000``);
- ``MLPLANE_CAPACITY_LABELS``: the node-label convention for spot/on-demand capacity,
  ``eks`` (default), ``karpenter`` or ``gke``;
- ``MLPLANE_DEFAULT_TRAINING_IMAGE`` / ``MLPLANE_DEFAULT_SERVING_IMAGE``: images of resources
  that name none (default Ray's ``rayproject/ray:2.60.0-py311``);
- ``MLPLANE_ARTIFACTS_URI``: where artifacts go (e.g. ``s3://b/p``);
- ``MLPLANE_CHECKPOINT_BASE_URI``: the default checkpoint location (``s3://bucket/prefix`` or
  an absolute path on storage every Ray pod mounts); a TrainingJob without
  ``spec.checkpoint.uri`` checkpoints under ``<base>/<namespace>/<name>/<uid>/``. Unset, it
  is ``<MLPLANE_ARTIFACTS_URI>/checkpoints``; with neither, a TrainingJob with spot workers
  and no ``checkpoint.uri`` is rejected (nothing would survive a preemption). The chart's
  ``operator.checkpointBaseUri`` sets it; the local platform uses ``<state-dir>/checkpoints``;
- ``MLPLANE_TRAINING_SERVICE_ACCOUNT`` / ``MLPLANE_SERVING_SERVICE_ACCOUNT``: the service
  account of training and serving Ray pods (bound to cloud roles, e.g. IRSA); default none;
- ``MLPLANE_OPERATOR_NAMESPACE`` / ``MLPLANE_OPERATOR_POD_LABELS`` (``k=v,k=v``): where the
  operator's pods run and their labels (default ``mlplane-system`` and the chart's selector
  labels); ``MLPLANE_KUBERAY_NAMESPACE`` / ``MLPLANE_KUBERAY_POD_LABELS``: the same for the
  KubeRay operator (default ``kuberay-system``, ``app.kubernetes.io/name=kuberay-operator``);
  ``MLPLANE_SERVING_CLIENT_NAMESPACES`` (comma-separated; empty: the ModelDeployment's own
  namespace; ``*``: every namespace): who may call Serve's port;
  ``MLPLANE_PROMETHEUS_NAMESPACE`` / ``MLPLANE_PROMETHEUS_POD_LABELS``: where Prometheus runs
  (unset: nothing scrapes Ray pods); set, it may reach Ray's metrics port (8080) on every Ray
  pod and Serve's port on serving clusters (the app's ``/metrics``). The chart sets them when
  ``servingMonitor.enabled``, and ``MLPLANE_SERVING_SCRAPE_TOKEN_FILE`` (the chart's Secret
  ``<release>-serving-scrape`` mounted): the file holding the token Prometheus sends to the
  serving apps' ``/admin/metrics``; the apps get its SHA-256 only (``mlplane.serving.admin``).
  The per-cluster NetworkPolicies (``builders/access.py``) let
  only these in;
- ``MLPLANE_LOG_FORMAT``: ``json`` or ``text`` (default);
- ``MLPLANE_MLFLOW_TIMEOUT`` (default 10 s): the longest one MLflow call may take; calls are
  not retried inside (the reconcile loop retries), so a reconcile never blocks for minutes;
- the operator loop's pace and test hooks (``MLPLANE_RECONCILE_INTERVAL``,
  ``MLPLANE_RESOLVE_INTERVAL``, ``MLPLANE_RETRY_DELAY``, ...): :class:`Settings`, which holds
  this whole object too;
- ``MLPLANE_PREEMPTION_EVIDENCE_GRACE`` (default 15 s, 0 to 600): how long a spot attempt
  that failed with no preemption evidence yet waits for it (pod and node watch events can
  arrive after the RayJob's status) before its failure spends ``backoffLimit``.

The registry policy (the registry is a code boundary, see ``docs/security.md``):

- ``MLPLANE_ALLOWED_MODEL_FLAVORS``: comma-separated serialisations a ModelDeployment may load
  without opting in (``mlplane.serving.flavors``; default ``sklearn:skops,onnx``, the formats
  that execute no code on load); anything else needs ``spec.model.allowUnsafeDeserialization``;
- ``MLPLANE_MODEL_NAME_POLICY``: JSON ``{"<namespace>": ["<name>", "<prefix>*", ...]}``: the
  registered model names a namespace's TrainingJobs may register and alias (``"*"`` as a key:
  namespaces not listed). Unset: no restriction. Set: a namespace that matches no key may
  register nothing;
- ``MLPLANE_ALLOWED_TRACKING_URIS``: comma-separated MLflow tracking URIs a TrainingJob's
  ``spec.mlflow.trackingUri`` may name, besides ``MLPLANE_MLFLOW_TRACKING_URI`` (always
  allowed); default none: any other URI is refused and never contacted.

Spot economics (``docs/spot.md``):

- ``MLPLANE_CHECKPOINT_INTERVAL_MIN`` / ``MLPLANE_CHECKPOINT_INTERVAL_MAX`` (durations, default
  ``1m`` and ``4h``): the bounds of an Auto checkpoint interval (``sqrt(2*C*M)`` clamped);
- ``MLPLANE_GPU_PRICES``: JSON ``{"<accelerator>": {"Spot": <price>, "OnDemand": <price>}}``
  per GPU-hour (``"*"``: any accelerator not listed); unset: status shows hours, no cost;
  ``MLPLANE_PRICE_CURRENCY`` (default ``USD``) names the unit.

Leader election (``mlplane operator --leader-elect``, ``operator/leader.py``; the chart runs two
replicas): :class:`LeaderElectionConfig`, ``MLPLANE_LEADER_*`` (see there) and ``POD_NAME``.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from mlplane.crds.common import parse_duration
from mlplane.monitoring.spot import DEFAULT_MAX_INTERVAL_SECONDS, DEFAULT_MIN_INTERVAL_SECONDS
from mlplane.serving.admin import scrape_token_sha256
from mlplane.serving.flavors import SAFE_SERIALIZATIONS

CapacityLabels = Literal["eks", "karpenter", "gke"]
RAY_IMAGE = "rayproject/ray:2.60.0-py311"
CHECKPOINT_BASE_VARIABLE = "MLPLANE_CHECKPOINT_BASE_URI"
#: The chart value that sets :data:`CHECKPOINT_BASE_VARIABLE` (named in messages to users).
CHECKPOINT_BASE_CHART_VALUE = "operator.checkpointBaseUri"
#: The chart's selector labels of the operator's pods (release ``mlplane``).
OPERATOR_POD_LABELS = (
    ("app.kubernetes.io/name", "mlplane"),
    ("app.kubernetes.io/component", "operator"),
)
#: What the kuberay-operator chart puts on its pods.
KUBERAY_POD_LABELS = (("app.kubernetes.io/name", "kuberay-operator"),)
_BASE_URI = re.compile(r"^(s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9](/.*)?|/.*)$")


@dataclass(frozen=True)
class OperatorConfig:
    """Everything the operator reads from its environment, validated at start."""

    mlflow_tracking_uri: str = "http://127.0.0.1:5000"
    capacity_labels: CapacityLabels = "eks"
    default_training_image: str = RAY_IMAGE
    default_serving_image: str = RAY_IMAGE
    artifacts_uri: str | None = None
    checkpoint_base_uri: str | None = None
    training_service_account: str | None = None
    serving_service_account: str | None = None
    log_format: Literal["json", "text"] = "text"
    mlflow_timeout: float = 10.0
    #: Seconds a failed spot attempt waits for late preemption evidence before it is judged.
    preemption_evidence_grace: float = 15.0
    operator_namespace: str = "mlplane-system"
    operator_pod_labels: tuple[tuple[str, str], ...] = OPERATOR_POD_LABELS
    kuberay_namespace: str = "kuberay-system"
    kuberay_pod_labels: tuple[tuple[str, str], ...] = KUBERAY_POD_LABELS
    serving_client_namespaces: tuple[str, ...] = ()
    #: Where Prometheus runs and its pods' labels (None: no scraping of Ray pods is allowed).
    prometheus_namespace: str | None = None
    prometheus_pod_labels: tuple[tuple[str, str], ...] = ()
    #: SHA-256 (hex) of the token Prometheus sends to the serving apps' ``/admin/metrics``
    #: (``MLPLANE_SERVING_SCRAPE_TOKEN_FILE``); None: only the operator's admin tokens open it.
    serving_scrape_token_sha256: str | None = None
    #: Serialisations a ModelDeployment may load without opting in (``serving/flavors.py``).
    allowed_model_flavors: tuple[str, ...] = SAFE_SERIALIZATIONS
    #: Per namespace, the model names (``name`` or ``prefix*``) its TrainingJobs may register
    #: and alias; None: no restriction.
    model_name_policy: tuple[tuple[str, tuple[str, ...]], ...] | None = None
    #: Tracking URIs a spec may name besides :attr:`mlflow_tracking_uri`.
    allowed_tracking_uris: tuple[str, ...] = ()
    #: Bounds of an Auto checkpoint interval, in seconds.
    checkpoint_interval_min: float = DEFAULT_MIN_INTERVAL_SECONDS
    checkpoint_interval_max: float = DEFAULT_MAX_INTERVAL_SECONDS
    #: Price per GPU-hour: (accelerator or "*", (("OnDemand", p), ("Spot", p))); None: no table.
    gpu_prices: tuple[tuple[str, tuple[tuple[str, float], ...]], ...] | None = None
    price_currency: str = "USD"
    #: Leader election (its own block: ``MLPLANE_LEADER_*``).
    leader: LeaderElectionConfig = field(default_factory=lambda: LeaderElectionConfig())

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> OperatorConfig:
        """Read ``MLPLANE_*``; raise ``ValueError`` naming the variable when one is wrong."""
        env = os.environ if env is None else env
        labels = env.get("MLPLANE_CAPACITY_LABELS", "eks")
        if labels not in ("eks", "karpenter", "gke"):
            raise ValueError(
                f"MLPLANE_CAPACITY_LABELS must be eks, karpenter or gke (got {labels!r})"
            )
        log_format = env.get("MLPLANE_LOG_FORMAT", "text")
        if log_format not in ("json", "text"):
            raise ValueError(f"MLPLANE_LOG_FORMAT must be json or text (got {log_format!r})")
        timeout = env.get("MLPLANE_MLFLOW_TIMEOUT", str(cls.mlflow_timeout))
        try:
            mlflow_timeout = float(timeout)
        except ValueError:
            mlflow_timeout = 0.0
        if not 1 <= mlflow_timeout <= 600:
            raise ValueError(
                f"MLPLANE_MLFLOW_TIMEOUT must be seconds between 1 and 600 (got {timeout!r})"
            )
        low = _seconds(env, "MLPLANE_CHECKPOINT_INTERVAL_MIN", DEFAULT_MIN_INTERVAL_SECONDS)
        high = _seconds(env, "MLPLANE_CHECKPOINT_INTERVAL_MAX", DEFAULT_MAX_INTERVAL_SECONDS)
        if not 0 < low <= high:
            raise ValueError(
                "MLPLANE_CHECKPOINT_INTERVAL_MIN must be above 0 and at most "
                f"MLPLANE_CHECKPOINT_INTERVAL_MAX (got {low:g}s and {high:g}s)"
            )
        grace_text = env.get(
            "MLPLANE_PREEMPTION_EVIDENCE_GRACE", str(cls.preemption_evidence_grace)
        )
        try:
            grace = float(grace_text)
        except ValueError:
            grace = -1.0
        if not 0 <= grace <= 600:
            raise ValueError(
                "MLPLANE_PREEMPTION_EVIDENCE_GRACE must be seconds between 0 and 600 "
                f"(got {grace_text!r})"
            )
        return cls(
            mlflow_tracking_uri=env.get("MLPLANE_MLFLOW_TRACKING_URI", cls.mlflow_tracking_uri),
            capacity_labels=labels,  # type: ignore[arg-type]
            default_training_image=env.get("MLPLANE_DEFAULT_TRAINING_IMAGE", RAY_IMAGE),
            default_serving_image=env.get("MLPLANE_DEFAULT_SERVING_IMAGE", RAY_IMAGE),
            artifacts_uri=env.get("MLPLANE_ARTIFACTS_URI") or None,
            checkpoint_base_uri=_base_uri(env.get(CHECKPOINT_BASE_VARIABLE, "")),
            training_service_account=env.get("MLPLANE_TRAINING_SERVICE_ACCOUNT") or None,
            serving_service_account=env.get("MLPLANE_SERVING_SERVICE_ACCOUNT") or None,
            log_format=log_format,  # type: ignore[arg-type]
            mlflow_timeout=mlflow_timeout,
            preemption_evidence_grace=grace,
            operator_namespace=env.get("MLPLANE_OPERATOR_NAMESPACE") or cls.operator_namespace,
            operator_pod_labels=_labels(env, "MLPLANE_OPERATOR_POD_LABELS", OPERATOR_POD_LABELS),
            kuberay_namespace=env.get("MLPLANE_KUBERAY_NAMESPACE") or cls.kuberay_namespace,
            kuberay_pod_labels=_labels(env, "MLPLANE_KUBERAY_POD_LABELS", KUBERAY_POD_LABELS),
            prometheus_namespace=env.get("MLPLANE_PROMETHEUS_NAMESPACE") or None,
            prometheus_pod_labels=_labels(env, "MLPLANE_PROMETHEUS_POD_LABELS", ()),
            serving_scrape_token_sha256=_token_sha256(env, "MLPLANE_SERVING_SCRAPE_TOKEN_FILE"),
            serving_client_namespaces=tuple(
                n.strip()
                for n in env.get("MLPLANE_SERVING_CLIENT_NAMESPACES", "").split(",")
                if n.strip()
            ),
            allowed_model_flavors=_list(env, "MLPLANE_ALLOWED_MODEL_FLAVORS", SAFE_SERIALIZATIONS),
            model_name_policy=_name_policy(env.get("MLPLANE_MODEL_NAME_POLICY", "")),
            allowed_tracking_uris=_list(env, "MLPLANE_ALLOWED_TRACKING_URIS", ()),
            checkpoint_interval_min=low,
            checkpoint_interval_max=high,
            gpu_prices=_gpu_prices(env.get("MLPLANE_GPU_PRICES", "")),
            price_currency=env.get("MLPLANE_PRICE_CURRENCY", "").strip() or cls.price_currency,
            leader=LeaderElectionConfig.from_env(env),
        )

    def tracking_uri_allowed(self, uri: str | None) -> bool:
        """Whether a spec may name ``uri`` (None: the operator's own, always allowed)."""
        if uri is None:
            return True
        allowed = {u.rstrip("/") for u in (self.mlflow_tracking_uri, *self.allowed_tracking_uris)}
        return uri.rstrip("/") in allowed

    def model_names_for(self, namespace: str) -> tuple[str, ...] | None:
        """The model-name patterns ``namespace`` may register (None: any name)."""
        if self.model_name_policy is None:
            return None
        policy = dict(self.model_name_policy)
        return policy.get(namespace, policy.get("*", ()))

    def model_name_allowed(self, namespace: str, name: str) -> bool:
        """Whether ``namespace``'s TrainingJobs may register and alias model ``name``."""
        patterns = self.model_names_for(namespace)
        if patterns is None:
            return True
        return any(name.startswith(p[:-1]) if p.endswith("*") else name == p for p in patterns)

    def gpu_price(self, accelerator: str | None, capacity: str) -> float | None:
        """Price of one GPU-hour of ``accelerator`` on ``capacity`` (None: no price known)."""
        if self.gpu_prices is None:
            return None
        table = dict(self.gpu_prices)
        prices = table.get(accelerator or "", table.get("*"))
        return dict(prices).get(capacity) if prices is not None else None

    @property
    def checkpoint_base(self) -> str | None:
        """Where TrainingJobs without ``checkpoint.uri`` checkpoint (None: nowhere).

        The explicit base, else ``<artifacts_uri>/checkpoints`` (the prefix the Terraform
        module's training role may write), without a trailing slash.
        """
        if self.checkpoint_base_uri:
            return self.checkpoint_base_uri.rstrip("/")
        if self.artifacts_uri:
            return f"{self.artifacts_uri.rstrip('/')}/checkpoints"
        return None


def _base_uri(raw: str) -> str | None:
    value = raw.strip()
    if not value:
        return None
    if not _BASE_URI.match(value):
        raise ValueError(
            f"{CHECKPOINT_BASE_VARIABLE} must be s3://bucket/prefix or an absolute path "
            f"(got {value!r})"
        )
    return value.rstrip("/") or "/"


def _token_sha256(env: Mapping[str, str], name: str) -> str | None:
    """The SHA-256 (hex) of the token in the file ``env[name]`` names, None when unset: the
    serving apps get only the hash (their config is readable by whoever reads the RayService).
    A named file that cannot be read, or is empty, stops the operator at start."""
    path = env.get(name, "").strip()
    if not path:
        return None
    try:
        with open(path, encoding="utf-8") as f:
            token = f.read().strip()
    except OSError as exc:
        raise ValueError(f"{name}: cannot read {path}: {exc}") from None
    if not token:
        raise ValueError(f"{name}: {path} is empty")
    return scrape_token_sha256(token)


def _labels(
    env: Mapping[str, str], variable: str, default: tuple[tuple[str, str], ...]
) -> tuple[tuple[str, str], ...]:
    """``k=v,k=v`` as pairs (a pod selector; empty would select every pod, so it is refused)."""
    raw = env.get(variable, "").strip()
    if not raw:
        return default
    pairs = []
    for item in raw.split(","):
        key, sep, value = item.strip().partition("=")
        if not sep or not key.strip():
            raise ValueError(
                f"{variable} must be key=value pairs separated by commas (got {raw!r})"
            )
        pairs.append((key.strip(), value.strip()))
    return tuple(pairs)


def _list(env: Mapping[str, str], variable: str, default: tuple[str, ...]) -> tuple[str, ...]:
    raw = env.get(variable)
    if raw is None or not raw.strip():
        return default
    return tuple(item.strip() for item in raw.split(",") if item.strip())


def _name_policy(raw: str) -> tuple[tuple[str, tuple[str, ...]], ...] | None:
    """``MLPLANE_MODEL_NAME_POLICY`` parsed: JSON namespace -> list of names / ``prefix*``."""
    if not raw.strip():
        return None
    problem = (
        'MLPLANE_MODEL_NAME_POLICY must be JSON {"<namespace>": ["<name>", "<prefix>*"]} '
        f"(got {raw!r})"
    )
    try:
        parsed = json.loads(raw)
    except ValueError:
        raise ValueError(problem) from None
    if not isinstance(parsed, dict) or not all(
        isinstance(k, str)
        and isinstance(v, list)
        and all(isinstance(p, str) and p.strip("*") for p in v)
        for k, v in parsed.items()
    ):
        raise ValueError(problem)
    return tuple(sorted((k, tuple(v)) for k, v in parsed.items()))


def _seconds(env: Mapping[str, str], variable: str, default: float) -> float:
    raw = env.get(variable, "").strip()
    if not raw:
        return default
    try:
        return parse_duration(raw)
    except ValueError:
        raise ValueError(
            f"{variable} must be a duration such as 30s, 10m or 1h (got {raw!r})"
        ) from None


def _gpu_prices(raw: str) -> tuple[tuple[str, tuple[tuple[str, float], ...]], ...] | None:
    """``MLPLANE_GPU_PRICES`` parsed: accelerator -> {"Spot": price, "OnDemand": price}."""
    if not raw.strip():
        return None
    problem = (
        'MLPLANE_GPU_PRICES must be JSON {"<accelerator>": {"Spot": <price>, "OnDemand": '
        f"<price>}}}} with prices >= 0 per GPU-hour (got {raw!r})"
    )
    try:
        parsed = json.loads(raw)
    except ValueError:
        raise ValueError(problem) from None
    if not isinstance(parsed, dict) or not all(
        isinstance(prices, dict)
        and prices
        and all(
            c in ("Spot", "OnDemand")
            and isinstance(p, int | float)
            and not isinstance(p, bool)
            and p >= 0
            for c, p in prices.items()
        )
        for prices in parsed.values()
    ):
        raise ValueError(problem)
    return tuple(
        sorted(
            (str(k), tuple(sorted((c, float(p)) for c, p in v.items()))) for k, v in parsed.items()
        )
    )


# --- leader election ------------------------------------------------------------------------


@dataclass(frozen=True)
class LeaderElectionConfig:
    """The Lease that makes one operator replica the only writer (``operator/leader.py``).

    - ``MLPLANE_LEADER_LEASE_NAME`` (default ``mlplane-operator``) and
      ``MLPLANE_LEADER_LEASE_NAMESPACE`` (default: ``MLPLANE_OPERATOR_NAMESPACE``, else
      ``mlplane-system``): the ``coordination.k8s.io/v1`` Lease;
    - ``MLPLANE_LEADER_LEASE_DURATION`` (default ``10s``, whole seconds): how long a standby
      waits, after it last saw the Lease change, before it takes the Lease over;
    - ``MLPLANE_LEADER_RENEW_DEADLINE`` (default ``7s``): the leader stops (exits) when it has
      not renewed for this long. It must be shorter than the lease duration: the difference is
      the margin for in-flight writes and clock-rate differences (never two writers);
    - ``MLPLANE_LEADER_RETRY_PERIOD`` (default ``2s``): how often the leader renews and a
      standby looks again; at most the renew deadline / 1.2 (as client-go);
    - ``POD_NAME`` (the chart sets it from the downward API; default the host name): the first
      part of the holder identity (a random suffix makes each process distinct).

    Durations are ``10s``, ``500ms`` or plain seconds. The defaults replace a SIGKILLed leader
    within about 12 s (lease duration + one retry period).
    """

    lease_name: str = "mlplane-operator"
    #: None: the operator's namespace.
    lease_namespace: str | None = None
    lease_duration: int = 10
    renew_deadline: float = 7.0
    retry_period: float = 2.0
    pod_name: str | None = None

    def __post_init__(self) -> None:
        if not 1 <= self.lease_duration <= 3600:
            raise ValueError(
                "MLPLANE_LEADER_LEASE_DURATION must be whole seconds between 1 and 3600 "
                f"(got {self.lease_duration!r})"
            )
        if not 0 < self.renew_deadline < self.lease_duration:
            raise ValueError(
                "MLPLANE_LEADER_RENEW_DEADLINE must be above 0 and below "
                f"MLPLANE_LEADER_LEASE_DURATION (got {self.renew_deadline:g}s and "
                f"{self.lease_duration}s): the leader must stop before a standby may take over"
            )
        if not 0 < self.retry_period * 1.2 < self.renew_deadline:
            raise ValueError(
                "MLPLANE_LEADER_RETRY_PERIOD must be above 0 and at most "
                f"MLPLANE_LEADER_RENEW_DEADLINE / 1.2 (got {self.retry_period:g}s and "
                f"{self.renew_deadline:g}s): the leader needs more than one try per deadline"
            )

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> LeaderElectionConfig:
        """Read ``MLPLANE_LEADER_*`` and ``POD_NAME``; ``ValueError`` names a wrong variable."""
        duration = _leader_seconds(env, "MLPLANE_LEADER_LEASE_DURATION", cls.lease_duration)
        if duration != int(duration):
            raise ValueError(
                "MLPLANE_LEADER_LEASE_DURATION must be whole seconds between 1 and 3600 "
                f"(got {env.get('MLPLANE_LEADER_LEASE_DURATION')!r})"
            )
        return cls(
            lease_name=env.get("MLPLANE_LEADER_LEASE_NAME", "").strip() or cls.lease_name,
            lease_namespace=env.get("MLPLANE_LEADER_LEASE_NAMESPACE", "").strip()
            or env.get("MLPLANE_OPERATOR_NAMESPACE", "").strip()
            or None,
            lease_duration=int(duration),
            renew_deadline=_leader_seconds(
                env, "MLPLANE_LEADER_RENEW_DEADLINE", cls.renew_deadline
            ),
            retry_period=_leader_seconds(env, "MLPLANE_LEADER_RETRY_PERIOD", cls.retry_period),
            pod_name=env.get("POD_NAME", "").strip() or None,
        )


def _leader_seconds(env: Mapping[str, str], variable: str, default: float) -> float:
    """A duration (``10s``, ``500ms``) or plain seconds."""
    raw = env.get(variable, "").strip()
    if not raw:
        return float(default)
    try:
        return float(raw)
    except ValueError:
        pass
    try:
        return parse_duration(raw)
    except ValueError:
        raise ValueError(
            f"{variable} must be a duration such as 10s or 500ms, or seconds (got {raw!r})"
        ) from None


# --- every setting, read once at start ----------------------------------------------------------
# The operator's loop (Kopf handlers and the local runner) reads its settings from one
# :class:`Settings` made when it starts (Kopf's ``on.startup``, the runner's constructor), never
# from the environment at import or per reconcile: a variable changed later changes nothing
# until the next start, exactly as a chart's ConfigMap change needs a new pod.


@dataclass(frozen=True)
class Setting:
    """One environment variable the operator reads: what sets it and what it does unset."""

    variable: str
    #: The Helm chart value that sets it (None: only through ``operator.extraEnv``).
    chart: str | None
    #: What the operator does when it is unset, as the docs say it.
    default: str
    meaning: str


#: Every setting (the table in ``docs/configuration.md`` is generated from this:
#: ``python -m mlplane.operator.config``; a test fails when a variable the operator reads is
#: missing here, or when the doc is stale).
SETTINGS: tuple[Setting, ...] = (
    Setting("MLPLANE_MLFLOW_TRACKING_URI", "operator.mlflowTrackingUri", "`http://127.0.0.1:5000`",
            "MLflow for resources that name none"),
    Setting("MLPLANE_MLFLOW_TIMEOUT", "operator.mlflowTimeoutSeconds", "`10` (1 to 600)",
            "seconds one MLflow call may take; tried once, the reconcile loop retries"),
    Setting("MLPLANE_ALLOWED_TRACKING_URIS", "operator.allowedTrackingUris", "none",
            "comma-separated MLflow URIs a TrainingJob may name besides the operator's"),
    Setting("MLPLANE_MODEL_NAME_POLICY", "operator.modelNamePolicy", "no restriction",
            'JSON `{"<namespace>": ["<name>", "<prefix>*"]}`: model names a namespace may '
            "register and alias"),
    Setting("MLPLANE_ALLOWED_MODEL_FLAVORS", "operator.allowedModelFlavors",
            f"`{','.join(SAFE_SERIALIZATIONS)}`",
            "serialisations a ModelDeployment may load without opting in"),
    Setting("MLPLANE_CAPACITY_LABELS", "operator.capacityLabels", "`eks`",
            "node-label convention of spot/on-demand capacity: `eks`, `karpenter` or `gke`"),
    Setting("MLPLANE_DEFAULT_TRAINING_IMAGE", "operator.defaultTrainingImage", f"`{RAY_IMAGE}`",
            "image of TrainingJobs that name none"),
    Setting("MLPLANE_DEFAULT_SERVING_IMAGE", "operator.defaultServingImage", f"`{RAY_IMAGE}`",
            "image of ModelDeployments that name none"),
    Setting("MLPLANE_ARTIFACTS_URI", "operator.artifactsUri", "none",
            "where artifacts go (e.g. `s3://bucket/prefix`)"),
    Setting(CHECKPOINT_BASE_VARIABLE, CHECKPOINT_BASE_CHART_VALUE,
            "`<MLPLANE_ARTIFACTS_URI>/checkpoints`, else none",
            "default checkpoint location of TrainingJobs without `checkpoint.uri`"),
    Setting("MLPLANE_CHECKPOINT_INTERVAL_MIN", "operator.checkpointIntervalMin", "`1m`",
            "lower bound of an Auto checkpoint interval"),
    Setting("MLPLANE_CHECKPOINT_INTERVAL_MAX", "operator.checkpointIntervalMax", "`4h`",
            "upper bound of an Auto checkpoint interval"),
    Setting("MLPLANE_GPU_PRICES", "operator.gpuPrices", "none (hours, no cost)",
            'JSON `{"<accelerator>": {"Spot": p, "OnDemand": p}}` per GPU-hour'),
    Setting("MLPLANE_PRICE_CURRENCY", "operator.priceCurrency", "`USD`",
            "the unit of the GPU prices (a label)"),
    Setting("MLPLANE_PREEMPTION_EVIDENCE_GRACE", "operator.preemptionEvidenceGraceSeconds",
            "`15` (0 to 600)",
            "seconds a failed spot attempt waits for late preemption evidence"),
    Setting("MLPLANE_TRAINING_SERVICE_ACCOUNT", None, "none",
            "service account of training Ray pods"),
    Setting("MLPLANE_SERVING_SERVICE_ACCOUNT", None, "none",
            "service account of serving Ray pods"),
    Setting("MLPLANE_SERVING_CLIENT_NAMESPACES", "operator.servingClientNamespaces",
            "the ModelDeployment's own namespace",
            "comma-separated namespaces whose pods may call Serve's port (`*`: all)"),
    Setting("MLPLANE_OPERATOR_NAMESPACE", "(the release namespace)", "`mlplane-system`",
            "where the operator's pods run (reclaim history ConfigMap, NetworkPolicies)"),
    Setting("MLPLANE_OPERATOR_POD_LABELS", "(the chart's selector labels)",
            "`" + ",".join(f"{k}={v}" for k, v in OPERATOR_POD_LABELS) + "`",
            "labels of the operator's pods (`k=v,k=v`)"),
    Setting("MLPLANE_KUBERAY_NAMESPACE", None, "`kuberay-system`",
            "where the KubeRay operator runs"),
    Setting("MLPLANE_KUBERAY_POD_LABELS", None,
            "`" + ",".join(f"{k}={v}" for k, v in KUBERAY_POD_LABELS) + "`",
            "labels of the KubeRay operator's pods"),
    Setting("MLPLANE_PROMETHEUS_NAMESPACE", "prometheus.namespace",
            "none: nothing scrapes Ray pods",
            "where Prometheus runs (the chart sets it while `servingMonitor.enabled`)"),
    Setting("MLPLANE_PROMETHEUS_POD_LABELS", "prometheus.podLabels", "none",
            "labels of Prometheus's pods (the chart sets it while `servingMonitor.enabled`)"),
    Setting("MLPLANE_SERVING_SCRAPE_TOKEN_FILE", "(set while `servingMonitor.enabled`)",
            "none: only the operator's admin tokens open `/admin/metrics`",
            "file with Prometheus' token for the serving apps' `/admin/metrics`"),
    Setting("MLPLANE_LOG_FORMAT", "operator.logFormat", "`text`", "`json` or `text`"),
    Setting("MLPLANE_RECONCILE_INTERVAL", "operator.reconcileIntervalSeconds", "`5`",
            "seconds between the timer rounds of each ModelDeployment and ABTest (TrainingJobs "
            "have no timer: see `MLPLANE_RESYNC_INTERVAL`)"),
    Setting("MLPLANE_RESYNC_INTERVAL", "operator.resyncIntervalSeconds", "`300`",
            "most seconds between two rounds of a TrainingJob nothing woke (a safety net: "
            "its own changes, its RayJobs' events, disruption evidence and the times the "
            "reconcile asks for wake it)"),
    Setting("MLPLANE_API_TIMEOUT", "operator.apiTimeoutSeconds", "`30` (1 to 600)",
            "the longest one Kubernetes API call of the operator may take, in seconds (watch "
            "streams excepted); a call that takes longer fails and the round is tried again"),
    Setting("MLPLANE_RESOLVE_INTERVAL", "operator.resolveIntervalSeconds", "`30`",
            "seconds a ModelDeployment's MLflow answer (and drift report) is reused by its timer"),
    Setting("MLPLANE_RETRY_DELAY", "operator.retryDelaySeconds", "`15`",
            "seconds before a round that could not reach MLflow is tried again"),
    Setting("MLPLANE_SIGNING_KEY_SETTLE", "operator.signingKeySettleSeconds", "`150`",
            "seconds a staged request-signing key is only accepted before it signs"),
    Setting("MLPLANE_ABTEST_INTERVAL", None, "each ABTest's `spec.analysis.interval`",
            "seconds between evaluations of every running ABTest (tests)"),
    Setting("MLPLANE_ABTEST_STATS_URL", None, "each deployment's endpoint",
            "where the operator reads the routers' `/v1/stats` (tests, out-of-cluster)"),
    Setting("MLPLANE_SERVING_URL", None, "each deployment's endpoint",
            "where the operator reads the serving apps' `/v1/drift` (tests, out-of-cluster)"),
    Setting("MLPLANE_LOCAL_REPLICA_CPUS", None, "`0.1`",
            "local platform: CPUs of each Serve replica"),
    Setting("MLPLANE_LOCAL_MAX_REPLICAS", None, "`2`",
            "local platform: most replicas of a deployment"),
    Setting("MLPLANE_LEADER_LEASE_NAME", "(`<release>-leader`)",
            "`mlplane-operator`", "the Lease of leader election (docs/high-availability.md)"),
    Setting("MLPLANE_LEADER_LEASE_NAMESPACE", "(the release namespace)",
            "`MLPLANE_OPERATOR_NAMESPACE`", "where that Lease is"),
    Setting("MLPLANE_LEADER_LEASE_DURATION", "operator.leaderElection.leaseDurationSeconds", "`10`",
            "whole seconds a standby waits after the Lease last changed before taking it"),
    Setting("MLPLANE_LEADER_RENEW_DEADLINE", "operator.leaderElection.renewDeadlineSeconds", "`7`",
            "seconds without a renew after which the leader exits (below the lease duration)"),
    Setting("POD_NAME", "(the pod's name, from the downward API)", "the host name",
            "first part of this replica's holder identity in the Lease"),
    Setting("MLPLANE_LEADER_RETRY_PERIOD", "operator.leaderElection.retryPeriodSeconds", "`2`",
            "seconds between renews and between a standby's looks"),
)  # fmt: skip


@dataclass(frozen=True)
class Settings:
    """Every setting of the operator's loop, :class:`OperatorConfig` included.

    Made once when the operator starts (:meth:`from_env`) and handed to every handler (Kopf's
    operator-level ``memo``) or held by the local runner; nothing reads the environment later.
    """

    config: OperatorConfig = OperatorConfig()
    #: Seconds between timer rounds of each ModelDeployment and ABTest.
    reconcile_interval: float = 5.0
    #: Most seconds between two rounds of a TrainingJob that nothing woke (the safety net).
    resync_interval: float = 300.0
    #: The longest one Kubernetes API call may take (seconds): no call blocks a round forever.
    api_timeout: float = 30.0
    #: How old a ModelDeployment's MLflow answer (or drift report) may be before a timer asks again.
    resolve_interval: float = 30.0
    #: Seconds before a round that could not reach MLflow is tried again.
    retry_delay: float = 15.0
    #: Seconds a staged signing key is only accepted (``builders/signing.py``'s SETTLE_SECONDS).
    signing_key_settle: float = 150.0
    #: Seconds between evaluations of every running ABTest (None: each test's own interval).
    abtest_interval: float | None = None
    #: Replaces every deployment's endpoint for the routers' stats (None: the endpoint).
    abtest_stats_url: str | None = None
    #: Replaces every deployment's endpoint for the drift reports (None: the endpoint).
    serving_url: str | None = None
    #: Local platform: CPUs of a Serve replica, most replicas of a deployment.
    local_replica_cpus: float = 0.1
    local_max_replicas: int = 2

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Read every ``MLPLANE_*`` setting; ``ValueError`` naming the variable that is wrong."""
        env = os.environ if env is None else env
        return cls(
            config=OperatorConfig.from_env(env),
            reconcile_interval=_number(env, "MLPLANE_RECONCILE_INTERVAL", 5.0, 0.1, 3600),
            resync_interval=_number(env, "MLPLANE_RESYNC_INTERVAL", 300.0, 0.1, 86400),
            api_timeout=_number(env, "MLPLANE_API_TIMEOUT", 30.0, 1, 600),
            resolve_interval=_number(env, "MLPLANE_RESOLVE_INTERVAL", 30.0, 0.1, 86400),
            retry_delay=_number(env, "MLPLANE_RETRY_DELAY", 15.0, 0.1, 3600),
            signing_key_settle=_number(env, "MLPLANE_SIGNING_KEY_SETTLE", 150.0, 0, 86400),
            abtest_interval=_number(env, "MLPLANE_ABTEST_INTERVAL", None, 0.1, 86400),
            abtest_stats_url=_url(env, "MLPLANE_ABTEST_STATS_URL"),
            serving_url=_url(env, "MLPLANE_SERVING_URL"),
            local_replica_cpus=_number(env, "MLPLANE_LOCAL_REPLICA_CPUS", 0.1, 0.01, 64),
            local_max_replicas=_number(env, "MLPLANE_LOCAL_MAX_REPLICAS", 2, 1, 100, whole=True),
        )


def _number(
    env: Mapping[str, str],
    variable: str,
    default: float | None,
    low: float,
    high: float,
    *,
    whole: bool = False,
) -> Any:
    """A number of ``variable`` within ``[low, high]`` (``default`` when unset or empty)."""
    raw = env.get(variable, "").strip()
    if not raw:
        return default
    what = "a whole number" if whole else "a number"
    try:
        value = int(raw) if whole else float(raw)
    except ValueError:
        value = None
    if value is None or not low <= value <= high:
        raise ValueError(f"{variable} must be {what} from {low:g} to {high:g} (got {raw!r})")
    return value


def _url(env: Mapping[str, str], variable: str) -> str | None:
    raw = env.get(variable, "").strip()
    if not raw:
        return None
    if not raw.startswith(("http://", "https://")):
        raise ValueError(f"{variable} must be an http:// or https:// URL (got {raw!r})")
    return raw


def settings_table() -> str:
    """The Markdown table of :data:`SETTINGS` (what ``docs/configuration.md`` holds)."""
    rows = [
        "| Variable | Chart value | Unset | What it does |",
        "|---|---|---|---|",
    ]
    for s in SETTINGS:
        chart = s.chart if s.chart is None or s.chart.startswith("(") else f"`{s.chart}`"
        rows.append(f"| `{s.variable}` | {chart or '— (`operator.extraEnv`)'} | {s.default} "
                    f"| {s.meaning} |")  # fmt: skip
    return "\n".join(rows) + "\n"


#: The markers around the generated table in ``docs/configuration.md``.
TABLE_BEGIN = "<!-- settings table: generated by `python -m mlplane.operator.config` -->"
TABLE_END = "<!-- end of settings table -->"


def render_doc(text: str) -> str:
    """``text`` (the doc) with the table between the markers replaced by :func:`settings_table`."""
    head, sep, rest = text.partition(TABLE_BEGIN)
    _, sep2, tail = rest.partition(TABLE_END)
    if not sep or not sep2:
        raise ValueError(f"the doc has no {TABLE_BEGIN!r} ... {TABLE_END!r} markers")
    return f"{head}{TABLE_BEGIN}\n{settings_table()}{TABLE_END}{tail}"


if __name__ == "__main__":  # regenerate the table in docs/configuration.md
    import sys
    from pathlib import Path

    doc = Path(sys.argv[1] if len(sys.argv) > 1 else "docs/configuration.md")
    doc.write_text(render_doc(doc.read_text()))
