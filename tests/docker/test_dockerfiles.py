"""The Dockerfiles: what goes into each image, who it runs as, and that it agrees with the rest.

No image is built here (CI has no Docker daemon and no registry access). Instead the
Dockerfiles are parsed and checked, their dependency sets are resolved from the installed
distributions' metadata, and checkov scans them.
"""

from __future__ import annotations

import importlib.util
import json
import re
import shlex
import subprocess
import tomllib
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import pytest
from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[2]
DOCKER = REPO / "docker"
OPERATOR = DOCKER / "operator.Dockerfile"
RAY = DOCKER / "ray.Dockerfile"
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
CHART = REPO / "helm" / "mlplane"

_spec = importlib.util.spec_from_file_location("_mlplane_locate", REPO / "tests/tools/locate.py")
assert _spec is not None and _spec.loader is not None
locate = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(locate)


# --- a small Dockerfile reader ---------------------------------------------------------------


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def args(self, instruction: str) -> list[str]:
        return [a for i, a in self.instructions if i == instruction]


def parse(path: Path) -> list[Stage]:
    """Stages of a Dockerfile: continuation lines joined, comments dropped."""
    logical: list[str] = []
    pending = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):  # a comment inside a continued instruction
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        logical.append(pending + line)
        pending = ""
    assert not pending, f"{path}: dangling line continuation"
    stages: list[Stage] = []
    for line in logical:
        instruction, _, rest = line.partition(" ")
        instruction = instruction.upper()
        if instruction == "FROM":
            words = rest.split()
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            stages.append(Stage(base=words[0], name=name))
        else:
            assert stages, f"{path}: {instruction} before FROM"
            stages[-1].instructions.append((instruction, rest.strip()))
    return stages


def exec_form(text: str) -> list[str]:
    value = json.loads(text)
    assert isinstance(value, list)
    return value


def commands(stage: Stage) -> list[list[str]]:
    """Every shell command of a stage's RUN instructions, as words (quotes respected)."""
    found = []
    for run in stage.args("RUN"):
        run = re.sub(r"^(--[\w-]+=\S+\s+)+", "", run)  # RUN --mount=... flags
        lexer = shlex.shlex(run, posix=True, punctuation_chars=";&|")
        lexer.whitespace_split = True
        command: list[str] = []
        for token in lexer:
            if token in {"&&", ";", "||", "|", "&"}:
                found.append(command)
                command = []
            else:
                command.append(token)
        found.append(command)
    return [c for c in found if c]


def pip_installs(stage: Stage) -> list[list[str]]:
    """The arguments of every `pip install` a stage runs."""
    return [
        c[c.index("install") + 1 :]
        for c in commands(stage)
        if "install" in c and any(w.endswith("pip") for w in c[: c.index("install")])
    ]


# --- dependency closure from installed metadata ------------------------------------------------


def closure(requirements: list[str]) -> set[str]:
    """Every distribution a set of requirements pulls in, as installed in this environment."""
    seen: set[str] = set()
    todo = [(Requirement(r), frozenset(Requirement(r).extras)) for r in requirements]
    while todo:
        req, extras = todo.pop()
        name = canonicalize_name(req.name)
        key = f"{name}[{','.join(sorted(extras))}]"
        if key in seen:
            continue
        seen.add(key)
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue  # optional on this platform; not installed here
        for text in dist.requires or []:
            sub = Requirement(text)
            if sub.marker is not None:
                envs = [{"extra": e} for e in extras] or [{"extra": ""}]
                if not any(Marker(str(sub.marker)).evaluate(env) for env in envs):
                    continue
            todo.append((sub, frozenset(sub.extras)))
    return {k.split("[")[0] for k in seen}


def extra(name: str) -> list[str]:
    return (
        PYPROJECT["project"]["dependencies"] + PYPROJECT["project"]["optional-dependencies"][name]
    )


# --- the operator image --------------------------------------------------------------------------


def test_operator_image_is_multi_stage_on_pinned_slim_python() -> None:
    stages = parse(OPERATOR)
    assert len(stages) >= 2
    for stage in stages:
        assert re.fullmatch(r"python:3\.11\.\d+-slim(-\w+)?", stage.base), stage.base
    assert len({s.base for s in stages}) == 1, "build and runtime stages must share one base"
    runtime = stages[-1]
    assert any("--from=build" in c for c in runtime.args("COPY"))


def test_operator_image_installs_the_operator_extra_only() -> None:
    build, runtime = parse(OPERATOR)[0], parse(OPERATOR)[-1]
    installs = pip_installs(build)
    assert installs == [[".[operator]"]]
    assert pip_installs(runtime) == []
    text = OPERATOR.read_text()
    assert not re.search(r"\bray\[|\bray==|mlflow\[|mlflow==|\[local\]|\[all\]|\[serving", text)


def test_operator_extra_pulls_in_neither_ray_nor_the_mlflow_server() -> None:
    deps = closure(extra("operator"))
    assert {"kopf", "kubernetes", "mlflow-skinny", "prometheus-client", "boto3"} <= deps
    forbidden = {"ray", "mlflow", "torch", "scikit-learn", "gunicorn", "flask", "sqlalchemy"}
    assert not deps & forbidden, deps & forbidden


def test_operator_runtime_has_no_build_tools() -> None:
    runtime = parse(OPERATOR)[-1]
    runs = " ".join(runtime.args("RUN"))
    assert "apt-get install" not in runs and "apk add" not in runs
    assert "pip uninstall --yes" in runs and "pip setuptools wheel" in runs
    build = " ".join(parse(OPERATOR)[0].args("RUN"))
    assert "pip uninstall --yes pip setuptools wheel" in build  # out of the copied venv too


def test_operator_runs_as_the_uid_the_chart_expects() -> None:
    runtime = parse(OPERATOR)[-1]
    assert runtime.args("USER") == ["10001:10001"]
    runs = " ".join(runtime.args("RUN"))
    assert "--uid 10001" in runs and "--gid 10001" in runs
    deployment = (CHART / "templates" / "deployment.yaml").read_text()
    assert "runAsUser: 10001" in deployment and "runAsGroup: 10001" in deployment


def test_operator_entrypoint_matches_the_chart() -> None:
    runtime = parse(OPERATOR)[-1]
    assert exec_form(runtime.args("ENTRYPOINT")[0]) == ["mlplane"]
    cmd = exec_form(runtime.args("CMD")[0])
    assert cmd[0] == "operator" and "--all-namespaces" in cmd
    assert cmd[cmd.index("--liveness") + 1] == "http://0.0.0.0:8080/healthz"
    assert cmd[cmd.index("--metrics-port") + 1] == "9090"
    assert 'command: ["mlplane"]' in (CHART / "templates" / "deployment.yaml").read_text()
    [script] = [v for k, v in PYPROJECT["project"]["scripts"].items() if k == "mlplane"]
    assert script == "mlplane.operator.cli:main"


def test_the_cli_accepts_the_default_command() -> None:
    """Parse the image's CMD with mlplane's own CLI (without running it)."""
    import typer

    from mlplane.operator.cli import app

    runtime = parse(OPERATOR)[-1]
    subcommand, *rest = exec_form(runtime.args("CMD")[0])
    group = typer.main.get_command(app)
    with group.make_context("mlplane", [subcommand, *rest], resilient_parsing=True) as ctx:
        command = group.get_command(ctx, subcommand)
        assert command is not None
        params = command.make_context(subcommand, list(rest), parent=ctx).params
    assert params["all_namespaces"] is True
    assert params["metrics_port"] == 9090


def test_operator_healthcheck_probes_the_liveness_endpoint() -> None:
    runtime = parse(OPERATOR)[-1]
    [check] = runtime.args("HEALTHCHECK")
    assert "http://127.0.0.1:8080/healthz" in check
    exposed = " ".join(runtime.args("EXPOSE")).split()
    assert exposed == ["8080", "9090"]
    env = " ".join(runtime.args("ENV"))
    assert "HOME=/tmp" in env  # the only writable path under readOnlyRootFilesystem


# --- the Ray image ---------------------------------------------------------------------------


def test_ray_image_base_matches_the_ray_pin() -> None:
    stages = parse(RAY)
    runtime = stages[-1]
    match = re.fullmatch(r"rayproject/ray:(\d+\.\d+\.\d+)-py(\d)(\d+)", runtime.base)
    assert match, runtime.base
    version, major, minor = match.groups()
    for name in ("serving", "training"):
        pins = [r for r in extra(name) if canonicalize_name(Requirement(r).name) == "ray"]
        assert [str(Requirement(p).specifier) for p in pins] == [f"=={version}"], name
    assert f"{major}.{minor}" == "3.11"
    assert re.fullmatch(r"python:3\.11\.\d+-slim(-\w+)?", stages[0].base)


def test_ray_image_installs_the_wheel_with_serving_and_training() -> None:
    runtime = parse(RAY)[-1]
    installs = pip_installs(runtime)
    assert installs == [["--no-cache-dir", "${wheel}[serving,training]"]]
    assert "/tmp/wheels/mlplane-*.whl" in " ".join(runtime.args("RUN"))
    build = parse(RAY)[0]
    assert any("pip wheel --no-deps" in r for r in build.args("RUN"))


def test_ray_image_runs_unprivileged() -> None:
    runtime = parse(RAY)[-1]
    users = runtime.args("USER")
    assert users and users[-1] not in {"0", "root"}


def test_serving_and_training_extras_need_no_operator() -> None:
    deps = closure(extra("serving") + extra("training"))
    assert "ray" in deps
    assert not {"kopf", "kubernetes", "mlflow"} & deps


# --- both images -------------------------------------------------------------------------------


@pytest.mark.parametrize("dockerfile", [OPERATOR, RAY], ids=["operator", "ray"])
def test_build_copies_every_package_folder(dockerfile: Path) -> None:
    folders = set(PYPROJECT["tool"]["setuptools"]["package-dir"].values())
    build = parse(dockerfile)[0]
    copied = {c.split()[0].rstrip("/") for c in build.args("COPY") if not c.startswith("--")}
    assert folders <= copied, folders - copied
    assert {"pyproject.toml", "README.md"} <= {
        w for c in build.args("COPY") for w in c.split()[:-1]
    }
    ignore = (dockerfile.parent / f"{dockerfile.name}.dockerignore").read_text().splitlines()
    allowed = {line[1:].rstrip("/") for line in ignore if line.startswith("!")}
    assert folders | {"pyproject.toml", "README.md"} <= allowed
    assert ignore[ignore.index("*") if "*" in ignore else -1] == "*", "context must start closed"


@pytest.mark.parametrize("dockerfile", [OPERATOR, RAY], ids=["operator", "ray"])
def test_no_latest_tags_and_no_secrets(dockerfile: Path) -> None:
    for stage in parse(dockerfile):
        assert ":" in stage.base and not stage.base.endswith(":latest"), stage.base
    text = dockerfile.read_text()
    assert not re.search(r"(?i)(password|secret|token|aws_access_key)\s*=", text)
    assert "ADD " not in text  # COPY only: no remote fetches at build time


def test_checkov_passes_the_dockerfiles(tmp_path: Path) -> None:
    try:
        checkov = locate.checkov()
    except FileNotFoundError as err:
        pytest.fail(str(err), pytrace=False)
    proc = subprocess.run(
        [str(checkov), "-d", str(DOCKER), "--framework", "dockerfile", "--skip-download",
         "--output", "json"],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert proc.returncode in (0, 1), proc.stderr[-3000:]
    report: Any = json.loads(proc.stdout)
    reports = report if isinstance(report, list) else [report]
    [docker] = [r for r in reports if r.get("check_type") == "dockerfile"]
    failed = [
        f"{c['check_id']} {c['check_name']} in {c['file_path']}"
        for c in docker["results"]["failed_checks"]
    ]
    assert failed == []
    files = {c["file_path"] for c in docker["results"]["passed_checks"]}
    assert files == {"/operator.Dockerfile", "/ray.Dockerfile"}
    for check in docker["results"]["skipped_checks"]:
        assert len(check["check_result"].get("suppress_comment", "")) >= 20, check["check_id"]
