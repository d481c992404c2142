"""Drift between two data files: ``mlplane drift compare --reference R --current C``.

The same pipeline the serving tap runs, offline: profile the reference file
(:func:`~mlplane.monitoring.profile.build_profile`), stream the current file through a sketch on
the reference's bins (:func:`~mlplane.monitoring.sketches.sketch_once`, chunk by chunk, so the
current file never has to fit in memory), then :func:`~mlplane.monitoring.drift.evaluate`.
The reference is read whole: its quantile bin edges need all of its values.

Files are CSV (``.csv``, ``.csv.gz``, ``.tsv``) or Parquet (``.parquet``, ``.pq``), chosen by
suffix. Column kinds come from the reference file's dtypes (override with ``numeric=`` /
``categorical=``). Errors a user can fix are ``ValueError`` with the file and the column named.

pandas (and pyarrow for Parquet) are imported when a function runs, so the rest of
``mlplane.monitoring`` keeps working in images without them.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any, Literal

from mlplane.monitoring.drift import (
    DRIFT_REPORT_FORMAT,
    DriftConfig,
    FeatureDrift,
    evaluate,
    summarize,
)
from mlplane.monitoring.profile import DEFAULT_BINS, DEFAULT_TOP_K, Profile, build_profile
from mlplane.monitoring.sketches import sketch_once

CSV_SUFFIXES = (".csv", ".csv.gz", ".tsv")
PARQUET_SUFFIXES = (".parquet", ".pq")
#: Rows per chunk when streaming the current file: ~50 numeric columns x 8 bytes x 250k rows
#: is ~100 MB of transient arrays, whatever the file's size.
DEFAULT_CHUNK_ROWS = 250_000


def _format_of(path: Path) -> Literal["csv", "tsv", "parquet"]:
    name = path.name.lower()
    if name.endswith(".tsv"):
        return "tsv"
    if name.endswith((".csv", ".csv.gz")):
        return "csv"
    if name.endswith(PARQUET_SUFFIXES):
        return "parquet"
    raise ValueError(
        f"{path}: unsupported file type; expected one of "
        f"{', '.join(CSV_SUFFIXES + PARQUET_SUFFIXES)}"
    )


def _check_file(path: Path, role: str) -> None:
    if not path.is_file():
        raise ValueError(f"{role} file {path} does not exist")
    if path.stat().st_size == 0:
        raise ValueError(f"{role} file {path} is empty")


def file_columns(path: str | Path) -> list[str]:
    """Column names of a CSV/Parquet file without reading its rows."""
    p = Path(path)
    fmt = _format_of(p)
    if fmt == "parquet":
        import pyarrow.parquet as pq

        return list(pq.read_schema(p).names)
    import pandas as pd

    try:
        return [str(c) for c in pd.read_csv(p, nrows=0, sep="\t" if fmt == "tsv" else ",").columns]
    except pd.errors.EmptyDataError:
        raise ValueError(f"{p}: no header row (the file is empty)") from None


def read_table(path: str | Path, columns: Sequence[str] | None = None) -> Any:
    """A whole CSV/Parquet file as a pandas DataFrame (only ``columns`` if given)."""
    import pandas as pd

    p = Path(path)
    fmt = _format_of(p)
    cols = list(columns) if columns is not None else None
    if fmt == "parquet":
        return pd.read_parquet(p, columns=cols)
    try:
        return pd.read_csv(p, usecols=cols, sep="\t" if fmt == "tsv" else ",")
    except pd.errors.EmptyDataError:
        raise ValueError(f"{p}: no header row (the file is empty)") from None


def iter_table(
    path: str | Path, columns: Sequence[str] | None = None, chunk_rows: int = DEFAULT_CHUNK_ROWS
) -> Iterator[Any]:
    """A CSV/Parquet file as DataFrames of at most ``chunk_rows`` rows."""
    import pandas as pd

    p = Path(path)
    fmt = _format_of(p)
    cols = list(columns) if columns is not None else None
    if fmt == "parquet":
        import pyarrow.parquet as pq

        for batch in pq.ParquetFile(p).iter_batches(batch_size=chunk_rows, columns=cols):
            yield batch.to_pandas()
        return
    try:
        reader = pd.read_csv(
            p, usecols=cols, sep="\t" if fmt == "tsv" else ",", chunksize=chunk_rows
        )
    except pd.errors.EmptyDataError:
        raise ValueError(f"{p}: no header row (the file is empty)") from None
    with reader:
        yield from reader


def _select_columns(
    ref_cols: list[str],
    cur_cols: list[str],
    columns: Sequence[str] | None,
    exclude: Iterable[str],
    ref_path: Path,
    cur_path: Path,
) -> list[str]:
    excluded = set(exclude)
    if columns is not None:
        wanted = [c for c in columns if c not in excluded]
        problems = [
            f"column {c!r} is not in {side}"
            for c in wanted
            for side, cols in (
                (f"the reference file {ref_path}", ref_cols),
                (f"the current file {cur_path}", cur_cols),
            )
            if c not in cols
        ]
    else:
        wanted = [c for c in ref_cols if c not in excluded]
        problems = [
            f"column {c!r} is in the reference file {ref_path} but not in the current file "
            f"{cur_path}"
            for c in wanted
            if c not in cur_cols
        ] + [
            f"column {c!r} is in the current file {cur_path} but not in the reference file "
            f"{ref_path}"
            for c in cur_cols
            if c not in ref_cols and c not in excluded
        ]
    if problems:
        raise ValueError("; ".join(problems) + " (pass columns=/exclude= to choose columns)")
    if not wanted:
        raise ValueError("no columns left to compare")
    return wanted


def profile_file(
    path: str | Path,
    *,
    columns: Sequence[str] | None = None,
    numeric: Iterable[str] = (),
    categorical: Iterable[str] = (),
    bins: int = DEFAULT_BINS,
    top_k: int = DEFAULT_TOP_K,
) -> Profile:
    """Reference profile of a whole file (e.g. to log beside a model trained on it)."""
    p = Path(path)
    _check_file(p, "reference")
    frame = read_table(p, columns)
    if len(frame) == 0:
        raise ValueError(f"reference file {p} has a header but no rows")
    try:
        return build_profile(
            frame,
            bins=bins,
            top_k=top_k,
            numeric=numeric,
            categorical=categorical,
            features=list(columns) if columns is not None else None,
            metadata={"source": p.name},
        )
    except ValueError as exc:
        raise ValueError(f"reference file {p}: {exc}") from exc


def compare_files(
    reference_path: str | Path,
    current_path: str | Path,
    *,
    config: DriftConfig | None = None,
    columns: Sequence[str] | None = None,
    exclude: Iterable[str] = (),
    numeric: Iterable[str] = (),
    categorical: Iterable[str] = (),
    bins: int = DEFAULT_BINS,
    top_k: int = DEFAULT_TOP_K,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
) -> list[FeatureDrift]:
    """Drift of ``current_path`` against ``reference_path``: one row per compared column.

    Compares the columns both files share; a column in only one of them is an error naming it
    (restrict with ``columns=`` or drop it with ``exclude=``). Rows come back in the reference's
    column order; see :class:`~mlplane.monitoring.drift.FeatureDrift` for their fields.
    """
    ref_path, cur_path = Path(reference_path), Path(current_path)
    _check_file(ref_path, "reference")
    _check_file(cur_path, "current")
    wanted = _select_columns(
        file_columns(ref_path), file_columns(cur_path), columns, exclude, ref_path, cur_path
    )
    profile = profile_file(
        ref_path, columns=wanted, numeric=numeric, categorical=categorical, bins=bins, top_k=top_k
    )
    try:
        window = sketch_once(profile, iter_table(cur_path, wanted, chunk_rows))
    except ValueError as exc:
        raise ValueError(f"current file {cur_path}: {exc}") from exc
    if window.rows == 0:
        raise ValueError(f"current file {cur_path} has a header but no rows")
    return evaluate(profile, window, config)


# --------------------------------------------------------------------------------------------
# Formatting
# --------------------------------------------------------------------------------------------


def _num(x: float | None, spec: str) -> str:
    return "-" if x is None else format(x, spec)


def format_table(results: Sequence[FeatureDrift], config: DriftConfig | None = None) -> str:
    """A plain-text table, one line per feature, and a summary line."""
    header = (
        "feature", "kind", "method", "n_ref", "n_cur", "statistic", "p_value", "p_adj",
        "psi", "js", "missing_cur", "drifted",
    )  # fmt: skip
    lines = [header]
    for r in results:
        verdict = "n/a" if r.drifted is None else ("YES" if r.drifted else "no")
        lines.append(
            (
                r.feature,
                r.kind,
                r.method,
                str(r.n_reference),
                str(r.n_current),
                _num(r.statistic, ".4g"),
                _num(r.p_value, ".3g"),
                _num(r.p_value_adjusted, ".3g"),
                _num(r.psi, ".4f"),
                _num(r.js, ".4f"),
                _num(r.missing_fraction_current, ".2%"),
                verdict,
            )
        )
    widths = [max(len(row[i]) for row in lines) for i in range(len(header))]
    numeric_cols = {3, 4, 5, 6, 7, 8, 9, 10}
    out = [
        "  ".join(
            cell.rjust(w) if i in numeric_cols else cell.ljust(w)
            for i, (cell, w) in enumerate(zip(row, widths, strict=True))
        ).rstrip()
        for row in lines
    ]
    s = summarize(results)
    cfg = config or DriftConfig()
    tail = f"drifted: {len(s['drifted'])} of {s['tested']} tested features"
    if s["drifted"]:
        tail += " (" + ", ".join(s["drifted"]) + ")"
    tail += f" at alpha {cfg.alpha:g}, {cfg.correction} correction"
    if s["no_verdict"]:
        tail += f"; no verdict for {len(s['no_verdict'])} (fewer than {cfg.min_samples} rows)"
    return "\n".join([*out, "", tail])


def format_json(
    results: Sequence[FeatureDrift], config: DriftConfig | None = None, *, indent: int = 2
) -> str:
    """``{"format": "mlplane.drift/v1", "config": ..., "summary": ..., "results": [...]}``."""
    doc = {
        "format": DRIFT_REPORT_FORMAT,
        "config": asdict(config or DriftConfig()),
        "summary": summarize(results),
        "results": [r.to_dict() for r in results],
    }
    return json.dumps(doc, indent=indent, allow_nan=False)


def render(
    results: Sequence[FeatureDrift],
    fmt: Literal["table", "json"] = "table",
    config: DriftConfig | None = None,
) -> str:
    """The CLI's output in either format."""
    if fmt == "json":
        return format_json(results, config)
    if fmt == "table":
        return format_table(results, config)
    raise ValueError(f"unknown format {fmt!r} (expected 'table' or 'json')")
