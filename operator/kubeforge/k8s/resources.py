"""The API resources the operator reads and writes, with their REST paths (no discovery needed)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Resource:
    """One kind's REST coordinates."""

    api_version: str
    kind: str
    plural: str
    namespaced: bool = True

    @property
    def group(self) -> str:
        return self.api_version.rpartition("/")[0]

    def path(
        self, namespace: str | None = None, name: str | None = None, subresource: str | None = None
    ) -> str:
        base = f"/api/{self.api_version}" if "/" not in self.api_version else f"/apis/{self.api_version}"
        if self.namespaced and namespace is not None:
            base += f"/namespaces/{namespace}"
        base += f"/{self.plural}"
        if name is not None:
            base += f"/{name}"
        if subresource is not None:
            base += f"/{subresource}"
        return base


MODEL_DEPLOYMENT = Resource("kubeforge.io/v1alpha1", "ModelDeployment", "modeldeployments")
TRAINING_JOB = Resource("kubeforge.io/v1alpha1", "TrainingJob", "trainingjobs")
DEPLOYMENT = Resource("apps/v1", "Deployment", "deployments")
SERVICE = Resource("v1", "Service", "services")
POD = Resource("v1", "Pod", "pods")
EVENT = Resource("v1", "Event", "events")
NAMESPACE = Resource("v1", "Namespace", "namespaces", namespaced=False)
JOB = Resource("batch/v1", "Job", "jobs")
PVC = Resource("v1", "PersistentVolumeClaim", "persistentvolumeclaims")
PDB = Resource("policy/v1", "PodDisruptionBudget", "poddisruptionbudgets")
NETWORK_POLICY = Resource("networking.k8s.io/v1", "NetworkPolicy", "networkpolicies")
HPA = Resource("autoscaling/v2", "HorizontalPodAutoscaler", "horizontalpodautoscalers")
SCALED_OBJECT = Resource("keda.sh/v1alpha1", "ScaledObject", "scaledobjects")
SERVICE_MONITOR = Resource("monitoring.coreos.com/v1", "ServiceMonitor", "servicemonitors")
LEADER_WORKER_SET = Resource("leaderworkerset.x-k8s.io/v1", "LeaderWorkerSet", "leaderworkersets")
HTTP_ROUTE = Resource("gateway.networking.k8s.io/v1", "HTTPRoute", "httproutes")
LEASE = Resource("coordination.k8s.io/v1", "Lease", "leases")

_ALL = (
    MODEL_DEPLOYMENT,
    TRAINING_JOB,
    DEPLOYMENT,
    SERVICE,
    POD,
    EVENT,
    NAMESPACE,
    JOB,
    PVC,
    PDB,
    NETWORK_POLICY,
    HPA,
    SCALED_OBJECT,
    SERVICE_MONITOR,
    LEADER_WORKER_SET,
    HTTP_ROUTE,
    LEASE,
)
_BY_KIND = {(r.api_version, r.kind): r for r in _ALL}


def resource_for(api_version: str, kind: str) -> Resource:
    """The resource of an object's apiVersion and kind."""
    try:
        return _BY_KIND[(api_version, kind)]
    except KeyError:
        raise KeyError(f"kubeforge does not manage {kind} ({api_version})") from None
