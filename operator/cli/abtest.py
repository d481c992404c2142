"""``mlplane abtest``: the A/B test analysis offline."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from mlplane.operator.cli.base import (
    UserError,
    abtest_app,
    one_line_errors,
)


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
