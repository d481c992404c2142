"""The ``mlplane`` command line: one entry for users, CI and the operator image.

Every command turns expected failures (bad input, a busy port, a server that is down) into one
clear line on stderr and a non-zero exit; a traceback means a bug in mlplane.
Heavy imports (Kopf, Ray, MLflow) happen inside the commands that need them, so
``mlplane validate`` stays fast and works with the base install.
"""

from mlplane.operator.cli import (  # noqa: F401 - each module registers its commands
    abtest,
    crds,
    local,
    monitoring,
    resources,
    run,
    serving,
)
from mlplane.operator.cli.base import app

__all__ = ["app", "main"]


def main() -> None:
    """Console-script entry point."""
    app()
