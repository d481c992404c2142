"""Pure builders: a validated mlplane resource in, the Kubernetes objects it becomes out.

No I/O and no clock: everything a builder needs (attempt, capacity, resolved model version,
MLflow run id, owner uid, operator config) is passed in, so the same inputs always give the
same objects, and every output is tested against KubeRay's own CRD schemas.

- :func:`build_rayjob` (``rayjob.py``): a TrainingJob attempt → RayJob;
- :func:`build_rayservice` (``rayservice.py``): a ModelDeployment → RayService;
- ``placement.py``: node selection per capacity-label convention;
- ``evidence.py``: preemption evidence read from Node and Pod objects;
- ``labels.py``: child names, labels, owner references;
- :func:`render`: what ``mlplane render`` prints.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import yaml

from mlplane.crds import ABTest, ModelDeployment, Resource, TrainingJob
from mlplane.operator.builders.evidence import (
    NodeEvidence,
    PodDisruption,
    is_disrupted_pod,
    is_spot_node,
    node_evidence,
    pod_disruption,
)
from mlplane.operator.builders.placement import PlacementConflict
from mlplane.operator.builders.rayjob import (
    AttemptCapacity,
    build_rayjob,
    first_attempt_capacity,
)
from mlplane.operator.builders.rayjob import _rayjob as _rayjob_for_render
from mlplane.operator.builders.rayservice import Variant, abtest_variants, build_rayservice
from mlplane.operator.builders.rayservice import _rayservice as _rayservice_for_render
from mlplane.operator.config import OperatorConfig

__all__ = [
    "AttemptCapacity",
    "NodeEvidence",
    "PlacementConflict",
    "PodDisruption",
    "Variant",
    "abtest_variants",
    "build_rayjob",
    "build_rayservice",
    "first_attempt_capacity",
    "is_disrupted_pod",
    "is_spot_node",
    "node_evidence",
    "pod_disruption",
    "render",
    "to_yaml",
]


def _uid(resource: Resource) -> str | None:
    """``metadata.uid`` when the resource came from the API server, else ``None``.

    A file has no uid. Its render then carries no ownerReferences: a made-up owner uid would
    make the garbage collector delete the applied object at once.
    """
    uid = (resource.metadata.model_extra or {}).get("uid")
    return str(uid) if uid else None


def render(
    resource: Resource, config: OperatorConfig, *, model_version: int | None = None
) -> list[dict[str, Any]]:
    """The objects the operator would create for ``resource``, as it would first create them.

    - TrainingJob → the RayJob of attempt 1 (on spot if any worker group may use spot);
    - ModelDeployment → its RayService. A model given by alias is resolved through the MLflow
      registry by the operator; offline, ``model_version`` stands in for that lookup;
    - ABTest → ``ValueError``: it renders as part of its ModelDeployment's RayService.

    Raises ``ValueError`` with a message fit for the command line.
    """
    if isinstance(resource, TrainingJob):
        return [
            _rayjob_for_render(
                resource,
                1,
                first_attempt_capacity(resource),
                config,
                run_id=None,
                owner_uid=_uid(resource),
            )
        ]
    if isinstance(resource, ModelDeployment):
        model = resource.spec.model
        if model.version is not None:
            if model_version is not None and model_version != model.version:
                raise ValueError(
                    f"ModelDeployment {resource.metadata.name} pins model version "
                    f"{model.version}; --model-version {model_version} contradicts it "
                    "(leave it out)"
                )
            version = model.version
        elif model_version is None:
            raise ValueError(
                f"ModelDeployment {resource.metadata.name} follows alias {model.alias!r} of "
                f"model {model.name!r}: the operator resolves it through the MLflow registry. "
                "To render offline, pass --model-version N (the version the alias points at)"
            )
        else:
            version = model_version
        return [
            _rayservice_for_render(
                resource,
                version,
                config,
                owner_uid=_uid(resource),
                variants=None,
                bucketing_header=None,
                abtest=None,
            )
        ]
    if isinstance(resource, ABTest):
        raise ValueError(
            f"ABTest {resource.metadata.name} creates no object of its own: it becomes a traffic "
            f"split inside the RayService of ModelDeployment {resource.spec.deployment!r}. "
            "Render that ModelDeployment instead"
        )
    raise ValueError(f"cannot render a {type(resource).__name__}")


class _Dumper(yaml.SafeDumper):
    """Block style for multi-line strings (``runtimeEnvYAML``, ``serveConfigV2``)."""


def _represent_str(dumper: yaml.SafeDumper, data: str) -> yaml.ScalarNode:
    style = "|" if "\n" in data else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", data, style=style)


_Dumper.add_representer(str, _represent_str)


def to_yaml(objects: Iterable[dict[str, Any]]) -> str:
    """Objects as a multi-document YAML stream, embedded YAML strings readable as blocks."""
    return "---\n".join(
        yaml.dump(obj, Dumper=_Dumper, sort_keys=False, default_flow_style=False) for obj in objects
    )
