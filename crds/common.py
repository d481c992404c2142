"""Building blocks shared by the three kinds: base models, quantities, placement, conditions.

The pydantic models are the single source of truth for the API: ``crds/schema.py`` turns them
into the CRDs' OpenAPI schemas, and the operator validates with the same models. Cross-field
rules are written once, in CEL (:class:`Rule`), and attached to the model they constrain; the
API server evaluates them on Kubernetes and ``crds/cel.py`` evaluates the very same text here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Annotated, Any, ClassVar, Final, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    GetJsonSchemaHandler,
    WithJsonSchema,
)
from pydantic.alias_generators import to_camel
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import core_schema as cs

GROUP = "mlplane.dev"
VERSION = "v1alpha1"
#: A literal (not an f-string) so that type checkers see the ``apiVersion`` field's one value.
API_VERSION: Final = "mlplane.dev/v1alpha1"
assert f"{GROUP}/{VERSION}" == API_VERSION
CATEGORY = "mlplane"

#: Child objects are named ``<name>-<suffix>`` (e.g. ``-a12`` for an attempt, and KubeRay appends
#: its own suffixes to RayCluster and pod names), so parents keep their names short.
MAX_NAME_LENGTH = 40


@dataclass(frozen=True)
class Rule:
    """One CEL rule (``x-kubernetes-validations``) on the schema node of the model it decorates.

    ``field_path`` (relative to that node, e.g. ``.mlflow.alias``) makes the error name the
    field that is wrong rather than the object the rule sits on.
    """

    rule: str
    message: str
    field_path: str | None = None

    def as_schema(self) -> dict[str, str]:
        """The rule as the API server reads it."""
        out = {"rule": self.rule, "message": self.message}
        if self.field_path:
            out["fieldPath"] = self.field_path
        return out


class _WithRules(BaseModel):
    """Puts a model's CEL rules into its JSON schema, where the CRD generator finds them."""

    cel_rules: ClassVar[tuple[Rule, ...]] = ()

    @classmethod
    def __get_pydantic_json_schema__(
        cls, core_schema: cs.CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        schema = handler(core_schema)
        target = handler.resolve_ref_schema(schema)
        if cls.cel_rules:
            target["x-kubernetes-validations"] = [r.as_schema() for r in cls.cel_rules]
        return schema


class SpecModel(_WithRules):
    """Base of everything users write: camelCase names, unknown fields rejected."""

    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="forbid", use_enum_values=True
    )


class StatusModel(_WithRules):
    """Base of what the operator writes: camelCase, tolerant of fields from newer operators."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore")


# --- scalar types -------------------------------------------------------------------------------

QUANTITY_PATTERN = r"^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$"

#: A Kubernetes resource quantity: ``2``, ``500m``, ``16Gi``. Integers or strings, as in pods.
Quantity = Annotated[
    int | str,
    Field(union_mode="left_to_right"),
    AfterValidator(lambda v: _check_quantity(v)),
    WithJsonSchema(
        {
            "anyOf": [{"type": "integer"}, {"type": "string"}],
            "x-kubernetes-int-or-string": True,
            "pattern": QUANTITY_PATTERN,
        }
    ),
]


def _check_quantity(value: int | str) -> int | str:
    if isinstance(value, str) and not re.match(QUANTITY_PATTERN, value):
        raise ValueError(f"{value!r} is not a Kubernetes quantity (e.g. 2, 500m, 16Gi)")
    if isinstance(value, int) and value < 0:
        raise ValueError("must not be negative")
    return value


DECIMAL_PATTERN = r"^(0|[1-9][0-9]*)(\.[0-9]+)?$"


def decimal_string(
    *, gt: str | None = None, lt: str | None = None, ge: str | None = None, le: str | None = None
) -> Any:
    """A decimal number carried as a string (Kubernetes specs hold no floats), with bounds.

    The bounds become a CEL rule on the field, so the API server enforces them too.
    """
    checks: list[tuple[str, str, str]] = []
    for op, bound in ((">", gt), ("<", lt), (">=", ge), ("<=", le)):
        if bound is not None:
            checks.append((op, bound, f"double(self) {op} {float(Decimal(bound))!r}"))
    words = {">": "greater than", "<": "less than", ">=": "at least", "<=": "at most"}
    message = "must be a decimal number " + " and ".join(
        f"{words[op]} {bound}" for op, bound, _ in checks
    )

    def check(value: str) -> str:
        try:
            number = Decimal(value)
        except InvalidOperation:
            raise ValueError(f"{value!r} is not a decimal number") from None
        ok = {
            ">": lambda b: number > b,
            "<": lambda b: number < b,
            ">=": lambda b: number >= b,
            "<=": lambda b: number <= b,
        }
        for op, bound, _ in checks:
            if not ok[op](Decimal(bound)):
                raise ValueError(message)
        return value

    schema: dict[str, Any] = {"type": "string", "pattern": DECIMAL_PATTERN, "maxLength": 20}
    if checks:
        schema["x-kubernetes-validations"] = [
            {"rule": " && ".join(c for _, _, c in checks), "message": message}
        ]
    return Annotated[str, AfterValidator(check), WithJsonSchema(schema)]


DURATION_PATTERN = r"^([0-9]+(ms|s|m|h|d))+$"
_DURATION_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> float:
    """Seconds in a duration such as ``90s``, ``1h30m`` or ``14d`` (Go's units plus days)."""
    if not re.match(DURATION_PATTERN, text):
        raise ValueError(f"{text!r} is not a duration such as 30s, 10m, 1h30m or 14d")
    return float(
        sum(int(n) * _DURATION_UNITS[u] for n, u in re.findall(r"([0-9]+)(ms|s|m|h|d)", text))
    )


def duration_string(*, min_seconds: float, max_seconds: float) -> Any:
    """A duration string with bounds, checked by the models (CEL has no day unit)."""

    def check(value: str) -> str:
        seconds = parse_duration(value)
        if not min_seconds <= seconds <= max_seconds:
            raise ValueError(
                f"{value!r} is out of range: must be between {_human(min_seconds)} and "
                f"{_human(max_seconds)}"
            )
        return value

    return Annotated[
        str,
        AfterValidator(check),
        WithJsonSchema({"type": "string", "pattern": DURATION_PATTERN, "maxLength": 32}),
    ]


#: ``Auto`` or a duration: a checkpoint interval (``spec.checkpoint.interval``).
INTERVAL_PATTERN = r"^(Auto|([0-9]+(ms|s|m|h|d))+)$"


def interval_string(*, min_seconds: float, max_seconds: float) -> Any:
    """``Auto`` or a duration string with bounds (checked by the models, as durations are)."""

    def check(value: str) -> str:
        if value == "Auto":
            return value
        seconds = parse_duration(value)
        if not min_seconds <= seconds <= max_seconds:
            raise ValueError(
                f"{value!r} is out of range: must be Auto or between {_human(min_seconds)} and "
                f"{_human(max_seconds)}"
            )
        return value

    return Annotated[
        str,
        AfterValidator(check),
        WithJsonSchema({"type": "string", "pattern": INTERVAL_PATTERN, "maxLength": 32}),
    ]


def _human(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"


DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"


def dns_label(max_length: int = 63) -> Any:
    """A DNS-1123 label (as Kubernetes names are) of at most ``max_length`` characters."""
    return Annotated[str, Field(pattern=DNS_LABEL, min_length=1, max_length=max_length)]


Name = dns_label()
#: A free-form JSON object passed through untouched (e.g. a Ray runtime_env).
FreeFormObject = Annotated[
    dict[str, Any],
    WithJsonSchema({"type": "object", "x-kubernetes-preserve-unknown-fields": True}),
]
#: An RFC 3339 timestamp written by the operator.
Timestamp = Annotated[str, WithJsonSchema({"type": "string", "format": "date-time"})]

Capacity = Literal["OnDemand", "Spot", "SpotWithFallback"]
CAPACITY_DESCRIPTION = (
    "Where workers run: OnDemand nodes, Spot nodes, or Spot until the preemption budget is "
    "spent and then OnDemand (SpotWithFallback). The head always runs on on-demand capacity."
)


# --- placement ----------------------------------------------------------------------------------


class Toleration(SpecModel):
    """A pod toleration, as in ``core/v1`` (typed here so mistakes are caught early)."""

    key: str | None = Field(None, max_length=253)
    operator: Literal["Exists", "Equal"] = "Equal"
    value: str | None = Field(None, max_length=63)
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = None
    toleration_seconds: int | None = Field(None, ge=0)

    cel_rules = (
        Rule(
            "self.operator != 'Exists' || !has(self.value)",
            "a toleration with operator Exists must not set value",
            ".value",
        ),
        Rule(
            "has(self.key) || self.operator == 'Exists'",
            "a toleration without a key must use operator Exists",
            ".operator",
        ),
    )


class HeadResources(SpecModel):
    """CPU and memory of the Ray head (it never needs a GPU)."""

    cpu: Quantity = Field("2", description="CPU request and limit of the head pod.")
    memory: Quantity = Field("8Gi", description="Memory request and limit of the head pod.")


class Resources(SpecModel):
    """Per-pod (training worker) or per-replica (serving) resources."""

    cpu: Quantity = Field("1", description="CPU request and limit.")
    memory: Quantity = Field("4Gi", description="Memory request and limit.")
    gpu: int = Field(0, ge=0, le=16, description="NVIDIA GPUs (nvidia.com/gpu).")


# --- status -------------------------------------------------------------------------------------


class Condition(StatusModel):
    """A status condition, as the Kubernetes API conventions define it."""

    type: str = Field(..., pattern=r"^[A-Z][A-Za-z0-9]*$", max_length=316)
    status: Literal["True", "False", "Unknown"]
    reason: str = Field(..., pattern=r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$", max_length=1024)
    message: str = Field("", max_length=32768)
    last_transition_time: Timestamp
    observed_generation: int | None = Field(None, ge=0)


class Metadata(BaseModel):
    """The part of ``metadata`` that validation looks at; the rest passes through."""

    model_config = ConfigDict(extra="allow", populate_by_name=True)
    name: str | None = Field(None, max_length=MAX_NAME_LENGTH, pattern=DNS_LABEL)
    #: Checked as the API server checks it: the local platform files objects under it (a
    #: namespace such as ``../..`` must not become a path outside its store).
    namespace: str | None = Field(None, max_length=63, pattern=DNS_LABEL)
    #: String to string, as on every Kubernetes object (children copy the labels).
    labels: dict[str, str] | None = None
    annotations: dict[str, str] | None = None


def name_rules() -> tuple[Rule, ...]:
    """Names KubeRay can derive its children's names from: short, starting with a letter."""
    return (
        Rule(
            f"self.metadata.name.size() <= {MAX_NAME_LENGTH}",
            f"metadata.name must be at most {MAX_NAME_LENGTH} characters: children such as "
            f"<name>-a<attempt> and KubeRay's own pods append suffixes",
        ),
        Rule(
            "self.metadata.name.matches('^[a-z]')",
            "metadata.name must start with a letter: KubeRay names services after it",
        ),
    )


class Resource(BaseModel):
    """Base of the three kinds: ``apiVersion``, ``kind``, ``metadata``, ``spec``, ``status``."""

    model_config = ConfigDict(populate_by_name=True, extra="forbid")
    kind_name: ClassVar[str]
    plural: ClassVar[str]
    singular: ClassVar[str]
    short_names: ClassVar[tuple[str, ...]]
    printer_columns: ClassVar[tuple[dict[str, Any], ...]]
    #: ``{"specReplicasPath": ..., ...}`` for kinds with the scale subresource.
    scale: ClassVar[dict[str, str] | None] = None
    cel_rules: ClassVar[tuple[Rule, ...]] = ()
    description: ClassVar[str]

    api_version: Literal["mlplane.dev/v1alpha1"] = Field(API_VERSION, alias="apiVersion")
    metadata: Metadata = Field(default_factory=Metadata)
