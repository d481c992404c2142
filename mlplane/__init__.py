"""mlplane: a Kubernetes-native MLOps control plane on Ray.

The import names are ``mlplane.crds``, ``mlplane.operator``, ``mlplane.serving``,
``mlplane.training`` and ``mlplane.monitoring``; their code lives in the repository's top-level
folders of the same names (see ``pyproject.toml``). This small package only anchors them, so
that nothing installs a top-level ``operator`` that would shadow the standard library's.
"""

__version__ = "0.1.0"
