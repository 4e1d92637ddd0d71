"""The one place that talks to the Kubernetes API server."""

from kubeforge.k8s.client import ApiError, Kube
from kubeforge.k8s.resources import Resource, resource_for

__all__ = ["ApiError", "Kube", "Resource", "resource_for"]
