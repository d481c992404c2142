"""``apply``, ``get``, ``describe``, ``delete``: resources on the local platform, like kubectl."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml
from rich.table import Table

from mlplane.crds import BY_KIND, KINDS
from mlplane.crds.validate import check
from mlplane.operator.cli.base import (
    StateDir,
    UserError,
    app,
    err,
    load_documents,
    one_line_errors,
    out,
    store_at,
)

# --- resources on the local platform -----------------------------------------------------------


def _kind_aliases() -> dict[str, str]:
    """Every name a kind answers to (short names, singular, plural), from the API types."""
    out = {}
    for kind in KINDS:
        for alias in (*kind.short_names, kind.singular, kind.plural, kind.kind_name.lower()):
            out[alias] = kind.kind_name
    return out


#: ``tj``, ``trainingjobs``, ... -> ``TrainingJob``: the CRDs' ``shortNames`` and names.
KIND_ALIASES = _kind_aliases()
TERMINAL = {"TrainingJob": ("Succeeded", "Failed"), "ModelDeployment": ("Ready", "Failed"),
            "ABTest": ("Concluded", "Failed")}  # fmt: skip


def _kind(name: str) -> str:
    kind = KIND_ALIASES.get(name.lower())
    if kind is None:
        shorts = ", ".join(s for k in KINDS for s in k.short_names)
        raise UserError(f"unknown kind {name!r} (use {shorts} or their full names)")
    return kind


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
    """``90`` -> ``1m30s``: a status number of seconds, short ("" when absent)."""
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
    back = status.get("spotReturn")
    if back is not None or status.get("returnsToSpot"):
        back = back or {}
        text = f"{status.get('returnsToSpot', 0)}"
        if back.get("lastReturnAttempt"):
            text += f" (last: attempt {back['lastReturnAttempt']} at {back.get('lastReturnTime')})"
        if back.get("decidedAt"):
            text += f"; returning, decided at {back['decidedAt']}, at the next checkpoint"
        elif back.get("notBefore"):
            text += f"; on on-demand, next return not before {back['notBefore']}"
        if back.get("backoff"):
            text += f"; minOnDemand doubled {back['backoff']}x (flapping)"
        rows["Returns to spot"] = text
    notice = status.get("lastNotice")
    if notice:
        rows["Last reclaim notice"] = notice_summary(notice)
    return rows


def notice_summary(notice: dict[str, Any]) -> str:
    """``status.lastNotice`` in one line: when, which signal, where, and its checkpoint."""
    where = " on ".join(
        x
        for x in (
            notice.get("pod") and f"pod {notice['pod']}",
            notice.get("node") and f"node {notice['node']}",
        )
        if x
    )
    text = f"{notice.get('signal')} at {notice.get('time')}"
    text += f" ({where})" if where else ""
    text += f", attempt {notice.get('attempt')}"
    if notice.get("deadline"):
        text += f", deadline {notice['deadline']}"
    checkpoint = notice.get("checkpoint")
    if checkpoint:
        text += f"; checkpoint taken: step {checkpoint.get('step')} ({checkpoint.get('uri')})"
    elif notice.get("deliveredTime"):
        text += f"; attempt told at {notice['deliveredTime']}, no checkpoint yet"
    else:
        text += "; not delivered yet"
    return text


def _at(body: dict[str, Any], json_path: str) -> Any:
    """The value at a printer column's simple ``jsonPath`` (``.status.currentAttempt.step``)."""
    value: Any = body
    for key in json_path.lstrip(".").split("."):
        value = value.get(key) if isinstance(value, dict) else None
    return value


def _cell(body: dict[str, Any], column: dict[str, Any]) -> str:
    value = _at(body, column["jsonPath"])
    if column["type"] == "date":
        return _age(value)
    if value is None:  # not written yet: a resource with no status yet is Pending
        return "Pending" if column["jsonPath"] == ".status.phase" else ""
    return str(value)


def _row(kind: str, body: dict[str, Any]) -> list[str]:
    """NAME, then every printer column of the kind's CRD (``priority: 1`` ones included, as
    ``kubectl get -o wide`` shows them)."""
    columns = BY_KIND[kind].printer_columns
    return [body["metadata"]["name"], *(_cell(body, c) for c in columns)]


#: The table headers of each kind: NAME and the CRD's ``additionalPrinterColumns``.
COLUMNS = {k.kind_name: ["NAME", *(c["name"].upper() for c in k.printer_columns)] for k in KINDS}


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
    documents = load_documents(files)
    bad = [(d, check(d.body)) for d in documents]
    bad = [(d, p) for d, p in bad if p]
    for document, problems in bad:
        for problem in problems:
            err.print(f"{document.label}: {problem}", highlight=False, markup=False)
    if bad:
        raise UserError(f"{len(bad)} of {len(documents)} resources are invalid; nothing applied")
    store = store_at(state_dir)
    applied = []
    for document in documents:
        result = store.apply(document.body)
        meta = document.body["metadata"]
        applied.append((document.body["kind"], meta.get("namespace") or "default", meta["name"]))
        out.print(f"{document.body['kind']}/{meta['name']} {result}", highlight=False, markup=False)
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
                out.print(f"{kind}/{name}: {line}", highlight=False, markup=False)
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
    store = store_at(state_dir)
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
    store = store_at(state_dir)
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
        body = store_at(state_dir).delete(kind, namespace, name)
    except NotFound as exc:
        raise UserError(str(exc)) from None
    platform = LocalPlatform(state_dir)
    if kind == "TrainingJob" and platform.state():
        for attempt in range(1, (body.get("status") or {}).get("attempts", 0) + 1):
            platform.stop_job(namespace, rayjob_name(name, attempt), body["metadata"]["uid"])
    out.print(f"{kind}/{name} deleted")
