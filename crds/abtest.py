"""ABTest: a sticky traffic split between model versions, analysed sequentially."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field

from mlplane.crds.common import (
    Condition,
    Name,
    Resource,
    Rule,
    SpecModel,
    StatusModel,
    Timestamp,
    decimal_string,
    dns_label,
    duration_string,
    name_rules,
)
from mlplane.crds.modeldeployment import ALIAS


class VariantModel(SpecModel):
    """A version of the deployment's registered model: exactly one of alias or version."""

    alias: str | None = Field(None, max_length=255, pattern=ALIAS)
    version: int | None = Field(None, ge=1)

    cel_rules: ClassVar[tuple[Rule, ...]] = (
        Rule(
            "has(self.alias) != has(self.version)",
            "set exactly one of model.alias or model.version",
            ".alias",
        ),
    )


class Variant(SpecModel):
    name: dns_label(30)  # type: ignore[valid-type]
    model: VariantModel
    weight: int = Field(..., ge=0, le=100, description="Integer percent of traffic.")


class Bucketing(SpecModel):
    """Sticky assignment: the same key always meets the same variant while weights stand."""

    header: str | None = Field(
        None,
        max_length=128,
        pattern=r"^[A-Za-z0-9-]+$",
        description="Request header whose value is hashed (e.g. x-user-id). Without it, or "
        "for requests lacking it, assignment is random per request.",
    )


#: Largest bound of a Mean outcome range: outcomes, their sums and sums of squares stay far
#: from float overflow (1e12 squared is 1e24; 1e284 such outcomes before a sum overflows).
MAX_OUTCOME = "1e12"


class OutcomeRange(SpecModel):
    """The values a Mean outcome may take; feedback outside is refused (400)."""

    min: decimal_string(ge="0", le=MAX_OUTCOME) = Field(  # type: ignore[valid-type]
        ..., description="Smallest accepted outcome (>= 0: outcome sums are counters)."
    )
    max: decimal_string(ge="0", le=MAX_OUTCOME) = Field(  # type: ignore[valid-type]
        ..., description=f"Largest accepted outcome (at most {MAX_OUTCOME})."
    )

    cel_rules: ClassVar[tuple[Rule, ...]] = (
        Rule("double(self.min) < double(self.max)", "outcomeRange.min must be below max", ".min"),
    )


class Objective(SpecModel):
    metric: Literal["Conversion", "Mean", "Latency"] = Field(
        "Conversion",
        description="Conversion: 0/1 outcomes posted to /v1/feedback; Mean: numeric outcomes "
        "within outcomeRange; Latency: request latency measured by the router.",
    )
    direction: Literal["Increase", "Decrease"] = "Increase"
    outcome_range: OutcomeRange | None = Field(
        None,
        description="Required for Mean, refused otherwise: the outcomes /v1/feedback accepts "
        "(a bounded range keeps one client from swamping the mean and the sums finite).",
    )

    cel_rules: ClassVar[tuple[Rule, ...]] = (
        Rule(
            "self.metric != 'Mean' || has(self.outcomeRange)",
            "a Mean objective needs outcomeRange {min, max}",
            ".outcomeRange",
        ),
        Rule(
            "self.metric == 'Mean' || !has(self.outcomeRange)",
            "outcomeRange applies to a Mean objective only",
            ".outcomeRange",
        ),
    )


class Analysis(SpecModel):
    alpha: decimal_string(gt="0", lt="0.5") = Field(  # type: ignore[valid-type]
        "0.05", description="False-positive rate, valid under continuous monitoring."
    )
    min_samples_per_variant: int = Field(1000, ge=10, le=100_000_000)
    max_duration: duration_string(min_seconds=60, max_seconds=365 * 86400) = Field(  # type: ignore[valid-type]
        "14d", description="Conclude NoDifference after this long without significance."
    )
    interval: duration_string(min_seconds=5, max_seconds=86400) = Field(  # type: ignore[valid-type]
        "60s", description="How often the operator evaluates."
    )


class Guardrail(SpecModel):
    metric: Literal["ErrorRate", "LatencyP99Ms"]
    threshold: decimal_string(gt="0") = Field(  # type: ignore[valid-type]
        ..., description="ErrorRate as a ratio (0.01 = 1 %), LatencyP99Ms in milliseconds."
    )

    cel_rules: ClassVar[tuple[Rule, ...]] = (
        Rule(
            "self.metric != 'ErrorRate' || double(self.threshold) < 1.0",
            "an ErrorRate threshold is a ratio below 1 (0.01 = 1 %)",
            ".threshold",
        ),
    )


class OnConclusion(SpecModel):
    promote: bool = Field(True, description="Move the alias to the winner automatically.")
    alias: str = Field("champion", max_length=255, pattern=ALIAS)


class ABTestSpec(SpecModel):
    """The first variant is the control; the others are treatments."""

    deployment: Name = Field(..., description="A ModelDeployment in this namespace.")
    variants: list[Variant] = Field(
        ...,
        min_length=2,
        max_length=10,
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]},
    )
    bucketing: Bucketing = Field(default_factory=Bucketing)
    objective: Objective = Field(default_factory=Objective)
    analysis: Analysis = Field(default_factory=Analysis)
    guardrails: list[Guardrail] = Field(
        default_factory=list, max_length=10, json_schema_extra={"default": []}
    )
    on_conclusion: OnConclusion = Field(default_factory=OnConclusion)

    cel_rules: ClassVar[tuple[Rule, ...]] = (
        # sum() is Kubernetes' CEL list library; crds/cel.py provides it for offline checks.
        Rule(
            "self.variants.map(v, v.weight).sum() == 100",
            "variant weights must sum to 100",
            ".variants",
        ),
        Rule(
            "self.variants.all(v, self.variants.exists_one(x, x.name == v.name))",
            "variant names must be unique",
            ".variants",
        ),
        Rule(
            "self.guardrails.all(g, self.guardrails.exists_one(x, x.metric == g.metric))",
            "at most one guardrail per metric",
            ".guardrails",
        ),
    )


class CountTotals(StatusModel):
    """A variant's cumulative totals (what the router's ``/v1/stats`` reports)."""

    requests: int = 0
    errors: int = 0
    outcomes: int = 0
    outcome_sum: float = 0.0
    outcome_sum_squares: float = 0.0
    latency_count: int = 0
    latency_sum_seconds: float = 0.0
    latency_sum_squares_seconds: float = 0.0


class VariantStatus(StatusModel):
    """Totals since the test started (the router's counts plus ``carried``), the analysis."""

    name: str
    version: str | None = None
    weight: int | None = None
    requests: int = 0
    errors: int = 0
    outcomes: int = 0
    outcome_sum: float | None = None
    outcome_sum_squares: float | None = None
    latency_count: int | None = None
    latency_sum_seconds: float | None = None
    latency_sum_squares_seconds: float | None = None
    #: Totals of the router's closed count epochs (what it had reported before its monitor
    #: started counting afresh: a new epoch, or its counts going down), added to what the live
    #: epoch reports: the status is the durable ledger of everything counted.
    carried: CountTotals | None = None
    #: Requests counted before the current weights took effect: the sample ratio check counts
    #: the split from there (a weight change starts a new expected ratio).
    srm_baseline: int | None = None
    mean: float | None = None
    interval: list[float] | None = None
    p_value: float | None = None


class Promotion(StatusModel):
    """A Promote decision's alias move, recorded in status *before* the alias moves.

    Two phases, so that a restart between the steps finishes this promotion instead of deciding
    again: ``Pending`` (decided, the alias not yet confirmed to point at ``version``), then
    ``Done`` (the alias points there; the test is Concluded in the same status write).
    """

    decision: str = Field(
        "Promote", description="The decision carried out (Promote: the only one moving an alias)."
    )
    variant: str = Field(..., description="The winning variant.")
    model: str = Field(..., description="The registered model whose alias moves.")
    alias: str = Field(..., description="The alias that moves (spec.onConclusion.alias).")
    version: int = Field(..., ge=1, description="The version the alias moves to.")
    phase: Literal["Pending", "Done"] = "Pending"
    #: Why the analysis decided (the Concluded condition's message once Done).
    reason: str = ""
    decided_at: Timestamp | None = None


class ABTestStatus(StatusModel):
    phase: Literal["Pending", "Running", "Concluded", "Failed"] | None = None
    conditions: list[Condition] = Field(
        default_factory=list,
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
    )
    observed_generation: int | None = None
    variants: list[VariantStatus] = Field(default_factory=list)
    decision: Literal["Continue", "Promote", "Rollback", "NoDifference"] | None = None
    winner: str | None = None
    #: The alias move of a Promote decision, written before the alias moves (see Promotion).
    promotion: Promotion | None = None
    start_time: Timestamp | None = None
    concluded_at: Timestamp | None = None
    #: The router's count epoch whose totals ``variants[]`` include on top of ``carried`` (one
    #: epoch per incarnation of the app's monitor state; see README.md, "Evidence that
    #: survives restarts").
    counts_epoch: str | None = None
    #: Epochs already folded into ``carried`` (the most recent ones): a closed epoch reported
    #: again (an old cluster still answering) is never counted twice.
    closed_epochs: list[str] | None = None


class ABTest(Resource):
    kind_name: ClassVar[str] = "ABTest"
    plural: ClassVar[str] = "abtests"
    singular: ClassVar[str] = "abtest"
    short_names: ClassVar[tuple[str, ...]] = ("abt",)
    description: ClassVar[str] = (
        "A sticky traffic split between versions of a ModelDeployment's model, with a "
        "sequential test valid under continuous monitoring, guardrails, and promotion through "
        "the MLflow registry."
    )
    printer_columns: ClassVar[tuple[dict, ...]] = (
        {"name": "Deployment", "type": "string", "jsonPath": ".spec.deployment"},
        {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
        {"name": "Decision", "type": "string", "jsonPath": ".status.decision"},
        {"name": "Winner", "type": "string", "jsonPath": ".status.winner"},
        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
    )
    cel_rules: ClassVar[tuple[Rule, ...]] = name_rules()

    kind: Literal["ABTest"] = "ABTest"
    spec: ABTestSpec
    status: ABTestStatus | None = None
