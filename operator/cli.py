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
from mlplane.crds.validate import Document, check, load, parse, warnings_for

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
monitoring_app = typer.Typer(help="Prometheus rules and Grafana dashboards.", no_args_is_help=True)
dashboards_app = typer.Typer(help="Grafana dashboards.", no_args_is_help=True)
drift_app = typer.Typer(help="Drift statistics on files.", no_args_is_help=True)
abtest_app = typer.Typer(help="A/B test analysis.", no_args_is_help=True)
app.add_typer(crds_app, name="crds")
app.add_typer(local_app, name="local")
app.add_typer(monitoring_app, name="monitoring")
app.add_typer(dashboards_app, name="dashboards")
app.add_typer(drift_app, name="drift")
app.add_typer(abtest_app, name="abtest")

# Piped output (CI logs, `| less`) gets wide tables instead of an 80-column guess.
out = Console(soft_wrap=True, width=None if sys.stdout.isatty() else 220)
err = Console(stderr=True, soft_wrap=True, width=None if sys.stderr.isatty() else 220)
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
            for warning in warnings_for(parse(document.body)):
                err.print(f"{document.label}: warning: {warning}", highlight=False,
                          soft_wrap=True)  # fmt: skip
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
    from mlplane.operator.builders import to_yaml

    objects: list[dict[str, Any]] = []
    for resource in resources:
        objects.extend(build(resource, config, model_version=model_version))
    sys.stdout.write(to_yaml(objects))  # serveConfigV2 / runtimeEnvYAML as readable blocks


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


# --- resources on the local platform -----------------------------------------------------------

KIND_ALIASES = {
    "tj": "TrainingJob", "trainingjob": "TrainingJob", "trainingjobs": "TrainingJob",
    "md": "ModelDeployment", "modeldeployment": "ModelDeployment",
    "modeldeployments": "ModelDeployment",
    "abt": "ABTest", "abtest": "ABTest", "abtests": "ABTest",
}  # fmt: skip
TERMINAL = {"TrainingJob": ("Succeeded", "Failed"), "ModelDeployment": ("Ready", "Failed"),
            "ABTest": ("Concluded", "Failed")}  # fmt: skip


def _kind(name: str) -> str:
    kind = KIND_ALIASES.get(name.lower())
    if kind is None:
        raise UserError(f"unknown kind {name!r} (use tj, md, abt or their full names)")
    return kind


def _store(state_dir: Path) -> Any:
    from mlplane.operator.platforms.store import Store

    return Store(state_dir)


def _age(timestamp: str | None) -> str:
    from datetime import UTC, datetime

    if not timestamp:
        return ""
    then = datetime.fromisoformat(timestamp.replace("Z", "+00:00"))
    seconds = int((datetime.now(UTC) - then).total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def _seconds(value: Any) -> str:
    """``90`` → ``1m30s``: a status number of seconds, short ("" when absent)."""
    if not isinstance(value, int | float):
        return ""
    seconds = round(float(value))
    if seconds < 60:
        return f"{float(value):.3g}s"
    out = ""
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if seconds >= size:
            out += f"{seconds // size}{unit}"
            seconds %= size
    return out


def _hours(value: Any) -> str:
    return f"{float(value):.2f}" if isinstance(value, int | float) else ""


def spot_summary(status: dict[str, Any]) -> dict[str, str]:
    """The interval in use with C and M, GPU-hours, waste and cost, as ``describe`` shows them."""
    checkpoint, cost = status.get("checkpoint") or {}, status.get("cost") or {}
    rows: dict[str, str] = {}
    if checkpoint:
        rows["Checkpoint interval"] = (
            f"{_seconds(checkpoint.get('intervalSeconds')) or '-'} ({checkpoint['interval']})"
        )
        rows["Checkpoint write time (C)"] = _seconds(checkpoint.get("writeSeconds")) or (
            "not measured yet"
        )
        rows["Mean time between reclaims (M)"] = (
            _seconds(checkpoint.get("meanTimeBetweenReclaimsSeconds")) or "no spot workers"
        )
    if cost:
        rows["GPU-hours spot / on-demand"] = (
            f"{_hours(cost.get('spotGpuHours'))} / {_hours(cost.get('onDemandGpuHours'))}"
        )
        rows["GPU-hours lost to reclaims"] = _hours(cost.get("lostGpuHours"))
        if "estimatedCost" in cost:
            currency = cost.get("currency", "")
            rows["Estimated cost"] = (
                f"{cost['estimatedCost']:.2f} {currency} (lost: {cost.get('lostCost', 0):.2f})"
            )
            if cost.get("unpriced"):
                rows["Estimated cost"] += f"; no price for {', '.join(cost['unpriced'])}"
    return rows


def _row(kind: str, body: dict[str, Any]) -> list[str]:
    status = body.get("status") or {}
    meta = body["metadata"]
    if kind == "TrainingJob":
        checkpoint = (status.get("lastCheckpoint") or {}).get("step")
        model = (status.get("mlflow") or {}).get("modelUri") or ""
        interval = _seconds((status.get("checkpoint") or {}).get("intervalSeconds"))
        cost = status.get("cost") or {}
        hours = (f"{_hours(cost.get('spotGpuHours'))}/{_hours(cost.get('onDemandGpuHours'))}"
                 if cost else "")  # fmt: skip
        return [meta["name"], status.get("phase", "Pending"), str(status.get("attempts", 0)),
                str(status.get("preemptions", 0)),
                (status.get("currentAttempt") or {}).get("capacity", ""),
                "" if checkpoint is None else str(checkpoint), interval, hours,
                _hours(cost.get("lostGpuHours")), model,
                _age(meta.get("creationTimestamp"))]  # fmt: skip
    if kind == "ModelDeployment":
        return [meta["name"], body["spec"]["model"]["name"], str(status.get("servedVersion", "")),
                status.get("phase", "Pending"), str(status.get("replicas", "")),
                status.get("endpoint", ""), _age(meta.get("creationTimestamp"))]  # fmt: skip
    return [meta["name"], body["spec"]["deployment"], status.get("phase", "Pending"),
            status.get("decision", ""), status.get("winner", ""),
            _age(meta.get("creationTimestamp"))]  # fmt: skip


COLUMNS = {
    "TrainingJob": ["NAME", "PHASE", "ATTEMPTS", "PREEMPTIONS", "CAPACITY", "CHECKPOINT",
                    "INTERVAL", "GPU-H SPOT/OD", "GPU-H LOST", "MODEL", "AGE"],
    "ModelDeployment": ["NAME", "MODEL", "VERSION", "PHASE", "REPLICAS", "ENDPOINT", "AGE"],
    "ABTest": ["NAME", "DEPLOYMENT", "PHASE", "DECISION", "WINNER", "AGE"],
}  # fmt: skip


@app.command()
@one_line_errors
def apply(
    files: Annotated[list[Path], typer.Option("-f", "--filename", help="A YAML file or folder.")],
    wait: Annotated[
        bool, typer.Option(help="Follow progress until each resource finishes or is ready.")
    ] = False,
    timeout: Annotated[float, typer.Option(help="Seconds --wait waits at most.")] = 900.0,
    state_dir: StateDir = Path(".mlplane"),
) -> None:
    """Create or update resources on the local platform (validated first, like kubectl)."""
    documents = _documents(files)
    bad = [(d, check(d.body)) for d in documents]
    bad = [(d, p) for d, p in bad if p]
    for document, problems in bad:
        for problem in problems:
            err.print(f"{document.label}: {problem}", highlight=False)
    if bad:
        raise UserError(f"{len(bad)} of {len(documents)} resources are invalid; nothing applied")
    store = _store(state_dir)
    applied = []
    for document in documents:
        result = store.apply(document.body)
        meta = document.body["metadata"]
        applied.append((document.body["kind"], meta.get("namespace") or "default", meta["name"]))
        out.print(f"{document.body['kind']}/{meta['name']} {result}", highlight=False)
    if wait:
        _wait(store, applied, timeout, state_dir)


def _wait(store: Any, applied: list[tuple[str, str, str]], timeout: float, state_dir: Path) -> None:
    """Print each change of the resources' progress until all are finished or ready."""
    import time

    from mlplane.operator.platforms.local import LocalPlatform

    if not LocalPlatform(state_dir).state():
        raise UserError("the local platform is not running: start it with `mlplane local up`")
    deadline = time.monotonic() + timeout
    last: dict[tuple[str, str, str], str] = {}
    pending = set(applied)
    while pending:
        for key in sorted(pending):
            kind, namespace, name = key
            body = store.get(kind, namespace, name)
            status = body.get("status") or {}
            pairs = zip(COLUMNS[kind][1:], _row(kind, body)[1:], strict=True)
            line = " ".join(f"{c.lower()}={v}" for c, v in pairs if v and c != "AGE")
            if line != last.get(key):
                last[key] = line
                out.print(f"{kind}/{name}: {line}", highlight=False)
            if status.get("phase") in TERMINAL[kind]:
                pending.discard(key)
                if status.get("phase") == "Failed":
                    failed = [c for c in status.get("conditions", []) if c["status"] == "False"
                              or c["type"] == "InvalidSpec"]  # fmt: skip
                    why = failed[-1]["message"] if failed else "see `mlplane describe`"
                    raise UserError(f"{kind}/{name} failed: {why}")
        if pending and time.monotonic() > deadline:
            raise UserError(f"still not done after {timeout:.0f}s: " + ", ".join(
                f"{k}/{n}" for k, _, n in sorted(pending)))  # fmt: skip
        if pending:
            time.sleep(1.0)


@app.command()
@one_line_errors
def get(
    kind: Annotated[str, typer.Argument(help="tj, md or abt.")],
    name: Annotated[str | None, typer.Argument(help="One resource (default: all).")] = None,
    namespace: Annotated[str, typer.Option("-n", "--namespace")] = "default",
    output: Annotated[str, typer.Option("-o", "--output", help="table or yaml.")] = "table",
    state_dir: StateDir = Path(".mlplane"),
) -> None:
    """List resources on the local platform (like kubectl get)."""
    from mlplane.operator.platforms.store import NotFound

    kind = _kind(kind)
    store = _store(state_dir)
    try:
        bodies = [store.get(kind, namespace, name)] if name else store.list(kind, namespace)
    except NotFound as exc:
        raise UserError(str(exc)) from None
    if output == "yaml":
        sys.stdout.write(yaml.safe_dump_all(bodies, sort_keys=False))
        return
    if output != "table":
        raise UserError(f"--output must be table or yaml (got {output!r})")
    table = Table(*COLUMNS[kind], box=None, pad_edge=False)
    for body in bodies:
        table.add_row(*_row(kind, body))
    out.print(table)


@app.command()
@one_line_errors
def describe(
    kind: Annotated[str, typer.Argument(help="tj, md or abt.")],
    name: Annotated[str, typer.Argument()],
    namespace: Annotated[str, typer.Option("-n", "--namespace")] = "default",
    state_dir: StateDir = Path(".mlplane"),
) -> None:
    """Status, conditions and events of one resource on the local platform."""
    from mlplane.operator.platforms.store import NotFound

    kind = _kind(kind)
    store = _store(state_dir)
    try:
        body = store.get(kind, namespace, name)
    except NotFound as exc:
        raise UserError(str(exc)) from None
    status = dict(body.get("status") or {})
    found = status.pop("conditions", [])
    out.print(f"[bold]{kind}/{name}[/bold] (namespace {namespace})")
    sys.stdout.write(yaml.safe_dump({"status": status}, sort_keys=False))
    summary = spot_summary(status) if kind == "TrainingJob" else {}
    if summary:
        spot = Table("", "", box=None, title="Spot", show_header=False)
        for label, value in summary.items():
            spot.add_row(label, value)
        out.print(spot)
    table = Table("TYPE", "STATUS", "REASON", "MESSAGE", "SINCE", box=None, title="Conditions")
    for c in found:
        table.add_row(c["type"], c["status"], c["reason"], c.get("message", ""),
                      _age(c.get("lastTransitionTime")))  # fmt: skip
    out.print(table)
    events = Table("TYPE", "REASON", "AGE", "MESSAGE", box=None, title="Events")
    for e in store.events(kind, namespace, name):
        events.add_row(e["type"], e["reason"], _age(e["time"]), e["message"])
    out.print(events)


@app.command()
@one_line_errors
def delete(
    kind: Annotated[str, typer.Argument(help="tj, md or abt.")],
    name: Annotated[str, typer.Argument()],
    namespace: Annotated[str, typer.Option("-n", "--namespace")] = "default",
    state_dir: StateDir = Path(".mlplane"),
) -> None:
    """Delete a resource from the local platform and stop what runs for it."""
    from mlplane.operator.builders.labels import rayjob_name
    from mlplane.operator.platforms.local import LocalPlatform
    from mlplane.operator.platforms.store import NotFound

    kind = _kind(kind)
    try:
        body = _store(state_dir).delete(kind, namespace, name)
    except NotFound as exc:
        raise UserError(str(exc)) from None
    platform = LocalPlatform(state_dir)
    if kind == "TrainingJob" and platform.state():
        for attempt in range(1, (body.get("status") or {}).get("attempts", 0) + 1):
            platform.stop_job(namespace, rayjob_name(name, attempt), body["metadata"]["uid"])
    out.print(f"{kind}/{name} deleted")


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
    import json
    import urllib.error
    import urllib.request

    from mlplane.operator.platforms.store import NotFound

    try:
        body = _store(state_dir).get("ModelDeployment", namespace, name)
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
    import json

    from mlplane.operator.platforms.store import NotFound
    from mlplane.operator.platforms.traffic import TrafficReport, run_traffic

    store = _store(state_dir)
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


@abtest_app.command("replay")
@one_line_errors
def abtest_replay(
    filename: Annotated[
        Path, typer.Option("-f", "--filename", help="CSV: experiment,variant,outcome.")
    ],
    alpha: Annotated[float, typer.Option(help="False-positive rate.")] = 0.05,
    metric: Annotated[str, typer.Option(help="conversion (0/1) or mean.")] = "conversion",
    min_samples: Annotated[int, typer.Option(help="Per variant before any decision.")] = 1000,
    direction: Annotated[str, typer.Option(help="Increase or Decrease is better.")] = "Increase",
    weights: Annotated[
        str | None,
        typer.Option(
            help="Configured split, e.g. control=50,candidate=50: adds the sample ratio check "
            "(decision SampleRatioMismatch)."
        ),
    ] = None,
) -> None:
    """Replay experiments as if monitored continuously; one JSON line per experiment."""
    from mlplane.monitoring.replay import replay

    split: dict[str, float] | None = None
    if weights is not None:
        try:
            split = {
                name.strip(): float(value)
                for name, _, value in (part.partition("=") for part in weights.split(","))
            }
        except ValueError:
            raise UserError(f"--weights must be name=number,... (got {weights!r})") from None

    if metric not in ("conversion", "mean"):
        raise UserError(f"--metric must be conversion or mean (got {metric!r})")
    if direction not in ("Increase", "Decrease"):
        raise UserError(f"--direction must be Increase or Decrease (got {direction!r})")
    if not 0 < alpha < 1:
        raise UserError(f"--alpha must be between 0 and 1 (got {alpha})")
    results = replay(filename, alpha=alpha, metric=metric, min_samples=min_samples,  # type: ignore[arg-type]
                     direction=direction, weights=split)  # type: ignore[arg-type]  # fmt: skip
    for result in results:
        sys.stdout.write(json.dumps(result) + "\n")


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
