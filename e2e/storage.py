"""Bound PersistentVolumeClaims for tests: a static hostPath PV pre-bound to each claim.

The local cluster has no storage provisioner; pre-binding (PV claimRef + PVC volumeName)
lets the real PV controller bind them, so pods that mount claims schedule as in a cluster.
"""

from __future__ import annotations

from pathlib import Path

from e2e.kube import Kubectl, wait_for


def bound_claim(
    kubectl: Kubectl,
    namespace: str,
    name: str,
    size: str = "10Gi",
    volume_prefix: str = "",
    host_root: Path = Path("/tmp/kubeforge-e2e"),
) -> None:
    """Create the claim `name` in `namespace`, bound to its own PV, and wait until Bound."""
    pv = volume_for_claim(
        kubectl,
        namespace,
        name,
        size,
        host_root,
        volume_prefix=volume_prefix,
        access_modes=("ReadWriteMany",),
    )
    kubectl.apply(
        f"""
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {{name: {name}, namespace: {namespace}}}
spec:
  accessModes: [ReadWriteMany]
  storageClassName: ""
  volumeName: {pv}
  resources: {{requests: {{storage: {size}}}}}
"""
    )
    wait_for(
        lambda: kubectl.json("get", "pvc", name, namespace=namespace)["status"].get("phase") == "Bound",
        timeout=30,
        message=f"claim {namespace}/{name} Bound",
    )


def volume_for_claim(
    kubectl: Kubectl,
    namespace: str,
    claim: str,
    size: str = "10Gi",
    host_root: Path = Path("/tmp/kubeforge-e2e"),
    volume_prefix: str = "",
    access_modes: tuple[str, ...] = ("ReadWriteMany", "ReadWriteOnce"),
) -> str:
    """A hostPath PV pre-bound to a claim that someone else creates (e.g. the operator's model
    cache claim): the PV controller binds the claim as soon as it appears. Returns the PV's name."""
    pv = f"{volume_prefix + '-' if volume_prefix else ''}{namespace}-{claim}"[:253]
    kubectl.apply(
        f"""
apiVersion: v1
kind: PersistentVolume
metadata:
  name: {pv}
  labels: {{kubeforge.io/test-namespace: {namespace}}}
spec:
  capacity: {{storage: {size}}}
  accessModes: [{", ".join(access_modes)}]
  persistentVolumeReclaimPolicy: Delete
  storageClassName: ""
  hostPath: {{path: {host_root / pv}}}
  claimRef: {{namespace: {namespace}, name: {claim}}}
"""
    )
    return pv
