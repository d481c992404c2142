"""The metric-name contract: every Prometheus series mlplane exports, in one place.

Serving, training and the operator export these; the generated rules (:mod:`.rules`) and
dashboards (:mod:`.dashboards`) read them. Import the constants instead of spelling names, so a
rename is one edit and the tests (which parse every rule and panel query) catch a stray name.

Exporters and labels (``name  type  labels``; ``*`` see below):

Serving router, per request; labels ``namespace, deployment, version, variant``:

    mlplane_requests_total                       counter    + code ("2xx" | "4xx" | "5xx")
    mlplane_request_duration_seconds             histogram  buckets 5 ms ... 10 s
    mlplane_requests_slow_total                  counter    (slower than slo.latencyP99Ms)
    mlplane_requests_shed_total                  counter    (503 + Retry-After: queue full)

Serving router, A/B tests; labels ``namespace, abtest, variant``:

    mlplane_abtest_requests_total                counter
    mlplane_abtest_errors_total                  counter
    mlplane_abtest_outcomes_total                counter
    mlplane_abtest_outcome_sum                   counter*
    mlplane_abtest_outcome_sum_squares           counter*
    mlplane_abtest_latency_seconds               histogram

Operator, A/B analysis:

    mlplane_abtest_p_value                       gauge      namespace, abtest, variant
    mlplane_abtest_decision                      gauge      namespace, abtest, decision

Drift tap (serving) / operator; labels ``namespace, deployment`` plus:

    mlplane_feature_drift_score                  gauge      + feature, method
    mlplane_feature_drift_p_value                gauge      + feature
    mlplane_feature_drifted                      gauge      + feature (0/1)
    mlplane_drift_window_samples                 gauge
    mlplane_drift_last_evaluation_timestamp_seconds  gauge

Operator / local runner, one per ModelDeployment; labels ``namespace, deployment``:

    mlplane_slo_availability_target              gauge      (ratio, 0.999)
    mlplane_slo_latency_target_seconds           gauge

Operator, training; labels ``namespace, trainingjob``:

    mlplane_trainingjob_attempts_total           counter
    mlplane_trainingjob_preemptions_total        counter
    mlplane_trainingjob_failures_total           counter
    mlplane_trainingjob_returns_to_spot_total    counter    (planned moves back to spot)
    mlplane_trainingjob_reclaim_notices_total    counter    (notices the attempt was told of)
    mlplane_trainingjob_notice_checkpoints_total counter    (checkpoints taken on a notice)
    mlplane_trainingjob_last_checkpoint_timestamp_seconds  gauge
    mlplane_trainingjob_phase                    gauge      + phase (1 for the current one)
    mlplane_trainingjob_gpu_hours                gauge      + capacity (spot, on_demand)
    mlplane_trainingjob_lost_gpu_hours           gauge
    mlplane_trainingjob_estimated_cost           gauge      + currency (with a price table)
    mlplane_trainingjob_checkpoint_interval_seconds  gauge
    mlplane_trainingjob_checkpoint_write_seconds     gauge
    mlplane_trainingjob_mean_time_between_reclaims_seconds  gauge

Operator, itself (scrape job ``mlplane-operator``):

    mlplane_operator_reconcile_total             counter    kind, result ("success" | "error")
    mlplane_operator_reconcile_duration_seconds  histogram  kind

:data:`METRICS` holds the same table as data (types, labels, exporter, buckets).

Semantics the rules rely on:

- ``code`` is the HTTP status *class*. The availability SLI is ``5xx / all``: client errors
  (4xx) do not spend the error budget.
- ``mlplane_requests_slow_total`` counts requests slower than the deployment's
  ``spec.slo.latencyP99Ms`` (the router knows it). It turns the latency objective "99 % of
  requests faster than X ms" into a ratio SLI ``slow / all`` with a fixed 1 % budget, which
  burn-rate alerts handle like availability. Deployments without a latency objective export
  no slow series at all (so no latency alert can fire for them); deployments with one should
  create the series at 0 when a version starts serving (``.labels(...)`` without ``inc()``),
  so that "no slow request yet" reads 0 %, not "no data".
- The SLO targets are gauges so that ONE static rule file serves every deployment:
  ``mlplane_slo_availability_target`` is a ratio (``availability: "99.9"`` exports 0.999),
  ``mlplane_slo_latency_target_seconds`` the latency objective in seconds.
- ``mlplane_abtest_decision`` and ``mlplane_trainingjob_phase`` are "state set" gauges: 1 for the
  current decision/phase (other values may be exported as 0 or left out).
- ``mlplane_feature_drifted`` is 0/1; timestamps are Unix seconds.
- ``*`` ``mlplane_abtest_outcome_sum`` only grows (the sum of non-negative outcome values, e.g.
  conversions or revenue) and is read with ``rate()``; its name has no ``_total``, and a
  ``prometheus_client.Counter`` would append one, so :func:`build` exports it through a gauge
  that is only ever ``inc()``-ed. ``mlplane_abtest_outcome_sum_squares`` (the sum of squared
  outcome values) is the same kind; with the count and the sum it gives a variant's outcome
  variance, which the sequential test needs for a ``Mean`` objective.
- The operator is scraped by the job ``mlplane-operator`` (:data:`OPERATOR_JOB`); its ``up``
  series is what the operator-down alert watches.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

MetricType = Literal["counter", "gauge", "histogram"]

# --- serving router, per request ------------------------------------------------------------
REQUESTS_TOTAL = "mlplane_requests_total"
REQUEST_DURATION_SECONDS = "mlplane_request_duration_seconds"
REQUESTS_SLOW_TOTAL = "mlplane_requests_slow_total"
#: Requests refused for overload (the model's queue full): 503 + Retry-After.
REQUESTS_SHED_TOTAL = "mlplane_requests_shed_total"

# --- A/B tests -------------------------------------------------------------------------------
ABTEST_REQUESTS_TOTAL = "mlplane_abtest_requests_total"
ABTEST_ERRORS_TOTAL = "mlplane_abtest_errors_total"
ABTEST_OUTCOMES_TOTAL = "mlplane_abtest_outcomes_total"
ABTEST_OUTCOME_SUM = "mlplane_abtest_outcome_sum"
ABTEST_OUTCOME_SUM_SQUARES = "mlplane_abtest_outcome_sum_squares"
ABTEST_LATENCY_SECONDS = "mlplane_abtest_latency_seconds"
ABTEST_P_VALUE = "mlplane_abtest_p_value"
ABTEST_DECISION = "mlplane_abtest_decision"

# --- drift -----------------------------------------------------------------------------------
FEATURE_DRIFT_SCORE = "mlplane_feature_drift_score"
FEATURE_DRIFT_P_VALUE = "mlplane_feature_drift_p_value"
FEATURE_DRIFTED = "mlplane_feature_drifted"
DRIFT_WINDOW_SAMPLES = "mlplane_drift_window_samples"
DRIFT_LAST_EVALUATION_TIMESTAMP_SECONDS = "mlplane_drift_last_evaluation_timestamp_seconds"

# --- SLO targets -----------------------------------------------------------------------------
SLO_AVAILABILITY_TARGET = "mlplane_slo_availability_target"
SLO_LATENCY_TARGET_SECONDS = "mlplane_slo_latency_target_seconds"

# --- training --------------------------------------------------------------------------------
TRAININGJOB_ATTEMPTS_TOTAL = "mlplane_trainingjob_attempts_total"
TRAININGJOB_PREEMPTIONS_TOTAL = "mlplane_trainingjob_preemptions_total"
TRAININGJOB_FAILURES_TOTAL = "mlplane_trainingjob_failures_total"
TRAININGJOB_RETURNS_TO_SPOT_TOTAL = "mlplane_trainingjob_returns_to_spot_total"
TRAININGJOB_RECLAIM_NOTICES_TOTAL = "mlplane_trainingjob_reclaim_notices_total"
TRAININGJOB_NOTICE_CHECKPOINTS_TOTAL = "mlplane_trainingjob_notice_checkpoints_total"
TRAININGJOB_LAST_CHECKPOINT_TIMESTAMP_SECONDS = (
    "mlplane_trainingjob_last_checkpoint_timestamp_seconds"
)
TRAININGJOB_PHASE = "mlplane_trainingjob_phase"
TRAININGJOB_GPU_HOURS = "mlplane_trainingjob_gpu_hours"
TRAININGJOB_LOST_GPU_HOURS = "mlplane_trainingjob_lost_gpu_hours"
TRAININGJOB_ESTIMATED_COST = "mlplane_trainingjob_estimated_cost"
TRAININGJOB_CHECKPOINT_INTERVAL_SECONDS = "mlplane_trainingjob_checkpoint_interval_seconds"
TRAININGJOB_CHECKPOINT_WRITE_SECONDS = "mlplane_trainingjob_checkpoint_write_seconds"
TRAININGJOB_MEAN_TIME_BETWEEN_RECLAIMS_SECONDS = (
    "mlplane_trainingjob_mean_time_between_reclaims_seconds"
)

# --- operator --------------------------------------------------------------------------------
OPERATOR_RECONCILE_TOTAL = "mlplane_operator_reconcile_total"
OPERATOR_RECONCILE_DURATION_SECONDS = "mlplane_operator_reconcile_duration_seconds"

#: Prometheus scrape job of the operator (``up{job="mlplane-operator"}``).
OPERATOR_JOB = "mlplane-operator"

# --- label values ----------------------------------------------------------------------------
CODE_2XX, CODE_4XX, CODE_5XX = "2xx", "4xx", "5xx"
RESULT_SUCCESS, RESULT_ERROR = "success", "error"

#: Model serving latencies: 5 ms to 10 s, dense around the usual p99 objectives (50 ms-1 s)
#: so histogram_quantile interpolates within a narrow bucket where it matters.
REQUEST_DURATION_BUCKETS: tuple[float, ...] = (
    0.005,
    0.01,
    0.025,
    0.05,
    0.075,
    0.1,
    0.15,
    0.2,
    0.25,
    0.3,
    0.5,
    0.75,
    1.0,
    1.5,
    2.5,
    5.0,
    10.0,
)
#: Reconciles: API round trips (tens of ms) up to slow MLflow/KubeRay calls.
RECONCILE_DURATION_BUCKETS: tuple[float, ...] = (
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
)


def status_class(status_code: int) -> str:
    """The ``code`` label for an HTTP status: ``"2xx"``, ``"4xx"``, ``"5xx"`` (``"1xx"``...)."""
    if not 100 <= status_code <= 599:
        raise ValueError(f"not an HTTP status code: {status_code}")
    return f"{status_code // 100}xx"


@dataclass(frozen=True)
class Metric:
    """One exported metric family: the contract between its exporter and its readers."""

    name: str
    type: MetricType
    labels: tuple[str, ...]
    exporter: str
    help: str
    buckets: tuple[float, ...] | None = None

    @property
    def series(self) -> tuple[str, ...]:
        """The sample names Prometheus stores for this family (histograms have three)."""
        if self.type == "histogram":
            return (f"{self.name}_bucket", f"{self.name}_sum", f"{self.name}_count")
        return (self.name,)


_DEP = ("namespace", "deployment")
_REQ = (*_DEP, "version", "variant")
_AB = ("namespace", "abtest", "variant")
_TJ = ("namespace", "trainingjob")

METRICS: Mapping[str, Metric] = {
    m.name: m
    for m in (
        Metric(
            REQUESTS_TOTAL,
            "counter",
            (*_REQ, "code"),
            "serving router",
            "Requests answered, by HTTP status class.",
        ),
        Metric(
            REQUEST_DURATION_SECONDS,
            "histogram",
            _REQ,
            "serving router",
            "Request latency seen by the router.",
            REQUEST_DURATION_BUCKETS,
        ),
        Metric(
            REQUESTS_SLOW_TOTAL,
            "counter",
            _REQ,
            "serving router",
            "Requests slower than the deployment's slo.latencyP99Ms.",
        ),
        Metric(
            REQUESTS_SHED_TOTAL,
            "counter",
            _REQ,
            "serving router",
            "Requests refused with 503 + Retry-After because the model's queue was full "
            "(spec.maxQueuedRequests); also counted in mlplane_requests_total as 5xx.",
        ),
        Metric(ABTEST_REQUESTS_TOTAL, "counter", _AB, "serving router", "A/B requests by variant."),
        Metric(ABTEST_ERRORS_TOTAL, "counter", _AB, "serving router", "A/B errors by variant."),
        Metric(
            ABTEST_OUTCOMES_TOTAL,
            "counter",
            _AB,
            "serving router",
            "Outcome feedback events received, by variant.",
        ),
        Metric(
            ABTEST_OUTCOME_SUM,
            "counter",
            _AB,
            "serving router",
            "Sum of outcome values (non-negative), by variant.",
        ),
        Metric(
            ABTEST_OUTCOME_SUM_SQUARES,
            "counter",
            _AB,
            "serving router",
            "Sum of squared outcome values, by variant (variance for Mean objectives).",
        ),
        Metric(
            ABTEST_LATENCY_SECONDS,
            "histogram",
            _AB,
            "serving router",
            "A/B request latency by variant.",
            REQUEST_DURATION_BUCKETS,
        ),
        Metric(
            ABTEST_P_VALUE,
            "gauge",
            _AB,
            "operator",
            "Always-valid p-value of the variant against the control.",
        ),
        Metric(
            ABTEST_DECISION,
            "gauge",
            ("namespace", "abtest", "decision"),
            "operator",
            "1 for the A/B test's current decision.",
        ),
        Metric(
            FEATURE_DRIFT_SCORE,
            "gauge",
            (*_DEP, "feature", "method"),
            "drift tap",
            "Drift score of a feature against the training reference.",
        ),
        Metric(
            FEATURE_DRIFT_P_VALUE,
            "gauge",
            (*_DEP, "feature"),
            "drift tap",
            "p-value of the feature's drift test.",
        ),
        Metric(
            FEATURE_DRIFTED,
            "gauge",
            (*_DEP, "feature"),
            "drift tap",
            "1 when the feature is judged drifted, else 0.",
        ),
        Metric(
            DRIFT_WINDOW_SAMPLES,
            "gauge",
            _DEP,
            "drift tap",
            "Live samples in the current drift window.",
        ),
        Metric(
            DRIFT_LAST_EVALUATION_TIMESTAMP_SECONDS,
            "gauge",
            _DEP,
            "drift tap",
            "Unix time of the last drift evaluation.",
        ),
        Metric(
            SLO_AVAILABILITY_TARGET,
            "gauge",
            _DEP,
            "operator/runner",
            "Availability objective as a ratio (0.999).",
        ),
        Metric(
            SLO_LATENCY_TARGET_SECONDS,
            "gauge",
            _DEP,
            "operator/runner",
            "Latency objective: 99 % of requests faster than this, in seconds.",
        ),
        Metric(
            TRAININGJOB_ATTEMPTS_TOTAL,
            "counter",
            _TJ,
            "operator",
            "Attempts (RayJobs) started for the job.",
        ),
        Metric(
            TRAININGJOB_PREEMPTIONS_TOTAL,
            "counter",
            _TJ,
            "operator",
            "Spot preemptions seen by the job.",
        ),
        Metric(
            TRAININGJOB_FAILURES_TOTAL,
            "counter",
            _TJ,
            "operator",
            "Attempts that failed for a reason other than preemption.",
        ),
        Metric(
            TRAININGJOB_RETURNS_TO_SPOT_TOTAL,
            "counter",
            _TJ,
            "operator",
            "Planned moves from on-demand back to spot (spec.preemption.returnToSpot): neither "
            "a preemption nor a failure.",
        ),
        Metric(
            TRAININGJOB_RECLAIM_NOTICES_TOTAL,
            "counter",
            _TJ,
            "operator",
            "Reclaim notices (a node's termination taint, a pod's DisruptionTarget) the running "
            "attempt was asked to checkpoint for.",
        ),
        Metric(
            TRAININGJOB_NOTICE_CHECKPOINTS_TOTAL,
            "counter",
            _TJ,
            "operator",
            "Checkpoints the attempts took on a reclaim notice, before the capacity went.",
        ),
        Metric(
            TRAININGJOB_LAST_CHECKPOINT_TIMESTAMP_SECONDS,
            "gauge",
            _TJ,
            "operator",
            "Unix time of the newest checkpoint.",
        ),
        Metric(
            TRAININGJOB_PHASE,
            "gauge",
            (*_TJ, "phase"),
            "operator",
            "1 for the job's current phase.",
        ),
        Metric(
            TRAININGJOB_GPU_HOURS,
            "gauge",
            (*_TJ, "capacity"),
            "operator",
            "GPU-hours the job's workers used so far, by capacity (spot or on_demand).",
        ),
        Metric(
            TRAININGJOB_LOST_GPU_HOURS,
            "gauge",
            _TJ,
            "operator",
            "GPU-hours lost to reclaims: work repeated since the last checkpoint plus restarts.",
        ),
        Metric(
            TRAININGJOB_ESTIMATED_COST,
            "gauge",
            (*_TJ, "currency"),
            "operator",
            "Estimated price of the job's GPU-hours from the operator's price table.",
        ),
        Metric(
            TRAININGJOB_CHECKPOINT_INTERVAL_SECONDS,
            "gauge",
            _TJ,
            "operator",
            "Checkpoint interval in use (spec.checkpoint.interval; Auto: sqrt(2*C*M)).",
        ),
        Metric(
            TRAININGJOB_CHECKPOINT_WRITE_SECONDS,
            "gauge",
            _TJ,
            "operator",
            "C: measured time to write one checkpoint (running mean).",
        ),
        Metric(
            TRAININGJOB_MEAN_TIME_BETWEEN_RECLAIMS_SECONDS,
            "gauge",
            _TJ,
            "operator",
            "M: the job's expected time between spot reclaims (operator's history).",
        ),
        Metric(
            OPERATOR_RECONCILE_TOTAL,
            "counter",
            ("kind", "result"),
            "operator",
            "Reconciles by resource kind and result.",
        ),
        Metric(
            OPERATOR_RECONCILE_DURATION_SECONDS,
            "histogram",
            ("kind",),
            "operator",
            "Reconcile duration by resource kind.",
            RECONCILE_DURATION_BUCKETS,
        ),
    )
}


def series_names() -> frozenset[str]:
    """Every sample name the exporters produce (histogram ``_bucket/_sum/_count`` included)."""
    return frozenset(s for m in METRICS.values() for s in m.series)


def build(name: str, registry: Any = None) -> Any:
    """A ``prometheus_client`` collector that exposes *exactly* the contract's series.

    Why a factory: ``prometheus_client`` adds ``_total`` to counter names itself (so the name
    passed in must lack it) and would turn ``mlplane_abtest_outcome_sum`` into
    ``..._sum_total``. Exporters that build their collectors here cannot drift from the
    contract. ``registry=None`` uses the client's default registry.
    """
    import prometheus_client as pc  # lazy: names.py is imported where no client is installed

    metric = METRICS[name]
    kwargs: dict[str, Any] = {"labelnames": metric.labels}
    if registry is not None:
        kwargs["registry"] = registry
    if metric.type == "histogram":
        return pc.Histogram(metric.name, metric.help, buckets=metric.buckets, **kwargs)
    if metric.type == "counter" and metric.name.endswith("_total"):
        return pc.Counter(metric.name.removesuffix("_total"), metric.help, **kwargs)
    # Gauges, and the counters whose names have no _total (increase them, never set them).
    return pc.Gauge(metric.name, metric.help, **kwargs)
