"""ABTest: the next status, the alias to move and the events, from what was observed.

Pure: no I/O, no clock. The caller (the Kopf handler on Kubernetes, the runner on the local
platform) looks up the ModelDeployment, resolves the variants' aliases in MLflow, reads the
router's cumulative counts (``GET <endpoint>/admin/v1/stats?abtest=<name>``) and the other
ABTests of the namespace; :func:`reconcile` returns the whole next status, the alias move to
carry out (if any) and the events of the transitions. Same inputs, same plan: a restart, a
repeated event or a timer tick with nothing new writes nothing.

Everything a restarted operator needs is in ``status`` and in the router's cumulative counts:
the frozen versions and effective weights (``status.variants[].version``/``.weight``), the
start time (for ``maxDuration``), and the running bounds of the always-valid test (each
treatment's ``pValue`` and ``interval``, so p-values only go down and confidence sequences only
shrink across evaluations and restarts).

Phases:

- ``Pending``: waiting to split traffic — the ModelDeployment is missing or not serving,
  another ABTest splits its traffic (the oldest running test wins: see :func:`routing_holder`),
  a variant's alias or version cannot be resolved, or the split is frozen (versions and weights
  in ``status.variants``, which :func:`routing_for` hands to the ModelDeployment) and the
  router does not serve it yet.
- ``Running``: the deployment is Ready and its router reports this test's variants; every
  evaluation runs :func:`mlplane.monitoring.abtest_analysis.decide` on the counts.
- ``Concluded`` (final): ``decision`` Promote (``winner`` set; the ``onConclusion.alias`` moves
  to the winner's version when ``onConclusion.promote``, in steps: see below), Rollback (a
  guardrail breach by a treatment, at once, or every treatment significantly worse:
  treatments' effective weight 0, the alias stays) or NoDifference (``maxDuration``; the
  control keeps the alias).
- ``Failed`` (final): the test cannot go on — the ModelDeployment was deleted mid-test (its
  router and counts are gone), its variants were changed mid-test (a different experiment:
  create a new ABTest), or the observed split does not match the weights (sample ratio
  mismatch: the evidence is broken, nothing is promoted or rolled back).

Promotion, in three steps (the only decision that acts outside the status): (1) the evaluation
that decides Promote writes ``decision``, ``winner`` and ``status.promotion`` (the model, alias
and version, ``phase: Pending``) and stays Running, the split still served; (2) a later round
whose *observed* status records that promotion returns it as :attr:`Plan.set_alias` for the
adapter to carry out (nothing to do when the alias already points there) together with (3) the
Concluded status (``promotion.phase: Done``), written only after the move. A crash or a failed
write anywhere in between leaves a status from which the next round finishes the same
promotion: later counts, spec changes or a deleted deployment do not decide again.

A concluded or failed test never changes again: replays write nothing and never move the alias
twice. Spec changes while Running apply from the next evaluation (weights, guardrails,
analysis), and reset the running bounds (still valid, no longer carried over).

Conditions:

- ``Running``: True (reason ``Analysing``) while the split is served and evaluated, (reason
  ``Promoting``) while a decided promotion is carried out; Unknown
  (reason ``StatsUnavailable``) while Running but the counts could not be read, or came from a
  count epoch already closed (``status.closedEpochs``); False while
  Pending (reason ``DeploymentNotFound``, ``DeploymentNotReady``, ``WaitingForDeployment``,
  ``VariantUnresolved``, ``RegistryUnavailable``, ``WaitingForRouter``) and once final
  (``Concluded``, ``Failed``).
- ``Concluded``: False (reason ``Continue``, the analysis' current reading) while running,
  (reason ``Promoting``) between the Promote decision and the alias move;
  True with reason ``Promote``/``Rollback``/``NoDifference`` and the why.
- ``GuardrailBreached``: True (reason ``TreatmentBreach`` or ``ControlBreach``: the control's
  breach is reported but decides nothing) or False (``WithinGuardrails``), once evaluated.
- ``SampleRatioMismatch``: checked before every analysis (:func:`_sample_ratio`, a separate
  step: :mod:`mlplane.monitoring.srm`) on the requests since ``status.variants[].srmBaseline``;
  False (``SplitAsConfigured``), Unknown (``WeightsChanging``: new weights not yet served;
  ``WeightsSettling``: served since this evaluation, counted from the next) or True
  (``ObservedSplitDiffers``: phase Failed, Concluded False with reason ``SampleRatioMismatch``).

Events: ``Starting`` (split frozen), ``Started``, ``Waiting`` / ``DeploymentNotFound`` /
``VariantUnresolved`` (Pending reasons, on change), ``CountsReset`` (the router's count epoch
changed, or its totals went backwards: the old epoch's totals are carried, see
:func:`_carry_over`), ``GuardrailBreached``, ``Promoting`` (decided, recorded),
``Promoted`` / ``WinnerFound`` (the alias moved / ``promote: false``), ``RolledBack``,
``NoDifference``, ``Failed``.

Counts: the Conversion and Mean objectives read the outcomes posted to ``/v1/feedback``
(count, sum, sum of squares; Conversion outcomes are 0/1); Latency reads the router's request
latency in milliseconds. Guardrails read ``errorRate`` and ``latencyP99Ms`` over requests.
``status.variants[].mean`` is the objective's mean; for a treatment, ``interval`` is the
confidence sequence of (its mean - the control's) and ``pValue`` the always-valid p-value
after the Bonferroni correction over the treatments.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any, Literal, NamedTuple

from mlplane.crds import ABTest, ModelDeployment
from mlplane.crds.common import parse_duration
from mlplane.monitoring.abtest_analysis import (
    AnalysisResult,
    RunningBounds,
    VariantObservation,
    decide,
)
from mlplane.monitoring.srm import SRM_ALPHA, SampleRatio, srm_check
from mlplane.operator import conditions
from mlplane.operator.builders.rayservice import Variant
from mlplane.operator.conditions import Event
from mlplane.operator.reconcile.modeldeployment import Unresolved

__all__ = [
    "PENDING_POLL",
    "AliasMove",
    "Observed",
    "Plan",
    "Routing",
    "StatsUnavailable",
    "VariantStats",
    "analysis_interval",
    "pending_promotion",
    "reconcile",
    "routing_for",
    "routing_holder",
    "stats_from_response",
]

#: Seconds until the next look while Pending (waiting for the deployment, MLflow, the router).
PENDING_POLL = 5.0
FINAL_PHASES = frozenset({"Concluded", "Failed"})

Phase = Literal["Pending", "Running", "Concluded", "Failed"]


# --- inputs ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class VariantStats:
    """One variant's cumulative numbers, as a row of the router's ``GET /admin/v1/stats``.

    ``weight`` is the router's current weight for the variant, None when the router's current
    split is not this test's (the row is history).
    """

    variant: str
    requests: int = 0
    errors: int = 0
    outcomes: int = 0
    outcome_sum: float = 0.0
    outcome_sum_squares: float = 0.0
    latency_count: int = 0
    latency_sum_seconds: float = 0.0
    latency_sum_squares_seconds: float = 0.0
    latency_p99_ms: float | None = None
    weight: int | None = None
    #: The count epoch the row belongs to (the answer's ``epoch``: one per incarnation of the
    #: app's monitor state), None from a router of an earlier release.
    epoch: str | None = None

    @classmethod
    def from_row(cls, row: Mapping[str, Any], epoch: str | None = None) -> VariantStats:
        """Read one JSON row (``TrafficStats.snapshot`` plus the router's ``weight``).

        A count or sum that is present but not a finite number (the router writes an overflowed
        sum as null) raises ``ValueError``: read as 0 it would be false evidence.
        """

        def num(key: str) -> float:
            value = row.get(key, 0)
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ValueError(f"{key} of variant {row.get('variant')!r} is {value!r}")
            if not math.isfinite(value):
                raise ValueError(f"{key} of variant {row.get('variant')!r} is not finite")
            return float(value)

        p99 = row.get("latencyP99Ms")
        weight = row.get("weight")
        return cls(
            variant=str(row["variant"]),
            requests=int(num("requests")),
            errors=int(num("errors")),
            outcomes=int(num("outcomes")),
            outcome_sum=num("outcomeSum"),
            outcome_sum_squares=num("outcomeSumSquares"),
            latency_count=int(num("latencyCount")),
            latency_sum_seconds=num("latencySumSeconds"),
            latency_sum_squares_seconds=num("latencySumSquaresSeconds"),
            latency_p99_ms=float(p99) if isinstance(p99, int | float) else None,
            weight=int(weight) if isinstance(weight, int | float) else None,
            epoch=epoch,
        )


@dataclass(frozen=True)
class StatsUnavailable:
    """The router's counts could not be read (unreachable, 5xx, not JSON): why."""

    message: str


def stats_from_response(
    payload: Mapping[str, Any], abtest: str
) -> tuple[VariantStats, ...] | StatsUnavailable:
    """This test's rows of a ``GET /admin/v1/stats`` answer (other tests' rows are left out)."""
    rows = payload.get("variants")
    if not isinstance(rows, list):
        return StatsUnavailable("the router's /admin/v1/stats answer has no 'variants' list")
    epoch = payload.get("epoch")
    if epoch is not None and (not isinstance(epoch, str) or not epoch):
        return StatsUnavailable(f"the router's /admin/v1/stats answer has a bad epoch {epoch!r}")
    try:
        return tuple(
            VariantStats.from_row(r, epoch)
            for r in rows
            if isinstance(r, Mapping) and r.get("abtest") == abtest
        )
    except (KeyError, TypeError, ValueError) as exc:
        return StatsUnavailable(f"the router's /admin/v1/stats answer is malformed: {exc!r}")


@dataclass(frozen=True)
class Observed:
    """What the caller saw.

    ``deployment``: the ModelDeployment named by ``spec.deployment`` (status included), None
    when there is none. ``versions``: per variant name, its version or why it is unresolved
    (only needed before the split is frozen; a missing name counts as not looked up).
    ``stats``: the router's rows for this test, or why they could not be read, or None when not
    read. ``competitors``: the namespace's other ABTests (any deployment; this one may be
    among them, it is ignored), for who splits the deployment's traffic.
    """

    deployment: ModelDeployment | None
    versions: Mapping[str, int | Unresolved] = field(default_factory=dict)
    stats: Sequence[VariantStats] | StatsUnavailable | None = None
    competitors: Sequence[ABTest] = ()


class AliasMove(NamedTuple):
    """Point ``alias`` of registered model ``model`` at ``version`` (a promotion)."""

    model: str
    alias: str
    version: int


@dataclass
class Plan:
    """The next status, the alias move to carry out before writing it, events, next look.

    ``set_alias`` is only ever set for a promotion the *observed* status already records
    (``status.promotion.phase: Pending``): the adapter makes the alias point there (nothing to
    do when it already does), then writes ``status`` (Concluded); if the move fails, it writes
    nothing and comes back.
    """

    status: dict[str, Any]
    set_alias: AliasMove | None = None
    events: list[Event] = field(default_factory=list)
    #: Seconds until the next evaluation; None when final (nothing will change any more).
    requeue_after: float | None = None
    #: The analysis of this evaluation, when one ran (for metrics and logs).
    analysis: AnalysisResult | None = None


class Routing(NamedTuple):
    """How a ModelDeployment splits its traffic: what ``reconcile/modeldeployment.Observed``
    takes as ``variants``, ``bucketing_header``, ``abtest`` and ``objective``."""

    variants: tuple[Variant, ...]
    bucketing_header: str | None
    abtest: str
    objective: str
    #: A Mean objective's ``(min, max)`` outcomes (the router refuses feedback outside).
    outcome_range: tuple[float, float] | None = None


# --- who splits a deployment's traffic ---------------------------------------------------------


def _meta(test: ABTest, key: str) -> Any:
    return (test.metadata.model_extra or {}).get(key)


def _phase(test: ABTest) -> str | None:
    return test.status.phase if test.status else None


def _targets(test: ABTest, md_name: str, namespace: str | None) -> bool:
    if test.spec.deployment != md_name or _meta(test, "deletionTimestamp"):
        return False
    return namespace is None or (test.metadata.namespace or "default") == namespace


def routing_holder(
    md_name: str, abtests: Iterable[ABTest], namespace: str | None = None
) -> ABTest | None:
    """The ABTest entitled to split ``md_name``'s traffic, among those not final or deleted.

    A running test first (the earliest started), else the oldest created (then by name): a
    test that started is never displaced by a newer one, and waiting tests queue by age.
    """
    candidates = [
        t for t in abtests if _targets(t, md_name, namespace) and _phase(t) not in FINAL_PHASES
    ]
    if not candidates:
        return None

    def order(t: ABTest) -> tuple[int, str, str, str]:
        start = t.status.start_time if t.status else None
        created = str(_meta(t, "creationTimestamp") or "")
        return (0 if start else 1, start or "", created, t.metadata.name or "")

    return min(candidates, key=order)


def _split(
    items: Sequence[Mapping[str, Any]], spec_names: Sequence[str]
) -> tuple[Variant, ...] | None:
    """A frozen split (``status.variants``, control first), None when not (validly) frozen."""
    out = []
    for v in items:
        version, weight = v.get("version"), v.get("weight")
        if not str(version or "").isdigit() or not isinstance(weight, int):
            return None
        out.append(Variant(str(v.get("name")), int(str(version)), weight))
    if not out or sum(v.weight for v in out) != 100 or [v.name for v in out] != list(spec_names):
        return None
    return tuple(out)


def _frozen(test: ABTest) -> tuple[Variant, ...] | None:
    if test.status is None:
        return None
    items = [v.model_dump(by_alias=True) for v in test.status.variants]
    return _split(items, [v.name for v in test.spec.variants])


def _routing_of(test: ABTest) -> Routing | None:
    variants = _frozen(test)
    if variants is None:
        return None
    objective = test.spec.objective
    bounds = objective.outcome_range
    return Routing(
        variants,
        test.spec.bucketing.header,
        test.metadata.name or "",
        objective.metric,
        None if bounds is None else (float(bounds.min), float(bounds.max)),
    )


def routing_for(
    md_name: str, abtests: Iterable[ABTest], namespace: str | None = None
) -> Routing | None:
    """Which split, if any, the ModelDeployment ``md_name`` serves now (None: its own model).

    The holder (:func:`routing_holder`) once its split is frozen in its status — from the
    status, so an alias moving mid-test reshuffles nothing. Otherwise (no holder, or its split
    not frozen yet) a test concluded with
    Rollback keeps its split with the treatments at weight 0 (the router applies a weight change
    in place, so the rollback takes effect at once, with no restart) until it is deleted or
    another test takes the deployment; the most recently concluded one if several. Promote,
    NoDifference, Failed and deleted tests route nothing: the deployment serves its own model
    (after Promote it follows the moved alias by itself).
    """
    tests = [t for t in abtests if _targets(t, md_name, namespace)]
    holder = routing_holder(md_name, tests)
    if holder is not None:
        routing = _routing_of(holder)
        if routing is not None:
            return routing
    rolled_back = [
        t
        for t in tests
        if _phase(t) == "Concluded" and t.status is not None and t.status.decision == "Rollback"
    ]
    rolled_back.sort(
        key=lambda t: (t.status.concluded_at or "" if t.status else "", t.metadata.name or "")
    )
    for test in reversed(rolled_back):
        routing = _routing_of(test)
        if routing is not None:
            return routing
    return None


def analysis_interval(test: ABTest) -> float:
    """Seconds between evaluations (``spec.analysis.interval``)."""
    return parse_duration(test.spec.analysis.interval)


# --- the status --------------------------------------------------------------------------------


def _generation(test: ABTest) -> int | None:
    generation = _meta(test, "generation")
    return int(generation) if generation is not None else None


def _parse_time(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


class _Status(conditions.StatusDraft):
    """The ABTest's next status."""

    def __init__(self, test: ABTest, now: datetime) -> None:
        old = test.status.model_dump(by_alias=True, exclude_none=True) if test.status else {}
        super().__init__(old, now, _generation(test))


def _variant_entry(name: str, version: int, weight: int) -> dict[str, Any]:
    """A ``status.variants[]`` item as ``VariantStatus.model_dump(by_alias, exclude_none)``."""
    return {
        "name": name,
        "version": str(version),
        "weight": weight,
        "requests": 0,
        "errors": 0,
        "outcomes": 0,
    }


def _split_text(variants: Sequence[Mapping[str, Any]]) -> str:
    return ", ".join(f"{v['name']} v{v['version']} {v['weight']}%" for v in variants)


def _pending(s: _Status, reason: str, message: str, *, warn: bool = False) -> Plan:
    old = s.old_condition("Running")
    s.new["phase"] = "Pending"
    s.condition("Running", "False", reason, message)
    if old.get("reason") != reason or s.old.get("phase") != "Pending":
        s.event("Warning" if warn else "Normal", reason if warn else "Waiting", message)
    return Plan(status=s.new, events=s.events, requeue_after=PENDING_POLL)


def _fail(s: _Status, reason: str, message: str) -> Plan:
    s.new["phase"] = "Failed"
    s.new["concludedAt"] = conditions.timestamp(s.now)
    s.condition("Running", "False", "Failed", message)
    s.condition("Concluded", "False", reason, message)
    s.event("Warning", "Failed", message)
    return Plan(status=s.new, events=s.events, requeue_after=None)


def _md_serving(md: ModelDeployment) -> bool:
    st = md.status
    if st is None:
        return False
    ready = conditions.find([c.model_dump(by_alias=True) for c in st.conditions], "Ready")
    return ready is not None and ready.get("status") == "True"


def reconcile(test: ABTest, observed: Observed, now: datetime) -> Plan:
    """The next status, alias move and events of a validated ABTest (see the module doc)."""
    s = _Status(test, now)
    if s.old.get("phase") in FINAL_PHASES:
        return Plan(status=s.new, requeue_after=None)  # final: nothing changes any more
    move = pending_promotion(s.old)
    if move is not None:
        return _finish_promotion(s, test, move)
    st = s.new
    spec = test.spec
    name = test.metadata.name or ""
    namespace = test.metadata.namespace or "default"
    spec_changed = s.generation is not None and s.old.get("observedGeneration") != s.generation
    if s.generation is not None:
        st["observedGeneration"] = s.generation
    started = bool(st.get("startTime"))
    md = observed.deployment
    where = f"ModelDeployment {namespace}/{spec.deployment}"

    if md is None:
        if started:
            return _fail(
                s,
                "DeploymentDeleted",
                f"{where} was deleted mid-test: its router, split and counts are gone",
            )
        st.pop("variants", None)
        return _pending(s, "DeploymentNotFound", f"{where} does not exist", warn=True)

    holder = routing_holder(
        spec.deployment, [*(c for c in observed.competitors if c.metadata.name != name), test]
    )
    if holder is not None and holder.metadata.name != name:
        if started:
            return _fail(
                s,
                "DeploymentTaken",
                f"ABTest {holder.metadata.name} started splitting {where} first",
            )
        st.pop("variants", None)
        return _pending(
            s,
            "WaitingForDeployment",
            f"ABTest {holder.metadata.name} splits the traffic of {where} (one test per "
            "deployment: the oldest running one); this test starts once it concludes or is "
            "deleted",
        )

    if not started:
        return _before_start(s, test, observed, md, spec_changed, where)
    return _evaluate(s, test, observed, md, spec_changed, where)


def _before_start(
    s: _Status,
    test: ABTest,
    observed: Observed,
    md: ModelDeployment,
    spec_changed: bool,
    where: str,
) -> Plan:
    st = s.new
    spec = test.spec
    name = test.metadata.name or ""
    names = [v.name for v in spec.variants]
    frozen = st.get("variants") if _split(st.get("variants") or (), names) is not None else None
    if frozen is None or spec_changed:
        missing = []
        transient = True
        for v in spec.variants:
            found = observed.versions.get(v.name)
            if isinstance(found, Unresolved):
                missing.append(f"{v.name}: {found.message}")
                transient = transient and found.transient
            elif found is None:
                missing.append(f"{v.name}: not looked up yet")
        if missing:
            st.pop("variants", None)
            reason = "RegistryUnavailable" if transient else "VariantUnresolved"
            return _pending(s, reason, "; ".join(missing), warn=not transient)
        if not _md_serving(md):
            st.pop("variants", None)
            return _pending(s, "DeploymentNotReady", f"{where} is not serving yet")
        frozen = [
            _variant_entry(v.name, int(observed.versions[v.name]), v.weight)  # type: ignore[arg-type]
            for v in spec.variants
        ]
        if st.get("variants") != frozen:
            s.event(
                "Normal",
                "Starting",
                f"splitting the traffic of {where}: {_split_text(frozen)}",
            )
        st["variants"] = frozen
    stats = observed.stats
    rows = {r.variant: r for r in stats} if isinstance(stats, Sequence) else {}
    serves = all(rows.get(v["name"]) is not None and rows[v["name"]].weight is not None
                 for v in frozen)  # fmt: skip
    md_phase = md.status.phase if md.status else None
    if not serves or md_phase != "Ready":
        why = (
            stats.message
            if isinstance(stats, StatsUnavailable)
            else f"{where} is {md_phase or 'not Ready'}"
            if md_phase != "Ready"
            else f"its router does not serve ABTest {name} yet"
        )
        return _pending(
            s,
            "WaitingForRouter",
            f"waiting for {where} to serve the split {_split_text(frozen)}: {why}",
        )
    st["phase"] = "Running"
    st["startTime"] = conditions.timestamp(s.now)
    s.event("Normal", "Started", f"{where} serves the split {_split_text(frozen)}")
    return _evaluate(s, test, observed, md, False, where, just_started=True)


def _observations(
    test: ABTest, rows: Mapping[str, VariantStats]
) -> tuple[list[VariantObservation], Literal["proportion", "mean"]]:
    metric = test.spec.objective.metric
    out = []
    for v in test.spec.variants:
        r = rows[v.name]
        if metric == "Latency":
            n, total, total_sq = r.latency_count, r.latency_sum_seconds * 1e3, None
            total_sq = r.latency_sum_squares_seconds * 1e6
        else:
            n, total, total_sq = r.outcomes, r.outcome_sum, r.outcome_sum_squares
        out.append(
            VariantObservation(
                name=v.name,
                n=n,
                total=total,
                total_sq=total_sq,
                requests=r.requests,
                error_rate=r.errors / r.requests if r.requests else None,
                latency_p99_ms=r.latency_p99_ms,
            )
        )
    return out, "proportion" if metric == "Conversion" else "mean"


def _previous(old_variants: Sequence[Mapping[str, Any]], k: int) -> dict[str, RunningBounds]:
    """The running bounds kept in status: ``pValue`` is stored Bonferroni-adjusted
    (``min(1, k p)``), so ``pValue / k`` stands for the raw one — exact for every later
    adjusted value and decision, since ``min(1, k min(p', p)) = min(1, k p')`` whenever the
    stored value was capped at 1."""
    out = {}
    for v in old_variants:
        p, interval = v.get("pValue"), v.get("interval")
        if isinstance(p, int | float) and isinstance(interval, list) and len(interval) == 2:
            out[str(v["name"])] = RunningBounds(float(p) / k, *map(float, interval))
    return out


def _same(old: Any, new: Any) -> bool:
    """Equal up to rounding: restoring ``pValue / k`` and scaling back by ``k`` may move the
    last bit, which must not make an evaluation with nothing new write a new status."""
    if isinstance(old, list) and isinstance(new, list):
        return len(old) == len(new) and all(_same(a, b) for a, b in zip(old, new, strict=True))
    if isinstance(old, int | float) and isinstance(new, int | float):
        return math.isclose(old, new, rel_tol=1e-12, abs_tol=0.0)
    return bool(old == new)


def _finite(x: float | None) -> float | None:
    return x if x is not None and math.isfinite(x) else None


def _evaluate(
    s: _Status,
    test: ABTest,
    observed: Observed,
    md: ModelDeployment,
    spec_changed: bool,
    where: str,
    *,
    just_started: bool = False,
) -> Plan:
    st = s.new
    spec = test.spec
    name = test.metadata.name or ""
    old_variants: list[dict[str, Any]] = [dict(v) for v in st.get("variants") or ()]
    names = [v.name for v in spec.variants]
    if [v.get("name") for v in old_variants] != names or any(
        v.model.version is not None and str(v.model.version) != old.get("version")
        for v, old in zip(spec.variants, old_variants, strict=True)
    ):
        return _fail(
            s,
            "SpecChanged",
            "the variants changed while the test was running (a different experiment); "
            "create a new ABTest",
        )
    interval = analysis_interval(test)
    started_at = _parse_time(st["startTime"])
    elapsed = max(0.0, (s.now - started_at).total_seconds())
    max_duration = parse_duration(spec.analysis.max_duration)
    # Effective weights follow the spec while running (a rollback zeroes them at conclusion).
    reweighted = any(
        item.get("weight") != v.weight for item, v in zip(old_variants, spec.variants, strict=True)
    )
    for item, v in zip(old_variants, spec.variants, strict=True):
        item["weight"] = v.weight
    st["variants"] = old_variants

    stats = observed.stats
    problem = None
    rows: dict[str, VariantStats] = {}
    if stats is None:
        problem = "the router's counts were not read"
    elif isinstance(stats, StatsUnavailable):
        problem = stats.message
    else:
        rows = {r.variant: r for r in stats}
        missing = [n for n in names if n not in rows or rows[n].weight is None]
        if missing:
            problem = (
                f"the router of {where} does not serve ABTest {name}'s variants "
                f"{', '.join(missing)}"
            )
    if problem is not None:
        if elapsed >= max_duration:
            result = AnalysisResult(
                "NoDifference",
                None,
                f"maxDuration reached without a conclusive difference (the router's counts "
                f"could not be read: {problem})",
                float(spec.analysis.alpha),
                (),
            )
            return _conclude(s, test, md, result, where)
        st["phase"] = "Running"
        old = s.old_condition("Running")
        s.condition("Running", "Unknown", "StatsUnavailable", problem)
        if old.get("reason") != "StatsUnavailable":
            s.event("Warning", "StatsUnavailable", problem)
        return Plan(status=st, events=s.events, requeue_after=interval)

    epoch = _epoch_of(rows)
    closed = [str(e) for e in st.get("closedEpochs") or ()]
    if epoch is not None and epoch in closed:
        # A closed epoch answering again (an old cluster still reachable): its counts are in
        # ``carried`` already, up to the last read; counting them again would double them.
        st["phase"] = "Running"
        message = (
            f"the router of {where} answered with the counts of epoch {epoch}, which this "
            f"test has already closed (it now counts epoch {st.get('countsEpoch')}): not "
            "counted again; waiting for the current epoch's counts"
        )
        old = s.old_condition("Running")
        s.condition("Running", "Unknown", "StatsUnavailable", message)
        if old.get("message") != message:
            s.event("Warning", "StatsUnavailable", message)
        return Plan(status=st, events=s.events, requeue_after=interval)
    rows, reset, lost, new_epoch = _carry_over(st, old_variants, rows, epoch)
    if reset:
        why = (
            f"a new count epoch {epoch} replaced {new_epoch} (the serving app's monitor "
            "started without its saved counts: a new cluster, or its state was lost)"
            if new_epoch is not None
            else f"the router's counts went backwards for {', '.join(reset)} (its monitor "
            "restarted without its saved counts)"
        )
        s.event(
            "Warning",
            "CountsReset",
            why
            + ": "
            + (
                "the totals kept in status could not be carried over (an older status "
                "without sums): the evidence so far is discarded and counting goes on"
                if lost
                else "counting goes on from the totals kept in status (what the old epoch "
                "counted after the last evaluation is lost)"
            ),
        )
    mismatch = _sample_ratio(s, test, old_variants, rows, reweighted or lost)
    if mismatch is not None:
        return _stop_on_mismatch(s, old_variants, rows, mismatch, where)
    k = len(names) - 1
    keep = not (spec_changed or lost or just_started)
    previous = _previous(old_variants, k) if keep else None
    observations, kind = _observations(test, rows)
    try:
        result = decide(
            observations,
            alpha=float(spec.analysis.alpha),
            min_samples_per_variant=spec.analysis.min_samples_per_variant,
            elapsed_seconds=elapsed,
            max_duration_seconds=max_duration,
            direction=spec.objective.direction,
            guardrails=[(g.metric, float(g.threshold)) for g in spec.guardrails],
            kind=kind,
            control=names[0],
            previous=previous,
        )
    except ValueError as exc:
        st["phase"] = "Running"
        message = f"the router's counts cannot be analysed: {exc}"
        s.condition("Running", "Unknown", "StatsUnavailable", message)
        if s.old_condition("Running").get("message") != message:
            s.event("Warning", "StatsUnavailable", message)
        return Plan(status=st, events=s.events, requeue_after=interval)

    for item, obs in zip(old_variants, observations, strict=True):
        r = rows[obs.name]
        vr = result.variant(obs.name)
        item.update(_totals(r))
        for key, value in (
            ("mean", _finite(vr.mean)),
            ("interval", [vr.interval[0], vr.interval[1]] if vr.interval else None),
            ("pValue", vr.p_value_adjusted),
        ):
            if value is None:
                item.pop(key, None)
            elif not _same(item.get(key), value):
                item[key] = value
    _guardrail_condition(s, result)
    if result.decision != "Continue":
        return _conclude(s, test, md, result, where)
    st["phase"] = "Running"
    st["decision"] = "Continue"
    s.condition("Running", "True", "Analysing", f"{where} serves {_split_text(old_variants)}")
    s.condition("Concluded", "False", "Continue", result.reason)
    return Plan(status=st, events=s.events, requeue_after=interval, analysis=result)


_SUMS = ("outcomeSum", "outcomeSumSquares", "latencyCount", "latencySumSeconds",
         "latencySumSquaresSeconds")  # fmt: skip


def _totals(r: VariantStats) -> dict[str, Any]:
    """A variant's totals in status (camelCase), as the router reports them."""
    return {
        "requests": r.requests, "errors": r.errors, "outcomes": r.outcomes,
        "outcomeSum": r.outcome_sum, "outcomeSumSquares": r.outcome_sum_squares,
        "latencyCount": r.latency_count, "latencySumSeconds": r.latency_sum_seconds,
        "latencySumSquaresSeconds": r.latency_sum_squares_seconds,
    }  # fmt: skip


def _plus(r: VariantStats, totals: Mapping[str, Any]) -> VariantStats:
    """The router's row plus totals carried over from before its counts restarted."""

    def get(key: str) -> float:
        value = totals.get(key)
        return float(value) if isinstance(value, int | float) else 0.0

    return replace(
        r,
        requests=r.requests + int(get("requests")),
        errors=r.errors + int(get("errors")),
        outcomes=r.outcomes + int(get("outcomes")),
        outcome_sum=r.outcome_sum + get("outcomeSum"),
        outcome_sum_squares=r.outcome_sum_squares + get("outcomeSumSquares"),
        latency_count=r.latency_count + int(get("latencyCount")),
        latency_sum_seconds=r.latency_sum_seconds + get("latencySumSeconds"),
        latency_sum_squares_seconds=r.latency_sum_squares_seconds + get("latencySumSquaresSeconds"),
    )


#: Closed epochs remembered in ``status.closedEpochs`` (the most recent; an epoch older than
#: that answering again would need that many cluster replacements during one test).
MAX_CLOSED_EPOCHS = 16


def _epoch_of(rows: Mapping[str, VariantStats]) -> str | None:
    """The answer's count epoch (every row of one answer carries the same)."""
    return next((r.epoch for r in rows.values() if r.epoch is not None), None)


def _carry_over(
    st: dict[str, Any],
    old_variants: list[dict[str, Any]],
    rows: Mapping[str, VariantStats],
    epoch: str | None,
) -> tuple[dict[str, VariantStats], list[str], bool, str | None]:
    """Totals since the test started: the live epoch's rows plus the closed epochs' totals.

    The status is the durable ledger. The router's counts belong to a count *epoch* (one per
    incarnation of its monitor's state; a monitor that restarts from its saved state keeps its
    epoch and its counts). When the answer's epoch differs from ``status.countsEpoch``, the old
    epoch is closed: the status totals (everything read from it, plus what earlier epochs
    carried) become the ``carried`` base of every variant, the old epoch goes into
    ``status.closedEpochs`` (never counted again), and the new epoch counts on top. A row below
    what the status says the router had reported within one epoch (or from a router without
    epochs) is a restart too: the same for every variant. So totals never go down and no
    epoch is counted twice. Returns the totals per variant, the variants whose base moved,
    whether the old totals could not be carried (a status written without the sums), and the
    epoch closed (None when none was).
    """
    out = dict(rows)
    reset, lost = [], False
    recorded = st.get("countsEpoch")
    closing = epoch is not None and recorded is not None and epoch != recorded
    if closing:
        closed = [*(st.get("closedEpochs") or ()), str(recorded)]
        st["closedEpochs"] = closed[-MAX_CLOSED_EPOCHS:]
    if epoch is not None:
        st["countsEpoch"] = epoch
    went_down = False
    for item in old_variants:
        carried = dict(item.get("carried") or {})
        raw = rows[item["name"]]
        reported = int(item.get("requests", 0)) - int(carried.get("requests", 0))
        outcomes = int(item.get("outcomes", 0)) - int(carried.get("outcomes", 0))
        went_down = went_down or raw.requests < reported or raw.outcomes < outcomes
    for item in old_variants:
        name = item["name"]
        carried = dict(item.get("carried") or {})
        raw = rows[name]
        if closing or went_down:
            reset.append(name)
            if all(isinstance(item.get(key), int | float) for key in _SUMS):
                carried = {key: item.get(key, 0) for key in _totals(raw)}
            else:
                carried, lost = {}, True
        if carried:
            item["carried"] = carried
        else:
            item.pop("carried", None)
        out[name] = _plus(raw, carried)
    return out, reset, lost, str(recorded) if closing else None


# --- sample ratio mismatch (a separate step before the analysis) -----------------------------

#: Reasons of the ``SampleRatioMismatch`` condition.
SRM_OK, SRM_FOUND = "SplitAsConfigured", "ObservedSplitDiffers"
SRM_REWEIGHTING, SRM_SETTLING = "WeightsChanging", "WeightsSettling"


def _sample_ratio(
    s: _Status,
    test: ABTest,
    old_variants: list[dict[str, Any]],
    rows: Mapping[str, VariantStats],
    rebase: bool,
) -> SampleRatio | None:
    """Check the requests each variant got against the weights; the mismatch, if found.

    The check counts from ``srmBaseline`` (requests before the weights in force took effect).
    While the router does not serve the spec's weights yet (a weight change on its way), the
    baseline follows the totals and nothing is checked (``WeightsChanging``). Once it serves
    them, one more evaluation passes (``WeightsSettling``): requests assigned under the old
    weights may still be on their way to the counts (routers ship every half second), and one
    of them on a variant now at weight 0 would be a mismatch at once. The baseline set at the
    end of that evaluation is after every old-weight request.
    """
    spec_weights = [v.weight for v in test.spec.variants]
    served = all(rows[v.name].weight == v.weight for v in test.spec.variants)
    old_reason = s.old_condition("SampleRatioMismatch").get("reason")
    if rebase or not served or old_reason in (SRM_REWEIGHTING, SRM_SETTLING):
        for item in old_variants:
            item["srmBaseline"] = rows[item["name"]].requests
    if not served or rebase:
        s.condition(
            "SampleRatioMismatch",
            "Unknown",
            SRM_REWEIGHTING,
            "the weights changed: the split is checked again once the router serves the new "
            "weights",
        )
        return None
    if old_reason == SRM_REWEIGHTING:
        s.condition(
            "SampleRatioMismatch",
            "Unknown",
            SRM_SETTLING,
            "the router serves the new weights: the split is counted from the next evaluation "
            "(requests assigned under the old weights may still arrive until then)",
        )
        return None
    counts = [
        max(0, rows[item["name"]].requests - int(item.get("srmBaseline") or 0))
        for item in old_variants
    ]
    result = srm_check(counts, spec_weights)
    if result.mismatch:
        return result
    s.condition(
        "SampleRatioMismatch",
        "False",
        SRM_OK,
        f"the observed split matches the weights (sequential test at alpha {SRM_ALPHA:g}, "
        f"Bayes factor {_bayes_factor_text(result.log_bayes_factor)}): "
        + result.describe([v.name for v in test.spec.variants]),
    )
    return None


def _bayes_factor_text(log_bf: float) -> str:
    """A Bayes factor for a message (``1e+420`` would overflow a float)."""
    if log_bf == math.inf:
        return "inf"
    if log_bf < 700:
        return f"{math.exp(log_bf):.3g}"
    return f"10^{log_bf / math.log(10):.0f}"


def _stop_on_mismatch(
    s: _Status,
    old_variants: list[dict[str, Any]],
    rows: Mapping[str, VariantStats],
    result: SampleRatio,
    where: str,
) -> Plan:
    """Stop the test: the split is broken, so its evidence decides nothing (no promotion, no
    rollback); the deployment serves its own model again."""
    for item in old_variants:
        item.update(_totals(rows[item["name"]]))
    bf = _bayes_factor_text(result.log_bayes_factor)
    message = (
        f"sample ratio mismatch: the router of {where} did not split as configured: "
        f"{result.describe([str(v['name']) for v in old_variants])} (sequential multinomial "
        f"test: Bayes factor {bf} >= 1/alpha, alpha {SRM_ALPHA:g}). The counts cannot support a "
        "decision: nothing is promoted or rolled back. Find why the split differs (see the "
        "SampleRatioMismatch runbook), then create a new ABTest"
    )
    s.new.pop("decision", None)
    s.new.pop("winner", None)
    s.condition("SampleRatioMismatch", "True", SRM_FOUND, message)
    return _fail(s, "SampleRatioMismatch", message)


def _guardrail_condition(s: _Status, result: AnalysisResult) -> None:
    breaches = result.guardrail_breaches
    treatment = [b for b in breaches if not b.control]
    if treatment or breaches:
        reason = "TreatmentBreach" if treatment else "ControlBreach"
        message = "; ".join(b.describe() for b in breaches)
        if not treatment:
            message += " (the control's breach decides nothing: rolling back cannot cure it)"
        old = s.old_condition("GuardrailBreached")
        s.condition("GuardrailBreached", "True", reason, message)
        if old.get("status") != "True" or old.get("reason") != reason:
            s.event("Warning", "GuardrailBreached", message)
    else:
        s.condition("GuardrailBreached", "False", "WithinGuardrails", "no guardrail is breached")


def _conclude(
    s: _Status, test: ABTest, md: ModelDeployment, result: AnalysisResult, where: str
) -> Plan:
    st = s.new
    spec = test.spec
    variants: list[dict[str, Any]] = st["variants"]
    decision = result.decision
    st["phase"] = "Concluded"
    st["decision"] = decision
    st["concludedAt"] = conditions.timestamp(s.now)
    plan = Plan(status=st, events=s.events, requeue_after=None, analysis=result)
    message = result.reason
    control = variants[0]
    if decision == "Promote":
        winner = next(v for v in variants if v["name"] == result.winner)
        st["winner"] = winner["name"]
        model, alias = md.spec.model.name, spec.on_conclusion.alias
        if spec.on_conclusion.promote:
            return _decide_promotion(s, result, winner["name"], AliasMove(
                model, alias, int(winner["version"])))  # fmt: skip
        else:
            message += f"; onConclusion.promote is false: {alias} is left as it is"
            s.event("Normal", "WinnerFound", f"{winner['name']} wins ({result.reason}); "
                    f"onConclusion.promote is false: {alias} is left as it is")  # fmt: skip
    elif decision == "Rollback":
        st.pop("winner", None)
        for v in variants:
            v["weight"] = 100 if v is control else 0
        message += (
            f"; rolled back: {control['name']} (version {control['version']}) serves all "
            f"traffic of {where}, the treatments at weight 0 until this ABTest is deleted"
        )
        s.event("Warning", "RolledBack", message)
    else:
        st.pop("winner", None)
        message += f"; {control['name']} keeps the alias; {where} serves its own model again"
        s.event("Normal", "NoDifference", message)
    s.condition("Running", "False", "Concluded", f"concluded {decision}")
    s.condition("Concluded", "True", decision, message)
    return plan


# --- the promotion, in two phases --------------------------------------------------------------


def _target(move: AliasMove) -> str:
    return f"{move.model} alias {move.alias} -> version {move.version}"


def pending_promotion(status: Mapping[str, Any] | None) -> AliasMove | None:
    """The alias move a status records as decided but not yet done; None when there is none.

    Adapters use it to tell whether the status they *observe* (not one they only wrote)
    records the promotion: the alias may move only then.
    """
    status = status or {}
    promotion = status.get("promotion")
    if status.get("phase") in FINAL_PHASES or not isinstance(promotion, Mapping):
        return None
    if promotion.get("phase") != "Pending":
        return None
    try:
        model, alias, version = promotion["model"], promotion["alias"], promotion["version"]
        return AliasMove(str(model), str(alias), int(version))
    except (KeyError, TypeError, ValueError):
        return None


def _decide_promotion(s: _Status, result: AnalysisResult, winner: str, move: AliasMove) -> Plan:
    """Step 1: record the decision and the alias move (``promotion.phase: Pending``) and stay
    Running (the split is served until the alias has moved). No alias moves in this round:
    the move is carried out only once this status is stored and read back, so a crash at any
    point leaves a status that says what is (about to be) done."""
    st = s.new
    st["phase"] = "Running"
    st.pop("concludedAt", None)
    st["decision"] = "Promote"
    st["winner"] = winner
    st["promotion"] = {
        "decision": "Promote",
        "variant": winner,
        "model": move.model,
        "alias": move.alias,
        "version": move.version,
        "phase": "Pending",
        "reason": result.reason,
        "decidedAt": conditions.timestamp(s.now),
    }
    target = _target(move)
    s.condition(
        "Running", "True", "Promoting", f"decided Promote: moving {target}; the split is served "
        "until it has moved"
    )  # fmt: skip
    s.condition("Concluded", "False", "Promoting", f"{result.reason}; promoting: {target}")
    s.event("Normal", "Promoting", f"{winner} wins ({result.reason}): moving {target}")
    return Plan(status=st, events=s.events, requeue_after=0.0, analysis=result)


def _finish_promotion(s: _Status, test: ABTest, move: AliasMove) -> Plan:
    """Steps 2 and 3: the observed status records a pending promotion: move the alias (the
    adapter does it, only if it does not point there already), then Concluded. New evidence,
    spec changes or a deleted deployment change nothing: the decision was taken."""
    st = s.new
    if s.generation is not None:
        st["observedGeneration"] = s.generation
    promotion = dict(st["promotion"])
    promotion["phase"] = "Done"
    st["promotion"] = promotion
    st["phase"] = "Concluded"
    st["decision"] = "Promote"
    winner = str(promotion.get("variant") or st.get("winner") or "")
    st["winner"] = winner
    st["concludedAt"] = conditions.timestamp(s.now)
    reason = str(promotion.get("reason") or "decided Promote")
    target = _target(move)
    s.condition("Running", "False", "Concluded", "concluded Promote")
    s.condition("Concluded", "True", "Promote", f"{reason}; promoted: {target}")
    s.event("Normal", "Promoted", f"{winner} wins: {target} ({reason})")
    return Plan(status=st, set_alias=move, events=s.events, requeue_after=None)
