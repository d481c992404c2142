"""Where pods go: node selection from ``accelerator`` and ``capacity``, per cloud convention.

The operator's config names the cluster's capacity-label convention
(``MLPLANE_CAPACITY_LABELS``); everything else follows from this table:

- ``eks``: capacity label ``eks.amazonaws.com/capacityType`` = ``SPOT`` / ``ON_DEMAND``;
  accelerator label ``mlplane.dev/accelerator``.
- ``karpenter``: capacity label ``karpenter.sh/capacity-type`` = ``spot`` / ``on-demand``;
  accelerator label ``mlplane.dev/accelerator``.
- ``gke``: capacity label ``cloud.google.com/gke-spot`` = ``"true"`` on spot, absent on
  on-demand; accelerator label ``cloud.google.com/gke-accelerator``.

- **On-demand on GKE** has no label of its own (GKE labels spot nodes only, and the older
  preemptible VMs with ``cloud.google.com/gke-preemptible``). So on-demand is a required node
  affinity ``gke-spot NotIn ["true"]`` and ``gke-preemptible NotIn ["true"]``: ``NotIn`` matches
  nodes without the label, and unlike ``DoesNotExist`` it still accepts an explicit ``"false"``.
- **Karpenter** provisions from what pods ask for: if nothing pins the capacity type and the
  NodePool allows both, it launches spot. So on-demand is always asked for positively there.
- **Accelerators**: EKS has no built-in label naming the GPU model, and Karpenter's
  ``karpenter.k8s.aws/instance-gpu-name`` uses other names (``a10g``, not ``nvidia-a10g``).
  mlplane therefore reads its own ``mlplane.dev/accelerator`` label, which mlplane's Terraform
  node groups (and Karpenter NodePool templates) set to the GPU name, e.g. ``nvidia-a10g``.
  GKE labels GPU nodes itself with ``cloud.google.com/gke-accelerator`` (``nvidia-l4``, ...).
- **Taints**: pods asking for GPUs tolerate ``nvidia.com/gpu:NoSchedule`` (GKE and the usual
  GPU node groups taint GPU nodes so CPU pods stay off them). Spot pods tolerate
  ``mlplane.dev/spot:NoSchedule`` (the taint mlplane's Terraform puts on spot node groups, so that
  workloads which cannot survive preemption stay off them) and, on GKE,
  ``cloud.google.com/gke-spot=true:NoSchedule``, which GKE puts on spot node pools when asked to.
  A toleration for a taint a cluster does not use is harmless.
- **The head always runs on on-demand capacity**: losing it loses the whole Ray cluster.
- The user's ``nodeSelector`` and ``tolerations`` apply to every pod. A user selector that
  contradicts mlplane's (e.g. spot for the head) is an error, not silently overridden.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel

from mlplane.operator.config import CapacityLabels

#: Where a group of pods may run. ``PreferSpot`` (a ModelDeployment's ``SpotWithFallback``):
#: spot when the scheduler finds it, on-demand otherwise.
NodeCapacity = Literal["OnDemand", "Spot", "PreferSpot"]
Operator = Literal["In", "NotIn", "Exists", "DoesNotExist"]

GPU_RESOURCE = "nvidia.com/gpu"
MLPLANE_ACCELERATOR_LABEL = "mlplane.dev/accelerator"
MLPLANE_SPOT_TAINT = "mlplane.dev/spot"
GPU_TOLERATION: dict[str, str] = {
    "key": GPU_RESOURCE,
    "operator": "Exists",
    "effect": "NoSchedule",
}
MLPLANE_SPOT_TOLERATION: dict[str, str] = {
    "key": MLPLANE_SPOT_TAINT,
    "operator": "Exists",
    "effect": "NoSchedule",
}
#: Weight of the preference for spot nodes (the maximum the API allows).
PREFER_SPOT_WEIGHT = 100


class PlacementConflict(ValueError):
    """The user's nodeSelector contradicts where mlplane must put a pod."""


@dataclass(frozen=True)
class Requirement:
    """One node-selector requirement (``matchExpressions`` item)."""

    key: str
    operator: Operator
    values: tuple[str, ...] = ()

    def matches(self, labels: Mapping[str, str]) -> bool:
        """Whether a node with these labels satisfies the requirement (Kubernetes semantics)."""
        present = self.key in labels
        if self.operator == "In":
            return present and labels[self.key] in self.values
        if self.operator == "NotIn":
            return not present or labels[self.key] not in self.values
        if self.operator == "Exists":
            return present
        return not present

    def as_expression(self) -> dict[str, Any]:
        """The requirement as the pod spec writes it."""
        out: dict[str, Any] = {"key": self.key, "operator": self.operator}
        if self.operator in ("In", "NotIn"):
            out["values"] = list(self.values)
        return out


@dataclass(frozen=True)
class Convention:
    """How one kind of cluster labels and taints spot, on-demand and GPU nodes."""

    name: CapacityLabels
    capacity_key: str
    spot_value: str
    #: ``None`` where on-demand nodes carry no capacity label (GKE).
    on_demand_value: str | None
    accelerator_key: str
    #: Labels that mark spot-like capacity to exclude for on-demand when there is no
    #: on-demand value to select (GKE: spot and the older preemptible VMs).
    on_demand_exclusions: tuple[Requirement, ...] = ()
    spot_tolerations: tuple[Mapping[str, str], ...] = (MLPLANE_SPOT_TOLERATION,)

    def on_demand(self) -> tuple[Requirement, ...]:
        """Requirements that hold on on-demand nodes only."""
        if self.on_demand_value is not None:
            return (Requirement(self.capacity_key, "In", (self.on_demand_value,)),)
        return self.on_demand_exclusions

    def spot(self) -> Requirement:
        """The requirement that holds on spot nodes only."""
        return Requirement(self.capacity_key, "In", (self.spot_value,))

    def accelerator(self, name: str) -> Requirement:
        """The requirement that selects nodes with this GPU model."""
        return Requirement(self.accelerator_key, "In", (name,))


CONVENTIONS: dict[str, Convention] = {
    "eks": Convention(
        name="eks",
        capacity_key="eks.amazonaws.com/capacityType",
        spot_value="SPOT",
        on_demand_value="ON_DEMAND",
        accelerator_key=MLPLANE_ACCELERATOR_LABEL,
    ),
    "karpenter": Convention(
        name="karpenter",
        capacity_key="karpenter.sh/capacity-type",
        spot_value="spot",
        on_demand_value="on-demand",
        accelerator_key=MLPLANE_ACCELERATOR_LABEL,
    ),
    "gke": Convention(
        name="gke",
        capacity_key="cloud.google.com/gke-spot",
        spot_value="true",
        on_demand_value=None,
        accelerator_key="cloud.google.com/gke-accelerator",
        on_demand_exclusions=(
            Requirement("cloud.google.com/gke-spot", "NotIn", ("true",)),
            Requirement("cloud.google.com/gke-preemptible", "NotIn", ("true",)),
        ),
        spot_tolerations=(
            MLPLANE_SPOT_TOLERATION,
            {
                "key": "cloud.google.com/gke-spot",
                "operator": "Equal",
                "value": "true",
                "effect": "NoSchedule",
            },
        ),
    ),
}


def convention_for(name: str) -> Convention:
    """The convention called ``eks``, ``karpenter`` or ``gke``."""
    try:
        return CONVENTIONS[name]
    except KeyError:
        raise ValueError(
            f"unknown capacity-label convention {name!r} (known: {', '.join(CONVENTIONS)})"
        ) from None


@dataclass(frozen=True)
class Placement:
    """The scheduling fields of one pod template: selector, affinity, tolerations."""

    node_selector: Mapping[str, str] = field(default_factory=dict)
    #: Hard requirements that a plain nodeSelector cannot say (NotIn, ...), ANDed.
    required: tuple[Requirement, ...] = ()
    preferred: tuple[tuple[int, Requirement], ...] = ()
    tolerations: tuple[Mapping[str, Any], ...] = ()

    def pod_spec_fields(self) -> dict[str, Any]:
        """``nodeSelector``/``affinity``/``tolerations`` for a pod spec (empty ones left out)."""
        out: dict[str, Any] = {}
        if self.node_selector:
            out["nodeSelector"] = dict(sorted(self.node_selector.items()))
        node_affinity: dict[str, Any] = {}
        if self.required:
            node_affinity["requiredDuringSchedulingIgnoredDuringExecution"] = {
                "nodeSelectorTerms": [
                    {"matchExpressions": [r.as_expression() for r in self.required]}
                ]
            }
        if self.preferred:
            node_affinity["preferredDuringSchedulingIgnoredDuringExecution"] = [
                {"weight": weight, "preference": {"matchExpressions": [r.as_expression()]}}
                for weight, r in self.preferred
            ]
        if node_affinity:
            out["affinity"] = {"nodeAffinity": node_affinity}
        if self.tolerations:
            out["tolerations"] = [dict(t) for t in self.tolerations]
        return out

    def admits(self, node_labels: Mapping[str, str]) -> bool:
        """Whether a node with these labels satisfies the hard constraints (taints aside)."""
        selector_ok = all(node_labels.get(k) == v for k, v in self.node_selector.items())
        return selector_ok and all(r.matches(node_labels) for r in self.required)

    def tolerates(self, taint: Mapping[str, Any]) -> bool:
        """Whether one of the tolerations tolerates this taint (Kubernetes semantics)."""
        return any(_tolerates(t, taint) for t in self.tolerations)


def _tolerates(toleration: Mapping[str, Any], taint: Mapping[str, Any]) -> bool:
    effect = toleration.get("effect")
    if effect and effect != taint.get("effect"):
        return False
    key = toleration.get("key")
    if toleration.get("operator", "Equal") == "Exists":
        return not key or key == taint.get("key")
    return key == taint.get("key") and toleration.get("value", "") == taint.get("value", "")


def toleration_dict(toleration: BaseModel | Mapping[str, Any]) -> dict[str, Any]:
    """A toleration as the pod spec writes it (camelCase, unset fields left out)."""
    if isinstance(toleration, BaseModel):
        return toleration.model_dump(by_alias=True, exclude_none=True)
    return {k: v for k, v in toleration.items() if v is not None}


def _merge_tolerations(*groups: Iterable[Mapping[str, Any]]) -> tuple[dict[str, Any], ...]:
    out: list[dict[str, Any]] = []
    for group in groups:
        for toleration in group:
            item = dict(toleration)
            if item not in out:
                out.append(item)
    return tuple(out)


def place(
    convention: CapacityLabels | str,
    capacity: NodeCapacity,
    *,
    accelerator: str | None = None,
    gpus: int = 0,
    node_selector: Mapping[str, str] | None = None,
    tolerations: Sequence[BaseModel | Mapping[str, Any]] | None = None,
) -> Placement:
    """The placement of a group of pods under a capacity-label convention (eks|karpenter|gke).

    Raises :class:`PlacementConflict` when ``node_selector`` (the user's) contradicts it.
    """
    conv = convention_for(convention)
    if capacity == "OnDemand":
        hard = list(conv.on_demand())
    elif capacity == "Spot":
        hard = [conv.spot()]
    elif capacity == "PreferSpot":
        hard = []
    else:
        raise ValueError(f"capacity must be OnDemand, Spot or PreferSpot (got {capacity!r})")
    if accelerator:
        hard.append(conv.accelerator(accelerator))

    user = dict(node_selector or {})
    for key, value in sorted(user.items()):
        for requirement in hard:
            if requirement.key == key and not requirement.matches({key: value}):
                raise PlacementConflict(
                    f"nodeSelector {key}={value} contradicts where mlplane places these pods "
                    f"({_describe(requirement)}, for {capacity} capacity"
                    + (f" and accelerator {accelerator})" if accelerator else ")")
                )
    selector = dict(user)
    required: list[Requirement] = []
    for requirement in hard:
        if requirement.operator == "In" and len(requirement.values) == 1:
            selector[requirement.key] = requirement.values[0]
        else:
            required.append(requirement)

    ours: list[Mapping[str, Any]] = []
    if gpus > 0:
        ours.append(GPU_TOLERATION)
    if capacity in ("Spot", "PreferSpot"):
        ours.extend(conv.spot_tolerations)
    preferred = ((PREFER_SPOT_WEIGHT, conv.spot()),) if capacity == "PreferSpot" else ()
    return Placement(
        node_selector=selector,
        required=tuple(required),
        preferred=preferred,
        tolerations=_merge_tolerations(ours, (toleration_dict(t) for t in tolerations or ())),
    )


def head_placement(
    convention: CapacityLabels | str,
    *,
    node_selector: Mapping[str, str] | None = None,
    tolerations: Sequence[BaseModel | Mapping[str, Any]] | None = None,
) -> Placement:
    """The Ray head: on-demand capacity, no GPU, the user's selector and tolerations."""
    return place(convention, "OnDemand", node_selector=node_selector, tolerations=tolerations)


def _describe(requirement: Requirement) -> str:
    if requirement.operator == "In":
        return f"{requirement.key} must be {' or '.join(requirement.values)}"
    if requirement.operator == "NotIn":
        return f"{requirement.key} must not be {' or '.join(requirement.values)}"
    if requirement.operator == "Exists":
        return f"{requirement.key} must be set"
    return f"{requirement.key} must be absent"
