"""Aggregated API servers on the local control plane, on loopback: registration and identity.

An aggregated API server (prometheus-adapter for custom.metrics.k8s.io, KEDA's metrics server for
external.metrics.k8s.io) is announced by an APIService that names a Service. The API server
proxies `/apis/<group>/<version>/...` to it, authenticated with the front-proxy client
certificate (e2e/pki.py) and the user in X-Remote-User headers; the aggregated server trusts
those headers as configured in kube-system/extension-apiserver-authentication (delegated
authentication) and asks the API server whether that user may do it (a SubjectAccessReview).

Nothing runs in pods here and there is no kube-proxy, so a Service's ClusterIP leads nowhere: the
API server runs with `--enable-aggregator-routing=true` (e2e/cluster.py) and dials the address
in the Service's EndpointSlice instead. That address is 127.0.0.1, in a slice of address type
FQDN: the API server refuses loopback addresses in IPv4 slices (`ValidateEndpointIP`), while
"127.0.0.1" is a valid DNS subdomain, and the aggregator puts the slice's first address into the
URL it dials as it is (`k8s.io/apiserver/pkg/util/proxy.ResolveEndpoint`), where Go's dialer
reads it as an IP literal. Whatever it dials, the API server checks the serving certificate
against the APIService's caBundle for the name `<service>.<namespace>.svc`
(`AggregatedAPI.dns_name`). See e2e/README.md, "Aggregated APIs".
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from e2e.cluster import Cluster
from e2e.kube import Kubectl, find_condition, wait_for
from e2e.pki import write_token_kubeconfig
from kubeforge.testing.triton import LOOPBACK

# The port of the Service the APIService names; the EndpointSlice maps it to the real one.
SERVICE_PORT = 443
_PORT_NAME = "https"
# As the upstream charts register the metrics APIs.
_GROUP_PRIORITY_MINIMUM = 100


@dataclass(frozen=True)
class AggregatedAPI:
    """Where one aggregated API server is announced: its Service and the group versions it serves.

    `versions` is in order of preference: the first gets the highest versionPriority, so clients
    that discover the group (the HPA controller) use it.
    """

    namespace: str
    service: str
    group: str
    versions: tuple[str, ...]

    @property
    def apiservices(self) -> list[str]:
        """The APIService names, `<version>.<group>`."""
        return [f"{version}.{self.group}" for version in self.versions]

    @property
    def dns_name(self) -> str:
        """The name the server's certificate must carry (the API server verifies it, not the address)."""
        return f"{self.service}.{self.namespace}.svc"

    def manifests(self, port: int, ca_bundle: bytes) -> list[dict[str, Any]]:
        """The Service (no selector), its EndpointSlice pointing at 127.0.0.1:`port`, the APIServices.

        `ca_bundle` is the PEM of the CA that signed the server's certificate.
        """
        service = {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": self.service, "namespace": self.namespace},
            # No selector: the endpoint slice controller leaves its slices to us.
            "spec": {"ports": [{"name": _PORT_NAME, "port": SERVICE_PORT, "targetPort": port}]},
        }
        endpoint_slice = {
            "apiVersion": "discovery.k8s.io/v1",
            "kind": "EndpointSlice",
            "metadata": {
                "name": f"{self.service}-loopback",
                "namespace": self.namespace,
                "labels": {
                    "kubernetes.io/service-name": self.service,
                    "endpointslice.kubernetes.io/managed-by": "e2e.kubeforge.io",
                },
            },
            # FQDN, not IPv4: see the module docstring.
            "addressType": "FQDN",
            "endpoints": [{"addresses": [LOOPBACK], "conditions": {"ready": True}}],
            "ports": [{"name": _PORT_NAME, "port": port, "protocol": "TCP"}],
        }
        apiservices = [
            {
                "apiVersion": "apiregistration.k8s.io/v1",
                "kind": "APIService",
                "metadata": {"name": name},
                "spec": {
                    "group": self.group,
                    "version": version,
                    "service": {"namespace": self.namespace, "name": self.service, "port": SERVICE_PORT},
                    "caBundle": base64.b64encode(ca_bundle).decode(),
                    "groupPriorityMinimum": _GROUP_PRIORITY_MINIMUM,
                    "versionPriority": 100 * (len(self.versions) - index),
                },
            }
            for index, (name, version) in enumerate(zip(self.apiservices, self.versions, strict=True))
        ]
        return [service, endpoint_slice, *apiservices]

    def register(self, kubectl: Kubectl, port: int, ca_bundle: Path) -> None:
        """Create (or update) the namespace, Service, EndpointSlice and APIServices."""
        kubectl.apply(_as_list([_namespace(self.namespace), *self.manifests(port, ca_bundle.read_bytes())]))

    def wait_available(self, kubectl: Kubectl, timeout: float = 60.0) -> None:
        """Wait until the API server's availability check passes for every APIService.

        That check is a real request through the aggregation path (routing, TLS, the server's
        discovery document), so Available=True means `kubectl get --raw /apis/<group>/...` works.
        """
        for name in self.apiservices:
            _wait_apiservice_available(kubectl, name, timeout)

    def unregister(self, kubectl: Kubectl) -> None:
        """Delete the APIServices, then the Service and its slice.

        The APIServices must not outlive the server: while one is unavailable, API discovery is
        incomplete, and the namespace controller and the garbage collector stall on that.
        """
        kubectl("delete", "apiservice", *self.apiservices, "--ignore-not-found", "--wait=false")
        kubectl(
            "delete", "service", self.service, "--ignore-not-found", "--wait=false", namespace=self.namespace
        )
        kubectl(
            "delete", "endpointslice", f"{self.service}-loopback", "--ignore-not-found", "--wait=false",
            namespace=self.namespace,
        )  # fmt: skip


def service_account_kubeconfig(
    cluster: Cluster, namespace: str, name: str, path: Path, duration: str = "24h"
) -> Path:
    """Write a kubeconfig for ServiceAccount `namespace/name` (created if missing) to `path`.

    The token comes from the TokenRequest API (`kubectl create token`), as a projected token in a
    pod would, so a component run out of cluster has exactly the rights its RBAC gives it.
    """
    kubectl = cluster.kubectl()
    service_account = {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": {"name": name, "namespace": namespace},
    }
    kubectl.apply(_as_list([_namespace(namespace), service_account]))
    token = kubectl("create", "token", name, f"--duration={duration}", namespace=namespace).stdout.strip()
    path.parent.mkdir(parents=True, exist_ok=True)
    write_token_kubeconfig(path, cluster.server, cluster.ca.cert, token, f"{namespace}-{name}")
    return path


def _wait_apiservice_available(kubectl: Kubectl, name: str, timeout: float) -> None:
    last: dict[str, Any] = {}

    def available() -> bool:
        nonlocal last
        last = find_condition(kubectl.json("get", "apiservice", name), "Available") or {}
        return last.get("status") == "True"

    # the condition's message says what failed: routing, TLS, or the server's answer
    wait_for(
        available, timeout=timeout, interval=0.5, message=lambda: f"APIService {name} Available ({last})"
    )


def _namespace(name: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}


def _as_list(items: list[dict[str, Any]]) -> str:
    return json.dumps({"apiVersion": "v1", "kind": "List", "items": items})
