"""mlplane: a Kubernetes-native MLOps control plane on Ray.

The import names are ``mlplane.crds``, ``mlplane.operator``, ``mlplane.serving``,
``mlplane.training`` and ``mlplane.monitoring``; their code lives in the repository's top-level
folders of the same names (see ``pyproject.toml``). This small package only anchors them, so
that nothing installs a top-level ``operator`` that would shadow the standard library's.

In the source tree, ``mlplane/<folder>`` are symbolic links to those folders: the tree is the
import tree, so tools that walk a package's folder (import-linter, mypy) resolve ``mlplane.*``
from the repository root. The wheel is built from ``pyproject.toml``'s package-dir mapping.
"""

__version__ = "0.1.0"
