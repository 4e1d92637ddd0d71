"""Kubeforge: a Kubernetes operator for AI workloads (Triton serving, distributed PyTorch training)."""

__version__ = "0.1.0"
GROUP = "kubeforge.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
