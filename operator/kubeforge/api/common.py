"""Types shared by ModelDeployment and TrainingJob: GPUs, resources, placement, conditions."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Annotated, Literal

from pydantic import Field

from kubeforge.api.base import ApiModel, FreeForm, Quantity, Rule, StringMap

# NVIDIA GPU feature discovery values: nvidia.com/gpu.product=NVIDIA-A100-SXM4-80GB
GPU_PRODUCT_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$"
# MIG profiles as the device plugin names them: nvidia.com/mig-1g.10gb
MIG_PROFILE_PATTERN = r"^[1-7]g\.[0-9]+gb(\+me)?$"
DNS_LABEL_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
ENV_NAME_PATTERN = r"^[-._a-zA-Z][-._a-zA-Z0-9]*$"

DnsLabel = Annotated[str, Field(pattern=DNS_LABEL_PATTERN, max_length=63)]


class GPU(ApiModel):
    """GPUs each pod needs: a whole-GPU count, or one MIG slice; optionally of one product."""

    count: int | None = Field(
        default=None,
        ge=1,
        le=16,
        description="Whole GPUs per pod (the nvidia.com/gpu resource). Defaults to 1 unless `mig` is set.",
    )
    product: str | None = Field(
        default=None,
        pattern=GPU_PRODUCT_PATTERN,
        description=(
            "GPU product as NVIDIA GPU feature discovery labels nodes (nvidia.com/gpu.product), "
            "e.g. NVIDIA-A100-SXM4-80GB. Pods are placed only on nodes with this product."
        ),
    )
    mig: str | None = Field(
        default=None,
        pattern=MIG_PROFILE_PATTERN,
        description="A MIG profile, e.g. 1g.10gb: the pod gets one nvidia.com/mig-<profile> slice instead of whole GPUs.",
    )

    rules = (
        Rule(
            cel="!(has(self.count) && has(self.mig))",
            message="gpu.count and gpu.mig are mutually exclusive: ask for whole GPUs or one MIG slice",
            check=lambda g: not (g.count is not None and g.mig is not None),
        ),
    )

    @property
    def resource_name(self) -> str:
        return f"nvidia.com/mig-{self.mig}" if self.mig else "nvidia.com/gpu"

    @property
    def resource_count(self) -> int:
        return 1 if self.mig else (self.count or 1)


class Resources(ApiModel):
    """CPU and memory for each pod."""

    cpu: Quantity | None = Field(default=None, description="CPU request, e.g. 4 or 500m.")
    memory: Quantity | None = Field(default=None, description="Memory request (and limit), e.g. 16Gi.")
    cpu_limit: Quantity | None = Field(
        default=None, description="CPU limit; unset means no CPU limit (no throttling)."
    )


class Toleration(ApiModel):
    """A Kubernetes toleration (core/v1 Toleration)."""

    key: str | None = Field(
        default=None, description="Taint key the toleration applies to; empty means all keys."
    )
    operator: Literal["Exists", "Equal"] | None = Field(
        default=None, description="Exists or Equal (default Equal)."
    )
    value: str | None = Field(default=None, description="Taint value to match when operator is Equal.")
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = Field(
        default=None, description="Taint effect to match; empty means all effects."
    )
    toleration_seconds: int | None = Field(
        default=None, description="For NoExecute: how long the pod stays bound after the taint appears."
    )


class Placement(ApiModel):
    """Where pods may run, beyond what the GPU request implies."""

    node_selector: StringMap | None = Field(
        default=None, description="Node labels every pod's node must have."
    )
    tolerations: list[Toleration] | None = Field(
        default=None,
        description="Extra tolerations (GPU taints are tolerated automatically when GPUs are requested).",
    )
    affinity: FreeForm | None = Field(
        default=None,
        description="A core/v1 Affinity, merged with the node affinity that a GPU product request implies.",
    )
    priority_class_name: str | None = Field(default=None, description="PriorityClass of the pods.")


class EnvVar(ApiModel):
    """An environment variable (core/v1 EnvVar)."""

    name: str = Field(pattern=ENV_NAME_PATTERN, description="Variable name.")
    value: str | None = Field(default=None, description="Literal value.")
    value_from: FreeForm | None = Field(
        default=None, description="A core/v1 EnvVarSource: secretKeyRef, configMapKeyRef, fieldRef, ..."
    )

    rules = (
        Rule(
            cel="!(has(self.value) && has(self.valueFrom))",
            message="env: value and valueFrom are mutually exclusive",
            check=lambda e: not (e.value is not None and e.value_from is not None),
        ),
    )


class PodMetadata(ApiModel):
    """Labels and annotations added to every pod the operator creates."""

    labels: StringMap | None = Field(default=None, description="Extra pod labels.")
    annotations: StringMap | None = Field(default=None, description="Extra pod annotations.")


class ConditionStatus(StrEnum):
    TRUE = "True"
    FALSE = "False"
    UNKNOWN = "Unknown"


class Condition(ApiModel):
    """A status condition in the Kubernetes metav1.Condition shape."""

    type: str = Field(description="Condition type, e.g. Ready.")
    status: ConditionStatus = Field(description="True, False or Unknown.")
    reason: str = Field(default="", description="CamelCase reason for the last transition.")
    message: str = Field(default="", description="Human-readable detail.")
    last_transition_time: datetime | None = Field(
        default=None, description="When the status last changed (RFC 3339)."
    )
    observed_generation: int | None = Field(
        default=None, description="The .metadata.generation the condition was computed from."
    )


ConditionList = Annotated[
    list[Condition],
    Field(json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]}),
]


class ObjectMeta(ApiModel):
    """The part of ObjectMeta that the operator reads."""

    model_config = ApiModel.model_config | {"extra": "allow"}

    name: str = Field(description="Object name.")
    namespace: str | None = Field(default=None, description="Namespace.")
    generation: int | None = Field(default=None, description="Spec generation.")
    uid: str | None = Field(default=None, description="UID.")
    labels: dict[str, str] | None = Field(default=None, description="Labels.")
    annotations: dict[str, str] | None = Field(default=None, description="Annotations.")
