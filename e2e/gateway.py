"""A real Gateway API implementation for the canary e2e: Traefik v3, built from its Go module.

    install_gateway_api(kubectl)          # the standard-channel CRDs Traefik is built against
    with Traefik(cluster, state_dir) as traefik:
        kubectl.apply(gateway_manifests(namespace, traefik.port))

Traefik watches the cluster through the admin kubeconfig (its Kubernetes Gateway provider reads
KUBECONFIG), programs the HTTPRoutes attached to its Gateways, writes their status (Accepted,
ResolvedRefs), and sends each request to an endpoint of the weighted backend Service, at the pod
IP in its EndpointSlice: inside hack/netns.sh those IPs are where the pods' servers listen
(e2e/netns.py). Its one entry point `web` listens on loopback; a Gateway listener names it by port.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from e2e.cluster import Cluster, ClusterError, tool_binary
from e2e.kube import Kubectl, wait_established
from e2e.net import free_ports, http_status
from e2e.procs import BackgroundService
from kubeforge.testing.triton import LOOPBACK

CONTROLLER_NAME = "traefik.io/gateway-controller"
GATEWAY_CLASS = "traefik"


def gateway_api_crds() -> Path:
    """The folder of the Gateway API's standard-channel CRDs (e2e/binaries.sh, component traefik)."""
    crds = tool_binary("traefik").parent / "gateway-api-crds"
    if not any(crds.glob("*.yaml")):
        raise ClusterError(f"e2e/binaries.sh traefik left no Gateway API CRDs in {crds}")
    return crds


def install_gateway_api(kubectl: Kubectl) -> None:
    crds = gateway_api_crds()
    kubectl.apply(crds, server_side=True)
    wait_established(kubectl, crds)


class Traefik(BackgroundService):
    """Traefik with only its Kubernetes Gateway provider, and an entry point `web` on loopback."""

    def __init__(self, cluster: Cluster, state_dir: Path) -> None:
        super().__init__(state_dir, ["traefik"])
        self.cluster = cluster
        self.port = 0
        self.ping_port = 0

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    def _launch(self, deadline: float) -> None:
        self.port, self.ping_port = free_ports(2)
        # the file provider's (empty) folder also names the state directory on the command line,
        # which is how a leftover process of this service is told apart (e2e/procs.py)
        dynamic = self.state_dir / "dynamic"
        dynamic.mkdir(parents=True, exist_ok=True)
        argv: list[str | Path] = [
            tool_binary("traefik"),
            "--global.checkNewVersion=false",
            "--global.sendAnonymousUsage=false",
            "--log.level=INFO",
            f"--entryPoints.web.address={LOOPBACK}:{self.port}",
            f"--entryPoints.traefik.address={LOOPBACK}:{self.ping_port}",
            "--ping=true",
            "--providers.kubernetesGateway=true",
            f"--providers.kubernetesGateway.statusAddress.ip={LOOPBACK}",
            f"--providers.file.directory={dynamic}",
        ]
        self._run(
            "traefik",
            argv,
            lambda: http_status(f"http://{LOOPBACK}:{self.ping_port}/ping") == 200,
            deadline,
            env={"KUBECONFIG": str(self.cluster.kubeconfig)},
        )


def gateway_manifests(namespace: str, name: str, port: int) -> str:
    """A GatewayClass for Traefik and a Gateway `name` in `namespace` whose HTTP listener `web` is
    Traefik's entry point of that port, open to routes of its own namespace."""
    objects: list[dict[str, Any]] = [
        {
            "apiVersion": "gateway.networking.k8s.io/v1",
            "kind": "GatewayClass",
            "metadata": {"name": GATEWAY_CLASS},
            "spec": {"controllerName": CONTROLLER_NAME},
        },
        {
            "apiVersion": "gateway.networking.k8s.io/v1",
            "kind": "Gateway",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {
                "gatewayClassName": GATEWAY_CLASS,
                "listeners": [
                    {
                        "name": "web",
                        "port": port,
                        "protocol": "HTTP",
                        "allowedRoutes": {"namespaces": {"from": "Same"}},
                    }
                ],
            },
        },
    ]
    return json.dumps({"apiVersion": "v1", "kind": "List", "items": objects})
