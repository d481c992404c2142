"""``mlplane local``: the local platform (Ray and MLflow on this machine)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from mlplane.operator.cli.base import (
    StateDir,
    UserError,
    err,
    local_app,
    one_line_errors,
    out,
)


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
    serve_port: Annotated[
        int, typer.Option(help="Ray Serve's HTTP port: ModelDeployments answer there.")
    ] = 8000,
    metrics_port: Annotated[int, typer.Option(help="The runner's /metrics port.")] = 9464,
    prometheus_port: Annotated[
        int, typer.Option(help="Prometheus' port (started when `prometheus` is installed).")
    ] = 9090,
    num_cpus: Annotated[int | None, typer.Option(help="CPUs Ray may use (default: all).")] = None,
) -> None:
    """Start Ray and an MLflow server (SQLite, local artifacts) bound to 127.0.0.1."""
    from mlplane.operator.platforms.local import LocalPlatform, LocalPlatformError, Ports

    ports = Ports(
        ray_gcs=ray_port, ray_dashboard=dashboard_port, ray_client=ray_client_port,
        mlflow=mlflow_port, serve=serve_port, runner_metrics=metrics_port,
        prometheus=prometheus_port,
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
    out.print(f"ModelDeployments answer on http://127.0.0.1:{ports.serve}/<namespace>/<name>")
    if platform.prometheus_uri:
        out.print(f"Prometheus: {platform.prometheus_uri} (mlplane's rules and series)")
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


@local_app.command("reclaim")
@one_line_errors
def local_reclaim(
    node: Annotated[str, typer.Argument(help="The spot worker node: a prefix of its Ray node id.")],
    notice: Annotated[
        float,
        typer.Option(min=0, max=3600, help="Seconds between the notice and the kill (0: none)."),
    ] = 0.0,
    state_dir: StateDir = Path(".mlplane"),
) -> None:
    """Reclaim a Ray worker node with the `spot` resource, as a spot VM is: announce it
    `--notice` seconds ahead (what the runner reads, as the operator reads a termination taint
    on Kubernetes), then kill it with no goodbye. Waits for the kill."""
    import time

    from mlplane.operator.platforms.local import LocalPlatform, LocalPlatformError

    platform = LocalPlatform(state_dir)
    try:
        found = platform.spot_node(node)
        node_id = str(found["node_id"])
        if notice > 0:
            platform.announce_reclaim(node_id, notice)
            out.print(f"node {node_id[:16]}: reclaim notice, killed in {notice:g}s")
            time.sleep(notice)  # the notice window itself: the kill is due then, not sooner
        killed = platform.kill_node(node_id)
    except LocalPlatformError as exc:
        raise UserError(str(exc)) from None
    out.print(f"node {node_id[:16]} killed ({len(killed)} processes)")
