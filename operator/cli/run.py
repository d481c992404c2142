"""``mlplane operator``: run the Kopf operator."""

from __future__ import annotations

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
) -> None:
    """Run the Kopf operator against the current Kubernetes context (or in-cluster)."""
    import asyncio

    import kopf

    import mlplane.operator.handlers  # noqa: F401 - registers the handlers
    from mlplane.operator.config import Settings

    Settings.from_env()  # fail fast, naming the variable, before connecting anywhere
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
