"""The ``mlplane`` command line: one entry for users, CI and the operator image.

Every command turns expected failures (bad input, a busy port, a server that is down) into one
clear line on stderr and a non-zero exit; a traceback means a bug in mlplane.
Heavy imports (Kopf, Ray, MLflow) happen inside the commands that need them, so
``mlplane validate`` stays fast and works with the base install.
"""

from mlplane.operator.cli.base import app

# Each module registers its commands; the import order is the order of `mlplane --help`.
# isort: off
from mlplane.operator.cli import crds, resources, serving, run  # noqa: F401
from mlplane.operator.cli import local, monitoring, abtest  # noqa: F401
# isort: on

__all__ = ["app", "main"]


def main() -> None:
    """Console-script entry point."""
    app()
