"""The command line as users meet it: one line per problem, exit codes, no tracebacks."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
MLPLANE = str(Path(sys.executable).parent / "mlplane")
INVALID = sorted((REPO / "tests" / "crds" / "invalid").glob("*.yaml"))


def mlplane(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    return subprocess.run([MLPLANE, *args], cwd=cwd, capture_output=True, text=True, timeout=120,
                          check=False)  # fmt: skip


def test_validate_accepts_every_example():
    result = mlplane("validate", "-f", "crds/examples")
    assert result.returncode == 0, result.stderr
    assert result.stdout.count(": valid") == len(list((REPO / "crds/examples").glob("*.yaml")))


def test_validate_rejects_the_whole_invalid_corpus_one_line_per_problem():
    result = mlplane("validate", "-f", "tests/crds/invalid")
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert lines[-1] == f"error: {len(INVALID)} of {len(INVALID)} resources are invalid"
    for path in INVALID:
        expected = path.read_text().splitlines()[0].removeprefix("# expect: ")
        mine = [line for line in lines if line.startswith(f"tests/crds/invalid/{path.name}: ")]
        assert mine, f"no line for {path.name}"
        assert any(expected in line for line in mine), (expected, mine)


def test_validate_mixed_files_exit_non_zero(tmp_path):
    good = yaml.safe_load((REPO / "crds/examples/abtest.yaml").read_text())
    bad = {**good, "metadata": {"name": "bad"}, "spec": {**good["spec"], "deployment": "Bad_Name"}}
    stream = tmp_path / "both.yaml"
    stream.write_text(yaml.safe_dump_all([good, bad]))
    result = mlplane("validate", "-f", str(stream))
    assert result.returncode == 1
    assert "both.yaml#1: ABTest/churn-candidate: valid" in result.stdout
    assert (
        "both.yaml#2: ABTest/bad: spec.deployment: must be a lowercase DNS label" in result.stderr
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("validate", "-f", "no/such/file.yaml"), "error: no/such/file.yaml: no such file"),
        (("crds", "print", "--kind", "Nope"), "error: unknown kind 'Nope'"),
        (("operator",), "error: say where to watch"),
    ],
)
def test_errors_are_one_clear_line(args, message):
    result = mlplane(*args)
    assert result.returncode == 1
    assert result.stderr.strip() == result.stderr.strip().splitlines()[0]
    assert result.stderr.startswith(message), result.stderr
    assert "Traceback" not in result.stderr


def test_operator_with_a_bad_setting_stops_before_connecting(monkeypatch):
    """Every setting is read at start (``config.Settings``): a bad one is one line naming it."""
    monkeypatch.setenv("MLPLANE_RESOLVE_INTERVAL", "soon")
    result = mlplane("operator", "-A")
    assert result.returncode == 1
    assert result.stderr.strip() == (
        "error: MLPLANE_RESOLVE_INTERVAL must be a number from 0.1 to 86400 (got 'soon')"
    ), result.stderr


def test_bad_yaml_is_one_line(tmp_path):
    bad = tmp_path / "broken.yaml"
    bad.write_text("spec: [\n")
    result = mlplane("validate", "-f", str(bad))
    assert result.returncode == 1
    assert "not valid YAML" in result.stderr
    assert "Traceback" not in result.stderr


def test_crds_generate_check_passes_on_the_committed_files():
    result = mlplane("crds", "generate", "--check")
    assert result.returncode == 0, result.stderr


def test_crds_print_is_applyable_yaml():
    result = mlplane("crds", "print")
    docs = list(yaml.safe_load_all(result.stdout))
    assert [d["spec"]["names"]["kind"] for d in docs] == [
        "TrainingJob",
        "ModelDeployment",
        "ABTest",
    ]


def test_local_status_before_up_says_how_to_start(tmp_path):
    result = mlplane("local", "status", "--state-dir", str(tmp_path / "state"), "--json")
    assert result.returncode == 1
    assert "run `mlplane local up`" in result.stdout


def test_render_refuses_invalid_input_with_the_field():
    result = mlplane("render", "-f", "tests/crds/invalid/md-min-over-max.yaml")
    assert result.returncode == 1
    assert "spec.replicas.min: replicas.min must not exceed replicas.max" in result.stderr


def test_validate_warns_that_autoscaling_bounds_are_ignored_under_kueue(tmp_path):
    """Issue 12: minReplicas/maxReplicas under queueName is valid, but Kueue admits a RayJob at
    a fixed size; say so instead of ignoring the bounds silently."""
    body = yaml.safe_load((REPO / "crds/examples/trainingjob-gpu-spot.yaml").read_text())
    body["spec"]["queueName"] = "gpu-queue"
    path = tmp_path / "queued.yaml"
    path.write_text(yaml.safe_dump(body))
    result = mlplane("validate", "-f", str(path))
    assert result.returncode == 0, result.stderr
    assert f"{path}: TrainingJob/{body['metadata']['name']}: valid" in result.stdout
    group = body["spec"]["workers"][0]
    assert (
        f"{path}: TrainingJob/{body['metadata']['name']}: warning: spec.workers[0]: "
        f"minReplicas/maxReplicas are ignored with spec.queueName"
    ) in result.stderr
    assert f"runs at exactly replicas ({group['replicas']})" in result.stderr
    plain = mlplane("validate", "-f", "crds/examples/trainingjob-gpu-spot.yaml")
    assert "warning" not in plain.stderr


def test_get_and_describe_show_interval_c_m_hours_waste_and_cost(tmp_path):
    """``get tj`` and ``describe tj`` read the spot part of status the operator wrote."""
    from mlplane.operator.platforms.store import Store

    store = Store(tmp_path)
    body = yaml.safe_load((REPO / "crds/examples/trainingjob-local-sklearn.yaml").read_text())
    body["metadata"]["namespace"] = "default"
    store.apply(body)
    stored = store.get("TrainingJob", "default", body["metadata"]["name"])
    store.write_status(stored, {
        "phase": "Running", "attempts": 2, "preemptions": 1,
        "currentAttempt": {"number": 2, "rayJob": "x-a2", "capacity": "Spot"},
        "checkpoint": {"interval": "Auto", "intervalSeconds": 754.0, "writeSeconds": 12.5,
                       "meanTimeBetweenReclaimsSeconds": 22740.0},
        "cost": {"spotGpuHours": 3.5, "onDemandGpuHours": 0.25, "lostGpuHours": 0.4,
                 "estimatedCost": 1.3, "lostCost": 0.12, "currency": "EUR"},
        "returnsToSpot": 1,
        "spotReturn": {"backoff": 1, "lastReturnAttempt": 2,
                       "lastReturnTime": "2026-12-03T10:00:00Z"},
    })  # fmt: skip
    name = body["metadata"]["name"]
    got = mlplane("get", "tj", "--state-dir", str(tmp_path))
    assert got.returncode == 0, got.stderr
    assert "INTERVAL-S" in got.stdout and "LOST-GPU-H" in got.stdout  # the CRD's printer columns
    row = next(line for line in got.stdout.splitlines() if line.startswith(name))
    assert "754.0" in row and "3.5" in row and "0.25" in row and "0.4" in row
    described = mlplane("describe", "tj", name, "--state-dir", str(tmp_path))
    assert described.returncode == 0, described.stderr
    text = described.stdout
    assert "Checkpoint interval" in text and "12m34s (Auto)" in text
    assert "Checkpoint write time (C)" in text and "12.5s" in text
    assert "Mean time between reclaims (M)" in text and "6h19m" in text
    assert "3.50 / 0.25" in text and "1.30 EUR (lost: 0.12)" in text
    assert "Returns to spot" in text and "attempt 2 at 2026-12-03T10:00:00Z" in text
    assert "RETURNS" in got.stdout


def test_get_and_describe_show_the_last_reclaim_notice(tmp_path):
    """When, which signal, where, and the checkpoint it was answered with."""
    from mlplane.operator.platforms.store import Store

    store = Store(tmp_path)
    body = yaml.safe_load((REPO / "crds/examples/trainingjob-local-sklearn.yaml").read_text())
    body["metadata"]["namespace"] = "default"
    store.apply(body)
    stored = store.get("TrainingJob", "default", body["metadata"]["name"])
    store.write_status(stored, {
        "phase": "Running", "attempts": 1,
        "currentAttempt": {"number": 1, "rayJob": "x-a1", "capacity": "Spot"},
        "lastNotice": {"id": "attempt-1-notice-1", "attempt": 1, "sequence": 1,
                       "signal": "aws-node-termination-handler/spot-itn", "node": "ip-10-0-1-7",
                       "time": "2026-12-03T10:00:00Z", "deadline": "2026-12-03T10:02:00Z",
                       "deliveredTime": "2026-12-03T10:00:03Z",
                       "checkpoint": {"uri": "s3://ckpt/x/step-000000000417", "step": 417}},
    })  # fmt: skip
    name = body["metadata"]["name"]
    got = mlplane("get", "tj", "--state-dir", str(tmp_path))
    assert got.returncode == 0, got.stderr
    assert "NOTICE-CKPT" in got.stdout
    row = next(line for line in got.stdout.splitlines() if line.startswith(name))
    assert "417" in row
    described = mlplane("describe", "tj", name, "--state-dir", str(tmp_path))
    assert described.returncode == 0, described.stderr
    text = " ".join(described.stdout.split())
    assert "Last reclaim notice" in text
    assert "aws-node-termination-handler/spot-itn at 2026-12-03T10:00:00Z" in text
    assert "checkpoint taken: step 417" in text
