"""The simulated nodes: GPU machines as NVIDIA GPU feature discovery labels them, and CPU machines.

kwok keeps these nodes Ready (e2e/kwok/stages/node.yaml) and the real
kube-scheduler places pods on them by their capacity, labels and taints, so a
manifest that asks for `nvidia.com/gpu: 2` on an `NVIDIA-H100-80GB-HBM3` lands
where it would in a real cluster, and one asking for too much stays Pending
with the scheduler's own message.

Labels follow GPU feature discovery (github.com/NVIDIA/gpu-feature-discovery,
README "Generated Labels"); with the MIG strategy `mixed` the device plugin
advertises one resource per MIG profile (`nvidia.com/mig-1g.10gb`) and GFD adds
`nvidia.com/mig-<profile>.*` labels.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

# Nodes carrying this annotation are the ones kwok manages (e2e/kwok/kwok.yaml).
KWOK_ANNOTATION = ("kwok.x-k8s.io/node", "fake")
# The taint that the GPU operator's docs recommend for GPU nodes: only pods that tolerate it
# (i.e. that ask for GPUs on purpose) land there.
GPU_TAINT = {"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}
GPU_TOLERATION = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}

A100_80GB = "NVIDIA-A100-SXM4-80GB"
H100_80GB = "NVIDIA-H100-80GB-HBM3"


@dataclass(frozen=True)
class SimulatedNode:
    """One node: its resources (capacity; allocatable keeps a kubelet-like reserve) and labels."""

    name: str
    cpu: int
    memory_gi: int
    zone: str
    instance_type: str
    pod_cidr: str
    extended: Mapping[str, int] = field(default_factory=dict)
    labels: Mapping[str, str] = field(default_factory=dict)
    gpu: bool = False
    max_pods: int = 110

    def manifest(self) -> dict[str, Any]:
        """The Node object to create; kwok reads its status.capacity/allocatable and keeps them."""
        capacity = {
            "cpu": str(self.cpu),
            "memory": f"{self.memory_gi}Gi",
            "ephemeral-storage": "500Gi",
            "pods": str(self.max_pods),
            **{name: str(count) for name, count in self.extended.items()},
        }
        # kube-reserved/system-reserved as on a managed node pool: a core and a few GiB.
        allocatable = {
            **capacity,
            "cpu": f"{self.cpu * 1000 - 1000}m",
            "memory": f"{self.memory_gi - min(8, self.memory_gi // 10)}Gi",
            "ephemeral-storage": "450Gi",
        }
        return {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": self.name,
                "annotations": {KWOK_ANNOTATION[0]: KWOK_ANNOTATION[1]},
                "labels": {
                    "kubernetes.io/arch": "amd64",
                    "kubernetes.io/os": "linux",
                    "kubernetes.io/hostname": self.name,
                    "node.kubernetes.io/instance-type": self.instance_type,
                    "topology.kubernetes.io/region": "local",
                    "topology.kubernetes.io/zone": self.zone,
                    "type": "kwok",
                    **self.labels,
                },
            },
            "spec": {
                "podCIDR": self.pod_cidr,
                "podCIDRs": [self.pod_cidr],
                "taints": [dict(GPU_TAINT)] if self.gpu else [],
            },
            "status": {"capacity": capacity, "allocatable": allocatable},
        }


def gpu_labels(
    product: str, count: int, memory_mib: int, family: str, compute: tuple[int, int]
) -> dict[str, str]:
    """The labels GPU feature discovery puts on a node with `count` GPUs of one `product`."""
    return {
        "feature.node.kubernetes.io/pci-10de.present": "true",
        "nvidia.com/gpu.present": "true",
        "nvidia.com/gpu.product": product,
        "nvidia.com/gpu.count": str(count),
        "nvidia.com/gpu.memory": str(memory_mib),
        "nvidia.com/gpu.family": family,
        "nvidia.com/gpu.compute.major": str(compute[0]),
        "nvidia.com/gpu.compute.minor": str(compute[1]),
        "nvidia.com/cuda.driver.major": "550",
        "nvidia.com/cuda.runtime.major": "12",
        "nvidia.com/mig.capable": "true",
    }


def a100_node(name: str, index: int, zone: str) -> SimulatedNode:
    """8x A100 80GB SXM4 (like p4de.24xlarge)."""
    return SimulatedNode(
        name=name,
        cpu=96,
        memory_gi=1152,
        zone=zone,
        instance_type="p4de.24xlarge",
        pod_cidr=f"10.244.{index}.0/24",
        extended={"nvidia.com/gpu": 8},
        labels=gpu_labels(A100_80GB, 8, 81920, "ampere", (8, 0)),
        gpu=True,
    )


def h100_node(name: str, index: int, zone: str) -> SimulatedNode:
    """8x H100 80GB HBM3 (like p5.48xlarge)."""
    return SimulatedNode(
        name=name,
        cpu=192,
        memory_gi=2048,
        zone=zone,
        instance_type="p5.48xlarge",
        pod_cidr=f"10.244.{index}.0/24",
        extended={"nvidia.com/gpu": 8},
        labels=gpu_labels(H100_80GB, 8, 81559, "hopper", (9, 0)),
        gpu=True,
    )


def mig_node(name: str, index: int, zone: str) -> SimulatedNode:
    """One A100 80GB split into seven 1g.10gb MIG instances, MIG strategy `mixed`.

    Under `mixed` the device plugin advertises `nvidia.com/mig-1g.10gb` and no
    `nvidia.com/gpu` (all of the GPU is partitioned), and the product label stays
    the full GPU's name.
    """
    labels = gpu_labels(A100_80GB, 1, 81920, "ampere", (8, 0))
    labels |= {
        "nvidia.com/mig.strategy": "mixed",
        "nvidia.com/mig.config": "all-1g.10gb",
        "nvidia.com/mig.config.state": "success",
        "nvidia.com/mig-1g.10gb.count": "7",
        "nvidia.com/mig-1g.10gb.memory": "9728",
        "nvidia.com/mig-1g.10gb.multiprocessors": "14",
        "nvidia.com/mig-1g.10gb.slices.gi": "1",
        "nvidia.com/mig-1g.10gb.slices.ci": "1",
    }
    return SimulatedNode(
        name=name,
        cpu=12,
        memory_gi=170,
        zone=zone,
        instance_type="a2-ultragpu-1g",
        pod_cidr=f"10.244.{index}.0/24",
        extended={"nvidia.com/mig-1g.10gb": 7},
        labels=labels,
        gpu=True,
    )


def cpu_node(name: str, index: int, zone: str, cpu: int = 32, memory_gi: int = 128) -> SimulatedNode:
    """A general-purpose node without GPUs (and without the GPU taint)."""
    return SimulatedNode(
        name=name,
        cpu=cpu,
        memory_gi=memory_gi,
        zone=zone,
        instance_type="m6i.8xlarge",
        pod_cidr=f"10.244.{index}.0/24",
    )


def default_nodes() -> list[SimulatedNode]:
    """The nodes of every local cluster: 2x 8 A100, 4x 8 H100, 1 MIG node, 2 CPU nodes.

    Four H100 nodes hold two multi-node replicas (LeaderWorkerSet groups) of 2 nodes x 8 GPUs.
    """
    return [
        a100_node("gpu-a100-0", 1, "local-a"),
        a100_node("gpu-a100-1", 2, "local-b"),
        h100_node("gpu-h100-0", 3, "local-a"),
        h100_node("gpu-h100-1", 4, "local-b"),
        mig_node("gpu-mig-0", 5, "local-a"),
        cpu_node("cpu-0", 6, "local-a"),
        cpu_node("cpu-1", 7, "local-b"),
        h100_node("gpu-h100-2", 8, "local-a"),
        h100_node("gpu-h100-3", 9, "local-b"),
    ]
