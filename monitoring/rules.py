"""Prometheus recording and alerting rules for mlplane, generated (never hand-edited).

What is generated, and why this shape:

- **SLIs** as recording rules per ``namespace, deployment`` over the windows the burn-rate
  alerts need (5m ... 3d) plus 30d for dashboards: the error ratio ``5xx / all`` and the slow
  ratio ``slow / all`` (requests slower than the deployment's ``latencyP99Ms``; see
  :mod:`.names`). Alerts then compare cheap recorded series instead of re-running ``rate()``
  over days of raw counters for every rule.
- **SLO alerts** in the multi-window, multi-burn-rate form of the Google SRE workbook for a
  30-day objective: *page* when the 1h and 5m windows both burn faster than 14.4x the budget,
  or 6h and 30m faster than 6x; *ticket* when 1d and 2h exceed 3x, or 3d and 6h exceed 1x.
  The long window proves the burn is significant, the short one that it is still going on
  (so the alert resets within minutes of a fix, without a ``for:`` delay).
- By default the objective comes from the ``mlplane_slo_availability_target`` gauge the
  operator exports for each ModelDeployment, so ONE static rule file serves every deployment
  and never changes when deployments come and go (GitOps: nothing to regenerate). The latency
  objective has a fixed 1 % budget (it is "99 % of requests faster than X", X being applied
  by the router), so it needs no gauge at all. Where no operator exports targets, pass an
  explicit list of :class:`SLOTarget`: the constants are then inlined per deployment.
- The alerts join the gauge through a recorded budget, ``1 - max by (namespace, deployment)
  (last_over_time(target[10m]))``: ``max by`` because the gauge carries the operator pod's
  ``job``/``instance`` (a restart or a second replica must not break the one-to-one join),
  ``last_over_time`` so that an operator restart does not blind the burn-rate alerts.
- Drift, training and operator alerts with thresholds in :class:`RuleOptions`.

Every alert carries ``severity`` (``page`` | ``ticket`` | ``warning``), ``summary``,
``description`` and a ``runbook_url`` into ``docs/runbooks.md`` (one section per alert).
Outputs: a plain Prometheus rules file (:func:`rules_file`) and a prometheus-operator
``PrometheusRule`` (:func:`prometheus_rule`), both as dicts; :func:`to_yaml` renders them.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

import yaml

from mlplane.monitoring import names as n

# --- windows and burn rates -------------------------------------------------------------------

#: The SLO period the burn-rate factors are computed for (the ModelDeployment SLO's window).
SLO_PERIOD_DAYS = 30
#: Windows the SLIs are recorded over: the burn-rate alerts' long and short windows.
SLI_WINDOWS: tuple[str, ...] = ("5m", "30m", "1h", "2h", "6h", "1d", "3d")
#: Window of the dashboards' "budget remaining" (evaluated less often: it is expensive).
SLO_PERIOD_WINDOW = f"{SLO_PERIOD_DAYS}d"
#: The latency SLI's budget: "99 % of requests faster than latencyP99Ms" leaves 1 % slow.
LATENCY_BUDGET = 0.01

_UNIT_SECONDS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "y": 31536000}
_DURATION = re.compile(
    r"^(?:(\d+)y)?(?:(\d+)w)?(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?(?:(\d+)ms)?$"
)


def duration_seconds(duration: str) -> float:
    """Seconds in a Prometheus duration (``"1h30m"``, ``"3d"``); rejects anything else."""
    match = _DURATION.match(duration)
    if not duration or match is None or not any(match.groups()):
        raise ValueError(f"not a Prometheus duration: {duration!r}")
    units = ("y", "w", "d", "h", "m", "s", "ms")
    return sum(int(v) * _UNIT_SECONDS[u] for v, u in zip(match.groups(), units, strict=True) if v)


@dataclass(frozen=True)
class BurnRateWindow:
    """A long/short window pair that alerts when ``budget_spent`` of the budget burns in ``long``.

    The factor is derived rather than hard-coded so the link to the SRE workbook's table is
    visible: spending 2 % of a 30-day budget in 1 hour is a burn rate of 0.02 * 720 h / 1 h
    = 14.4.
    """

    severity: str
    long: str
    short: str
    budget_spent: float

    @property
    def factor(self) -> float:
        period = SLO_PERIOD_DAYS * 86400
        return round(self.budget_spent * period / duration_seconds(self.long), 6)


BURN_RATE_WINDOWS: tuple[BurnRateWindow, ...] = (
    BurnRateWindow("page", "1h", "5m", 0.02),  # 14.4x: budget gone in ~2 days
    BurnRateWindow("page", "6h", "30m", 0.05),  # 6x: gone in 5 days
    BurnRateWindow("ticket", "1d", "2h", 0.10),  # 3x: gone in 10 days
    BurnRateWindow("ticket", "3d", "6h", 0.10),  # 1x: gone by the end of the period
)

# --- recorded series (the dashboards read these) ---------------------------------------------

_BY_DEP = "namespace, deployment"


def error_ratio_record(window: str) -> str:
    """Name of the recorded availability SLI: share of requests answered 5xx over ``window``."""
    return f"namespace_deployment:mlplane_requests_error:ratio_rate{window}"


def slow_ratio_record(window: str) -> str:
    """Name of the recorded latency SLI: share of requests slower than the objective."""
    return f"namespace_deployment:mlplane_requests_slow:ratio_rate{window}"


#: Requests per second per deployment (dashboards; the drift-staleness alert's "has traffic").
TRAFFIC_RECORD = "namespace_deployment:mlplane_requests:rate5m"
#: The availability error budget as a ratio, ``1 - target`` (0.001 for 99.9 %).
AVAILABILITY_BUDGET_RECORD = "namespace_deployment:mlplane_slo_availability_budget:ratio"


def recorded_series() -> frozenset[str]:
    """Every series name the generated recording rules produce."""
    windows = (*SLI_WINDOWS, SLO_PERIOD_WINDOW)
    return frozenset(
        {error_ratio_record(w) for w in windows}
        | {slow_ratio_record(w) for w in windows}
        | {TRAFFIC_RECORD, AVAILABILITY_BUDGET_RECORD}
    )


# --- inputs -------------------------------------------------------------------------------------

_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")


@dataclass(frozen=True)
class SLOTarget:
    """A deployment's objectives, for rules with the constants inlined.

    ``availability`` is a ratio (0.999), as the target gauge exports it; use
    :meth:`from_percent` for the ModelDeployment's percent string (``"99.9"``).
    """

    namespace: str
    deployment: str
    availability: float
    latency_p99_ms: int | None = None

    def __post_init__(self) -> None:
        if not _DNS_LABEL.match(self.namespace):
            raise ValueError(f"namespace {self.namespace!r} is not a DNS label")
        if not _DNS_SUBDOMAIN.match(self.deployment):
            raise ValueError(f"deployment {self.deployment!r} is not a Kubernetes name")
        if not 0 < self.availability < 1:
            raise ValueError(f"availability must be a ratio in (0, 1), got {self.availability}")
        if self.latency_p99_ms is not None and self.latency_p99_ms < 1:
            raise ValueError(f"latency_p99_ms must be >= 1, got {self.latency_p99_ms}")

    @classmethod
    def from_percent(
        cls,
        namespace: str,
        deployment: str,
        availability_percent: str | float,
        latency_p99_ms: int | None = None,
    ) -> SLOTarget:
        """Build from the CRD's units: availability in percent (a decimal string or number)."""
        try:
            ratio = Decimal(str(availability_percent)) / 100
        except InvalidOperation as exc:
            raise ValueError(f"availability {availability_percent!r} is not a number") from exc
        return cls(namespace, deployment, float(ratio), latency_p99_ms)


def slo_targets_from_documents(documents: Iterable[Any]) -> list[SLOTarget]:
    """SLO targets from ModelDeployment manifests or plain entries (what ``--deployments`` reads).

    Accepted, possibly mixed, possibly wrapped in a ``List`` (``kubectl get md -o yaml``) or a
    top-level list: ModelDeployment objects (``metadata.name/namespace``, ``spec.slo``; the
    CRD's defaults apply: availability 99.9 %, no latency objective, namespace ``default``), and
    entries ``{namespace, deployment, availability: "99.9", latencyP99Ms: 250}`` in the CRD's
    units. Plain dicts on purpose: monitoring imports nothing of the API types.
    """
    targets: list[SLOTarget] = []
    for doc in documents:
        if doc is None:
            continue
        if isinstance(doc, list):
            targets.extend(slo_targets_from_documents(doc))
            continue
        if not isinstance(doc, Mapping):
            raise ValueError(f"expected a mapping, got {type(doc).__name__}")
        if "items" in doc:
            targets.extend(slo_targets_from_documents(doc["items"] or []))
        elif doc.get("kind") == "ModelDeployment":
            meta = doc.get("metadata") or {}
            slo = (doc.get("spec") or {}).get("slo") or {}
            targets.append(
                SLOTarget.from_percent(
                    meta.get("namespace") or "default",
                    meta["name"],
                    slo.get("availability", "99.9"),
                    slo.get("latencyP99Ms"),
                )
            )
        elif "deployment" in doc:
            targets.append(
                SLOTarget.from_percent(
                    doc.get("namespace") or "default",
                    doc["deployment"],
                    doc.get("availability", "99.9"),
                    doc.get("latencyP99Ms"),
                )
            )
        else:
            raise ValueError(f"neither a ModelDeployment nor a deployment entry: {dict(doc)!r}")
    seen: set[tuple[str, str]] = set()
    for t in targets:
        if (t.namespace, t.deployment) in seen:
            raise ValueError(f"deployment {t.namespace}/{t.deployment} is listed twice")
        seen.add((t.namespace, t.deployment))
    return targets


def load_slo_targets(path: str | Path) -> list[SLOTarget]:
    """Read :func:`slo_targets_from_documents` input from a (multi-document) YAML/JSON file."""
    with open(path, encoding="utf-8") as fh:
        targets = slo_targets_from_documents(list(yaml.safe_load_all(fh)))
    if not targets:
        raise ValueError(f"{path}: no ModelDeployment or deployment entry found")
    return targets


@dataclass(frozen=True)
class RuleOptions:
    """Thresholds of the non-SLO alerts, and where runbooks live."""

    runbook_base_url: str = "https://github.com/mlplane/mlplane/blob/main/docs/runbooks.md"
    #: How long the target gauges are remembered when the operator is briefly gone.
    target_lookback: str = "10m"
    #: A feature drifted continuously for this long alerts.
    drift_for: str = "30m"
    #: Drift not evaluated for this long while the deployment has traffic alerts.
    drift_stale_after: str = "30m"
    #: More spot preemptions than this within an hour alert.
    preemptions_per_hour: int = 3
    #: A job Running for this long without a newer checkpoint alerts.
    checkpoint_max_age: str = "1h"
    #: Share of failing reconciles (per kind, over 15m, for 15m) that alerts.
    reconcile_error_ratio: float = 0.1
    operator_down_for: str = "5m"
    slo_target_missing_for: str = "15m"
    #: Labels added to every alert (routing: team, cluster...).
    extra_labels: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in (
            "target_lookback",
            "drift_for",
            "drift_stale_after",
            "checkpoint_max_age",
            "operator_down_for",
            "slo_target_missing_for",
        ):
            duration_seconds(getattr(self, name))
        if not 0 < self.reconcile_error_ratio < 1:
            raise ValueError("reconcile_error_ratio must be in (0, 1)")
        if self.preemptions_per_hour < 0:
            raise ValueError("preemptions_per_hour must be >= 0")


# --- expression helpers ---------------------------------------------------------------------


def _num(x: float) -> str:
    """A PromQL number literal without float noise (0.999, not 0.99900000000000011)."""
    return f"{round(x, 12):.12g}"


def _selector(target: SLOTarget) -> str:
    return f'{{namespace="{target.namespace}", deployment="{target.deployment}"}}'


def _indent(text: str, spaces: int = 2) -> str:
    return "\n".join((" " * spaces + line) if line else line for line in text.splitlines())


def _pct(ratio: float) -> str:
    """What Prometheus's ``humanizePercentage`` prints (``%.4g``), for inlined targets."""
    return f"{ratio * 100:.4g}%"


def _ratio_expr(numerator: str, window: str, zero_if_absent: bool) -> str:
    num = f"sum by ({_BY_DEP}) (rate({numerator}[{window}]))"
    den = f"sum by ({_BY_DEP}) (rate({n.REQUESTS_TOTAL}[{window}]))"
    if zero_if_absent:
        # A deployment that never answered 5xx has no 5xx series at all: make its ratio 0
        # (a visible 100 % on dashboards) instead of no data.
        num = f"(\n  {num}\n  or\n  {den} * 0\n)"
    return f"{num}\n/\n{den}"


def _rule_labels(options: RuleOptions, **labels: str) -> dict[str, str]:
    return {**labels, **dict(options.extra_labels)}


def _alert(
    name: str,
    expr: str,
    *,
    severity: str,
    summary: str,
    description: str,
    options: RuleOptions,
    for_: str | None = None,
    labels: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    rule: dict[str, Any] = {"alert": name, "expr": expr}
    if for_:
        rule["for"] = for_
    rule["labels"] = _rule_labels(options, severity=severity, **(labels or {}))
    rule["annotations"] = {
        "summary": summary,
        "description": description,
        "runbook_url": runbook_url(name, options),
    }
    return rule


def runbook_url(alert: str, options: RuleOptions | None = None) -> str:
    """The alert's section in ``docs/runbooks.md`` (GitHub lower-cases heading anchors)."""
    base = (options or RuleOptions()).runbook_base_url
    return f"{base}#{alert.lower()}"


# --- groups -------------------------------------------------------------------------------------


def sli_recording_groups(
    targets: Sequence[SLOTarget] | None = None, options: RuleOptions | None = None
) -> list[dict[str, Any]]:
    """SLI recording rules; the budget comes from the target gauge, or ``targets`` if given."""
    rules: list[dict[str, Any]] = [
        {
            "record": TRAFFIC_RECORD,
            "expr": f"sum by ({_BY_DEP}) (rate({n.REQUESTS_TOTAL}[5m]))",
        }
    ]
    for w in SLI_WINDOWS:
        rules.append(
            {
                "record": error_ratio_record(w),
                "expr": _ratio_expr(f'{n.REQUESTS_TOTAL}{{code="{n.CODE_5XX}"}}', w, True),
            }
        )
    for w in SLI_WINDOWS:
        rules.append(
            {"record": slow_ratio_record(w), "expr": _ratio_expr(n.REQUESTS_SLOW_TOTAL, w, False)}
        )
    if targets is None:
        lookback = (options or RuleOptions()).target_lookback
        rules.append(
            {
                "record": AVAILABILITY_BUDGET_RECORD,
                # max by: the series carry the operator pod's job/instance; a restart or two
                # replicas must not make the join many-to-many. last_over_time: survive a
                # restart without the alerts going blind.
                "expr": (
                    f"1 - max by ({_BY_DEP}) "
                    f"(last_over_time({n.SLO_AVAILABILITY_TARGET}[{lookback}]))"
                ),
            }
        )
    else:
        for t in targets:
            rules.append(
                {
                    "record": AVAILABILITY_BUDGET_RECORD,
                    "expr": f"vector(1 - {_num(t.availability)})",
                    "labels": {"namespace": t.namespace, "deployment": t.deployment},
                }
            )
    long_rules = [
        {
            "record": error_ratio_record(SLO_PERIOD_WINDOW),
            "expr": _ratio_expr(
                f'{n.REQUESTS_TOTAL}{{code="{n.CODE_5XX}"}}', SLO_PERIOD_WINDOW, True
            ),
        },
        {
            "record": slow_ratio_record(SLO_PERIOD_WINDOW),
            "expr": _ratio_expr(n.REQUESTS_SLOW_TOTAL, SLO_PERIOD_WINDOW, False),
        },
    ]
    return [
        {"name": "mlplane-slo-sli", "rules": rules},
        {"name": "mlplane-slo-sli-period", "interval": "5m", "rules": long_rules},
    ]


def _burn_condition(
    record: Callable[[str], str], window: BurnRateWindow, threshold: str, per_deployment: bool
) -> str:
    """``long > f * budget and short > f * budget`` for one window pair.

    ``per_deployment``: the budget is a series per deployment (the budget record), joined on
    ``namespace, deployment``; otherwise it is a number.
    """
    f = _num(window.factor)
    parts = []
    for w in (window.long, window.short):
        if not per_deployment:
            parts.append(f"{record(w)} > ({f} * {threshold})")
        else:
            parts.append(f"{record(w)}\n  > on({_BY_DEP}) group_left()\n  ({f} * {threshold})")
    return f"(\n{_indent(parts[0])}\nand on({_BY_DEP})\n{_indent(parts[1])}\n)"


def _burn_expr(
    record: Callable[[str], str], severity: str, threshold: str, per_deployment: bool
) -> str:
    windows = [w for w in BURN_RATE_WINDOWS if w.severity == severity]
    return "\nor\n".join(_burn_condition(record, w, threshold, per_deployment) for w in windows)


def _burn_pairs(severity: str) -> str:
    return ", or ".join(
        f"{_num(w.factor)}x over {w.long} and {w.short}"
        for w in BURN_RATE_WINDOWS
        if w.severity == severity
    )


_SLO_ALERTS = {
    ("availability", "page"): "MlplaneAvailabilityBudgetBurnFast",
    ("availability", "ticket"): "MlplaneAvailabilityBudgetBurnSlow",
    ("latency", "page"): "MlplaneLatencyBudgetBurnFast",
    ("latency", "ticket"): "MlplaneLatencyBudgetBurnSlow",
}
_DEP_LABELS = "{{ $labels.namespace }}/{{ $labels.deployment }}"


def _target_text(metric: str, lookback: str, humanize: str, fallback: str) -> str:
    """Alert-template text showing a deployment's target gauge (``query`` at alert time).

    Same lookback as the budget record: the text survives an operator restart like the alert.
    """
    query = f"max(last_over_time({metric}{{namespace=%q,deployment=%q}}[{lookback}]))"
    return (
        f'{{{{ with printf "{query}" $labels.namespace $labels.deployment | query }}}}'
        f"{{{{ . | first | value | {humanize} }}}}{{{{ else }}}}{fallback}{{{{ end }}}}"
    )


def _with_selector(record: Callable[[str], str], selector: str) -> Callable[[str], str]:
    def selected(window: str) -> str:
        return f"{record(window)}{selector}"

    return selected


def _slo_alert(
    slo: str,
    severity: str,
    options: RuleOptions,
    target: SLOTarget | None = None,
) -> dict[str, Any]:
    name = _SLO_ALERTS[(slo, severity)]
    speed = "fast" if severity == "page" else "steadily"
    record: Callable[[str], str]
    if slo == "availability":
        record = error_ratio_record
        if target is not None:
            threshold = f"(1 - {_num(target.availability)})"
            objective = _pct(target.availability)
        else:
            threshold = AVAILABILITY_BUDGET_RECORD
            objective = _target_text(
                n.SLO_AVAILABILITY_TARGET, options.target_lookback, "humanizePercentage", "unknown"
            )
        what = "of requests failed (5xx)"
        budget = f"the error budget of a {objective} availability objective"
    else:
        record = slow_ratio_record
        threshold = _num(LATENCY_BUDGET)
        if target is not None:
            assert target.latency_p99_ms is not None
            objective = f"{target.latency_p99_ms}ms"
        else:
            objective = _target_text(
                n.SLO_LATENCY_TARGET_SECONDS,
                options.target_lookback,
                "humanizeDuration",
                "the objective",
            )
        what = f"of requests were slower than {objective}"
        budget = "the 1 % slow-request budget of the latency objective"
    labels = {"slo": slo}
    if target is not None:
        record = _with_selector(record, _selector(target))
        # The series carry these anyway; as rule labels they keep the per-deployment rules
        # distinct (promtool's duplicate-rule lint).
        labels |= {"namespace": target.namespace, "deployment": target.deployment}
    return _alert(
        name,
        _burn_expr(record, severity, threshold, threshold == AVAILABILITY_BUDGET_RECORD),
        severity=severity,
        summary=f"{_DEP_LABELS} is burning its {slo} error budget {speed}.",
        description=(
            f"{{{{ $value | humanizePercentage }}}} {what} over the long window, burning "
            f"{budget} ({SLO_PERIOD_DAYS} days) faster than {_burn_pairs(severity)}."
        ),
        labels=labels,
        options=options,
    )


def slo_alert_group(
    targets: Sequence[SLOTarget] | None = None, options: RuleOptions | None = None
) -> dict[str, Any]:
    """Burn-rate alerts; generic (target gauges) unless ``targets`` lists the deployments."""
    options = options or RuleOptions()
    rules: list[dict[str, Any]] = []
    if targets is None:
        for slo in ("availability", "latency"):
            for severity in ("page", "ticket"):
                rules.append(_slo_alert(slo, severity, options))
        rules.append(
            _alert(
                "MlplaneSLOTargetMissing",
                f"{TRAFFIC_RECORD} > 0\nunless on({_BY_DEP})\n"
                f"max by ({_BY_DEP}) ({n.SLO_AVAILABILITY_TARGET})",
                for_=options.slo_target_missing_for,
                severity="warning",
                summary=f"{_DEP_LABELS} serves traffic but exports no availability target.",
                description=(
                    "Burn-rate alerts compare against mlplane_slo_availability_target; "
                    "without it this deployment's availability SLO is not alerted on."
                ),
                options=options,
            )
        )
    else:
        for t in targets:
            for severity in ("page", "ticket"):
                rules.append(_slo_alert("availability", severity, options, t))
            if t.latency_p99_ms is not None:
                for severity in ("page", "ticket"):
                    rules.append(_slo_alert("latency", severity, options, t))
    return {"name": "mlplane-slo-alerts", "rules": rules}


def drift_alert_group(options: RuleOptions | None = None) -> dict[str, Any]:
    """A feature drifted for a while; drift evaluation stopped while requests flow."""
    o = options or RuleOptions()
    stale = _num(duration_seconds(o.drift_stale_after))
    return {
        "name": "mlplane-drift-alerts",
        "rules": [
            _alert(
                "MlplaneFeatureDrift",
                f"max by ({_BY_DEP}, feature) ({n.FEATURE_DRIFTED}) == 1",
                for_=o.drift_for,
                severity="ticket",
                summary=(
                    f"Feature {{{{ $labels.feature }}}} of {_DEP_LABELS} has drifted for "
                    f"{o.drift_for}."
                ),
                description=(
                    "Live inputs of this feature no longer match the training reference "
                    "profile. Check the drift dashboard; retrain if the shift is real."
                ),
                options=o,
            ),
            _alert(
                "MlplaneDriftEvaluationStale",
                f"time() - max by ({_BY_DEP}) ({n.DRIFT_LAST_EVALUATION_TIMESTAMP_SECONDS})"
                f" > {stale}\nand on({_BY_DEP})\n{TRAFFIC_RECORD} > 0",
                severity="warning",
                summary=(
                    f"Drift of {_DEP_LABELS} was last evaluated "
                    "{{ $value | humanizeDuration }} ago."
                ),
                description=(
                    f"The deployment serves requests but its drift tap has not evaluated for "
                    f"more than {o.drift_stale_after}: drift alerts are blind."
                ),
                options=o,
            ),
        ],
    }


def training_alert_group(options: RuleOptions | None = None) -> dict[str, Any]:
    """Preemption storms, checkpoints falling behind, failed jobs."""
    o = options or RuleOptions()
    by = "namespace, trainingjob"
    age = _num(duration_seconds(o.checkpoint_max_age))
    running = (
        f'max by ({by}) ({n.TRAININGJOB_PHASE}{{phase="Running"}})\n'
        f"or on({by})\n"
        f"max by ({by}) ({n.TRAININGJOB_PHASE}) * 0"
    )
    return {
        "name": "mlplane-training-alerts",
        "rules": [
            _alert(
                "MlplaneTrainingPreemptionRateHigh",
                f"sum by ({by}) (increase({n.TRAININGJOB_PREEMPTIONS_TOTAL}[1h]))"
                f" > {o.preemptions_per_hour}",
                severity="warning",
                summary=(
                    "TrainingJob {{ $labels.namespace }}/{{ $labels.trainingjob }} was preempted "
                    '{{ $value | printf "%.0f" }} times in the last hour.'
                ),
                description=(
                    f"More than {o.preemptions_per_hour} spot preemptions per hour: each one "
                    "loses the work since the last checkpoint. Consider on-demand fallback or "
                    "another capacity pool."
                ),
                options=o,
            ),
            _alert(
                "MlplaneTrainingCheckpointStale",
                # Checkpoint older than the limit AND Running for the whole limit: a job that
                # just resumed with an old checkpoint gets its chance to write a new one.
                f"(\n  time() - max by ({by}) "
                f"({n.TRAININGJOB_LAST_CHECKPOINT_TIMESTAMP_SECONDS} > 0)\n) > {age}\n"
                f"and on({by})\n"
                f"min_over_time(\n  (\n{_indent(running, 4)}\n  )[{o.checkpoint_max_age}:1m]\n)"
                " == 1",
                severity="warning",
                summary=(
                    "TrainingJob {{ $labels.namespace }}/{{ $labels.trainingjob }} has not "
                    "checkpointed for {{ $value | humanizeDuration }}."
                ),
                description=(
                    f"The job has been Running for {o.checkpoint_max_age} without a newer "
                    "checkpoint: a preemption now loses all that work."
                ),
                options=o,
            ),
            _alert(
                "MlplaneTrainingJobFailed",
                f'max by ({by}) ({n.TRAININGJOB_PHASE}{{phase="Failed"}}) == 1',
                severity="ticket",
                summary="TrainingJob {{ $labels.namespace }}/{{ $labels.trainingjob }} failed.",
                description=(
                    "The job exhausted its retries (backoffLimit) and will not run again. "
                    "Read its status conditions and the Ray job logs."
                ),
                options=o,
            ),
        ],
    }


def operator_alert_group(options: RuleOptions | None = None) -> dict[str, Any]:
    """Reconciles failing; the operator not scraped or down."""
    o = options or RuleOptions()
    up = f'up{{job="{n.OPERATOR_JOB}"}}'
    errors = f'{n.OPERATOR_RECONCILE_TOTAL}{{result="{n.RESULT_ERROR}"}}'
    return {
        "name": "mlplane-operator-alerts",
        "rules": [
            _alert(
                "MlplaneOperatorReconcileErrors",
                f"sum by (kind) (rate({errors}[15m]))\n/\n"
                f"sum by (kind) (rate({n.OPERATOR_RECONCILE_TOTAL}[15m]))\n"
                f"> {_num(o.reconcile_error_ratio)}",
                for_="15m",
                severity="warning",
                summary=(
                    "{{ $value | humanizePercentage }} of {{ $labels.kind }} reconciles fail."
                ),
                description=(
                    f"More than {_pct(o.reconcile_error_ratio)} of reconciles of this kind "
                    "failed over 15 minutes: resources are not converging."
                ),
                options=o,
            ),
            _alert(
                "MlplaneOperatorDown",
                f"max by (job) ({up}) == 0\nor\nabsent({up})",
                for_=o.operator_down_for,
                severity="page",
                summary="The mlplane operator is down or not scraped.",
                description=(
                    "Nothing reconciles TrainingJobs, ModelDeployments or ABTests, and the SLO "
                    f"target gauges vanish: burn-rate alerts go blind {o.target_lookback} later."
                ),
                options=o,
            ),
        ],
    }


def rule_groups(
    targets: Sequence[SLOTarget] | None = None, options: RuleOptions | None = None
) -> list[dict[str, Any]]:
    """All rule groups: SLI records, SLO, drift, training and operator alerts."""
    options = options or RuleOptions()
    groups = [
        *sli_recording_groups(targets, options),
        slo_alert_group(targets, options),
        drift_alert_group(options),
        training_alert_group(options),
        operator_alert_group(options),
    ]
    return [g for g in groups if g["rules"]]  # an empty target list leaves no SLO alerts


def rules_file(groups: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """A Prometheus ``rule_files`` document."""
    return {"groups": [dict(g) for g in groups]}


def prometheus_rule(
    groups: Sequence[Mapping[str, Any]],
    name: str = "mlplane",
    namespace: str | None = "mlplane-system",
    labels: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """A ``monitoring.coreos.com/v1`` PrometheusRule (its ``labels`` must match the
    Prometheus ``ruleSelector``, e.g. ``release: kube-prometheus-stack``)."""
    metadata: dict[str, Any] = {"name": name}
    if namespace:
        metadata["namespace"] = namespace
    metadata["labels"] = {
        "app.kubernetes.io/name": "mlplane",
        "app.kubernetes.io/component": "monitoring",
        **dict(labels or {}),
    }
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": metadata,
        "spec": {"groups": [dict(g) for g in groups]},
    }


# --- rendering ----------------------------------------------------------------------------------


class _Dumper(yaml.SafeDumper):
    """Multi-line strings as ``|`` blocks: PromQL stays readable in the generated files."""


def _str_representer(dumper: yaml.SafeDumper, data: str) -> yaml.ScalarNode:
    style = "|" if "\n" in data else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", data, style=style)


_Dumper.add_representer(str, _str_representer)

GENERATED_HEADER = (
    "# Generated by mlplane.monitoring ({source}). Do not edit: regenerate with\n"
    "# `mlplane monitoring generate`.\n"
)


def to_yaml(document: Mapping[str, Any], header: str | None = None) -> str:
    """Stable YAML (keys in insertion order) with an optional comment header."""
    body = yaml.dump(document, Dumper=_Dumper, sort_keys=False, default_flow_style=False, width=100)
    return (header or "") + body


def render_rules(
    targets: Sequence[SLOTarget] | None = None,
    *,
    kind: str = "rules",
    name: str = "mlplane",
    namespace: str | None = "mlplane-system",
    labels: Mapping[str, str] | None = None,
    options: RuleOptions | None = None,
) -> str:
    """YAML text of the rules (``mlplane monitoring rules [--deployments FILE]``).

    ``kind="rules"``: a Prometheus rule file; ``kind="prometheusrule"``: a PrometheusRule named
    ``name`` in ``namespace`` with ``labels``. ``targets`` (see :func:`load_slo_targets`)
    inlines objectives per deployment instead of reading the target gauges.
    """
    groups = rule_groups(targets, options)
    header = GENERATED_HEADER.format(source="rules.py")
    if kind == "rules":
        return to_yaml(rules_file(groups), header)
    if kind == "prometheusrule":
        return to_yaml(prometheus_rule(groups, name, namespace, labels), header)
    raise ValueError(f"kind must be 'rules' or 'prometheusrule', not {kind!r}")


RULES_FILE = "mlplane-rules.yaml"
PROMETHEUS_RULE_FILE = "mlplane-prometheusrule.yaml"


def write_rule_files(
    out_dir: str | Path,
    targets: Sequence[SLOTarget] | None = None,
    options: RuleOptions | None = None,
    prometheus_rule_name: str = "mlplane",
    prometheus_rule_namespace: str | None = "mlplane-system",
    prometheus_rule_labels: Mapping[str, str] | None = None,
) -> list[Path]:
    """Write the plain rules file and the PrometheusRule into ``out_dir``; return the paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    groups = rule_groups(targets, options)
    header = GENERATED_HEADER.format(source="rules.py")
    paths = [out / RULES_FILE, out / PROMETHEUS_RULE_FILE]
    paths[0].write_text(to_yaml(rules_file(groups), header), encoding="utf-8")
    pr = prometheus_rule(
        groups, prometheus_rule_name, prometheus_rule_namespace, prometheus_rule_labels
    )
    paths[1].write_text(to_yaml(pr, header), encoding="utf-8")
    return paths


#: Where the committed generated files live (next to this module, shipped with the package).
GENERATED_DIR = Path(__file__).parent / "generated"


def write_generated(out_dir: str | Path = GENERATED_DIR) -> list[Path]:
    """Write every committed generated file: rules, PrometheusRule, dashboards.

    A test regenerates into a temporary folder and fails when the committed copy differs.
    """
    from mlplane.monitoring import dashboards  # dashboards import this module: import late

    return [*write_rule_files(out_dir), *dashboards.write_dashboards(Path(out_dir) / "dashboards")]


# --- reading PromQL back ----------------------------------------------------------------------

_PROMQL_STRING = re.compile(r'"(?:\\.|[^"\\])*"|\'(?:\\.|[^\'\\])*\'|`[^`]*`')
_PROMQL_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)")
_PROMQL_IDENT = re.compile(r"(?<![\w.:$])([a-zA-Z_:][a-zA-Z0-9_:]*)(\s*\()?")
_PROMQL_KEYWORDS = frozenset(
    {
        "and",
        "or",
        "unless",
        "bool",
        "offset",
        "atan2",
        "inf",
        "nan",
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
    }
)


def selected_metric_names(expr: str) -> set[str]:
    """Metric names an expression reads (``foo`` in ``rate(foo{a="b"}[5m])``).

    A small lexer, not a parser: enough to check that rules and dashboards use only names
    from the contract. Strings, label matchers, ranges, grouping label lists, functions and
    keywords are skipped; Grafana variables (``$x``) appear only inside those.
    """
    text = _PROMQL_STRING.sub('""', expr)
    text = "\n".join(line.split("#", 1)[0] for line in text.splitlines())
    text = re.sub(r"\{[^{}]*\}", " ", text)
    text = re.sub(r"\[[^\[\]]*\]", " ", text)
    text = _PROMQL_GROUPING.sub(" ", text)
    found = set()
    for match in _PROMQL_IDENT.finditer(text):
        name, call = match.group(1), match.group(2)
        if call or name in _PROMQL_KEYWORDS:
            continue
        found.add(name)
    return found
