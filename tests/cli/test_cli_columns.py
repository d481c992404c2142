"""``mlplane get`` shows what ``kubectl get`` shows: the columns and short names come from the
CRDs (the API types that generate ``additionalPrinterColumns`` and ``shortNames``)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import yaml

from mlplane.crds import KINDS
from mlplane.crds.schema import CRD_DIR
from mlplane.operator.cli.resources import COLUMNS, KIND_ALIASES
from mlplane.operator.platforms.store import Store

BIN = Path(sys.executable).parent


def crd(kind: str) -> dict:
    [path] = [p for p in CRD_DIR.glob("mlplane.dev_*.yaml")
              if yaml.safe_load(p.read_text())["spec"]["names"]["kind"] == kind]  # fmt: skip
    return yaml.safe_load(path.read_text())


def test_columns_and_short_names_agree_with_the_generated_crds():
    for kind in KINDS:
        spec = crd(kind.kind_name)["spec"]
        printer = spec["versions"][0]["additionalPrinterColumns"]
        assert COLUMNS[kind.kind_name] == ["NAME", *(c["name"].upper() for c in printer)]
        names = spec["names"]
        for alias in (*names["shortNames"], names["singular"], names["plural"]):
            assert KIND_ALIASES[alias] == kind.kind_name


def test_get_prints_the_crd_columns_from_the_status(tmp_path):
    store = Store(tmp_path)
    store.apply(
        yaml.safe_load((CRD_DIR / "examples" / "trainingjob-local-sklearn.yaml").read_text())
    )
    body = store.list("TrainingJob")[0]
    store.write_status(body, {
        "phase": "Running", "attempts": 2, "preemptions": 1,
        "currentAttempt": {"number": 2, "capacity": "OnDemand"},
        "lastCheckpoint": {"step": 120}, "mlflow": {"modelVersion": "7"},
    })  # fmt: skip
    result = subprocess.run(
        [str(BIN / "mlplane"), "get", "tj", "--state-dir", str(tmp_path),
         "-n", body["metadata"]["namespace"]],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    header, row = result.stdout.splitlines()[:2]
    assert header.split() == COLUMNS["TrainingJob"]
    assert row.split()[:7] == [body["metadata"]["name"], "Running", "2", "1", "OnDemand", "120",
                               "7"]  # fmt: skip
