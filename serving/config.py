"""The serving app's configuration, as ``serveConfigV2`` carries it (pure, strict).

Two kinds of settings, split by how they may change (see
``mlplane.operator.builders.rayservice.serve_config``):

- **Application args** (:class:`AppSettings`, the ``args`` of ``build_app``): what shapes the
  app — which model deployments exist, batching, the latency objective, drift settings. Serve
  hashes the args into the code version of every deployment, so changing them restarts all
  replicas (rolling). They change only when the ModelDeployment's spec does, or when an A/B test
  adds or removes a model deployment.
- **user_config** of each deployment, applied by ``reconfigure()`` on the running replicas
  without a restart: :class:`ModelConfig` (which registered model version a ``model-<i>``
  deployment serves) and :class:`RouterConfig` (variants, weights, bucketing header, A/B test).
  Moving an alias or changing weights touches only these.

Parsing is strict: an unknown or missing key is an error naming it, so a builder/app mismatch
fails loudly at deploy time instead of being ignored.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from mlplane.serving.flavors import ModelPolicy

__all__ = [
    "AppSettings",
    "BatchingSettings",
    "ConfigError",
    "DriftSettings",
    "ModelConfig",
    "RouterConfig",
    "VariantConfig",
]

DRIFT_METHODS = ("StatisticalTest", "PSI", "JensenShannon")
OBJECTIVES = ("Conversion", "Mean", "Latency")


class ConfigError(ValueError):
    """The configuration does not match the contract (message names the key)."""


def _keys(where: str, d: Any, required: set[str], optional: frozenset[str] = frozenset()) -> None:
    if not isinstance(d, Mapping):
        raise ConfigError(f"{where} must be a mapping, not {type(d).__name__}")
    missing = sorted(required - set(d))
    if missing:
        raise ConfigError(f"{where}: missing key {missing[0]!r}")
    unknown = sorted(set(d) - required - optional)
    if unknown:
        raise ConfigError(f"{where}: unknown key {unknown[0]!r}")


def _str(where: str, value: Any, *, optional: bool = False) -> Any:
    if value is None and optional:
        return None
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{where} must be a non-empty string")
    return value


def _int(where: str, value: Any, low: int, high: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{where} must be an integer")
    if value < low or (high is not None and value > high):
        raise ConfigError(f"{where} must be in [{low}, {high if high is not None else 'inf'}]")
    return value


def _num(where: str, value: Any, low: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not value >= low:
        raise ConfigError(f"{where} must be a number >= {low}")
    return float(value)


@dataclass(frozen=True)
class BatchingSettings:
    max_batch_size: int
    batch_wait_timeout_s: float


@dataclass(frozen=True)
class DriftSettings:
    enabled: bool
    method: str
    threshold: float
    window_s: float
    min_samples: int

    @classmethod
    def parse(cls, d: Any) -> DriftSettings:
        _keys("args.drift", d, {"enabled", "method", "threshold", "window_s", "min_samples"})
        if not isinstance(d["enabled"], bool):
            raise ConfigError("args.drift.enabled must be true or false")
        if d["method"] not in DRIFT_METHODS:
            raise ConfigError(f"args.drift.method must be one of {', '.join(DRIFT_METHODS)}")
        window = _num("args.drift.window_s", d["window_s"], 0.0)
        if window <= 0:
            raise ConfigError("args.drift.window_s must be > 0")
        return cls(
            enabled=d["enabled"],
            method=d["method"],
            threshold=_num("args.drift.threshold", d["threshold"], 0.0),
            window_s=window,
            min_samples=_int("args.drift.min_samples", d["min_samples"], 1),
        )


@dataclass(frozen=True)
class AppSettings:
    """``build_app``'s args (see ``serve_args`` in the RayService builder for the contract)."""

    deployment: str
    model_name: str
    tracking_uri: str
    model_deployments: tuple[str, ...]
    batching: BatchingSettings | None
    slo_latency_p99_ms: int | None
    drift: DriftSettings
    #: Directory of the request-id signing keys (``current``, ``previous``): the mounted
    #: Secret. None only outside the operator: then ``MLPLANE_FEEDBACK_KEY`` must be set.
    signing_keys: str | None = None
    #: What the model deployments may load (optional key ``model_policy``; absent: closed).
    model_policy: ModelPolicy = field(default_factory=ModelPolicy)
    #: The model takes NaN/Infinity features (optional key ``allow_non_finite``; absent: no).
    allow_non_finite: bool = False
    #: File holding the token ``POST /v1/feedback`` requires (optional key
    #: ``feedback_token_file``; absent: feedback is not authenticated).
    feedback_token_file: str | None = None
    #: SHA-256 (hex) of the installation's scrape token, which also opens ``/admin/metrics``
    #: (optional key ``scrape_token_sha256``; absent: only the admin token does).
    scrape_token_sha256: str | None = None
    #: Directory where the monitor saves its counts and feedback ledger (optional key
    #: ``state_dir``; absent: a monitor restart starts a new count epoch from zero).
    state_dir: str | None = None

    @property
    def namespace(self) -> str:
        return self.deployment.partition("/")[0]

    @property
    def name(self) -> str:
        return self.deployment.partition("/")[2]

    @property
    def slo_s(self) -> float | None:
        return None if self.slo_latency_p99_ms is None else self.slo_latency_p99_ms / 1000

    @classmethod
    def parse(cls, args: Any) -> AppSettings:
        _keys(
            "args",
            args,
            {
                "deployment",
                "model_name",
                "tracking_uri",
                "model_deployments",
                "batching",
                "slo_latency_p99_ms",
                "drift",
            },
            frozenset(
                {
                    "signing_keys",
                    "model_policy",
                    "allow_non_finite",
                    "feedback_token_file",
                    "scrape_token_sha256",
                    "state_dir",
                }
            ),
        )
        allow_non_finite = args.get("allow_non_finite", False)
        if not isinstance(allow_non_finite, bool):
            raise ConfigError("args.allow_non_finite must be true or false")
        deployment = _str("args.deployment", args["deployment"])
        namespace, sep, name = deployment.partition("/")
        if not (sep and namespace and name) or "/" in name:
            raise ConfigError("args.deployment must be '<namespace>/<name>'")
        names = args["model_deployments"]
        if not isinstance(names, Sequence) or isinstance(names, str) or not names:
            raise ConfigError("args.model_deployments must be a non-empty list of names")
        names = tuple(_str("args.model_deployments[]", n) for n in names)
        if len(set(names)) != len(names):
            raise ConfigError("args.model_deployments must not repeat a name")
        batching = args["batching"]
        if batching is not None:
            _keys("args.batching", batching, {"max_batch_size", "batch_wait_timeout_s"})
            batching = BatchingSettings(
                _int("args.batching.max_batch_size", batching["max_batch_size"], 1),
                _num("args.batching.batch_wait_timeout_s", batching["batch_wait_timeout_s"], 0),
            )
        slo = args["slo_latency_p99_ms"]
        return cls(
            deployment=deployment,
            model_name=_str("args.model_name", args["model_name"]),
            tracking_uri=_str("args.tracking_uri", args["tracking_uri"]),
            model_deployments=names,
            batching=batching,
            slo_latency_p99_ms=None if slo is None else _int("args.slo_latency_p99_ms", slo, 1),
            drift=DriftSettings.parse(args["drift"]),
            signing_keys=_str("args.signing_keys", args.get("signing_keys"), optional=True),
            model_policy=_model_policy(args.get("model_policy")),
            allow_non_finite=allow_non_finite,
            feedback_token_file=_str(
                "args.feedback_token_file", args.get("feedback_token_file"), optional=True
            ),
            scrape_token_sha256=_sha256(
                "args.scrape_token_sha256", args.get("scrape_token_sha256")
            ),
            state_dir=_str("args.state_dir", args.get("state_dir"), optional=True),
        )


def _sha256(where: str, value: Any) -> str | None:
    if value is None:
        return None
    if not (
        isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdef" for c in value)
    ):
        raise ConfigError(f"{where} must be 64 lower-case hex digits (a SHA-256)")
    return value


def _model_policy(value: Any) -> ModelPolicy:
    try:
        return ModelPolicy.from_args(value)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


@dataclass(frozen=True)
class ModelConfig:
    """user_config of a ``model-<i>`` deployment: the registered version it serves."""

    model_uri: str
    version: int

    @classmethod
    def parse(cls, d: Any) -> ModelConfig:
        _keys("user_config", d, {"model_uri", "version"})
        return cls(
            _str("user_config.model_uri", d["model_uri"]),
            _int("user_config.version", d["version"], 1),
        )


@dataclass(frozen=True)
class VariantConfig:
    name: str
    deployment: str
    version: int
    model_uri: str
    weight: int


@dataclass(frozen=True)
class RouterConfig:
    """user_config of the router: the traffic split."""

    variants: tuple[VariantConfig, ...]
    bucketing_header: str | None
    abtest: str | None
    objective: str | None
    #: ``(min, max)`` of a Mean objective's outcomes (optional key ``outcome_range``).
    outcome_range: tuple[float, float] | None = None

    @classmethod
    def parse(cls, d: Any, model_deployments: Sequence[str]) -> RouterConfig:
        _keys(
            "user_config",
            d,
            {"variants", "bucketing_header", "abtest", "objective"},
            frozenset({"outcome_range"}),
        )
        raw = d["variants"]
        if not isinstance(raw, Sequence) or isinstance(raw, str) or not raw:
            raise ConfigError("user_config.variants must be a non-empty list")
        variants = []
        for i, v in enumerate(raw):
            where = f"user_config.variants[{i}]"
            _keys(where, v, {"name", "deployment", "version", "model_uri", "weight"})
            variants.append(
                VariantConfig(
                    name=_str(f"{where}.name", v["name"]),
                    deployment=_str(f"{where}.deployment", v["deployment"]),
                    version=_int(f"{where}.version", v["version"], 1),
                    model_uri=_str(f"{where}.model_uri", v["model_uri"]),
                    weight=_int(f"{where}.weight", v["weight"], 0, 100),
                )
            )
        names = [v.name for v in variants]
        if len(set(names)) != len(names):
            raise ConfigError(f"user_config.variants: names must be unique (got {names})")
        for v in variants:
            if v.deployment not in model_deployments:
                raise ConfigError(
                    f"user_config.variants: deployment {v.deployment!r} of variant {v.name!r} "
                    f"is not one of the app's model deployments {list(model_deployments)}"
                )
        if sum(v.weight for v in variants) != 100:
            raise ConfigError("user_config.variants: weights must sum to 100")
        header = _str("user_config.bucketing_header", d["bucketing_header"], optional=True)
        objective = d["objective"]
        if objective is not None and objective not in OBJECTIVES:
            raise ConfigError(f"user_config.objective must be one of {', '.join(OBJECTIVES)}")
        outcome_range = _outcome_range(d.get("outcome_range"))
        if objective == "Mean" and outcome_range is None:
            raise ConfigError("user_config.outcome_range is required for a Mean objective")
        return cls(
            variants=tuple(variants),
            bucketing_header=None if header is None else header.lower(),
            abtest=_str("user_config.abtest", d["abtest"], optional=True),
            objective=objective,
            outcome_range=outcome_range,
        )


def _outcome_range(value: Any) -> tuple[float, float] | None:
    if value is None:
        return None
    if not isinstance(value, Sequence) or isinstance(value, str) or len(value) != 2:
        raise ConfigError("user_config.outcome_range must be [min, max]")
    low = _num("user_config.outcome_range[0]", value[0], 0.0)
    high = _num("user_config.outcome_range[1]", value[1], 0.0)
    if not (math.isfinite(high) and low < high):
        raise ConfigError("user_config.outcome_range must be finite with min < max")
    return low, high
