"""Replay logged A/B observations through the sequential test, as if monitored live.

``replay`` reads a CSV of ``experiment,variant,outcome`` rows in arrival order (the first
variant seen in an experiment is its control) and, for each experiment, finds the first
observation after which the ABTest analysis (``mlplane.monitoring.abtest_analysis.decide``,
without guardrails or a maximum duration) would have concluded. It answers "what would mlplane
have decided on this history, and when", e.g. for past experiments analysed with a
fixed-horizon test.

The statistic after observation ``t`` depends only on cumulative sums, so one ``cumsum`` per
variant over an experiment's rows gives it after every observation at once; the running
minimum of the p-value and the running intersection of the confidence sequence are
``minimum/maximum.accumulate``. Rows are taken in blocks (``chunk_rows``) with the sums and
running bounds carried over, so memory stays bounded for huge experiments and the stopping
point is exactly the one of evaluating after every single observation.

Reading uses pyarrow's CSV reader (single-threaded: it then names the row of a parse error).
"""

from __future__ import annotations

import io
import math
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import IO, Any, Literal

import numpy as np
from numpy.typing import NDArray

from mlplane.monitoring.abtest_analysis import Direction
from mlplane.monitoring.sequential import DEFAULT_MIXTURE, MetricKind, Mixture, compare
from mlplane.monitoring.srm import SRM_ALPHA, log_bayes_factor_path

__all__ = ["DEFAULT_MIN_SAMPLES", "ReplayMetric", "replay"]

ReplayMetric = Literal["conversion", "mean"]
DEFAULT_MIN_SAMPLES = 1000
"""Observations every variant needs before the test may conclude: the ABTest's default
``minSamplesPerVariant``."""

_COLUMNS = ("experiment", "variant", "outcome")
_KIND: dict[str, MetricKind] = {"conversion": "proportion", "mean": "mean"}


@dataclass(frozen=True)
class _Table:
    experiment_codes: NDArray[np.int64]  # experiment of each row, in order of first appearance
    experiment_names: list[str]
    variant_codes: NDArray[np.int64]  # global variant code of each row
    variant_names: list[str]
    outcome: NDArray[np.float64]


def _line(row: int) -> int:
    """CSV line of a 0-based data row (line 1 is the header)."""
    return row + 2


def _read(source: str | os.PathLike[str] | IO[Any], metric: ReplayMetric) -> _Table:
    try:
        import pyarrow as pa
        import pyarrow.compute as pc
        import pyarrow.csv as pacsv
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise RuntimeError("abtest replay needs pyarrow: pip install pyarrow") from exc

    name = getattr(source, "name", None) or (
        os.fspath(source) if isinstance(source, str | os.PathLike) else "<input>"
    )
    if hasattr(source, "read"):
        data = source.read()  # type: ignore[union-attr]
        stream: Any = io.BytesIO(data.encode() if isinstance(data, str) else data)
    else:
        stream = os.fspath(source)  # type: ignore[arg-type]
    try:
        table = pacsv.read_csv(
            stream,
            read_options=pacsv.ReadOptions(use_threads=False),
            convert_options=pacsv.ConvertOptions(
                column_types={"experiment": pa.string(), "variant": pa.string()}
            ),
        )
    except pa.ArrowInvalid as exc:
        raise ValueError(f"{name}: cannot parse the CSV: {exc}") from exc

    missing = [c for c in _COLUMNS if c not in table.column_names]
    if missing:
        raise ValueError(
            f"{name}: missing column(s) {', '.join(map(repr, missing))}; "
            f"expected experiment,variant,outcome, found {','.join(table.column_names)}"
        )

    encoded = {}
    for col in ("experiment", "variant"):
        values = table[col]
        bad = pc.or_(pc.is_null(values), pc.equal(pc.utf8_trim_whitespace(values), ""))
        if table.num_rows and pc.any(bad).as_py():
            row = int(np.flatnonzero(bad.to_numpy(zero_copy_only=False))[0])
            raise ValueError(f"{name}: line {_line(row)}: column {col!r} is empty")
        enc = pc.dictionary_encode(values).combine_chunks()
        encoded[col] = (
            enc.indices.to_numpy(zero_copy_only=False).astype(np.int64),
            [str(v) for v in enc.dictionary.to_pylist()],
        )

    outcome = _numeric_outcome(table["outcome"], name, metric)
    return _Table(
        experiment_codes=encoded["experiment"][0],
        experiment_names=encoded["experiment"][1],
        variant_codes=encoded["variant"][0],
        variant_names=encoded["variant"][1],
        outcome=outcome,
    )


def _numeric_outcome(column: Any, name: str, metric: ReplayMetric) -> NDArray[np.float64]:
    import pyarrow as pa

    if pa.types.is_integer(column.type) or pa.types.is_floating(column.type):
        values = column.to_numpy(zero_copy_only=False).astype(np.float64)
    elif pa.types.is_null(column.type) and len(column) == 0:
        values = np.zeros(0)
    else:
        # Not parsed as numbers (strings, booleans, all empty): find the first offender.
        for row, raw in enumerate(column.to_pylist()):
            try:
                if raw is None or isinstance(raw, bool) or not math.isfinite(float(raw)):
                    raise ValueError
            except ValueError:
                shown = "empty" if raw in (None, "") else repr(raw)
                raise ValueError(
                    f"{name}: line {_line(row)}: column 'outcome' must be a number, got {shown}"
                ) from None
        values = np.asarray(column.to_pylist(), dtype=np.float64)
    bad = ~np.isfinite(values)
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise ValueError(
            f"{name}: line {_line(row)}: column 'outcome' must be a finite number, got "
            f"{'empty' if np.isnan(values[row]) else values[row]}"
        )
    if metric == "conversion":
        bad = (values != 0) & (values != 1)
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            raise ValueError(
                f"{name}: line {_line(row)}: metric 'conversion' needs outcomes 0 or 1, "
                f"got {values[row]:g} (use --metric mean for numeric outcomes)"
            )
    return values


def replay(
    source: str | os.PathLike[str] | IO[Any],
    alpha: float = 0.05,
    metric: ReplayMetric = "conversion",
    min_samples: int = DEFAULT_MIN_SAMPLES,
    *,
    direction: Direction = "Increase",
    mixture: Mixture = DEFAULT_MIXTURE,
    chunk_rows: int = 1 << 16,
    weights: Mapping[str, float] | None = None,
) -> Iterator[dict[str, Any]]:
    """Replay each experiment of a CSV through the sequential test; one dict per experiment.

    ``source`` is a path or an open file (text or binary) with the columns
    ``experiment,variant,outcome`` (others are ignored), rows in arrival order. ``metric``
    ``conversion`` takes 0/1 outcomes, ``mean`` any numbers; ``direction`` says which way is
    better. ``min_samples`` is the ABTest's ``minSamplesPerVariant``.

    Yields, in order of each experiment's first row, JSON-ready dicts::

        {"experiment": str,
         "decision": "Promote" | "Rollback" | "Continue"    # Continue: data ran out undecided
                     | "SampleRatioMismatch",          # only with ``weights``
         "winner": str | None,                             # with Promote
         "samplesPerVariant": {variant: int},              # at the stopping observation
         "pValue": float | None,                           # see below
         "control": str,                                   # the first variant seen
         "pValues": {treatment: float | None}}

    p-values are the always-valid ones, Bonferroni-adjusted over the experiment's treatments
    (compare them with alpha directly), ``None`` before the test started. ``pValue`` is the
    winner's (Promote), the largest (Rollback: every treatment is worse) or the smallest
    (Continue). There is no maximum duration here, so no ``NoDifference``.

    ``weights`` (variant name -> configured weight, e.g. percent) adds the operator's sample
    ratio check (:mod:`mlplane.monitoring.srm`, alpha 0.001) before the test at every
    observation, each row counting as one assigned request: the first observation at which the
    observed split mismatches the weights ends the experiment with decision
    ``SampleRatioMismatch`` (no winner, p-values as they stood). Every variant of an experiment
    must have a weight.

    The whole file is read and checked by the call itself, before any result: a ValueError
    (raised by ``replay(...)``, not by the first ``next``) names the line, column or
    experiment at fault (missing columns, empty or non-numeric outcomes, outcomes other than
    0/1 for ``conversion``, an experiment with a single variant).
    """
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    if metric not in _KIND:
        raise ValueError(f"metric must be 'conversion' or 'mean', got {metric!r}")
    if direction not in ("Increase", "Decrease"):
        raise ValueError(f"direction must be 'Increase' or 'Decrease', got {direction!r}")
    if min_samples < 0:
        raise ValueError(f"min_samples must be >= 0, got {min_samples}")
    if chunk_rows < 1:
        raise ValueError(f"chunk_rows must be >= 1, got {chunk_rows}")
    table = _read(source, metric)
    if weights is not None:
        bad = sorted(n for n, w in weights.items() if not (w >= 0 and math.isfinite(w)))
        if bad:
            raise ValueError(f"weight of variant {bad[0]!r} must be a finite number >= 0")
        missing = sorted(set(table.variant_names) - set(weights))
        if missing:
            raise ValueError(f"variant {missing[0]!r} has no weight (weights: {dict(weights)})")
    return _replay_table(
        table, alpha, _KIND[metric], min_samples, direction, mixture, chunk_rows, weights
    )


def _replay_table(
    table: _Table,
    alpha: float,
    kind: MetricKind,
    min_samples: int,
    direction: Direction,
    mixture: Mixture,
    chunk_rows: int,
    weights: Mapping[str, float] | None = None,
) -> Iterator[dict[str, Any]]:
    exp = table.experiment_codes
    n_exp = len(table.experiment_names)
    n_var = max(len(table.variant_names), 1)
    # Each experiment's variants in order of first appearance, with their row counts.
    pairs, first, counts = np.unique(
        exp * n_var + table.variant_codes, return_index=True, return_counts=True
    )
    pair_exp, pair_var = pairs // n_var, pairs % n_var
    by_arrival = np.lexsort((first, pair_exp))
    pair_exp, pair_var, counts = pair_exp[by_arrival], pair_var[by_arrival], counts[by_arrival]
    per_exp = np.bincount(pair_exp, minlength=n_exp)
    # Every experiment needs two variants: checked here, eagerly, so that `replay()` itself
    # raises before the caller prints anything.
    if n_exp and (per_exp < 2).any():
        lonely = table.experiment_names[int(np.flatnonzero(per_exp < 2)[0])]
        raise ValueError(
            f"experiment {lonely!r} has a single variant; an A/B test needs a control and at "
            "least one treatment"
        )
    pair_bounds = np.concatenate([[0], np.cumsum(per_exp)])
    order = np.argsort(exp, kind="stable")  # rows grouped by experiment, arrival order kept
    bounds = np.concatenate([[0], np.cumsum(np.bincount(exp, minlength=n_exp))])
    need = max(int(min_samples), 2)
    local = np.empty(n_var, dtype=np.int64)

    def run() -> Iterator[dict[str, Any]]:
        for e in range(n_exp):
            variants = pair_var[pair_bounds[e] : pair_bounds[e + 1]]
            names = [table.variant_names[c] for c in variants]
            totals = counts[pair_bounds[e] : pair_bounds[e + 1]]
            if weights is None and totals.min() < need:  # never starts: nothing to compute
                yield _result(
                    table.experiment_names[e], "Continue", None, None, names, totals, None
                )
                continue
            rows = order[bounds[e] : bounds[e + 1]]
            local[variants] = np.arange(len(variants))
            yield _replay_experiment(
                table.experiment_names[e],
                names,
                local[table.variant_codes[rows]],
                table.outcome[rows],
                alpha,
                kind,
                need,
                direction,
                mixture,
                chunk_rows,
                None if weights is None else [float(weights[nm]) for nm in names],
            )

    return run()


def _replay_experiment(
    experiment: str,
    names: list[str],
    codes: NDArray[np.int64],
    y: NDArray[np.float64],
    alpha: float,
    kind: MetricKind,
    need: int,
    direction: Direction,
    mixture: Mixture,
    chunk_rows: int,
    weights: list[float] | None = None,
) -> dict[str, Any]:
    k_all = len(names)
    k = k_all - 1
    level = alpha / k
    sign = 1.0 if direction == "Increase" else -1.0
    arms = np.arange(k_all)[:, None]
    n0 = np.zeros((k_all, 1))
    s0 = np.zeros((k_all, 1))
    q0 = np.zeros((k_all, 1))
    p0 = np.ones((k, 1))
    lo0 = np.full((k, 1), -np.inf)
    hi0 = np.full((k, 1), np.inf)
    for start in range(0, len(y), chunk_rows):
        c = codes[start : start + chunk_rows]
        yc = y[start : start + chunk_rows]
        hit = c[None, :] == arms  # (variants, rows)
        n = n0 + np.cumsum(hit, axis=1)
        s = s0 + np.cumsum(np.where(hit, yc, 0.0), axis=1)
        q = q0 + np.cumsum(np.where(hit, yc * yc, 0.0), axis=1) if kind == "mean" else None
        cmp = compare(
            n[0],
            s[0],
            None if q is None else q[0],
            n[1:],
            s[1:],
            None if q is None else q[1:],
            kind=kind,
            alpha=level,
            mixture=mixture,
        )
        started = (n >= need).all(axis=0)
        p = np.minimum(p0, np.minimum.accumulate(np.where(started, cmp.p_value, 1.0), axis=1))
        lo = np.maximum(lo0, np.maximum.accumulate(np.where(started, cmp.lower, -np.inf), axis=1))
        hi = np.minimum(hi0, np.minimum.accumulate(np.where(started, cmp.upper, np.inf), axis=1))
        # The same rules as decide(): significance on the adjusted running p-value, direction
        # from the running interval when it excludes 0, else from the estimate.
        p_adj = np.minimum(1.0, k * p)
        significant = started & (p_adj <= alpha)
        with np.errstate(invalid="ignore"):
            positive = np.where(lo > 0, True, np.where(hi < 0, False, cmp.difference > 0))
        better = positive if sign > 0 else ~positive
        promote = (significant & better).any(axis=0)
        rollback = (significant & ~better).all(axis=0)
        done = promote | rollback
        if weights is not None:
            # The sample ratio check runs first at each observation, as in the operator.
            mismatch = log_bayes_factor_path(n, weights) >= math.log(1 / SRM_ALPHA)
            if mismatch.any() and (not done.any() or np.argmax(mismatch) <= np.argmax(done)):
                t = int(np.argmax(mismatch))
                adjusted = np.where(started[t], p_adj[:, t], np.nan)
                return _result(
                    experiment,
                    "SampleRatioMismatch",
                    None,
                    None,
                    names,
                    n[:, t],
                    None if not started[t] else adjusted,
                )
        if done.any():
            t = int(np.argmax(done))
            samples = n[:, t]
            if promote[t]:
                cands = np.flatnonzero(significant[:, t] & better[:, t])
                best = cands[np.argmax(sign * cmp.difference[cands, t])]
                winner, p_value = names[best + 1], float(p_adj[best, t])
                return _result(experiment, "Promote", winner, p_value, names, samples, p_adj[:, t])
            p_value = float(p_adj[:, t].max())
            return _result(experiment, "Rollback", None, p_value, names, samples, p_adj[:, t])
        n0, s0, p0, lo0, hi0 = n[:, -1:], s[:, -1:], p[:, -1:], lo[:, -1:], hi[:, -1:]
        if q is not None:
            q0 = q[:, -1:]
    begun = bool((n0[:, 0] >= need).all())
    p_end = np.minimum(1.0, k * p0[:, 0])
    if not begun:
        return _result(experiment, "Continue", None, None, names, n0[:, 0], None)
    return _result(experiment, "Continue", None, float(p_end.min()), names, n0[:, 0], p_end)


def _result(
    experiment: str,
    decision: str,
    winner: str | None,
    p_value: float | None,
    names: list[str],
    samples: NDArray[np.float64],
    p_adj: NDArray[np.float64] | None,
) -> dict[str, Any]:
    """The JSON-ready line; ``p_adj`` is None when the test never started."""
    treatments = names[1:]
    return {
        "experiment": experiment,
        "decision": decision,
        "winner": winner,
        "samplesPerVariant": {nm: int(c) for nm, c in zip(names, samples, strict=True)},
        "pValue": p_value,
        "control": names[0],
        "pValues": {
            nm: None if p_adj is None else float(p_adj[i]) for i, nm in enumerate(treatments)
        },
    }
