"""Sample ratio mismatch (SRM): is the observed split the configured one? Valid under peeking.

An A/B test's evidence assumes every request went to variant ``i`` with the configured
probability ``p_i``. A router that splits 60/40 under a 50/50 configuration (a bucketing bug, a
variant that fails before it is counted, a cache answering for one variant) breaks that
assumption, and every difference the sequential test finds may then come from *who* was served,
not from the model. So before the test decides anything, the assignment counts are checked
against the weights, and a mismatch stops the experiment (no promotion, no rollback).

The check is read as often as the analysis (every ``interval``), so a fixed-horizon chi-squared
test would fire on many healthy tests sooner or later. This is the sequential multinomial test
of Lindon & Malek ("Anytime-valid inference for multinomial count data", 2022): under a
Dirichlet(``a``) mixture over the split ``theta``, the Bayes factor against ``theta = p`` is

    BF(n) = [B(a + n) / B(a)] / prod_i p_i^n_i,    B(x) = prod Gamma(x_i) / Gamma(sum x_i)

a non-negative martingale with mean 1 under ``theta = p`` (a mixture of likelihood ratios of the
assignment sequence; the multinomial coefficients cancel, so it depends only on the counts). By
Ville's inequality ``P(sup_n BF(n) >= 1/alpha) <= alpha``: stopping at the first evaluation with
``BF >= 1/alpha`` keeps the false alarm rate below ``alpha`` however often it is read. The prior
``a_i = concentration * p_i`` is centred on the configured split; the default concentration
(100) detects deviations of a few points within thousands of requests.

Variants at weight 0 must get no request: one request there is a mismatch at once.

Pure (no I/O); numbers in, verdict out.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy.special import gammaln

__all__ = [
    "DEFAULT_CONCENTRATION",
    "SRM_ALPHA",
    "SampleRatio",
    "log_bayes_factor",
    "log_bayes_factor_path",
    "srm_check",
]

#: The false-alarm rate of the check (fixed: an SRM stop ends an experiment, so it must be rare
#: on healthy splits; real mismatches are usually gross and still found within thousands).
SRM_ALPHA = 0.001
#: Prior concentration of the Dirichlet mixture around the configured split.
DEFAULT_CONCENTRATION = 100.0


@dataclass(frozen=True)
class SampleRatio:
    """The verdict: ``mismatch`` when the Bayes factor reached ``1/alpha``."""

    mismatch: bool
    log_bayes_factor: float
    p_value: float
    observed: tuple[float, ...]
    expected: tuple[float, ...]
    counts: tuple[int, ...]

    def describe(self, names: Sequence[str]) -> str:
        """``name observed% (configured%)`` for each variant, and the counts."""
        parts = [
            f"{n} {o * 100:.1f}% of {c} requests (configured {e * 100:g}%)"
            for n, o, e, c in zip(names, self.observed, self.expected, self.counts, strict=True)
        ]
        return "; ".join(parts)


def log_bayes_factor(
    counts: Sequence[int], weights: Sequence[float], concentration: float = DEFAULT_CONCENTRATION
) -> float:
    """log BF of "the split is not ``weights``" against "it is" (see the module doc).

    ``weights`` need not sum to 1 (percentages do). A request counted on a zero-weight variant
    gives ``+inf``.
    """
    if len(counts) != len(weights) or not counts:
        raise ValueError("one count per weight, at least one")
    if any(c < 0 for c in counts) or any(not (w >= 0 and math.isfinite(w)) for w in weights):
        raise ValueError("counts and weights must be >= 0 (weights finite)")
    total_w = float(sum(weights))
    if total_w <= 0:
        raise ValueError("at least one weight must be positive")
    if not (concentration > 0 and math.isfinite(concentration)):
        raise ValueError("concentration must be finite and > 0")
    if any(c > 0 and w == 0 for c, w in zip(counts, weights, strict=True)):
        return math.inf
    pairs = [(int(c), w / total_w) for c, w in zip(counts, weights, strict=True) if w > 0]
    a = [concentration * p for _, p in pairs]
    n = [c for c, _ in pairs]
    a_sum, n_sum = sum(a), sum(n)
    log_mixture = float(
        gammaln(a_sum)
        - gammaln(a_sum + n_sum)
        + sum(gammaln(ai + ni) - gammaln(ai) for ai, ni in zip(a, n, strict=True))
    )
    log_null = sum(ni * math.log(p) for ni, (_, p) in zip(n, pairs, strict=True))
    return log_mixture - log_null


def log_bayes_factor_path(
    counts: ArrayLike, weights: Sequence[float], concentration: float = DEFAULT_CONCENTRATION
) -> NDArray[np.float64]:
    """:func:`log_bayes_factor` after every observation at once: ``counts`` has one row per
    variant and one column per point in time (cumulative counts, e.g. a ``cumsum``)."""
    n = np.asarray(counts, dtype=np.float64)
    if n.ndim != 2 or n.shape[0] != len(weights):
        raise ValueError("counts must have one row per weight")
    w = np.asarray(weights, dtype=np.float64)
    if (n < 0).any() or (w < 0).any() or not np.isfinite(w).all() or w.sum() <= 0:
        raise ValueError("counts and weights must be >= 0, weights finite, one positive")
    p = w / w.sum()
    live = p > 0
    a = concentration * p[live][:, None]
    nl = n[live]
    out = (
        gammaln(a.sum())
        - gammaln(a.sum() + nl.sum(axis=0))
        + (gammaln(a + nl) - gammaln(a)).sum(axis=0)
        - (nl * np.log(p[live])[:, None]).sum(axis=0)
    )
    dead = n[~live].sum(axis=0) > 0
    return np.where(dead, np.inf, out)


def srm_check(
    counts: Sequence[int],
    weights: Sequence[float],
    *,
    alpha: float = SRM_ALPHA,
    concentration: float = DEFAULT_CONCENTRATION,
) -> SampleRatio:
    """Whether ``counts`` (requests per variant) mismatch ``weights`` at level ``alpha``."""
    if not 0 < alpha < 1:
        raise ValueError("alpha must be in (0, 1)")
    log_bf = log_bayes_factor(counts, weights, concentration)
    total = sum(counts)
    total_w = float(sum(weights))
    return SampleRatio(
        mismatch=log_bf >= math.log(1 / alpha),
        log_bayes_factor=log_bf,
        p_value=math.exp(-max(0.0, log_bf)) if log_bf != math.inf else 0.0,
        observed=tuple(c / total if total else 0.0 for c in counts),
        expected=tuple(w / total_w for w in weights),
        counts=tuple(int(c) for c in counts),
    )
