"""mlplane.crds: the API (pydantic types), the CRDs generated from it, and validation.

This is the product's contract and imports nothing else of mlplane.
"""

from mlplane.crds.abtest import ABTest, ABTestSpec, ABTestStatus
from mlplane.crds.common import API_VERSION, CATEGORY, GROUP, VERSION, Condition, Resource
from mlplane.crds.modeldeployment import ModelDeployment, ModelDeploymentSpec, ModelDeploymentStatus
from mlplane.crds.trainingjob import TrainingJob, TrainingJobSpec, TrainingJobStatus

#: Every kind, in the order they are documented and generated.
KINDS: tuple[type[Resource], ...] = (TrainingJob, ModelDeployment, ABTest)
BY_KIND: dict[str, type[Resource]] = {k.kind_name: k for k in KINDS}

__all__ = [
    "API_VERSION",
    "BY_KIND",
    "CATEGORY",
    "GROUP",
    "KINDS",
    "VERSION",
    "ABTest",
    "ABTestSpec",
    "ABTestStatus",
    "Condition",
    "ModelDeployment",
    "ModelDeploymentSpec",
    "ModelDeploymentStatus",
    "Resource",
    "TrainingJob",
    "TrainingJobSpec",
    "TrainingJobStatus",
]
