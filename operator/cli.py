"""The ``mlplane`` command line: one entry for users, CI and the operator image.

Every command turns expected failures (bad input, a busy port, a server that is down) into one
clear line on stderr and a non-zero exit; a traceback means a bug in mlplane.
Heavy imports (Kopf, Ray, MLflow) happen inside the commands that need them, so
``mlplane validate`` stays fast and works with the base install.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from functools import wraps
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
import yaml
from rich.console import Console
from rich.table import Table

from mlplane.crds import BY_KIND, KINDS
from mlplane.crds.validate import Document, check, load, parse

app = typer.Typer(
    name="mlplane",
    help="mlplane: train on spot GPUs, serve, A/B test and watch models on Ray.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
crds_app = typer.Typer(
    help="Print or regenerate the CustomResourceDefinitions.", no_args_is_help=True
)
local_app = typer.Typer(
    help="The local platform: Ray and MLflow on this machine.", no_args_is_help=True
)
app.add_typer(crds_app, name="crds")
app.add_typer(local_app, name="local")

out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)
F = TypeVar("F", bound=Callable[..., Any])

REPO_ROOT = Path(__file__).resolve().parent.parent


class UserError(Exception):
    """An expected failure: reported as one line, exit code 1 (or ``code``)."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


def one_line_errors(func: F) -> F:
    """Report :class:`UserError` and ``ValueError``/``OSError`` as ``error: ...`` and exit 1."""

    @wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except typer.Exit:
            raise
        except UserError as exc:
            err.print(f"[red]error:[/red] {exc}", highlight=False, soft_wrap=True)
            raise typer.Exit(exc.code) from None
        except (ValueError, OSError, RuntimeError) as exc:
            err.print(f"[red]error:[/red] {exc}", highlight=False, soft_wrap=True)
            raise typer.Exit(1) from None

    return wrapper  # type: ignore[return-value]


# --- crds ----------------------------------------------------------------------------------------


@crds_app.command("print")
@one_line_errors
def crds_print(
    kind: Annotated[str | None, typer.Option(help="Only this kind (e.g. TrainingJob).")] = None,
) -> None:
    """Print the CRDs as one YAML stream (pipe it to `kubectl apply -f -`)."""
    from mlplane.crds.schema import render_crd

    kinds = KINDS
    if kind:
        if kind not in BY_KIND:
            raise UserError(f"unknown kind {kind!r} (mlplane kinds: {', '.join(BY_KIND)})")
        kinds = (BY_KIND[kind],)
    sys.stdout.write("---\n".join(render_crd(k) for k in kinds))


def crd_output_dirs() -> list[Path]:
    """Where generated CRDs are committed: ``crds/`` and the Helm chart's ``crds/``."""
    from mlplane.crds.schema import CRD_DIR

    return [CRD_DIR, REPO_ROOT / "helm" / "mlplane" / "crds"]


@crds_app.command("generate")
@one_line_errors
def crds_generate(
    check_only: Annotated[
        bool, typer.Option("--check", help="Change nothing; exit 1 if a file is stale.")
    ] = False,
) -> None:
    """Write the CRD YAML generated from the API types into crds/ and the Helm chart."""
    from mlplane.crds.schema import render_all, write_all

    dirs = crd_output_dirs()
    if check_only:
        stale = [
            str(d / name)
            for d in dirs
            for name, text in render_all().items()
            if not (d / name).exists() or (d / name).read_text() != text
        ]
        if stale:
            raise UserError(f"stale: {', '.join(stale)}; run `mlplane crds generate`")
        out.print("CRDs are up to date.")
        return
    changed = write_all(dirs)
    for path in changed:
        out.print(f"wrote {path}")
    if not changed:
        out.print("CRDs are up to date.")


# --- validate and render -------------------------------------------------------------------------


def _documents(files: list[Path]) -> list[Document]:
    documents: list[Document] = []
    for path in files:
        if not path.exists():
            raise UserError(f"{path}: no such file or directory")
        documents.extend(load(path))
    if not documents:
        raise UserError("no documents found in " + ", ".join(map(str, files)))
    return documents


@app.command()
@one_line_errors
def validate(
    files: Annotated[
        list[Path], typer.Option("-f", "--filename", help="A YAML file or a folder of them.")
    ],
) -> None:
    """Check resources as the API server and the operator would: one line per problem."""
    bad = 0
    documents = _documents(files)
    for document in documents:
        problems = check(document.body)
        if problems:
            bad += 1
            for problem in problems:
                err.print(f"{document.label}: {problem}", highlight=False, soft_wrap=True)
        else:
            out.print(f"{document.label}: valid", highlight=False)
    if bad:
        raise UserError(f"{bad} of {len(documents)} resources are invalid")


@app.command()
@one_line_errors
def render(
    files: Annotated[list[Path], typer.Option("-f", "--filename", help="A YAML file or folder.")],
    model_version: Annotated[
        int | None,
        typer.Option(help="Model version standing in for the registry lookup of an alias."),
    ] = None,
) -> None:
    """Print, as YAML, the Kubernetes objects the operator would create for each resource."""
    from mlplane.operator.config import OperatorConfig

    config = OperatorConfig.from_env()
    resources = []
    for document in _documents(files):
        problems = check(document.body)
        if problems:
            raise UserError(f"{document.label}: {problems[0]}" + (
                f" (and {len(problems) - 1} more; run `mlplane validate`)" if len(problems) > 1
                else ""
            ))  # fmt: skip
        resources.append(parse(document.body))
    from mlplane.operator.builders import render as build

    objects: list[dict[str, Any]] = []
    for resource in resources:
        objects.extend(build(resource, config, model_version=model_version))
    sys.stdout.write(yaml.safe_dump_all(objects, sort_keys=False, width=100))


# --- local platform ------------------------------------------------------------------------------

StateDir = Annotated[
    Path, typer.Option("--state-dir", help="Where the local platform keeps its state and logs.")
]


def _health_table(platform: Any) -> tuple[Table, bool]:
    table = Table("component", "healthy", "address", "pid", "detail")
    healthy = True
    for c in platform.health():
        healthy &= c.healthy
        mark = "[green]yes[/green]" if c.healthy else "[red]no[/red]"
        table.add_row(c.name, mark, c.address or "", str(c.pid or ""), c.detail)
    return table, healthy


@local_app.command("up")
@one_line_errors
def local_up(
    state_dir: StateDir = Path(".mlplane"),
    mlflow_port: Annotated[int, typer.Option(help="MLflow server port.")] = 5000,
    ray_port: Annotated[int, typer.Option(help="Ray GCS port.")] = 6379,
    dashboard_port: Annotated[int, typer.Option(help="Ray dashboard / Jobs API port.")] = 8265,
    ray_client_port: Annotated[int, typer.Option(help="Ray client server port.")] = 10001,
    num_cpus: Annotated[int | None, typer.Option(help="CPUs Ray may use (default: all).")] = None,
) -> None:
    """Start Ray and an MLflow server (SQLite, local artifacts) bound to 127.0.0.1."""
    from mlplane.operator.platforms.local import LocalPlatform, LocalPlatformError, Ports

    ports = Ports(
        ray_gcs=ray_port, ray_dashboard=dashboard_port, ray_client=ray_client_port,
        mlflow=mlflow_port,
    )  # fmt: skip
    platform = LocalPlatform(state_dir, ports)
    with err.status("starting Ray and MLflow (about 15 s)..."):
        try:
            platform.up(num_cpus=num_cpus)
        except LocalPlatformError as exc:
            raise UserError(str(exc)) from None
    table, _ = _health_table(platform)
    out.print(table)
    out.print(f"MLflow UI: {platform.mlflow_uri}   Ray dashboard: {platform.ray_dashboard}")
    out.print("Stop everything with: mlplane local down")


@local_app.command("down")
@one_line_errors
def local_down(state_dir: StateDir = Path(".mlplane")) -> None:
    """Stop what `local up` started (by recorded PID); data in the state folder is kept."""
    from mlplane.operator.platforms.local import LocalPlatform, LocalPlatformError

    try:
        stopped = LocalPlatform(state_dir).down()
    except LocalPlatformError as exc:
        raise UserError(str(exc)) from None
    out.print(f"stopped: {', '.join(stopped)}" if stopped else "nothing was running")


@local_app.command("status")
@one_line_errors
def local_status(
    state_dir: StateDir = Path(".mlplane"),
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Show whether Ray and MLflow are running and answering; exit 1 when not."""
    from dataclasses import asdict

    from mlplane.operator.platforms.local import LocalPlatform

    platform = LocalPlatform(state_dir)
    if as_json:
        health = platform.health()
        sys.stdout.write(json.dumps([asdict(c) for c in health], indent=2) + "\n")
        healthy = all(c.healthy for c in health)
    else:
        table, healthy = _health_table(platform)
        out.print(table)
    if not healthy:
        raise typer.Exit(1)


# --- operator ------------------------------------------------------------------------------------


@app.command("operator")
@one_line_errors
def run_operator(
    namespace: Annotated[
        list[str] | None, typer.Option("--namespace", "-n", help="Watch only these namespaces.")
    ] = None,
    all_namespaces: Annotated[
        bool, typer.Option("--all-namespaces", "-A", help="Watch the whole cluster.")
    ] = False,
    liveness: Annotated[
        str | None, typer.Option(help="Liveness endpoint, e.g. http://0.0.0.0:8080/healthz.")
    ] = None,
    metrics_port: Annotated[int, typer.Option(help="Prometheus /metrics port (0: off).")] = 9090,
) -> None:
    """Run the Kopf operator against the current Kubernetes context (or in-cluster)."""
    import asyncio

    import kopf

    import mlplane.operator.handlers  # noqa: F401 - registers the handlers
    from mlplane.operator.config import OperatorConfig

    OperatorConfig.from_env()  # fail fast, naming the variable, before connecting anywhere
    if not namespace and not all_namespaces:
        raise UserError("say where to watch: --all-namespaces, or --namespace NS (repeatable)")
    if metrics_port:
        from prometheus_client import start_http_server

        start_http_server(metrics_port)
    asyncio.run(
        kopf.operator(
            clusterwide=all_namespaces,
            namespaces=namespace or [],
            standalone=True,
            liveness_endpoint=liveness,
        )
    )


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    main()
