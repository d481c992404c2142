"""ModelDeployment: a registry model served by Ray Serve, autoscaled, watched for drift."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field

from mlplane.crds.common import (
    CAPACITY_DESCRIPTION,
    Capacity,
    Condition,
    Name,
    Resource,
    Resources,
    Rule,
    SpecModel,
    StatusModel,
    Timestamp,
    Toleration,
    decimal_string,
    duration_string,
    name_rules,
)
from mlplane.crds.trainingjob import ACCELERATOR, TrainingJobSpec

MODEL_NAME = r"^[A-Za-z0-9][A-Za-z0-9._-]*$"
ALIAS = r"^[A-Za-z_][A-Za-z0-9_-]*$"


class ModelRef(SpecModel):
    """A registered model and exactly one of an alias (followed) or a pinned version."""

    name: str = Field(..., max_length=256, pattern=MODEL_NAME, description="Registered model.")
    alias: str | None = Field(
        None,
        max_length=255,
        pattern=ALIAS,
        description="Follow this alias: moving it in MLflow rolls the deployment in place.",
    )
    version: int | None = Field(None, ge=1, description="Serve exactly this version.")
    allow_unsafe_deserialization: bool = Field(
        False,
        description="UNSAFE: load any model serialisation, including pickle/cloudpickle and "
        "custom pyfunc code, which execute code stored in the model on load. Off by default: "
        "only formats that execute no code (the operator's allowed list, e.g. skops, ONNX) "
        "load. Turn on only if everyone who can write this registered model and move its "
        "aliases is trusted to run code in serving.",
    )
    allow_non_finite_inputs: bool = Field(
        False,
        description="The model takes NaN and Infinity as feature values (sent as the JSON "
        "literals NaN, Infinity, -Infinity or as numbers beyond the float range). Off: "
        "/v1/predict refuses them with a 400 naming the column (null is still a missing value).",
    )

    cel_rules: ClassVar[tuple[Rule, ...]] = (
        Rule(
            "has(self.alias) != has(self.version)",
            "set exactly one of model.alias or model.version",
            ".alias",
        ),
    )


#: Requests a router replica queues per model deployment before shedding (503 + Retry-After):
#: at a model's usual tens of milliseconds per request, about a second of waiting.
DEFAULT_MAX_QUEUED_REQUESTS = 100


class Feedback(SpecModel):
    """Who may post outcomes to ``/v1/feedback`` (A/B evidence)."""

    token_secret: Name | None = Field(
        None,
        description="A Secret in this namespace whose key 'token' POST /v1/feedback must carry "
        "as 'Authorization: Bearer <token>' (compared in constant time; 401 otherwise). For "
        "deployments whose feedback comes from a backend that can hold a secret. Unset: "
        "feedback needs no token (anyone who can predict can post outcomes for their own "
        "predictions; see docs/security.md).",
    )


class Replicas(SpecModel):
    """Bounds of the Serve autoscaler. ``kubectl scale`` sets ``min`` (the floor it keeps)."""

    min: int = Field(1, ge=0, le=1000)
    max: int = Field(1, ge=1, le=1000)

    cel_rules: ClassVar[tuple[Rule, ...]] = (
        Rule("self.min <= self.max", "replicas.min must not exceed replicas.max", ".min"),
    )


class Autoscaling(SpecModel):
    """Ray Serve's request-based autoscaling."""

    target_ongoing_requests: int = Field(2, ge=1, le=10000)
    upscale_delay_seconds: int = Field(30, ge=0, le=3600)
    downscale_delay_seconds: int = Field(600, ge=0, le=86400)


class Batching(SpecModel):
    """Server-side batching (``@serve.batch``): higher throughput for a little latency."""

    max_batch_size: int = Field(8, ge=1, le=1024)
    batch_wait_timeout_ms: int = Field(10, ge=0, le=10000)


class SLO(SpecModel):
    """Objectives over a 30-day window; alerts burn-rate against them."""

    availability: decimal_string(gt="0", lt="100") = Field(  # type: ignore[valid-type]
        "99.9", description="Percent of requests answered without a server error, e.g. 99.9."
    )
    latency_p99_ms: int | None = Field(
        None, ge=1, le=600000, description="99 % of requests answer faster than this."
    )


class TrainingJobTemplate(SpecModel):
    """The TrainingJob a drifting deployment creates (its name is chosen by the operator)."""

    metadata: dict[str, dict[str, str]] | None = Field(
        None, description="labels and annotations for the created TrainingJob."
    )
    spec: TrainingJobSpec

    cel_rules: ClassVar[tuple[Rule, ...]] = (
        Rule(
            "!has(self.metadata) || self.metadata.all(k, k == 'labels' || k == 'annotations')",
            "trainingJobTemplate.metadata may only hold labels and annotations",
            ".metadata",
        ),
    )


class Retrain(SpecModel):
    training_job_template: TrainingJobTemplate
    min_interval: duration_string(min_seconds=60, max_seconds=90 * 86400) = Field(  # type: ignore[valid-type]
        "24h", description="At most one retraining TrainingJob per this interval."
    )


DriftMethod = Literal["PSI", "JensenShannon", "StatisticalTest"]


class Drift(SpecModel):
    """Live inputs against the reference profile training logged beside the model."""

    enabled: bool = False
    method: DriftMethod = Field(
        "StatisticalTest",
        description="Which score decides drift: a binned KS / chi-square test (p-value, "
        "corrected across features), PSI, or Jensen-Shannon distance.",
    )
    threshold: decimal_string(gt="0", le="10") | None = Field(  # type: ignore[valid-type]
        None,
        description="Drift when the score crosses it: the significance level for "
        "StatisticalTest (default 0.01), else the score (PSI default 0.1, JS 0.1).",
    )
    window: duration_string(min_seconds=60, max_seconds=7 * 86400) = Field(  # type: ignore[valid-type]
        "1h", description="Length of a live window compared with the reference."
    )
    min_samples: int = Field(1000, ge=10, le=10_000_000, description="No verdict below this.")
    consecutive_windows: int = Field(
        3, ge=1, le=100, description="Drifted windows in a row before onDrift acts."
    )
    on_drift: Literal["Alert", "Retrain"] = "Alert"
    retrain: Retrain | None = None

    cel_rules: ClassVar[tuple[Rule, ...]] = (
        Rule(
            "self.onDrift != 'Retrain' || has(self.retrain)",
            "onDrift: Retrain needs retrain.trainingJobTemplate",
            ".retrain",
        ),
    )


class Monitoring(SpecModel):
    drift: Drift = Field(default_factory=Drift)


class ModelDeploymentSpec(SpecModel):
    """Which model to serve, on what, and how it is watched."""

    model: ModelRef
    image: str | None = Field(None, max_length=512, description="Default from operator config.")
    replicas: Replicas = Field(default_factory=Replicas)
    autoscaling: Autoscaling = Field(default_factory=Autoscaling)
    resources: Resources = Field(default_factory=Resources, description="Per replica.")
    accelerator: str | None = Field(None, pattern=ACCELERATOR, max_length=63)
    capacity: Capacity = Field("OnDemand", description=CAPACITY_DESCRIPTION)
    node_selector: dict[str, str] | None = None
    tolerations: list[Toleration] | None = Field(None, max_length=32)
    batching: Batching | None = None
    max_queued_requests: int = Field(
        DEFAULT_MAX_QUEUED_REQUESTS,
        ge=1,
        le=100000,
        description="Backpressure: requests each router replica lets wait for a model "
        "deployment's replicas (Serve's max_queued_requests) beyond those they are running. "
        "Past it a request is refused at once with 503 and Retry-After (counted in "
        "mlplane_requests_shed_total) instead of queueing without bound.",
    )
    slo: SLO = Field(default_factory=SLO)
    monitoring: Monitoring = Field(default_factory=Monitoring)
    feedback: Feedback | None = None

    cel_rules: ClassVar[tuple[Rule, ...]] = (
        Rule(
            "!has(self.accelerator) || self.resources.gpu > 0",
            "accelerator is set but resources.gpu is 0: ask for at least one GPU",
            ".accelerator",
        ),
    )


class DriftStatus(StatusModel):
    score: float | None = None
    drifted_features: list[str] = Field(default_factory=list)
    consecutive_drifted_windows: int = 0
    last_evaluated: Timestamp | None = None
    #: End of the last live window counted (each window is counted once, across restarts).
    last_window_end: Timestamp | None = None
    #: The model version the windows were compared with; a new version starts the count anew.
    reference_version: int | None = None
    #: Retraining TrainingJobs created so far (numbers the next one's name).
    retrains: int = 0
    last_retrain: Timestamp | None = None
    last_retrain_job: str | None = None


class ModelDeploymentStatus(StatusModel):
    phase: Literal["Pending", "Deploying", "Ready", "Degraded", "Failed"] | None = None
    conditions: list[Condition] = Field(
        default_factory=list,
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
    )
    observed_generation: int | None = None
    served_version: str | None = None
    model_uri: str | None = None
    endpoint: str | None = None
    replicas: int | None = None
    #: Label selector of the serving pods, for the scale subresource (HPA/KEDA read it).
    selector: str | None = None
    drift: DriftStatus | None = None


class ModelDeployment(Resource):
    kind_name: ClassVar[str] = "ModelDeployment"
    plural: ClassVar[str] = "modeldeployments"
    singular: ClassVar[str] = "modeldeployment"
    short_names: ClassVar[tuple[str, ...]] = ("md",)
    description: ClassVar[str] = (
        "A model from the MLflow registry served by a Ray Serve app (KubeRay RayService), "
        "autoscaled, upgraded without downtime and watched for drift."
    )
    printer_columns: ClassVar[tuple[dict, ...]] = (
        {"name": "Model", "type": "string", "jsonPath": ".spec.model.name"},
        {"name": "Version", "type": "string", "jsonPath": ".status.servedVersion"},
        {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
        {"name": "Replicas", "type": "integer", "jsonPath": ".status.replicas"},
        {"name": "Endpoint", "type": "string", "jsonPath": ".status.endpoint", "priority": 1},
        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
    )
    scale: ClassVar[dict[str, str] | None] = {
        "specReplicasPath": ".spec.replicas.min",
        "statusReplicasPath": ".status.replicas",
        "labelSelectorPath": ".status.selector",
    }
    cel_rules: ClassVar[tuple[Rule, ...]] = name_rules()

    kind: Literal["ModelDeployment"] = "ModelDeployment"
    spec: ModelDeploymentSpec
    status: ModelDeploymentStatus | None = None
