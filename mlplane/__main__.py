"""``python -m mlplane`` is the same as the ``mlplane`` console script."""

from mlplane.operator.cli import main

main()
