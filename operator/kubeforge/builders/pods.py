"""Pod-level pieces shared by Triton servers and training workers: GPUs, placement, security, /dev/shm."""

from __future__ import annotations

from typing import Any

from kubeforge.api.base import Quantity
from kubeforge.api.common import GPU, EnvVar, Placement, Resources
from kubeforge.builders.quantity import canonical_quantity

GPU_PRODUCT_LABEL = "nvidia.com/gpu.product"
GPU_TAINT_KEY = "nvidia.com/gpu"
HOSTNAME_TOPOLOGY = "kubernetes.io/hostname"
# Images we create pods for run as this unprivileged user unless the image says otherwise
# (NGC's tritonserver image ships the triton-server user with uid 1000).
NON_ROOT_UID = 1000


def quantity(value: Quantity) -> str:
    """Quantities as the API server stores them, so a semantic comparison with the live object holds."""
    return canonical_quantity(value)


def container_resources(resources: Resources | None, gpu: GPU | None) -> dict[str, Any]:
    """Requests and limits: GPUs are limits (extended resources), memory request = limit (no OOM surprises)."""
    requests: dict[str, Any] = {}
    limits: dict[str, Any] = {}
    if resources and resources.cpu is not None:
        requests["cpu"] = quantity(resources.cpu)
    if resources and resources.cpu_limit is not None:
        limits["cpu"] = quantity(resources.cpu_limit)
    if resources and resources.memory is not None:
        requests["memory"] = limits["memory"] = quantity(resources.memory)
    if gpu is not None:
        limits[gpu.resource_name] = str(gpu.resource_count)
    out: dict[str, Any] = {}
    if requests:
        out["requests"] = requests
    if limits:
        out["limits"] = limits
    return out


def tolerations(gpu: GPU | None, placement: Placement | None) -> list[dict[str, Any]]:
    """The user's tolerations, plus the GPU taint's when GPUs are requested (GPU nodes are usually tainted)."""
    out = [t.wire() for t in (placement.tolerations or [])] if placement else []
    if gpu is not None and not any(t.get("key") == GPU_TAINT_KEY for t in out):
        out.append({"key": GPU_TAINT_KEY, "operator": "Exists", "effect": "NoSchedule"})
    return out


def affinity(gpu: GPU | None, placement: Placement | None) -> dict[str, Any] | None:
    """The user's affinity, with a required node-affinity term on the GPU product when one is asked for."""
    user = dict(placement.affinity) if placement and placement.affinity else {}
    if gpu is None or gpu.product is None:
        return user or None
    return require_node_label(user, {"key": GPU_PRODUCT_LABEL, "operator": "In", "values": [gpu.product]})


def require_node_label(affinity: dict[str, Any], expression: dict[str, Any]) -> dict[str, Any]:
    """`affinity` with a required node-selector expression added.

    Required terms are ORed by the scheduler, so the expression is added to every term.
    """
    node_affinity = dict(affinity.get("nodeAffinity", {}))
    required = dict(node_affinity.get("requiredDuringSchedulingIgnoredDuringExecution", {}))
    terms = [dict(t) for t in required.get("nodeSelectorTerms", [])] or [{}]
    for term in terms:
        term["matchExpressions"] = [*term.get("matchExpressions", []), expression]
    required["nodeSelectorTerms"] = terms
    node_affinity["requiredDuringSchedulingIgnoredDuringExecution"] = required
    return {**affinity, "nodeAffinity": node_affinity}


def with_pod_affinity(affinity: dict[str, Any], selector: dict[str, str], required: bool) -> dict[str, Any]:
    """`affinity` with a pod-affinity term to the pods `selector` picks, on the same node.

    Required: the scheduler places a pod only on a node running such a pod; the first one, which
    matches its own term, goes anywhere. Preferred: weighed as strongly as a preference can be.
    """
    term = {"labelSelector": {"matchLabels": dict(selector)}, "topologyKey": HOSTNAME_TOPOLOGY}
    pod_affinity = dict(affinity.get("podAffinity", {}))
    if required:
        field = "requiredDuringSchedulingIgnoredDuringExecution"
        pod_affinity[field] = [*pod_affinity.get(field, []), term]
    else:
        field = "preferredDuringSchedulingIgnoredDuringExecution"
        pod_affinity[field] = [*pod_affinity.get(field, []), {"weight": 100, "podAffinityTerm": term}]
    return {**affinity, "podAffinity": pod_affinity}


def pod_security_context() -> dict[str, Any]:
    """Pod-level settings of the `restricted` Pod Security Standard."""
    return {
        "runAsNonRoot": True,
        "runAsUser": NON_ROOT_UID,
        "runAsGroup": NON_ROOT_UID,
        "fsGroup": NON_ROOT_UID,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def container_security_context() -> dict[str, Any]:
    """Container-level settings of the `restricted` Pod Security Standard."""
    return {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}


def shm_volume(size: Quantity) -> dict[str, Any]:
    """An in-memory /dev/shm: the container runtime's 64Mi default breaks the Python backend and NCCL."""
    return {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": quantity(size)}}


SHM_MOUNT = {"name": "dshm", "mountPath": "/dev/shm"}


def env_vars(env: list[EnvVar] | None) -> list[dict[str, Any]]:
    return [e.wire() for e in env or []]


def placement_fields(gpu: GPU | None, placement: Placement | None) -> dict[str, Any]:
    """nodeSelector, tolerations, affinity and priority class of a pod spec."""
    out: dict[str, Any] = {}
    if placement and placement.node_selector:
        out["nodeSelector"] = dict(placement.node_selector)
    tols = tolerations(gpu, placement)
    if tols:
        out["tolerations"] = tols
    aff = affinity(gpu, placement)
    if aff:
        out["affinity"] = aff
    if placement and placement.priority_class_name:
        out["priorityClassName"] = placement.priority_class_name
    return out


def gpu_summary(gpu: GPU | None) -> str:
    """A short GPU description for printer columns, e.g. `1x NVIDIA-A100-SXM4-80GB` or `mig-1g.10gb`."""
    if gpu is None:
        return "cpu"
    what = f"mig-{gpu.mig}" if gpu.mig else f"{gpu.resource_count}x"
    return f"{what} {gpu.product}" if gpu.product else what
