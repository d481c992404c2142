"""``python -m mlplane.operator.cli``: the same as the ``mlplane`` command."""

from mlplane.operator.cli import main

main()
