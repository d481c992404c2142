"""The generated rules through Prometheus's own promtool: syntax, lint, and unit tests.

`promtool test rules` replays the series in tests/monitoring/promtool/*.yaml and checks that
every alert fires when it should (with its labels and rendered annotations) and stays quiet
when it should not. promtool is required: without it these tests fail (they do not skip),
because untested alerting is what they exist to prevent.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from mlplane.monitoring import rules as r

FIXTURES = Path(__file__).parent / "promtool"
#: The deployments slo_explicit.yaml is written for (its header comment says the same).
EXPLICIT_TARGETS = [r.SLOTarget("ml", "fraud", 0.999, 250), r.SLOTarget("ml", "lenient", 0.99)]
INSTALL_HINT = (
    "promtool is not installed (it comes with Prometheus). On Debian/Ubuntu: "
    "`apt-get update && apt-get install -y --no-install-recommends prometheus`; elsewhere put "
    "the promtool binary of a Prometheus >= 2.42 release on PATH."
)


def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.fail(INSTALL_HINT, pytrace=False)
    return path


def run(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [promtool(), *args], cwd=cwd, capture_output=True, text=True, timeout=240, check=False
    )


def write_rule_files(directory: Path) -> dict[str, Path]:
    """The rule files the fixtures name, freshly generated (not the committed copies)."""
    files = {
        "mlplane-rules.yaml": r.rules_file(r.rule_groups()),
        "mlplane-rules-explicit.yaml": r.rules_file(r.rule_groups(EXPLICIT_TARGETS)),
        # What the PrometheusRule object carries, as a rule file promtool can read.
        "mlplane-prometheusrule-spec.yaml": {
            "groups": r.prometheus_rule(r.rule_groups())["spec"]["groups"]
        },
    }
    paths = {}
    for name, doc in files.items():
        paths[name] = directory / name
        paths[name].write_text(r.to_yaml(doc), encoding="utf-8")
    return paths


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("promtool")
    write_rule_files(directory)
    for fixture in FIXTURES.glob("*.yaml"):
        shutil.copy(fixture, directory / fixture.name)
    return directory


def fixtures() -> list[str]:
    return sorted(p.name for p in FIXTURES.glob("*.yaml"))


@pytest.mark.parametrize(
    "rule_file",
    ["mlplane-rules.yaml", "mlplane-rules-explicit.yaml", "mlplane-prometheusrule-spec.yaml"],
)
def test_promtool_check_rules(workdir, rule_file):
    result = run("check", "rules", "--lint=all", "--lint-fatal", rule_file, cwd=workdir)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_committed_rule_files_pass_promtool(tmp_path):
    """The committed copies too (the chart ships them); the PrometheusRule via its spec."""
    generated = r.GENERATED_DIR
    shutil.copy(generated / r.RULES_FILE, tmp_path / r.RULES_FILE)
    obj = yaml.safe_load((generated / r.PROMETHEUS_RULE_FILE).read_text(encoding="utf-8"))
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump({"groups": obj["spec"]["groups"]}))
    result = run("check", "rules", "--lint-fatal", r.RULES_FILE, "spec.yaml", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_rejects_a_broken_rule(tmp_path):
    """The check above can fail: a rule with a PromQL error is reported."""
    groups = r.rule_groups()
    groups[0]["rules"][0]["expr"] = "sum by (namespace (rate(x[5m]))"
    (tmp_path / "broken.yaml").write_text(r.to_yaml(r.rules_file(groups)), encoding="utf-8")
    result = run("check", "rules", "broken.yaml", cwd=tmp_path)
    assert result.returncode != 0


@pytest.mark.parametrize("fixture", fixtures())
def test_promtool_unit_tests(workdir, fixture):
    result = run("test", "rules", fixture, cwd=workdir)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_fixtures_exercise_every_alert_both_ways():
    """Each alert has a case where it fires and a case where it must stay quiet."""
    fired: set[str] = set()
    quiet: set[str] = set()
    for name in fixtures():
        doc = yaml.safe_load((FIXTURES / name).read_text(encoding="utf-8"))
        for case in doc["tests"]:
            for check in case.get("alert_rule_test", []):
                (fired if check.get("exp_alerts") else quiet).add(check["alertname"])
    every = {
        rule["alert"]
        for targets in (None, EXPLICIT_TARGETS)
        for group in r.rule_groups(targets)
        for rule in group["rules"]
        if "alert" in rule
    }
    assert every - fired == set(), "alerts never shown to fire"
    assert every - quiet == set(), "alerts never shown to stay quiet"


def test_fixtures_pin_the_group_order_of_the_generated_rules():
    """Recording groups before alert groups, so alerts see SLIs of the same instant."""
    order = [g["name"] for g in r.rule_groups()]
    for name in fixtures():
        doc = yaml.safe_load((FIXTURES / name).read_text(encoding="utf-8"))
        assert doc["group_eval_order"] == order, name


def test_a_wrong_expectation_fails(workdir):
    """promtool really compares: flip one expectation and the fixture fails."""
    doc = yaml.safe_load((FIXTURES / "training.yaml").read_text(encoding="utf-8"))
    for check in doc["tests"][0]["alert_rule_test"]:
        if check["alertname"] == "MlplaneTrainingJobFailed" and not check["exp_alerts"]:
            check["exp_alerts"] = [{"exp_labels": {"severity": "ticket", "namespace": "ml"}}]
    (workdir / "training-wrong.yaml").write_text(yaml.safe_dump(doc), encoding="utf-8")
    result = run("test", "rules", "training-wrong.yaml", cwd=workdir)
    assert result.returncode != 0
    assert "MlplaneTrainingJobFailed" in result.stdout + result.stderr
