"""The operator's Prometheus series, fed from the status its reconcilers write.

The names, types and labels are :mod:`mlplane.monitoring.names`' contract (the generated rules
and dashboards query them); every collector here is built with its :func:`~names.build`, so it
cannot drift from that contract.

Why status dicts and not events: the status is the one record both the Kopf handlers and the
local runner produce, and it already holds the cumulative numbers (attempts, preemptions,
failures) the operator has counted exactly once. Exporting it keeps one truth: a counter here
grows by the *difference* between the status value and the last one this process exported for
the object. A new process starts each counter at the status value; Prometheus reads the drop
from the old process' value as a counter reset, which is what ``rate``/``increase`` expect.
A status value below the last one seen (a stale body, or an object re-created under the same
name while the operator was down) is not exported until it climbs past it: counters never go
back.

State sets (a TrainingJob's phase, an ABTest's decision) export every value of the CRD's enum,
1 for the current one and 0 for the others, so "phase Running for the last hour" and "count by
phase" both read without gaps.

:class:`OperatorMetrics` holds the collectors on one registry (tests pass a fresh
``CollectorRegistry``); the module-level functions use a shared instance on
``prometheus_client.REGISTRY``, created on first use, which is what
``prometheus_client.start_http_server(port)`` serves.

Feeding it: a Kopf handler calls the per-kind function with the status it writes and
:func:`forget` on a ``DELETED`` event; a loop that lists every object each pass (the local
runner) calls :func:`sync` per kind with the stored bodies, which also forgets what is gone.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Any, get_args

from pydantic import BaseModel

from mlplane.crds import KINDS, ABTestStatus, TrainingJobStatus
from mlplane.crds.modeldeployment import SLO
from mlplane.monitoring import names as n

TRAININGJOB, MODELDEPLOYMENT, ABTEST = "TrainingJob", "ModelDeployment", "ABTest"

#: Every phase a TrainingJob's status can name (the state set's values), from the CRD.
TRAININGJOB_PHASES: tuple[str, ...] = get_args(
    get_args(TrainingJobStatus.model_fields["phase"].annotation)[0]
)
#: Every decision an ABTest's status can name, from the CRD.
ABTEST_DECISIONS: tuple[str, ...] = get_args(
    get_args(ABTestStatus.model_fields["decision"].annotation)[0]
)
#: TrainingJob counters and the status field each follows.
_TRAINING_COUNTERS = (
    (n.TRAININGJOB_ATTEMPTS_TOTAL, "attempts"),
    (n.TRAININGJOB_PREEMPTIONS_TOTAL, "preemptions"),
    (n.TRAININGJOB_FAILURES_TOTAL, "failures"),
    (n.TRAININGJOB_RETURNS_TO_SPOT_TOTAL, "returnsToSpot"),
    (n.TRAININGJOB_RECLAIM_NOTICES_TOTAL, "reclaimNotices"),
    (n.TRAININGJOB_NOTICE_CHECKPOINTS_TOTAL, "noticeCheckpoints"),
)
#: TrainingJob gauges and the (section, field) of status each follows (absent: no series).
_TRAINING_GAUGES = (
    (n.TRAININGJOB_LOST_GPU_HOURS, ("cost", "lostGpuHours")),
    (n.TRAININGJOB_CHECKPOINT_INTERVAL_SECONDS, ("checkpoint", "intervalSeconds")),
    (n.TRAININGJOB_CHECKPOINT_WRITE_SECONDS, ("checkpoint", "writeSeconds")),
    (n.TRAININGJOB_MEAN_TIME_BETWEEN_RECLAIMS_SECONDS,
     ("checkpoint", "meanTimeBetweenReclaimsSeconds")),
)  # fmt: skip
#: The families each kind's object exports (what :meth:`OperatorMetrics.forget` removes).
_FAMILIES: Mapping[str, tuple[str, ...]] = {
    TRAININGJOB: (
        *(name for name, _ in _TRAINING_COUNTERS),
        n.TRAININGJOB_LAST_CHECKPOINT_TIMESTAMP_SECONDS,
        n.TRAININGJOB_PHASE,
        *(name for name, _ in _TRAINING_GAUGES),
        n.TRAININGJOB_GPU_HOURS,
        n.TRAININGJOB_ESTIMATED_COST,
    ),
    MODELDEPLOYMENT: (n.SLO_AVAILABILITY_TARGET, n.SLO_LATENCY_TARGET_SECONDS),
    ABTEST: (n.ABTEST_P_VALUE, n.ABTEST_DECISION),
}


def _plain(value: Any) -> dict[str, Any]:
    """A status as a camelCase dict, whether it came as a dict, a Kopf view or a model."""
    if value is None:
        return {}
    if isinstance(value, BaseModel):
        return value.model_dump(by_alias=True, exclude_none=True)
    if isinstance(value, Mapping):
        return dict(value)
    raise TypeError(f"a status must be a mapping or a model, not {type(value).__name__}")


def _count(value: Any) -> int:
    """A cumulative count from status; anything else (absent, garbage) counts as 0."""
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def _timestamp(value: Any) -> float | None:
    """Unix seconds of an RFC 3339 status timestamp; None when absent or unreadable."""
    if not isinstance(value, str) or not value:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    if parsed.tzinfo is None:  # Kubernetes writes UTC; a naive time is UTC, not local time
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.timestamp()


def slo_targets(slo: Mapping[str, Any] | SLO | None) -> tuple[float, float | None]:
    """(availability ratio, latency objective in seconds or None) of a ``spec.slo``.

    ``availability: "99.9"`` → 0.999 (computed in decimal, so the gauge is the float nearest
    to the written percentage); ``latencyP99Ms: 250`` → 0.25. A missing ``slo`` is the CRD's
    default (99.9 %, no latency objective).
    """
    if slo is None:
        slo = SLO()
    elif not isinstance(slo, SLO):
        slo = SLO.model_validate(dict(slo))
    try:
        ratio = Decimal(str(slo.availability)) / 100
    except InvalidOperation:
        raise ValueError(f"availability is not a number: {slo.availability!r}") from None
    latency = None if slo.latency_p99_ms is None else slo.latency_p99_ms / 1000
    return float(ratio), latency


class OperatorMetrics:
    """The operator's collectors on one registry, and the status → series translations.

    Thread-safe: Kopf runs sync handlers and timers in a thread pool.
    """

    def __init__(self, registry: Any = None) -> None:
        import prometheus_client

        self.registry = prometheus_client.REGISTRY if registry is None else registry
        owned = (
            n.OPERATOR_RECONCILE_TOTAL,
            n.OPERATOR_RECONCILE_DURATION_SECONDS,
            *(name for family in _FAMILIES.values() for name in family),
        )
        self.collectors: dict[str, Any] = {name: n.build(name, self.registry) for name in owned}
        self._lock = threading.Lock()
        #: (namespace, name) → status field → the cumulative value last exported.
        self._counted: dict[tuple[str, str], dict[str, int]] = {}
        #: (kind, namespace, name) → the (family, label values) exported for the object.
        self._exported: dict[tuple[str, str, str], set[tuple[str, tuple[str, ...]]]] = {}
        # Every kind's reconcile series exist from the start (at 0): "no error yet" reads as a
        # 0 % error ratio, not as no data.
        for kind in KINDS:
            for result in (n.RESULT_SUCCESS, n.RESULT_ERROR):
                self.collectors[n.OPERATOR_RECONCILE_TOTAL].labels(kind.kind_name, result)
            self.collectors[n.OPERATOR_RECONCILE_DURATION_SECONDS].labels(kind.kind_name)

    # --- reconciles -------------------------------------------------------------------------

    def observe_reconcile(self, kind: str, ok: bool, seconds: float) -> None:
        """Count one reconcile of ``kind`` and record how long it took."""
        result = n.RESULT_SUCCESS if ok else n.RESULT_ERROR
        self.collectors[n.OPERATOR_RECONCILE_TOTAL].labels(kind, result).inc()
        self.collectors[n.OPERATOR_RECONCILE_DURATION_SECONDS].labels(kind).observe(
            max(seconds, 0.0)
        )

    @contextmanager
    def reconciling(self, kind: str) -> Iterator[None]:
        """Time the block as one reconcile of ``kind``: an exception counts as an error (and
        goes on), a normal exit as a success."""
        start = time.perf_counter()
        ok = False
        try:
            yield
            ok = True
        finally:
            self.observe_reconcile(kind, ok, time.perf_counter() - start)

    # --- per object ---------------------------------------------------------------------------

    def _set(self, key: tuple[str, str, str], family: str, labels: tuple[str, ...]) -> Any:
        """The family's child for ``labels``, remembered as exported by the object ``key``."""
        self._exported.setdefault(key, set()).add((family, labels))
        return self.collectors[family].labels(*labels)

    def _drop(self, key: tuple[str, str, str], family: str, labels: tuple[str, ...]) -> None:
        self.collectors[family].remove(*labels)
        self._exported.get(key, set()).discard((family, labels))

    def _drop_other(
        self, key: tuple[str, str, str], family: str, keep: set[tuple[str, ...]]
    ) -> None:
        """Remove the object's series of ``family`` whose labels are not in ``keep``."""
        for fam, labels in list(self._exported.get(key, ())):
            if fam == family and labels not in keep:
                self._drop(key, fam, labels)

    def trainingjob(self, namespace: str, name: str, status: Mapping[str, Any] | Any) -> None:
        """Export a TrainingJob's status: counters, last checkpoint time, phase state set."""
        st = _plain(status)
        key, obj = (TRAININGJOB, namespace, name), (namespace, name)
        with self._lock:
            counted = self._counted.setdefault(obj, {})
            for family, field in _TRAINING_COUNTERS:
                value = _count(st.get(field))
                child = self._set(key, family, obj)  # exists from 0 on the first look
                last = counted.get(field, 0)
                if value > last:
                    child.inc(value - last)
                    counted[field] = value
            checkpoint = st.get("lastCheckpoint")
            when = _timestamp(checkpoint.get("time")) if isinstance(checkpoint, Mapping) else None
            if when is None:
                self._drop(key, n.TRAININGJOB_LAST_CHECKPOINT_TIMESTAMP_SECONDS, obj)
            else:
                self._set(key, n.TRAININGJOB_LAST_CHECKPOINT_TIMESTAMP_SECONDS, obj).set(when)
            phase = st.get("phase")
            for each in TRAININGJOB_PHASES:
                self._set(key, n.TRAININGJOB_PHASE, (*obj, each)).set(1.0 if each == phase else 0.0)
            self._spot(key, obj, st)

    def _spot(self, key: tuple[str, str, str], obj: tuple[str, str], st: dict[str, Any]) -> None:
        """Hours, waste, cost, and the checkpoint interval with its C and M, from status."""
        for family, (section, field) in _TRAINING_GAUGES:
            value = (st.get(section) or {}).get(field)
            if isinstance(value, int | float) and not isinstance(value, bool):
                self._set(key, family, obj).set(float(value))
            else:
                self._drop_other(key, family, set())
        cost = st.get("cost") or {}
        hours = {"spot": cost.get("spotGpuHours"), "on_demand": cost.get("onDemandGpuHours")}
        keep: set[tuple[str, ...]] = set()
        for capacity, value in hours.items():
            if isinstance(value, int | float):
                keep.add((*obj, capacity))
                self._set(key, n.TRAININGJOB_GPU_HOURS, (*obj, capacity)).set(float(value))
        self._drop_other(key, n.TRAININGJOB_GPU_HOURS, keep)
        price = cost.get("estimatedCost")
        priced: set[tuple[str, ...]] = set()
        if isinstance(price, int | float):
            priced.add((*obj, str(cost.get("currency") or "")))
            self._set(
                key, n.TRAININGJOB_ESTIMATED_COST, (*obj, str(cost.get("currency") or ""))
            ).set(float(price))
        self._drop_other(key, n.TRAININGJOB_ESTIMATED_COST, priced)

    def modeldeployment(
        self, namespace: str, name: str, slo: Mapping[str, Any] | SLO | None
    ) -> None:
        """Export a ModelDeployment's SLO targets (``spec.slo``, dict or model).

        Without a latency objective the latency target series is removed: the latency alerts
        join on it, and a deployment without an objective must not be alerted on.
        """
        availability, latency = slo_targets(slo)
        key, obj = (MODELDEPLOYMENT, namespace, name), (namespace, name)
        with self._lock:
            self._set(key, n.SLO_AVAILABILITY_TARGET, obj).set(availability)
            if latency is None:
                self._drop(key, n.SLO_LATENCY_TARGET_SECONDS, obj)
            else:
                self._set(key, n.SLO_LATENCY_TARGET_SECONDS, obj).set(latency)

    def abtest(self, namespace: str, name: str, status: Mapping[str, Any] | Any) -> None:
        """Export an ABTest's analysis: each variant's p-value, the decision state set.

        A variant without a p-value (the control, or before the first evaluation) has no
        series; a variant gone from status loses its series.
        """
        st = _plain(status)
        key = (ABTEST, namespace, name)
        with self._lock:
            keep: set[tuple[str, ...]] = set()
            variants = st.get("variants")
            for variant in variants if isinstance(variants, list) else ():
                if not isinstance(variant, Mapping):
                    continue
                p_value, vname = variant.get("pValue"), variant.get("name")
                if isinstance(vname, str) and isinstance(p_value, int | float):
                    labels = (namespace, name, vname)
                    self._set(key, n.ABTEST_P_VALUE, labels).set(float(p_value))
                    keep.add(labels)
            self._drop_other(key, n.ABTEST_P_VALUE, keep)
            decision = st.get("decision")
            for value in ABTEST_DECISIONS:
                self._set(key, n.ABTEST_DECISION, (namespace, name, value)).set(
                    1.0 if value == decision else 0.0
                )

    def export(self, body: Mapping[str, Any]) -> None:
        """Export one stored object (``kind``, ``metadata``, ``spec``, ``status``) by its kind.

        A ModelDeployment whose ``spec.slo`` does not parse exports no targets (an invalid
        object's targets would be made up); the verdict is the reconciler's to report.
        """
        kind, meta = body.get("kind"), body.get("metadata") or {}
        namespace, name = meta.get("namespace") or "default", meta.get("name") or ""
        if kind == TRAININGJOB:
            self.trainingjob(namespace, name, body.get("status"))
        elif kind == ABTEST:
            self.abtest(namespace, name, body.get("status"))
        elif kind == MODELDEPLOYMENT:
            try:
                self.modeldeployment(namespace, name, (body.get("spec") or {}).get("slo"))
            except ValueError:
                self.forget(kind, namespace, name)
        else:
            raise ValueError(f"not an mlplane kind with series: {kind!r}")

    def sync(self, kind: str, bodies: Iterable[Mapping[str, Any]]) -> None:
        """Export every object of ``kind`` and forget those no longer listed.

        For a loop that lists all objects each pass (the local runner): deletions need no
        event, an object missing from the list is gone.
        """
        listed = []
        for body in bodies:
            if body.get("kind") != kind:
                raise ValueError(f"sync({kind!r}) got a {body.get('kind')!r}")
            self.export(body)
            meta = body.get("metadata") or {}
            listed.append((kind, meta.get("namespace") or "default", meta.get("name") or ""))
        with self._lock:
            known = {key for key in self._exported if key[0] == kind}
            if kind == TRAININGJOB:
                known |= {(kind, *obj) for obj in self._counted}
        for key in known - set(listed):
            self.forget(*key)

    def forget(self, kind: str, namespace: str, name: str) -> None:
        """Remove every series of a deleted object (and, for a TrainingJob, its counts)."""
        key = (kind, namespace, name)
        with self._lock:
            for family, labels in self._exported.pop(key, set()):
                self.collectors[family].remove(*labels)
            if kind == TRAININGJOB:
                self._counted.pop((namespace, name), None)


_DEFAULT: OperatorMetrics | None = None
_DEFAULT_LOCK = threading.Lock()


def default() -> OperatorMetrics:
    """The process' instance on ``prometheus_client.REGISTRY`` (created on first use)."""
    global _DEFAULT
    with _DEFAULT_LOCK:
        if _DEFAULT is None:
            _DEFAULT = OperatorMetrics()
        return _DEFAULT


def observe_reconcile(kind: str, ok: bool, seconds: float) -> None:
    """:meth:`OperatorMetrics.observe_reconcile` on the default registry."""
    default().observe_reconcile(kind, ok, seconds)


@contextmanager
def reconciling(kind: str) -> Iterator[None]:
    """:meth:`OperatorMetrics.reconciling` on the default registry."""
    with default().reconciling(kind):
        yield


def trainingjob(namespace: str, name: str, status: Mapping[str, Any] | Any) -> None:
    """:meth:`OperatorMetrics.trainingjob` on the default registry."""
    default().trainingjob(namespace, name, status)


def modeldeployment(namespace: str, name: str, slo: Mapping[str, Any] | SLO | None) -> None:
    """:meth:`OperatorMetrics.modeldeployment` on the default registry."""
    default().modeldeployment(namespace, name, slo)


def abtest(namespace: str, name: str, status: Mapping[str, Any] | Any) -> None:
    """:meth:`OperatorMetrics.abtest` on the default registry."""
    default().abtest(namespace, name, status)


def export(body: Mapping[str, Any]) -> None:
    """:meth:`OperatorMetrics.export` on the default registry."""
    default().export(body)


def sync(kind: str, bodies: Iterable[Mapping[str, Any]]) -> None:
    """:meth:`OperatorMetrics.sync` on the default registry."""
    default().sync(kind, bodies)


def forget(kind: str, namespace: str, name: str) -> None:
    """:meth:`OperatorMetrics.forget` on the default registry."""
    default().forget(kind, namespace, name)
