"""The interface through which the operator's core acts on the world.

Like MLflow's abstract store with several back ends: the pure core decides (``reconcile``) and
a platform carries it out where Ray clusters come from. ``kuberay`` turns decisions into
KubeRay objects on Kubernetes; ``local`` runs them on this machine's Ray and MLflow.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any


def controller_uid(obj: dict[str, Any]) -> str | None:
    """The uid in an object's controller ownerReference (None when nothing controls it)."""
    for owner in (obj.get("metadata") or {}).get("ownerReferences") or ():
        if owner.get("controller"):
            return str(owner.get("uid") or "") or None
    return None


class ChildOwnedByOther(RuntimeError):
    """A child of this name exists and another owner (uid) controls it: it is not adopted."""

    def __init__(self, kind: str, namespace: str, name: str, owner_uid: str | None) -> None:
        super().__init__(
            f"{kind} {namespace}/{name} exists and belongs to another owner "
            f"(uid {owner_uid or 'none'}): not adopted"
        )
        self.owner_uid = owner_uid
        self.kind = kind
        self.namespace = namespace
        self.name = name


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
