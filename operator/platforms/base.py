"""The interface through which the operator's core acts on the world.

Like MLflow's abstract store with several back ends: the pure core decides (``reconcile``) and
a platform carries it out where Ray clusters come from. ``kuberay`` turns decisions into
KubeRay objects on Kubernetes; ``local`` runs them on this machine's Ray and MLflow.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass


@dataclass(frozen=True)
class ComponentHealth:
    """One part a platform depends on (Ray, MLflow, the Kubernetes API, KubeRay)."""

    name: str
    healthy: bool
    detail: str
    address: str | None = None
    pid: int | None = None


class Platform(ABC):
    """Where mlplane's resources become running Ray work."""

    #: ``kuberay`` or ``local``, as users name it on the command line.
    name: str

    @abstractmethod
    def health(self) -> list[ComponentHealth]:
        """Every component this platform needs, and whether it answers now."""

    def healthy(self) -> bool:
        """All components answer."""
        return all(c.healthy for c in self.health())
