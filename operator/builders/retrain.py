"""The retraining TrainingJob a drifting ModelDeployment creates from its template.

Its name is a pure function of the deployment's name and the retrain's number, so an operator
that crashed after creating it (before recording that in the status) computes the same name
again, and the API server's 409 Conflict says "already done" instead of a second job starting.

The ModelDeployment is the TrainingJob's controller owner: deleting the deployment removes its
retraining jobs, and ``kubectl get tj -l mlplane.dev/modeldeployment=<name>`` lists them.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

from mlplane.crds import API_VERSION, ModelDeployment
from mlplane.crds.common import MAX_NAME_LENGTH
from mlplane.operator.builders import labels as lbl

__all__ = ["build_retrain_trainingjob", "retrain_name"]


def retrain_name(modeldeployment: str, number: int) -> str:
    """``<modeldeployment>-r<number>``, shortened to a valid TrainingJob name when needed.

    TrainingJob names are limited to ``MAX_NAME_LENGTH`` (their RayJobs append ``-a<n>``). A
    deployment name too long for the suffix is cut and a short hash of the whole name is put in,
    so two long names sharing a prefix never map to the same TrainingJob.
    """
    if number < 1:
        raise ValueError(f"retrains are numbered from 1 (got {number})")
    if not modeldeployment:
        raise ValueError("the ModelDeployment has no name")
    suffix = f"-r{number}"
    if len(modeldeployment) + len(suffix) <= MAX_NAME_LENGTH:
        return modeldeployment + suffix
    digest = hashlib.sha256(modeldeployment.encode()).hexdigest()[:6]
    suffix = f"-{digest}{suffix}"
    keep = MAX_NAME_LENGTH - len(suffix)
    if keep < 1:
        raise ValueError(f"retrain number {number} is too large for a TrainingJob name")
    return modeldeployment[:keep].rstrip("-") + suffix


def build_retrain_trainingjob(
    md: ModelDeployment,
    number: int,
    *,
    owner_uid: str,
    annotations: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """The ``number``-th retraining TrainingJob of ``md`` (which must have a retrain template).

    The template's labels and annotations are kept; mlplane's own labels win over a template
    label of the same key, since the operator finds its retraining jobs by them.
    ``annotations`` (why the job was created) are added after the template's.
    """
    retrain = md.spec.monitoring.drift.retrain
    if retrain is None:
        raise ValueError("spec.monitoring.drift.retrain is not set: nothing to build from")
    name = str(md.metadata.name or "")
    template = retrain.training_job_template
    template_meta = template.metadata or {}
    labels = {**template_meta.get("labels", {}), **lbl.retrain_labels(name, number)}
    metadata: dict[str, Any] = {
        "name": retrain_name(name, number),
        "namespace": md.metadata.namespace or "default",
        "labels": labels,
        "ownerReferences": [lbl.owner_reference("ModelDeployment", name, owner_uid)],
    }
    merged_annotations = {**template_meta.get("annotations", {}), **(annotations or {})}
    if merged_annotations:
        metadata["annotations"] = merged_annotations
    return {
        "apiVersion": API_VERSION,
        "kind": "TrainingJob",
        "metadata": metadata,
        "spec": template.spec.model_dump(mode="json", by_alias=True, exclude_none=True),
    }
