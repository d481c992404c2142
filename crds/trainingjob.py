"""TrainingJob: a Ray training run on GPU nodes (spot included) ending in a registered model."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field

from mlplane.crds.common import (
    CAPACITY_DESCRIPTION,
    Capacity,
    Condition,
    FreeFormObject,
    HeadResources,
    Resource,
    Resources,
    Rule,
    SpecModel,
    StatusModel,
    Timestamp,
    Toleration,
    dns_label,
    duration_string,
    interval_string,
    name_rules,
    parse_duration,
)

ACCELERATOR = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"
#: ``s3://bucket/prefix`` or a filesystem path (no other scheme is supported yet).
CHECKPOINT_URI = r"^(s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9](/.*)?|[^:]+)$"


class Head(SpecModel):
    """The Ray head: drivers and GCS. Always on on-demand capacity (losing it loses the job)."""

    resources: HeadResources = Field(default_factory=HeadResources)


class WorkerGroup(SpecModel):
    """A group of identical Ray workers (a KubeRay worker group)."""

    name: dns_label(30) = Field(  # type: ignore[valid-type]
        ..., description="Group name, unique in the job."
    )
    replicas: int = Field(1, ge=0, le=1000, description="Workers started with the attempt.")
    min_replicas: int | None = Field(
        None, ge=0, le=1000, description="Autoscaling floor (enables Ray's autoscaler)."
    )
    max_replicas: int | None = Field(
        None, ge=1, le=1000, description="Autoscaling ceiling (enables Ray's autoscaler)."
    )
    resources: Resources = Field(default_factory=Resources)
    accelerator: str | None = Field(
        None,
        pattern=ACCELERATOR,
        max_length=63,
        description="GPU type to schedule on, e.g. nvidia-a100-80gb or nvidia-l4.",
    )
    capacity: Capacity = Field("OnDemand", description=CAPACITY_DESCRIPTION)

    cel_rules: ClassVar[tuple[Rule, ...]] = (
        Rule(
            "!has(self.minReplicas) || self.minReplicas <= self.replicas",
            "minReplicas must not exceed replicas",
            ".minReplicas",
        ),
        Rule(
            "!has(self.maxReplicas) || self.replicas <= self.maxReplicas",
            "replicas must not exceed maxReplicas",
            ".maxReplicas",
        ),
        Rule(
            "!has(self.accelerator) || self.resources.gpu > 0",
            "accelerator is set but resources.gpu is 0: ask for at least one GPU",
            ".accelerator",
        ),
    )


class Checkpoint(SpecModel):
    """Where attempts save checkpoints and resume from them, and an optional warm start."""

    uri: str | None = Field(
        None,
        pattern=CHECKPOINT_URI,
        max_length=1024,
        description="s3://bucket/prefix or a path on storage shared by all workers. Each "
        "TrainingJob checkpoints under <uri>/<metadata.uid>/, so a job deleted and applied "
        "again (a new uid) starts fresh. Default: the operator's checkpoint base "
        "(<base>/<namespace>/<name>/<uid>/); a job with Spot or SpotWithFallback workers is "
        "rejected only when neither is set.",
    )
    keep: int = Field(3, ge=1, le=100, description="How many of the newest checkpoints to keep.")
    resume_from: str | None = Field(
        None,
        pattern=CHECKPOINT_URI,
        max_length=1024,
        description="Warm start: another job's checkpoint (e.g. its status.lastCheckpoint.uri) "
        "or checkpoint folder (its newest), restored while this job has no checkpoint of its "
        "own yet; its own checkpoints always win. Shown in status.warmStart. The attempt "
        "fails if nothing is there.",
    )
    interval: interval_string(min_seconds=10, max_seconds=7 * 86400) | None = Field(  # type: ignore[valid-type]
        None,
        description="How often a loop using TrainingSession.checkpoint_due() checkpoints: a "
        "duration (10s to 7d) or Auto, which follows sqrt(2*C*M) from the measured checkpoint "
        "write time C and the operator's observed mean time between spot reclaims M, within "
        "the operator's bounds (status.checkpoint shows the values). Unset: the loop's own "
        "cadence (e.g. every K steps).",
    )

    @property
    def interval_seconds(self) -> float | None:
        """The fixed interval in seconds; None when Auto or unset."""
        if self.interval is None or self.interval == "Auto":
            return None
        return parse_duration(self.interval)


class ReturnToSpot(SpecModel):
    """Go back to spot after a SpotWithFallback fallback, at a checkpoint, once spot is quiet."""

    min_on_demand: duration_string(min_seconds=10, max_seconds=7 * 86400) = Field(  # type: ignore[valid-type]
        ...,
        description="Least time on on-demand after a fallback before returning (10s to 7d; "
        "30m to 2h suits most jobs), and how long the job's spot pools must have had no "
        "reclaim the operator saw. Doubled after each return that spot reclaimed again within "
        "four times that long (flapping); reset by a return that lasted.",
    )


class Preemption(SpecModel):
    """The spot-preemption budget, separate from the code-failure budget (backoffLimit)."""

    max_preemptions: int = Field(
        3,
        ge=0,
        le=100,
        description="Attempts lost to preemption before the job fails (Spot) or its workers "
        "move to on-demand capacity (SpotWithFallback).",
    )
    max_worker_failures: int = Field(
        3,
        ge=0,
        le=100,
        description="Worker losses Ray Train absorbs inside one attempt by restoring from the "
        "newest checkpoint (FailureConfig.max_failures).",
    )
    termination_grace_seconds: int | None = Field(
        None,
        ge=10,
        le=3600,
        description="Grace given to spot Ray worker pods when they are evicted, so the "
        "checkpoint asked for by a reclaim notice can finish first (their "
        "terminationGracePeriodSeconds; a preStop hook keeps Ray up while that checkpoint is "
        "pending). Default: the capacity's notice window, 120 s on AWS (eks, karpenter), 30 s "
        "on GKE.",
    )
    return_to_spot: ReturnToSpot | None = Field(
        None,
        description="After SpotWithFallback workers fell back to on-demand, move them back to "
        "spot: once minOnDemand has passed and no reclaim was seen in their pools for as long, "
        "the operator waits for the running attempt's next checkpoint, ends it and starts the "
        "next attempt on spot from that checkpoint (a planned move: no budget is spent). "
        "Unset (the default): the job stays on on-demand after a fallback, as it always did.",
    )


class TrainingMLflow(SpecModel):
    """Where the run is tracked and what it registers on success."""

    tracking_uri: str | None = Field(
        None, max_length=1024, description="Defaults to the operator's configured MLflow."
    )
    experiment: str | None = Field(
        None, max_length=256, description="Defaults to <namespace>/<name>."
    )
    registered_model: str | None = Field(
        None,
        max_length=256,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$",
        description="Register the run's model as a new version of this registered model.",
    )
    alias: str | None = Field(
        None,
        max_length=255,
        pattern=r"^[A-Za-z_][A-Za-z0-9_-]*$",
        description="Set this alias (e.g. champion, candidate) on the new version.",
    )

    cel_rules: ClassVar[tuple[Rule, ...]] = (
        Rule(
            "!has(self.alias) || has(self.registeredModel)",
            "alias needs registeredModel: only a registered version can carry an alias",
            ".alias",
        ),
    )


class TrainingJobSpec(SpecModel):
    """What to train, on which capacity, and where the result goes."""

    image: str | None = Field(
        None, max_length=512, description="Ray image with the training code; default from config."
    )
    entrypoint: str = Field(
        ..., min_length=1, max_length=4096, description="Command the Ray job runs."
    )
    runtime_env: FreeFormObject | None = Field(
        None, description="Ray runtime_env (env_vars, pip, working_dir, ...)."
    )
    head: Head = Field(default_factory=Head)
    workers: list[WorkerGroup] = Field(
        default_factory=list,
        max_length=8,
        json_schema_extra={
            "x-kubernetes-list-type": "map",
            "x-kubernetes-list-map-keys": ["name"],
            "default": [],
        },
    )
    node_selector: dict[str, str] | None = Field(
        None, description="Extra node labels every pod of the job must match."
    )
    tolerations: list[Toleration] | None = Field(None, max_length=32)
    checkpoint: Checkpoint | None = None
    preemption: Preemption = Field(default_factory=Preemption)
    backoff_limit: int = Field(
        2, ge=0, le=100, description="Attempts that may fail for code reasons before the job fails."
    )
    active_deadline_seconds: int | None = Field(
        None, ge=1, description="Wall-clock limit of each attempt."
    )
    ttl_seconds_after_finished: int | None = Field(
        None, ge=0, description="Delete the finished attempt's Ray cluster after this long."
    )
    suspend: bool = Field(False, description="Hold the job (Kueue admits it by clearing this).")
    queue_name: str | None = Field(
        None, max_length=63, pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$", description="Kueue queue."
    )
    mlflow: TrainingMLflow = Field(default_factory=TrainingMLflow)

    cel_rules: ClassVar[tuple[Rule, ...]] = (
        Rule(
            "self.workers.all(w, self.workers.exists_one(x, x.name == w.name))",
            "worker group names must be unique",
            ".workers",
        ),
        Rule(
            "!has(self.preemption) || !has(self.preemption.returnToSpot) || "
            "self.workers.exists(w, w.capacity == 'SpotWithFallback')",
            "preemption.returnToSpot needs a worker group with capacity SpotWithFallback: only "
            "those fall back to on-demand and can return",
            ".preemption.returnToSpot",
        ),
    )


class CurrentAttempt(StatusModel):
    number: int = Field(..., ge=1)
    ray_job: str
    capacity: Literal["OnDemand", "Spot"]
    start_time: Timestamp | None = None
    #: When the operator first saw it running.
    running_time: Timestamp | None = None
    #: Started because the previous attempt was lost to a preemption (its start-up is waste).
    after_preemption: bool | None = None


class LastCheckpoint(StatusModel):
    uri: str
    step: int | None = None
    time: Timestamp | None = None


class CheckpointStatus(StatusModel):
    """The checkpoint interval in use and the estimates it comes from (spec.checkpoint.interval)."""

    interval: str = Field(..., description="What the spec asks: Auto or a duration.")
    interval_seconds: float | None = Field(
        None,
        description="The interval in use (reported by the running attempt once it has "
        "checkpointed; until then, the one the operator gave it).",
    )
    write_seconds: float | None = Field(
        None, description="C: the measured time to write one checkpoint (a running mean)."
    )
    mean_time_between_reclaims_seconds: float | None = Field(
        None,
        description="M: the job's expected time between spot reclaims, from the "
        "operator's history of its pools (a prior when there is none); unset with no spot "
        "workers.",
    )


class CostStatus(StatusModel):
    """GPU-hours by capacity, GPU-hours lost to reclaims, and their estimated price."""

    spot_gpu_hours: float = 0.0
    on_demand_gpu_hours: float = 0.0
    lost_gpu_hours: float = Field(
        0.0,
        description="Work repeated since the last checkpoint before each reclaim, plus "
        "the restart time of attempts that followed a preemption (in GPU-hours).",
    )
    estimated_cost: float | None = Field(
        None, description="From the operator's GPU price table; unset without one."
    )
    lost_cost: float | None = Field(None, description="The price of lostGpuHours.")
    currency: str | None = None
    #: Time up to which hours are counted (each round adds from here: nothing twice).
    accounted_until: Timestamp | None = None


class WarmStart(StatusModel):
    """The checkpoint the job was told to start from (spec.checkpoint.resumeFrom)."""

    uri: str


class TrainingMLflowStatus(StatusModel):
    run_id: str | None = None
    model_version: str | None = None
    model_uri: str | None = None


class Disruption(StatusModel):
    """One preemption the operator counted (the newest are kept, for users to see why)."""

    attempt: int
    pod: str | None = None
    node: str | None = None
    reason: str
    time: Timestamp | None = None


class NoticeCheckpointStatus(StatusModel):
    uri: str | None = None
    step: int | None = None


class LastNotice(StatusModel):
    """The newest reclaim notice of a running attempt, and the checkpoint it asked for."""

    id: str = Field(..., description="attempt-<n>-notice-<k>: what the runtime answers.")
    attempt: int
    sequence: int = Field(1, ge=1)
    signal: str = Field(
        ...,
        description="The taint key (e.g. aws-node-termination-handler/spot-itn) or "
        "DisruptionTarget (a pod's condition).",
    )
    node: str | None = None
    pod: str | None = None
    time: Timestamp | None = Field(None, description="When the signal was raised (or seen).")
    seen_time: Timestamp | None = None
    deadline: Timestamp | None = Field(
        None, description="When the capacity goes, when the signal says (or its window does)."
    )
    delivered_time: Timestamp | None = Field(
        None, description="When the operator wrote the notice where the attempt reads it."
    )
    checkpoint: NoticeCheckpointStatus | None = Field(
        None, description="The checkpoint the attempt took on this notice."
    )
    checkpoint_time: Timestamp | None = None
    keys: list[str] = Field(
        default_factory=list,
        max_length=20,
        description="Nodes and pods whose notices this one checkpoint answers.",
    )


class SpotReturnStatus(StatusModel):
    """Where a fallen-back job stands on its way back to spot (spec.preemption.returnToSpot)."""

    on_demand_since: Timestamp | None = Field(
        None, description="When the SpotWithFallback workers last moved to on-demand."
    )
    not_before: Timestamp | None = Field(
        None, description="The earliest return: onDemandSince plus the effective minOnDemand."
    )
    backoff: int = Field(
        0, ge=0, description="Doublings of minOnDemand in force (returns reclaimed soon after)."
    )
    decided_at: Timestamp | None = Field(
        None, description="When the operator decided to return: it waits for a newer checkpoint."
    )
    checkpoint_at_decision: str | None = Field(
        None, description="The newest checkpoint when it decided (the move waits for another)."
    )
    ending_attempt: int | None = Field(
        None, description="The on-demand attempt being ended for the move."
    )
    last_return_time: Timestamp | None = None
    last_return_attempt: int | None = None


class TrainingJobStatus(StatusModel):
    """What happened, as the operator saw it."""

    phase: (
        Literal[
            "Pending",
            "Suspended",
            "Running",
            "Retrying",
            "Registering",
            "Stalled",
            "Succeeded",
            "Failed",
        ]
        | None
    ) = None
    conditions: list[Condition] = Field(
        default_factory=list,
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
    )
    observed_generation: int | None = None
    attempts: int = 0
    preemptions: int = 0
    failures: int = 0
    returns_to_spot: int | None = Field(
        None,
        description="Planned moves from on-demand back to spot (spec.preemption.returnToSpot): "
        "neither a preemption nor a failure; unset until the first.",
    )
    reclaim_notices: int | None = Field(
        None, description="Reclaim notices the running attempt was told of; unset until the first."
    )
    notice_checkpoints: int | None = Field(
        None, description="Checkpoints taken on a reclaim notice; unset until the first."
    )
    spot_return: SpotReturnStatus | None = None
    #: Attempts lost to an MLflow/S3 outage: they spend neither budget.
    infrastructure_failures: int | None = None
    #: The next attempt starts no earlier (after an attempt lost to an outage), or a failed spot
    #: attempt is judged no earlier (waiting for late preemption evidence).
    retry_after: Timestamp | None = None
    current_attempt: CurrentAttempt | None = None
    last_checkpoint: LastCheckpoint | None = None
    last_notice: LastNotice | None = None
    checkpoint_uri: str | None = Field(
        None,
        description="Where this job's attempts checkpoint: its own folder, scoped by its uid "
        "(<checkpoint.uri>/<uid> or <operator base>/<namespace>/<name>/<uid>).",
    )
    warm_start: WarmStart | None = None
    checkpoint: CheckpointStatus | None = None
    cost: CostStatus | None = None
    mlflow: TrainingMLflowStatus | None = None
    #: The most recent counted preemptions (bounded), so a retry never counts one twice.
    disruptions: list[Disruption] = Field(default_factory=list, max_length=50)
    start_time: Timestamp | None = None
    completion_time: Timestamp | None = None


class TrainingJob(Resource):
    kind_name: ClassVar[str] = "TrainingJob"
    plural: ClassVar[str] = "trainingjobs"
    singular: ClassVar[str] = "trainingjob"
    short_names: ClassVar[tuple[str, ...]] = ("tj",)
    description: ClassVar[str] = (
        "A Ray training run through KubeRay on GPU node pools, spot capacity included, that "
        "checkpoints, resumes after preemption and registers its model in MLflow."
    )
    printer_columns: ClassVar[tuple[dict, ...]] = (
        {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
        {"name": "Attempts", "type": "integer", "jsonPath": ".status.attempts"},
        {"name": "Preemptions", "type": "integer", "jsonPath": ".status.preemptions"},
        {"name": "Capacity", "type": "string", "jsonPath": ".status.currentAttempt.capacity"},
        {
            "name": "Returns",
            "type": "integer",
            "jsonPath": ".status.returnsToSpot",
            "priority": 1,
        },
        {
            "name": "Checkpoint",
            "type": "integer",
            "jsonPath": ".status.lastCheckpoint.step",
            "priority": 1,
        },
        {
            "name": "Model",
            "type": "string",
            "jsonPath": ".status.mlflow.modelVersion",
            "priority": 1,
        },
        {
            "name": "Interval-s",
            "type": "number",
            "jsonPath": ".status.checkpoint.intervalSeconds",
            "priority": 1,
        },
        {
            "name": "Spot-GPU-h",
            "type": "number",
            "jsonPath": ".status.cost.spotGpuHours",
            "priority": 1,
        },
        {
            "name": "OnDemand-GPU-h",
            "type": "number",
            "jsonPath": ".status.cost.onDemandGpuHours",
            "priority": 1,
        },
        {
            "name": "Lost-GPU-h",
            "type": "number",
            "jsonPath": ".status.cost.lostGpuHours",
            "priority": 1,
        },
        {
            "name": "Notice",
            "type": "string",
            "jsonPath": ".status.lastNotice.signal",
            "priority": 1,
        },
        {
            "name": "Notice-Ckpt",
            "type": "integer",
            "jsonPath": ".status.lastNotice.checkpoint.step",
            "priority": 1,
        },
        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
    )
    cel_rules: ClassVar[tuple[Rule, ...]] = name_rules()

    kind: Literal["TrainingJob"] = "TrainingJob"
    spec: TrainingJobSpec
    status: TrainingJobStatus | None = None
