"""What every command group shares: the Typer apps, the consoles, one-line errors, inputs."""

from __future__ import annotations

import sys
from collections.abc import Callable
from functools import wraps
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.markup import escape

from mlplane.crds.validate import Document, load

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
#: The repository (the generated files' home): this file is `<repo>/operator/cli/base.py`.
REPO_ROOT = Path(__file__).resolve().parents[2]


class UserError(Exception):
    """An expected failure: reported as one line, exit code 1 (or ``code``)."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


def one_line_errors(func: F) -> F:
    """Report :class:`UserError` and ``ValueError``/``OSError`` as ``error: ...`` and exit 1.

    Messages carry user input (field names, file names): printed as text, never as rich
    markup, so ``[/x]`` in a field name neither vanishes nor crashes the command."""

    @wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except typer.Exit:
            raise
        except UserError as exc:
            err.print(f"[red]error:[/red] {escape(str(exc))}", highlight=False, soft_wrap=True)
            raise typer.Exit(exc.code) from None
        except (ValueError, OSError, RuntimeError) as exc:
            err.print(f"[red]error:[/red] {escape(str(exc))}", highlight=False, soft_wrap=True)
            raise typer.Exit(1) from None

    return wrapper  # type: ignore[return-value]


StateDir = Annotated[
    Path, typer.Option("--state-dir", help="Where the local platform keeps its state and logs.")
]


def load_documents(files: list[Path]) -> list[Document]:
    found: list[Document] = []
    for path in files:
        if not path.exists():
            raise UserError(f"{path}: no such file or directory")
        found.extend(load(path))
    if not found:
        raise UserError("no documents found in " + ", ".join(map(str, files)))
    return found


def store_at(state_dir: Path) -> Any:
    """The local platform's object store (imported late: the base install has no operator)."""
    from mlplane.operator.platforms.store import Store

    return Store(state_dir)
