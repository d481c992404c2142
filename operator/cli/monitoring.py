"""``mlplane monitoring``, ``dashboards`` and ``drift``: rules, dashboards, statistics."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from mlplane.operator.cli.base import (
    REPO_ROOT,
    UserError,
    dashboards_app,
    drift_app,
    monitoring_app,
    one_line_errors,
    out,
)

# --- monitoring ----------------------------------------------------------------------------------


def monitoring_output_dirs() -> tuple[Path, Path]:
    """The committed generated files, and the Helm chart's ``files/`` that ships them."""
    return REPO_ROOT / "monitoring" / "generated", REPO_ROOT / "helm" / "mlplane" / "files"


def sync_chart_monitoring(generated: Path, chart_files: Path) -> list[Path]:
    """Copy the plain rules file and the dashboards into the chart (only changed files).

    Only the rules file with top-level ``groups`` goes to the chart: the PrometheusRule
    variant holds the same groups, and shipping both would load every alert twice.
    """
    wanted = {chart_files / "rules" / "mlplane-rules.yaml": generated / "mlplane-rules.yaml"}
    for dashboard in sorted((generated / "dashboards").glob("*.json")):
        wanted[chart_files / "dashboards" / dashboard.name] = dashboard
    changed = []
    for target, source in wanted.items():
        target.parent.mkdir(parents=True, exist_ok=True)
        if not target.exists() or target.read_bytes() != source.read_bytes():
            target.write_bytes(source.read_bytes())
            changed.append(target)
    for folder in ("rules", "dashboards"):
        for stale in (chart_files / folder).glob("*"):
            if stale not in wanted and not stale.name.startswith("."):
                stale.unlink()
                changed.append(stale)
    return changed


@monitoring_app.command("generate")
@one_line_errors
def monitoring_generate() -> None:
    """Regenerate the rules and dashboards (monitoring/generated/) and the chart's copies."""
    from mlplane.monitoring.rules import write_generated

    generated, chart_files = monitoring_output_dirs()
    written = write_generated(generated)
    changed = sync_chart_monitoring(generated, chart_files)
    out.print(f"generated {len(written)} files; chart copies changed: {len(changed)}")


@monitoring_app.command("rules")
@one_line_errors
def monitoring_rules(
    deployments: Annotated[
        Path | None,
        typer.Option(help="ModelDeployment YAML: inline their SLOs instead of target gauges."),
    ] = None,
    kind: Annotated[str, typer.Option(help="rules (a rule file) or prometheusrule.")] = "rules",
    name: Annotated[str, typer.Option(help="PrometheusRule name.")] = "mlplane",
    namespace: Annotated[str, typer.Option(help="PrometheusRule namespace.")] = "mlplane-system",
    label: Annotated[
        list[str] | None, typer.Option(help="PrometheusRule label k=v (repeatable).")
    ] = None,
) -> None:
    """Print the Prometheus rules (SLO burn rates, drift, training, operator)."""
    from mlplane.monitoring.rules import load_slo_targets, render_rules

    if kind not in ("rules", "prometheusrule"):
        raise UserError(f"--kind must be rules or prometheusrule (got {kind!r})")
    labels = {}
    for item in label or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UserError(f"--label must be key=value (got {item!r})")
        labels[key] = value
    targets = load_slo_targets(deployments) if deployments else None
    sys.stdout.write(
        render_rules(targets, kind=kind, name=name, namespace=namespace, labels=labels or None)
    )


@dashboards_app.command("push")
@one_line_errors
def dashboards_push(
    grafana_url: Annotated[str, typer.Option(help="Grafana base URL.")],
    token: Annotated[
        str | None, typer.Option(envvar="GRAFANA_TOKEN", help="API token ($GRAFANA_TOKEN).")
    ] = None,
    user: Annotated[str | None, typer.Option(help="Basic-auth user.")] = None,
    password: Annotated[
        str | None, typer.Option(envvar="GRAFANA_PASSWORD", help="Basic-auth password.")
    ] = None,
    folder: Annotated[str, typer.Option(help="Grafana folder title.")] = "mlplane",
) -> None:
    """Create or update mlplane's dashboards in a Grafana (through its HTTP API)."""
    from mlplane.monitoring.grafana_push import GrafanaPushError, push_dashboards

    if user and not password:
        raise UserError("--user needs --password (or $GRAFANA_PASSWORD)")
    try:
        results = push_dashboards(
            grafana_url, token=token, basic_auth=(user, password) if user else None,  # type: ignore[arg-type]
            folder=folder,
        )  # fmt: skip
    except GrafanaPushError as exc:
        raise UserError(str(exc)) from None
    for result in results:
        out.print(str(result), highlight=False)


@drift_app.command("compare")
@one_line_errors
def drift_compare(
    reference: Annotated[Path, typer.Option(help="Reference data: CSV or Parquet.")],
    current: Annotated[Path, typer.Option(help="Current data: CSV or Parquet.")],
    output: Annotated[str, typer.Option("--format", help="table or json.")] = "table",
    alpha: Annotated[float, typer.Option(help="Significance level per window.")] = 0.01,
    correction: Annotated[str, typer.Option(help="holm, bh or none.")] = "holm",
    columns: Annotated[list[str] | None, typer.Option(help="Only these columns.")] = None,
    exclude: Annotated[list[str] | None, typer.Option(help="Leave these columns out.")] = None,
    fail_on_drift: Annotated[
        bool, typer.Option(help="Exit 1 when any column drifted (for CI gates).")
    ] = False,
) -> None:
    """Per column: method, statistic, p-value, drifted; the same code as live monitoring."""
    from mlplane.monitoring.drift import DriftConfig, summarize
    from mlplane.monitoring.drift_files import compare_files, render

    if output not in ("table", "json"):
        raise UserError(f"--format must be table or json (got {output!r})")
    if correction not in ("holm", "bh", "none"):
        raise UserError(f"--correction must be holm, bh or none (got {correction!r})")
    config = DriftConfig(alpha=alpha, correction=correction)  # type: ignore[arg-type]
    rows = compare_files(reference, current, config=config, columns=columns or None,
                         exclude=tuple(exclude or ()))  # fmt: skip
    sys.stdout.write(render(rows, output, config).rstrip("\n") + "\n")  # type: ignore[arg-type]
    if fail_on_drift and summarize(rows)["drifted"]:
        raise typer.Exit(1)
