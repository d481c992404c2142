"""compare_files on CSV and Parquet written to tmp_path, its errors and its two output formats."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from mlplane.monitoring.drift import DriftConfig
from mlplane.monitoring.drift_files import (
    compare_files,
    format_json,
    format_table,
    profile_file,
    render,
)


def _frames(n: int = 6000):
    rng = np.random.default_rng(17)
    reference = pd.DataFrame(
        {
            "amount": rng.gamma(2.0, 10.0, n),
            "age": rng.integers(18, 90, n),
            "country": rng.choice(["DE", "FR", "US"], n),
            "steady": rng.normal(size=n),
        }
    )
    current = pd.DataFrame(
        {
            "amount": rng.gamma(2.0, 12.0, n),  # scale change
            "age": rng.integers(18, 90, n),
            "country": rng.choice(["DE", "FR", "US", "IT"], n, p=[0.3, 0.3, 0.3, 0.1]),
            "steady": rng.normal(size=n),
        }
    )
    return reference, current


def _write(frame: pd.DataFrame, path):
    if str(path).endswith((".parquet", ".pq")):
        frame.to_parquet(path, index=False)
    else:
        frame.to_csv(path, index=False, sep="\t" if str(path).endswith(".tsv") else ",")
    return path


@pytest.mark.parametrize(
    ("ref_name", "cur_name"),
    [("ref.csv", "cur.csv"), ("ref.parquet", "cur.parquet"), ("ref.csv", "cur.pq"),
     ("ref.parquet", "cur.csv.gz"), ("ref.tsv", "cur.csv")],
)  # fmt: skip
def test_compare_finds_the_drifted_columns(tmp_path, ref_name, cur_name):
    reference, current = _frames()
    ref = _write(reference, tmp_path / ref_name)
    cur = _write(current, tmp_path / cur_name)
    rows = compare_files(ref, cur)
    assert [r.feature for r in rows] == ["amount", "age", "country", "steady"]
    assert {r.feature for r in rows if r.drifted} == {"amount", "country"}
    kinds = {r.feature: r.kind for r in rows}
    assert kinds == {"amount": "numeric", "age": "numeric", "country": "categorical",
                     "steady": "numeric"}  # fmt: skip
    assert all(r.n_current == len(current) for r in rows)


def test_streaming_the_current_file_in_chunks_changes_nothing(tmp_path):
    reference, current = _frames()
    ref = _write(reference, tmp_path / "ref.parquet")
    for name in ("cur.csv", "cur.parquet"):
        cur = _write(current, tmp_path / name)
        whole = compare_files(ref, cur)
        chunked = compare_files(ref, cur, chunk_rows=700)
        assert [r.to_dict() for r in whole] == [r.to_dict() for r in chunked]


def test_column_selection_and_kind_overrides(tmp_path):
    reference, current = _frames()
    ref = _write(reference, tmp_path / "ref.csv")
    cur = _write(current.drop(columns=["steady"]), tmp_path / "cur.csv")
    with pytest.raises(
        ValueError, match=r"'steady' is in the reference file .* but not in the current"
    ):
        compare_files(ref, cur)
    assert [r.feature for r in compare_files(ref, cur, exclude=["steady"])] == [
        "amount",
        "age",
        "country",
    ]
    rows = compare_files(ref, cur, columns=["country", "age"], categorical=["age"])
    assert [(r.feature, r.kind) for r in rows] == [
        ("country", "categorical"),
        ("age", "categorical"),
    ]
    with pytest.raises(ValueError, match="'steady' is not in the current file"):
        compare_files(ref, cur, columns=["steady"])


def test_a_column_only_in_the_current_file_is_named(tmp_path):
    reference, current = _frames()
    ref = _write(reference, tmp_path / "ref.parquet")
    cur = _write(current.assign(extra=1.0), tmp_path / "cur.parquet")
    with pytest.raises(ValueError, match="'extra' is in the current file"):
        compare_files(ref, cur)


def test_empty_and_unreadable_inputs_give_clear_errors(tmp_path):
    reference, current = _frames()
    ref = _write(reference, tmp_path / "ref.csv")
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    with pytest.raises(ValueError, match=r"current file .*empty\.csv is empty"):
        compare_files(ref, empty)
    with pytest.raises(ValueError, match=r"reference file .*empty\.csv is empty"):
        compare_files(empty, ref)
    header_only = _write(current.iloc[:0], tmp_path / "header.csv")
    with pytest.raises(ValueError, match="header but no rows"):
        compare_files(ref, header_only)
    with pytest.raises(ValueError, match="header but no rows"):
        compare_files(header_only, ref)
    with pytest.raises(ValueError, match="unsupported file type"):
        compare_files(ref, _write(current, tmp_path / "cur.csv").rename(tmp_path / "cur.xlsx"))
    with pytest.raises(ValueError, match="does not exist"):
        compare_files(ref, tmp_path / "nope.csv")
    # A numeric column that turns into text is named, with the file.
    bad = current.assign(steady=["x"] * len(current))
    with pytest.raises(ValueError, match=r"current file .*bad\.csv.*'steady'"):
        compare_files(ref, _write(bad, tmp_path / "bad.csv"))


def test_table_and_json_formats(tmp_path):
    reference, current = _frames()
    rows = compare_files(
        _write(reference, tmp_path / "ref.csv"), _write(current.iloc[:300], tmp_path / "cur.csv")
    )
    # 300 rows < min_samples: no verdicts, said so.
    table = format_table(rows)
    assert "no verdict for 4" in table
    rows = compare_files(tmp_path / "ref.csv", _write(current, tmp_path / "cur2.csv"))
    table = render(rows, "table")
    lines = table.splitlines()
    assert lines[0].split()[:3] == ["feature", "kind", "method"]
    assert any(line.startswith("amount") and line.endswith("YES") for line in lines)
    assert lines[-1].startswith("drifted: 2 of 4 tested features (amount, country)")
    doc = json.loads(format_json(rows, DriftConfig()))
    assert doc["format"] == "mlplane.drift/v1"
    assert doc["summary"]["drifted"] == ["amount", "country"]
    assert doc["config"]["correction"] == "holm"
    assert {r["feature"] for r in doc["results"]} == {"amount", "age", "country", "steady"}
    with pytest.raises(ValueError, match="unknown format"):
        render(rows, "yaml")  # type: ignore[arg-type]


def test_profile_file_builds_the_reference_profile(tmp_path):
    reference, _ = _frames()
    prof = profile_file(_write(reference, tmp_path / "train.parquet"))
    assert prof.names == ["amount", "age", "country", "steady"]
    assert prof.rows == len(reference)
    assert prof.metadata["source"] == "train.parquet"
