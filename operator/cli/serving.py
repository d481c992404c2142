"""``predict`` and ``traffic``: talk to a ModelDeployment's endpoint."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from mlplane.operator.cli.base import (
    StateDir,
    UserError,
    app,
    one_line_errors,
    out,
    store_at,
)


@app.command()
@one_line_errors
def predict(
    name: Annotated[str, typer.Argument(help="The ModelDeployment.")],
    file: Annotated[
        Path,
        typer.Option(
            "-f",
            "--filename",
            help='JSON body: {"records": [{...}, ...]} or {"inputs": {column: [...]}}.',
        ),
    ],
    namespace: Annotated[str, typer.Option("-n", "--namespace")] = "default",
    state_dir: StateDir = Path(".mlplane"),
) -> None:
    """Send a prediction request to a ModelDeployment on the local platform; print the answer."""
    import urllib.error
    import urllib.request

    from mlplane.operator.platforms.store import NotFound

    try:
        body = store_at(state_dir).get("ModelDeployment", namespace, name)
    except NotFound as exc:
        raise UserError(str(exc)) from None
    status = body.get("status") or {}
    endpoint = status.get("endpoint")
    if not endpoint or status.get("phase") not in ("Ready", "Deploying", "Degraded"):
        phase = status.get("phase", "Pending")
        raise UserError(
            f"ModelDeployment/{name} is not serving (phase {phase}); "
            f"see `mlplane describe md {name}`"
        )
    try:
        payload = file.read_bytes()
        json.loads(payload)
    except (OSError, ValueError) as exc:
        raise UserError(f"{file}: not a readable JSON file: {exc}") from None
    request = urllib.request.Request(f"{endpoint}/v1/predict", payload,
                                     {"content-type": "application/json"})  # fmt: skip
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            answer = response.read().decode()
    except urllib.error.HTTPError as exc:
        raise UserError(f"HTTP {exc.code}: {exc.read().decode(errors='replace')[:2000]}") from None
    except urllib.error.URLError as exc:
        raise UserError(f"{endpoint} does not answer: {exc.reason}") from None
    sys.stdout.write(json.dumps(json.loads(answer), indent=2) + "\n")


@app.command()
@one_line_errors
def traffic(
    name: Annotated[str, typer.Argument(help="The ModelDeployment.")],
    file: Annotated[Path, typer.Option("-f", "--filename", help='{"records": [...]} to cycle.')],
    conversion: Annotated[
        list[str],
        typer.Option(help="VARIANT=RATE: probability of outcome 1 per variant (repeatable)."),
    ],
    requests: Annotated[int, typer.Option(help="At most this many predictions.")] = 3000,
    users: Annotated[int, typer.Option(help="Distinct sticky users.")] = 500,
    until_concluded: Annotated[
        str | None, typer.Option(help="Stop once this ABTest is Concluded or Failed.")
    ] = None,
    seed: Annotated[int, typer.Option()] = 1,
    namespace: Annotated[str, typer.Option("-n", "--namespace")] = "default",
    state_dir: StateDir = Path(".mlplane"),
) -> None:
    """Synthetic users for a local ModelDeployment: predictions, and 0/1 outcomes as feedback.

    Shows an ABTest at work without an application: e.g.
    `mlplane traffic churn -f crds/examples/churn-requests.json --conversion control=0.2
    --conversion candidate=0.35 --until-concluded churn-candidate`.
    """

    from mlplane.operator.platforms.store import NotFound
    from mlplane.operator.platforms.traffic import TrafficReport, run_traffic

    store = store_at(state_dir)
    try:
        body = store.get("ModelDeployment", namespace, name)
    except NotFound as exc:
        raise UserError(str(exc)) from None
    endpoint = (body.get("status") or {}).get("endpoint")
    if not endpoint:
        raise UserError(f"ModelDeployment/{name} has no endpoint yet; see `mlplane get md`")
    rates: dict[str, float] = {}
    for item in conversion:
        variant, _, rate = item.partition("=")
        try:
            rates[variant] = float(rate)
        except ValueError:
            raise UserError(
                f"--conversion {item!r}: expected VARIANT=RATE, e.g. control=0.2"
            ) from None
        if not variant or not 0 <= rates[variant] <= 1:
            raise UserError(f"--conversion {item!r}: a variant name and a rate in [0, 1]")
    try:
        records = json.loads(file.read_text())["records"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise UserError(f"{file}: expected a JSON object with 'records': {exc}") from None
    header = "x-user-id"
    test: dict[str, Any] = {}
    if until_concluded:
        try:
            test = store.get("ABTest", namespace, until_concluded)
        except NotFound as exc:
            raise UserError(str(exc)) from None
        header = (test["spec"].get("bucketing") or {}).get("header") or header

    def phase() -> str:
        found = store.get("ABTest", namespace, until_concluded) if until_concluded else {}
        return str((found.get("status") or {}).get("phase", "Pending"))

    def show(report: TrafficReport) -> None:
        served = ", ".join(f"{v} (v{ver}): {k}" for (v, ver), k in sorted(report.served.items()))
        line = f"{report.requests} requests, {sum(report.failures.values())} failed; {served}"
        if until_concluded:
            line += f"; ABTest {until_concluded}: {phase()}"
        out.print(line, highlight=False)

    report = run_traffic(
        endpoint, records, requests=requests, conversion=rates, users=users, header=header,
        seed=seed, stop=(lambda: phase() in ("Concluded", "Failed")) if until_concluded else None,
        progress=show,
    )  # fmt: skip
    show(report)
    if report.failures:
        raise UserError(f"{sum(report.failures.values())} requests failed: {report.errors}")
