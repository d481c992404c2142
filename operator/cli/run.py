"""``mlplane operator``: run the Kopf operator."""

from __future__ import annotations

import logging
import os
from typing import Annotated

import typer

from mlplane.operator.cli.base import (
    UserError,
    app,
    one_line_errors,
)

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
    leader_elect: Annotated[
        bool,
        typer.Option(
            "--leader-elect/--no-leader-elect",
            help="Run Kopf only while holding the Lease (MLPLANE_LEADER_*): run several "
            "replicas, one writes. Off: this process assumes it is the only operator.",
        ),
    ] = True,
) -> None:
    """Run the Kopf operator against the current Kubernetes context (or in-cluster)."""
    import asyncio

    import kopf

    import mlplane.operator.handlers  # noqa: F401 - registers the handlers
    from mlplane.operator.config import Settings

    # Fail fast, naming the variable, before connecting anywhere.
    config = Settings.from_env().config
    if not namespace and not all_namespaces:
        raise UserError("say where to watch: --all-namespaces, or --namespace NS (repeatable)")
    if metrics_port:
        from prometheus_client import start_http_server

        start_http_server(metrics_port)
    if not leader_elect:
        asyncio.run(
            kopf.operator(
                clusterwide=all_namespaces,
                namespaces=namespace or [],
                standalone=True,
                liveness_endpoint=liveness,
            )
        )
        return
    from mlplane.operator.leader_loop import kopf_work, run_with_leader_election

    work = kopf_work(clusterwide=all_namespaces, namespaces=namespace or [])
    code = asyncio.run(run_with_leader_election(config, work, liveness=liveness))
    # Nothing of the operator may outlive the lease: no thread is waited for.
    logging.shutdown()
    os._exit(code)
