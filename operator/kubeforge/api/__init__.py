"""The kubeforge.io/v1alpha1 API as pydantic models: the single source of truth for the CRDs."""

from kubeforge.api.common import GPU, Condition, Placement, Resources
from kubeforge.api.modeldeployment import ModelDeployment, ModelDeploymentSpec, ModelDeploymentStatus
from kubeforge.api.trainingjob import TrainingJob, TrainingJobSpec, TrainingJobStatus

__all__ = [
    "GPU",
    "Condition",
    "ModelDeployment",
    "ModelDeploymentSpec",
    "ModelDeploymentStatus",
    "Placement",
    "Resources",
    "TrainingJob",
    "TrainingJobSpec",
    "TrainingJobStatus",
]
