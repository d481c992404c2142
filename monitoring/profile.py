"""Reference profiles: what the training data looked like, per feature, in a mergeable JSON form.

Training builds a :class:`Profile` from its training frame and logs it beside the model in MLflow
(artifact path :data:`PROFILE_ARTIFACT_PATH`); the serving drift tap loads it and counts live
traffic on the *same bins* (:mod:`mlplane.monitoring.sketches`), and
:mod:`mlplane.monitoring.drift` compares the two.

Why this shape:

* **Numeric features** get equal-frequency (quantile) bins from the training data: ``bins``
  interior quantiles, duplicates removed (tied data such as zero-inflated or integer columns would
  otherwise give empty zero-width bins), outer edges ``-inf``/``+inf`` so every live value lands in
  a bin. Equal-frequency bins put resolution where the data is, which is where the binned KS test
  (:func:`mlplane.monitoring.drift.binned_ks`) looks for the largest CDF difference. Bins are
  right-closed, ``(e[i-1], e[i]]``, so the cumulative count at an edge is exactly ``#{x <= e}``,
  the empirical CDF the KS statistic is defined on. Exact summary statistics (count, mean, sample
  std, min, max, null count) are kept for humans and dashboards; they are not used by the tests.
* **Categorical features** keep counts of the ``top_k`` most frequent categories (ties broken by
  value, so the choice is deterministic) plus one ``other`` bucket. Live categories never seen in
  training land in ``other``, so a new category shows up as growth of that bucket.
* **Missing values** (``None``, ``NaN``, ``pd.NA`` and, for numeric features, ``±inf``) are
  counted separately from the histogram: a surge of missing values is a drift signal of its own
  (a broken upstream), not something to hide inside a bin. Non-finite numbers are treated as
  missing because they carry no position on the axis the bins describe.
* Counts are integers and bins are fixed, so profiles built on the same bins add up
  (:meth:`Profile.merge`): a large training set can be profiled in chunks (``like=`` the first
  chunk's profile) or per worker and merged. Summary statistics merge exactly (Chan et al.'s
  pairwise update of mean and sum of squared deviations).

The JSON form (``Profile.to_dict``) is versioned (``"format": "mlplane.profile/v1"``) and strict
JSON (no NaN/Infinity): the outer ``±inf`` edges are implied, ``edges`` lists interior edges only
and ``len(counts) == len(edges) + 1``::

    {"format": "mlplane.profile/v1", "rows": 200000,
     "settings": {"bins": 20, "top_k": 50}, "metadata": {...},
     "features": [
       {"name": "age", "kind": "numeric", "edges": [18.0, ...], "counts": [10012, ...],
        "null_count": 0, "count": 200000, "mean": 41.2, "std": 12.9, "min": 18.0, "max": 90.0},
       {"name": "country", "kind": "categorical", "categories": ["US", "DE", ...],
        "counts": [81234, 40321, ...], "other_count": 912, "null_count": 3, "count": 199997}]}

Numeric vs categorical is decided by dtype (bool, string, object and pandas categorical are
categorical; integer and float are numeric; datetimes are refused, since a timestamp column always
"drifts"), overridable per column. Categories are compared as string labels: ``str(value)``,
except that integral floats are written as integers (``3``, ``3.0`` and ``"3"`` are one category,
as JSON payloads and CSV readers blur them) and booleans as ``True``/``False``.

This module is pure: no I/O, no clock. It needs numpy only; when pandas is importable its
hash-based ``factorize`` speeds up categorical columns (the numpy fallback sorts instead).
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

PROFILE_FORMAT = "mlplane.profile/v1"
#: Where training logs the profile in the MLflow run (``mlflow.log_text(profile.to_json(), ...)``)
#: and where the serving drift tap looks for it next to the model.
PROFILE_ARTIFACT_PATH = "mlplane/reference_profile.json"
#: 20 equal-frequency bins: 5 % CDF resolution for the binned KS test (a smooth shift's largest
#: CDF gap is found to within one bin's mass), few enough that PSI's small-sample bias
#: (about (bins-1)/n per side) stays negligible at the window sizes drift is judged on.
DEFAULT_BINS = 20
#: Keep the 50 most frequent categories; the long tail shares one "other" bucket so sketch memory
#: stays bounded whatever the cardinality.
DEFAULT_TOP_K = 50

Kind = Literal["numeric", "categorical"]


# --------------------------------------------------------------------------------------------
# Column access and coercion (shared with the sketches)
# --------------------------------------------------------------------------------------------


def _is_dataframe(data: Any) -> bool:
    return hasattr(data, "columns") and hasattr(data, "iloc")


def column_names(data: Any) -> list[str]:
    """Column names of a DataFrame or a mapping of arrays, in their order."""
    if _is_dataframe(data):
        return [str(c) for c in data.columns]
    if isinstance(data, Mapping):
        return [str(k) for k in data]
    raise TypeError(
        f"expected a pandas DataFrame or a mapping of arrays, got {type(data).__name__}"
    )


def batch_length(data: Any) -> int:
    """Number of rows in a batch; every column of a mapping must have the same length.

    A mapping whose values are all scalars is one record (length 1), which is what a single
    prediction request usually is.
    """
    if _is_dataframe(data):
        return len(data)
    if not isinstance(data, Mapping):
        raise TypeError(
            f"expected a pandas DataFrame or a mapping of arrays, got {type(data).__name__}"
        )
    lengths = {str(k): _length(v) for k, v in data.items()}
    if not lengths:
        return 0
    if all(n is None for n in lengths.values()):
        return 1
    if any(n is None for n in lengths.values()):
        scalars = sorted(k for k, n in lengths.items() if n is None)
        raise ValueError(f"batch mixes scalars and arrays (scalar columns: {scalars})")
    distinct = set(lengths.values())
    if len(distinct) > 1:
        raise ValueError(f"batch columns have different lengths: {lengths}")
    return distinct.pop()  # type: ignore[return-value]


def _length(value: Any) -> int | None:
    if hasattr(value, "shape"):
        shape = value.shape
        return int(shape[0]) if len(shape) else None
    if isinstance(value, str | bytes) or not hasattr(value, "__len__"):
        return None
    return len(value)


def get_column(data: Any, name: str) -> Any | None:
    """The column ``name`` of a batch, or None when the batch does not carry it."""
    if _is_dataframe(data):
        return data[name] if name in data.columns else None
    value = data.get(name)
    if value is not None and _length(value) is None:
        return [value]
    return value


def _is_pandas(values: Any) -> bool:
    return hasattr(values, "to_numpy") and hasattr(values, "isna")


def _pandas_kind(series: Any) -> str:
    """numpy-style dtype kind of a pandas Series, mapping extension dtypes sensibly."""
    dtype = series.dtype
    name = str(dtype).lower()
    if name == "category":
        return "O"
    if name.startswith("bool") or name == "boolean":
        return "b"
    if name.startswith(("int", "uint")):
        return "i"
    if name.startswith("float"):
        return "f"
    if name.startswith("datetime") or name.startswith("timedelta") or name.startswith("period"):
        return "M"
    kind = getattr(dtype, "kind", "O")
    return kind if kind in "biufcMm" else "O"


def dtype_kind(values: Any) -> str:
    """numpy dtype kind letter for a column (pandas Series, numpy array or list)."""
    if _is_pandas(values):
        return _pandas_kind(values)
    arr = np.asarray(values)
    kind = arr.dtype.kind
    if kind == "O" and arr.size:
        # Lists of Python numbers become float/int arrays already; an object array here holds
        # strings or mixed values, or numbers mixed with None.
        sample = [v for v in arr[: min(arr.size, 64)] if v is not None]
        if sample and all(
            isinstance(v, int | float | np.number) and not isinstance(v, bool) for v in sample
        ):
            return "f"
    return kind


def infer_kind(name: str, values: Any) -> Kind:
    """numeric for integers and floats; categorical for bool, strings, objects, categories."""
    kind = dtype_kind(values)
    if kind in "iuf":
        return "numeric"
    if kind in "bOUS":
        return "categorical"
    raise ValueError(
        f"column {name!r}: dtype kind {kind!r} is neither numeric nor categorical "
        "(datetimes always drift; exclude the column or convert it first)"
    )


def as_float(values: Any, name: str) -> np.ndarray:
    """A column as float64 with every missing or non-finite entry as NaN."""
    try:
        if _is_pandas(values):
            arr = values.to_numpy(dtype="float64", na_value=np.nan)
        else:
            arr = np.asarray(values)
            if arr.dtype.kind == "O":
                arr = np.where(_object_missing(arr), np.nan, arr)
            arr = arr.astype(np.float64, copy=False)
    except (TypeError, ValueError) as exc:
        raise ValueError(
            f"feature {name!r} is numeric but holds non-numeric values: {exc}"
        ) from exc
    if arr.ndim != 1:
        raise ValueError(f"feature {name!r}: expected a 1-d column, got shape {arr.shape}")
    return arr


def _object_missing(arr: np.ndarray) -> np.ndarray:
    """Vectorised missing mask for an object array: None, float NaN and pandas' NA/NaT.

    pandas' ``isna`` (C code) is used when the caller already imported pandas, which is the only
    way pandas' NA objects can be in the array; otherwise numpy's elementwise comparisons do.
    """
    pd = sys.modules.get("pandas")
    if pd is not None:
        return np.asarray(pd.isna(arr), dtype=bool)
    with np.errstate(invalid="ignore"):
        mask = np.asarray(np.equal(arr, None), dtype=bool)
        self_unequal = np.asarray(arr != arr)
    if self_unequal.dtype == bool and self_unequal.shape == mask.shape:
        mask |= self_unequal
    return mask


def _pandas() -> Any | None:
    """pandas if installed (hash-based factorize), else None and numpy's sort-based path."""
    if not _USE_PANDAS:
        return None
    try:
        import pandas
    except ImportError:  # pragma: no cover - depends on the image
        return None
    return pandas


#: Tests switch this off to exercise the numpy-only path that images without pandas take.
_USE_PANDAS = True


def _label(value: Any) -> str:
    if isinstance(value, bool | np.bool_):
        return "True" if value else "False"
    if isinstance(value, float | np.floating) and math.isfinite(value) and value == int(value):
        return str(int(value))
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return str(value)


def _labels(uniques: np.ndarray) -> np.ndarray:
    """Category labels of distinct values (see the module doc); vectorised for numeric arrays."""
    kind = uniques.dtype.kind
    if kind == "U":
        return uniques
    if kind in "iu":
        return uniques.astype(str)
    if kind == "f":
        integral = np.isfinite(uniques) & (uniques == np.floor(uniques))
        integral &= np.abs(uniques) < 2**53
        as_int = np.where(integral, uniques, 0).astype(np.int64).astype(str)
        return np.where(integral, as_int, uniques.astype(str))
    if kind == "b":
        return np.where(uniques, "True", "False")
    pd = _pandas()
    if pd is not None and uniques.size and pd.api.types.infer_dtype(uniques) == "string":
        return uniques.astype(str)
    # Mixed objects: one Python call per *distinct* value, never per row.
    return (
        np.array([_label(v) for v in uniques], dtype=str) if uniques.size else uniques.astype(str)
    )


def factorize_labels(values: Any, name: str) -> tuple[np.ndarray, np.ndarray]:
    """``(codes, labels)``: ``labels[codes[i]]`` is row i's category label, -1 marks missing.

    Hash-based ``pandas.factorize`` when pandas is importable (O(n)), else ``np.unique``
    (O(n log n)); either way labels are made only for the distinct values, so a million rows
    of a low-cardinality column never become a million Python strings.
    """
    pd = _pandas()
    if pd is not None:
        src = values if _is_pandas(values) else np.asarray(values)
        if getattr(src, "ndim", 1) != 1:
            raise ValueError(f"feature {name!r}: expected a 1-d column, got shape {src.shape}")
        codes, uniques = pd.factorize(src, use_na_sentinel=True)
        uniq = np.asarray(uniques)
        if uniq.dtype.kind == "O" and pd.api.types.is_numeric_dtype(
            getattr(uniques, "dtype", None)
        ):
            uniq = uniq.astype(np.float64)
        return np.asarray(codes, dtype=np.int64), _labels(uniq)
    arr = np.asarray(values)
    if arr.ndim != 1:
        raise ValueError(f"feature {name!r}: expected a 1-d column, got shape {arr.shape}")
    if arr.dtype.kind == "f":
        missing = np.isnan(arr)
    elif arr.dtype.kind == "O":
        missing = _object_missing(arr)
    else:
        missing = np.zeros(arr.shape[0], dtype=bool)
    valid = arr[~missing]
    try:
        uniq, inverse = np.unique(valid, return_inverse=True)
    except TypeError:  # mixed types that do not compare (e.g. str and int)
        uniq, inverse = np.unique(np.array([_label(v) for v in valid], dtype=str),
                                  return_inverse=True)  # fmt: skip
    codes = np.full(arr.shape[0], -1, dtype=np.int64)
    codes[~missing] = inverse.reshape(-1)
    return codes, _labels(uniq)


# --------------------------------------------------------------------------------------------
# Feature profiles
# --------------------------------------------------------------------------------------------


def _int_counts(values: Iterable[int] | np.ndarray, what: str) -> np.ndarray:
    arr = np.asarray(values, dtype=np.int64)
    if arr.ndim != 1 or (arr.size and arr.min() < 0):
        raise ValueError(f"{what}: counts must be a 1-d list of non-negative integers")
    return arr


@dataclass(frozen=True, eq=False)
class NumericFeature:
    """Histogram on quantile bins ``(-inf, e0], (e0, e1], ..., (e_last, +inf)`` plus exact stats."""

    name: str
    edges: np.ndarray  # interior edges, strictly increasing, float64
    counts: np.ndarray  # int64, len(edges) + 1
    null_count: int = 0
    mean: float | None = None
    std: float | None = None  # sample standard deviation (ddof=1)
    min: float | None = None
    max: float | None = None
    kind: Kind = field(default="numeric", init=False)

    def __post_init__(self) -> None:
        edges = np.array(self.edges, dtype=np.float64)
        counts = _int_counts(self.counts, f"feature {self.name!r}")
        if edges.ndim != 1 or not np.all(np.isfinite(edges)) or np.any(np.diff(edges) <= 0):
            raise ValueError(f"feature {self.name!r}: edges must be finite and strictly increasing")
        if counts.size != edges.size + 1:
            raise ValueError(
                f"feature {self.name!r}: {counts.size} counts for {edges.size} interior edges "
                f"(expected {edges.size + 1})"
            )
        if self.null_count < 0:
            raise ValueError(f"feature {self.name!r}: null_count must be >= 0")
        edges.setflags(write=False)
        counts = counts.copy()
        counts.setflags(write=False)
        object.__setattr__(self, "edges", edges)
        object.__setattr__(self, "counts", counts)
        object.__setattr__(self, "null_count", int(self.null_count))

    @property
    def n_bins(self) -> int:
        return int(self.counts.size)

    @property
    def count(self) -> int:
        """Number of non-missing values."""
        return int(self.counts.sum())

    def codes(self, values: Any) -> np.ndarray:
        """Bin index per value (0..n_bins-1), ``n_bins`` for missing; vectorised."""
        x = as_float(values, self.name)
        codes = np.searchsorted(self.edges, x, side="left")
        codes[~np.isfinite(x)] = self.n_bins
        return codes

    def same_bins(self, other: FeatureProfile) -> bool:
        return (
            isinstance(other, NumericFeature)
            and other.name == self.name
            and np.array_equal(other.edges, self.edges)
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": "numeric",
            "edges": [float(e) for e in self.edges],
            "counts": [int(c) for c in self.counts],
            "null_count": self.null_count,
            "count": self.count,
            "mean": self.mean,
            "std": self.std,
            "min": self.min,
            "max": self.max,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> NumericFeature:
        feature = cls(
            name=str(d["name"]),
            edges=np.asarray(d.get("edges", []), dtype=np.float64),
            counts=_int_counts(d["counts"], f"feature {d['name']!r}"),
            null_count=int(d.get("null_count", 0)),
            mean=_opt_float(d.get("mean")),
            std=_opt_float(d.get("std")),
            min=_opt_float(d.get("min")),
            max=_opt_float(d.get("max")),
        )
        _check_count(feature, d)
        return feature

    def merge(self, other: NumericFeature) -> NumericFeature:
        if not self.same_bins(other):
            raise ValueError(f"feature {self.name!r}: cannot merge profiles with different bins")
        mean, std, lo, hi = _merge_stats(
            (self.count, self.mean, self.std, self.min, self.max),
            (other.count, other.mean, other.std, other.min, other.max),
        )
        return NumericFeature(
            name=self.name,
            edges=self.edges,
            counts=self.counts + other.counts,
            null_count=self.null_count + other.null_count,
            mean=mean,
            std=std,
            min=lo,
            max=hi,
        )


@dataclass(frozen=True, eq=False)
class CategoricalFeature:
    """Counts of the top-K categories (``counts[:K]``) and of everything else (``counts[K]``)."""

    name: str
    categories: tuple[str, ...]
    counts: np.ndarray  # int64, len(categories) + 1; the last is "other"
    null_count: int = 0
    kind: Kind = field(default="categorical", init=False)
    _sorted: np.ndarray = field(init=False, repr=False)
    _order: np.ndarray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        cats = tuple(str(c) for c in self.categories)
        if len(set(cats)) != len(cats):
            raise ValueError(f"feature {self.name!r}: duplicate categories")
        counts = _int_counts(self.counts, f"feature {self.name!r}").copy()
        if counts.size != len(cats) + 1:
            raise ValueError(
                f"feature {self.name!r}: {counts.size} counts for {len(cats)} categories "
                f"(expected {len(cats) + 1}, the last being 'other')"
            )
        if self.null_count < 0:
            raise ValueError(f"feature {self.name!r}: null_count must be >= 0")
        counts.setflags(write=False)
        cat_arr = np.asarray(cats, dtype=str) if cats else np.asarray([], dtype="U1")
        order = np.argsort(cat_arr, kind="stable")
        object.__setattr__(self, "categories", cats)
        object.__setattr__(self, "counts", counts)
        object.__setattr__(self, "null_count", int(self.null_count))
        object.__setattr__(self, "_sorted", cat_arr[order])
        object.__setattr__(self, "_order", order.astype(np.int64))

    @property
    def n_bins(self) -> int:
        return int(self.counts.size)

    @property
    def count(self) -> int:
        return int(self.counts.sum())

    @property
    def other_count(self) -> int:
        return int(self.counts[-1])

    def codes(self, values: Any) -> np.ndarray:
        """Category index per value, ``K`` for other, ``K + 1`` for missing; vectorised.

        The column is factorized, only its distinct labels are looked up (``np.searchsorted``
        in a sorted copy of the categories), and the rows take their label's code by indexing.
        """
        fcodes, labels = factorize_labels(values, self.name)
        k = len(self.categories)
        lut = np.full(labels.shape[0] + 1, k, dtype=np.int64)
        if k and labels.size:
            pos = np.minimum(np.searchsorted(self._sorted, labels), k - 1)
            hit = self._sorted[pos] == labels
            lut[:-1][hit] = self._order[pos[hit]]
        lut[-1] = k + 1  # code -1 (missing) indexes the last entry
        return lut[fcodes]

    def same_bins(self, other: FeatureProfile) -> bool:
        return (
            isinstance(other, CategoricalFeature)
            and other.name == self.name
            and other.categories == self.categories
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": "categorical",
            "categories": list(self.categories),
            "counts": [int(c) for c in self.counts[:-1]],
            "other_count": self.other_count,
            "null_count": self.null_count,
            "count": self.count,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> CategoricalFeature:
        top = _int_counts(d["counts"], f"feature {d['name']!r}")
        feature = cls(
            name=str(d["name"]),
            categories=tuple(str(c) for c in d.get("categories", [])),
            counts=np.append(top, int(d.get("other_count", 0))),
            null_count=int(d.get("null_count", 0)),
        )
        _check_count(feature, d)
        return feature

    def merge(self, other: CategoricalFeature) -> CategoricalFeature:
        if not self.same_bins(other):
            raise ValueError(
                f"feature {self.name!r}: cannot merge profiles with different categories "
                "(build the second one with like=the first)"
            )
        return CategoricalFeature(
            name=self.name,
            categories=self.categories,
            counts=self.counts + other.counts,
            null_count=self.null_count + other.null_count,
        )


FeatureProfile = NumericFeature | CategoricalFeature


def _opt_float(v: Any) -> float | None:
    return None if v is None else float(v)


def _check_count(feature: FeatureProfile, d: Mapping[str, Any]) -> None:
    if "count" in d and int(d["count"]) != feature.count:
        raise ValueError(
            f"feature {feature.name!r}: count {d['count']} differs from the sum of its counts "
            f"({feature.count})"
        )


def _merge_stats(
    a: tuple[int, float | None, float | None, float | None, float | None],
    b: tuple[int, float | None, float | None, float | None, float | None],
) -> tuple[float | None, float | None, float | None, float | None]:
    """Merge (count, mean, sample std, min, max) of two disjoint samples exactly."""
    na, ma, sa, loa, hia = a
    nb, mb, sb, lob, hib = b
    if nb == 0 or mb is None:
        return ma, sa, loa, hia
    if na == 0 or ma is None:
        return mb, sb, lob, hib
    n = na + nb
    delta = mb - ma
    mean = ma + delta * nb / n
    m2 = (sa or 0.0) ** 2 * (na - 1) + (sb or 0.0) ** 2 * (nb - 1) + delta**2 * na * nb / n
    std = math.sqrt(m2 / (n - 1)) if n > 1 else 0.0
    lo = min(x for x in (loa, lob) if x is not None)
    hi = max(x for x in (hia, hib) if x is not None)
    return mean, std, lo, hi


# --------------------------------------------------------------------------------------------
# Profile
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class Profile:
    """An ordered set of feature profiles over the same ``rows`` reference rows."""

    features: tuple[FeatureProfile, ...]
    rows: int
    settings: Mapping[str, Any] = field(default_factory=dict)
    metadata: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        names = [f.name for f in self.features]
        if len(set(names)) != len(names):
            raise ValueError(f"duplicate feature names in profile: {names}")
        for f in self.features:
            if f.count + f.null_count != self.rows:
                raise ValueError(
                    f"feature {f.name!r}: {f.count} values + {f.null_count} missing != "
                    f"{self.rows} rows"
                )
        object.__setattr__(self, "features", tuple(self.features))
        object.__setattr__(self, "_by_name", {f.name: f for f in self.features})

    @property
    def names(self) -> list[str]:
        return [f.name for f in self.features]

    def __getitem__(self, name: str) -> FeatureProfile:
        try:
            return self._by_name[name]  # type: ignore[attr-defined]
        except KeyError:
            raise KeyError(f"feature {name!r} is not in the profile") from None

    def __contains__(self, name: object) -> bool:
        return name in self._by_name  # type: ignore[attr-defined]

    def __len__(self) -> int:
        return len(self.features)

    def same_bins(self, other: Profile) -> bool:
        """True when ``other`` has the same features, kinds and bins, in the same order."""
        return len(self.features) == len(other.features) and all(
            a.same_bins(b) for a, b in zip(self.features, other.features, strict=True)
        )

    def merge(self, other: Profile) -> Profile:
        """Counts and stats of two profiles on the same bins; ``self``'s metadata is kept."""
        if [f.name for f in other.features] != self.names:
            raise ValueError(
                f"cannot merge profiles with different features: {self.names} vs {other.names}"
            )
        merged = tuple(
            a.merge(b)  # type: ignore[arg-type]
            for a, b in zip(self.features, other.features, strict=True)
        )
        return Profile(merged, self.rows + other.rows, dict(self.settings), dict(self.metadata))

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": PROFILE_FORMAT,
            "rows": self.rows,
            "settings": dict(self.settings),
            "metadata": dict(self.metadata),
            "features": [f.to_dict() for f in self.features],
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Profile:
        fmt = d.get("format")
        if fmt != PROFILE_FORMAT:
            raise ValueError(f"unsupported profile format {fmt!r} (expected {PROFILE_FORMAT!r})")
        features: list[FeatureProfile] = []
        for fd in d.get("features", []):
            kind = fd.get("kind")
            if kind == "numeric":
                features.append(NumericFeature.from_dict(fd))
            elif kind == "categorical":
                features.append(CategoricalFeature.from_dict(fd))
            else:
                raise ValueError(f"feature {fd.get('name')!r}: unknown kind {kind!r}")
        return cls(
            tuple(features),
            int(d["rows"]),
            dict(d.get("settings", {})),
            dict(d.get("metadata", {})),
        )

    def to_json(self, *, indent: int | None = None) -> str:
        """Strict JSON (no NaN/Infinity), so any JSON reader can load it."""
        return json.dumps(self.to_dict(), indent=indent, allow_nan=False)

    @classmethod
    def from_json(cls, text: str | bytes) -> Profile:
        return cls.from_dict(json.loads(text))


def merge_profiles(profiles: Iterable[Profile]) -> Profile:
    """Sum of several profiles on the same bins (e.g. one per training worker)."""
    it = iter(profiles)
    try:
        total = next(it)
    except StopIteration:
        raise ValueError("merge_profiles needs at least one profile") from None
    for p in it:
        total = total.merge(p)
    return total


# --------------------------------------------------------------------------------------------
# Building
# --------------------------------------------------------------------------------------------


def _numeric_stats(x: np.ndarray) -> tuple[float | None, float | None, float | None, float | None]:
    if x.size == 0:
        return None, None, None, None
    mean = float(np.mean(x))
    std = float(np.std(x, ddof=1)) if x.size > 1 else 0.0
    return mean, std, float(np.min(x)), float(np.max(x))


def quantile_edges(values: np.ndarray, bins: int) -> np.ndarray:
    """Interior equal-frequency edges of finite ``values``, ties deduplicated.

    ``inverted_cdf`` quantiles are actual data values, so for discrete data the right-closed bins
    hold whole groups of tied values instead of splitting between them.
    """
    if bins < 1:
        raise ValueError("bins must be >= 1")
    x = values[np.isfinite(values)]
    if x.size == 0 or bins == 1:
        return np.empty(0, dtype=np.float64)
    qs = np.linspace(0.0, 1.0, bins + 1)[1:-1]
    return np.unique(np.quantile(x, qs, method="inverted_cdf")).astype(np.float64)


def _build_numeric(
    name: str, values: Any, bins: int, like: NumericFeature | None
) -> NumericFeature:
    x = as_float(values, name)
    finite = np.isfinite(x)
    xf = x[finite]
    edges = like.edges if like is not None else quantile_edges(xf, bins)
    counts = np.bincount(np.searchsorted(edges, xf, side="left"), minlength=edges.size + 1)
    mean, std, lo, hi = _numeric_stats(xf)
    return NumericFeature(name, edges, counts, int(x.size - xf.size), mean, std, lo, hi)


def _build_categorical(
    name: str, values: Any, top_k: int, like: CategoricalFeature | None
) -> CategoricalFeature:
    if like is not None:
        codes = like.codes(values)
        k = len(like.categories)
        full = np.bincount(codes, minlength=k + 2)
        return CategoricalFeature(name, like.categories, full[: k + 1], int(full[k + 1]))
    fcodes, labels = factorize_labels(values, name)
    present = fcodes >= 0
    per_value = np.bincount(fcodes[present], minlength=labels.shape[0])
    # Distinct values may share a label (3 and 3.0): add them up per label.
    uniq, inverse = np.unique(labels, return_inverse=True)
    counts = np.bincount(inverse.reshape(-1), weights=per_value, minlength=uniq.size).astype(
        np.int64
    )
    missing_count = int(fcodes.size - present.sum())
    # Most frequent first; ties by value (uniq is sorted and the sort is stable) for determinism.
    order = np.argsort(-counts, kind="stable")
    top = order[:top_k]
    rest = int(counts[order[top_k:]].sum())
    return CategoricalFeature(
        name,
        tuple(str(c) for c in uniq[top]),
        np.append(counts[top], rest),
        missing_count,
    )


def build_profile(
    data: Any,
    *,
    bins: int = DEFAULT_BINS,
    top_k: int = DEFAULT_TOP_K,
    numeric: Iterable[str] = (),
    categorical: Iterable[str] = (),
    features: Sequence[str] | None = None,
    exclude: Iterable[str] = (),
    like: Profile | None = None,
    metadata: Mapping[str, Any] | None = None,
) -> Profile:
    """Profile a pandas DataFrame or a mapping of 1-d arrays.

    ``numeric``/``categorical`` force a column's kind (otherwise inferred from its dtype);
    ``features`` restricts and orders the columns (default: all but ``exclude``); ``like`` reuses
    another profile's features and bins, so the results merge (chunked or per-worker profiling).
    ``metadata`` is stored verbatim (e.g. model name, run id, a timestamp the caller supplies).
    """
    n = batch_length(data)
    available = column_names(data)
    force_num, force_cat = set(numeric), set(categorical)
    if both := force_num & force_cat:
        raise ValueError(f"columns forced both numeric and categorical: {sorted(both)}")
    if like is not None:
        names = like.names
    elif features is not None:
        names = list(features)
    else:
        excluded = set(exclude)
        names = [c for c in available if c not in excluded]
    if missing := [c for c in names if c not in available]:
        raise ValueError(f"columns not in the data: {missing}")
    if not names:
        raise ValueError("no columns to profile")

    built: list[FeatureProfile] = []
    for name in names:
        values = get_column(data, name)
        if like is not None:
            ref = like[name]
            if isinstance(ref, NumericFeature):
                built.append(_build_numeric(name, values, bins, ref))
            else:
                built.append(_build_categorical(name, values, top_k, ref))
            continue
        if name in force_num:
            kind: Kind = "numeric"
        elif name in force_cat:
            kind = "categorical"
        else:
            kind = infer_kind(name, values)
        if kind == "numeric":
            built.append(_build_numeric(name, values, bins, None))
        else:
            built.append(_build_categorical(name, values, top_k, None))
    settings = dict(like.settings) if like is not None else {"bins": bins, "top_k": top_k}
    return Profile(tuple(built), n, settings, dict(metadata or {}))
