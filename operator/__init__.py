"""mlplane.operator: the CLI, the Kopf handlers, the pure reconcile core and the platforms.

The folder is named ``operator`` (the design card's), but it is installed only as
``mlplane.operator``. Run Python from the repository root only through the project's
environment (``.venv/bin/...``): its editable install imports the standard library's
``operator`` at start-up, before the working directory joins ``sys.path``; a bare interpreter
started with ``-m``/``-c`` in this folder's parent would find this folder first.
"""
