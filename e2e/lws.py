"""LeaderWorkerSet's controller (sigs.k8s.io/lws), built from its Go module, run out of cluster.

    with LeaderWorkerSetController(cluster):
        kubectl.apply(a_leaderworkerset)

Its CRD and RBAC come from the module's own config/ in the Go module cache (never copied into this
repo); the manager runs as the ServiceAccount its manifests name (`lws-system/lws-controller-manager`,
after kustomize's `namePrefix: lws-`), with a TokenRequest token and the ClusterRoles of
config/rbac, so a right it lacks fails here as it would in a cluster.

Unlike Kueue, LWS cannot do without its webhooks: the pod webhook gives every pod of a group its
labels (`leaderworkerset.sigs.k8s.io/worker-index`, `group-index`, `group-key`), its `LWS_*`
environment (LWS_LEADER_ADDRESS, LWS_GROUP_SIZE, LWS_WORKER_INDEX) and the exclusive-topology
affinity; the LeaderWorkerSet webhook defaults and validates the object. So the webhook
configurations of config/webhook (with the objectSelector its kustomize patches add: only pods
that carry `leaderworkerset.sigs.k8s.io/name`) are registered with the API server, pointing at
`https://127.0.0.1:<port>/<path>`; the webhook server's certificate comes from the cluster's CA
(for the IP 127.0.0.1), which is the `caBundle`. LWS's own certificate management (it writes a
Secret and patches the webhook configurations for its in-cluster Service) is off.
"""

from __future__ import annotations

import base64
import ssl
import time
from pathlib import Path
from typing import Any

import yaml

from e2e.aggregation import LOOPBACK, service_account_kubeconfig
from e2e.cluster import Cluster, tool_binary
from e2e.kube import Kubectl, find_condition, wait_for
from e2e.monitoring import go_module_dir
from e2e.net import free_ports, http_status
from e2e.pki import issue_serving_certificate
from e2e.procs import BackgroundService, StartError

LWS_MODULE = "sigs.k8s.io/lws"
LWS_VERSION = "v0.7.0"  # also e2e/binaries.sh LWS_VERSION
LWS_API = "leaderworkerset.x-k8s.io/v1"
CRD = "leaderworkersets.leaderworkerset.x-k8s.io"
NAMESPACE = "lws-system"  # config/default/kustomization.yaml: namespace
NAME_PREFIX = "lws-"  # ... and namePrefix
SERVICE_ACCOUNT = f"{NAME_PREFIX}controller-manager"
# the manager's ClusterRoles: its controllers' rights, and TokenReview/SubjectAccessReview for its
# authenticated metrics endpoint
RBAC_FILES = ("role.yaml", "role_binding.yaml", "auth_proxy_role.yaml", "auth_proxy_role_binding.yaml")
WEBHOOK_KINDS = {
    "MutatingWebhookConfiguration": "mutating-patch.yaml",
    "ValidatingWebhookConfiguration": "validating-patch.yaml",
}


def lws_config_dir() -> Path:
    """The config/ folder of the LWS module in the Go module cache (downloaded if missing)."""
    return go_module_dir(LWS_MODULE, LWS_VERSION) / "config"


def install_crds(kubectl: Kubectl) -> None:
    """Apply the LeaderWorkerSet CRD from the module and wait until it is Established."""
    bases = lws_config_dir() / "crd" / "bases"
    kubectl.apply(bases, server_side=True)

    def established() -> bool:
        # right after the apply the CRD may have no conditions yet, which `kubectl wait` calls an error
        crd = kubectl.json("get", "crd", CRD)
        return (find_condition(crd, "Established") or {}).get("status") == "True"

    wait_for(established, timeout=60, message=f"CRD {CRD} Established")


def _kustomized(doc: dict[str, Any]) -> dict[str, Any]:
    """What kustomize makes of an object of config/ (namePrefix, namespace) for the refs we use."""
    meta = doc["metadata"]
    meta["name"] = NAME_PREFIX + meta["name"]
    if "namespace" in meta:
        meta["namespace"] = NAMESPACE
    if "roleRef" in doc:
        doc["roleRef"]["name"] = NAME_PREFIX + doc["roleRef"]["name"]
    for subject in doc.get("subjects", []):
        subject["name"] = NAME_PREFIX + subject["name"]
        subject["namespace"] = NAMESPACE
    return doc


def rbac_manifests(config: Path) -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = []
    for name in RBAC_FILES:
        docs += [_kustomized(d) for d in yaml.safe_load_all((config / "rbac" / name).read_text()) if d]
    return docs


def webhook_manifests(config: Path, port: int, ca_bundle: bytes) -> list[dict[str, Any]]:
    """config/webhook's configurations with its kustomize patches, each webhook calling 127.0.0.1:`port`.

    The patches are JSON patches that replace whole webhooks (to add the pods' objectSelector);
    LWS's own Service reference becomes a URL, as for a webhook server outside the cluster.
    """
    docs = [d for d in yaml.safe_load_all((config / "webhook" / "manifests.yaml").read_text()) if d]
    out = []
    for doc in docs:
        for op in yaml.safe_load((config / "webhook" / WEBHOOK_KINDS[doc["kind"]]).read_text()):
            if op["op"] != "replace" or not op["path"].startswith("/webhooks/"):
                raise StartError(f"unexpected patch of the LWS webhooks: {op['op']} {op['path']}")
            doc["webhooks"][int(op["path"].rsplit("/", 1)[1])] = op["value"]
        for webhook in doc["webhooks"]:
            path = webhook["clientConfig"]["service"]["path"]
            webhook["clientConfig"] = {
                "url": f"https://{LOOPBACK}:{port}{path}",
                "caBundle": base64.b64encode(ca_bundle).decode(),
            }
        out.append(_kustomized(doc))
    return out


def unregister_webhooks(kubectl: Kubectl) -> None:
    for doc in webhook_manifests(lws_config_dir(), 0, b""):
        kubectl("delete", doc["kind"].lower(), doc["metadata"]["name"], "--ignore-not-found", check=False)


class LeaderWorkerSetController(BackgroundService):
    """The LWS manager (its controllers and webhook server) and its registered webhooks."""

    def __init__(self, cluster: Cluster, *, state_dir: Path | None = None) -> None:
        super().__init__(state_dir or cluster.state_dir / "lws", ["lws"])
        self.cluster = cluster

    def stop(self, timeout: float = 10.0) -> None:
        """Unregister the webhooks, then stop: with `failurePolicy: Fail` and no server behind them,
        no LeaderWorkerSet (and no pod of one) could be created or updated. The CRD and the
        LeaderWorkerSets stay. Works from another process too (`make dev-down`)."""
        if self.cluster.is_running():
            unregister_webhooks(self.cluster.kubectl())
        super().stop(timeout)

    def _launch(self, deadline: float) -> None:
        binary = tool_binary("lws")
        stamp = (binary.parent / ".lws.version").read_text().strip()
        if stamp != LWS_VERSION:
            raise StartError(f"{binary} is LWS {stamp}, its CRD here is {LWS_VERSION}: align e2e/binaries.sh")
        kubectl = self.cluster.kubectl()
        config = lws_config_dir()
        install_crds(kubectl)
        kubeconfig = service_account_kubeconfig(
            self.cluster, NAMESPACE, SERVICE_ACCOUNT, self.state_dir / "kubeconfig"
        )
        kubectl.apply(yaml.safe_dump_all(rbac_manifests(config)), server_side=True)

        # controller-runtime's webhook server reads tls.crt and tls.key from its certDir
        cert_dir = self.state_dir / "certs"
        issue_serving_certificate(self.cluster.ca, cert_dir, "tls", [LOOPBACK])
        health, metrics, webhook = free_ports(3)
        settings = self.state_dir / "lws-config.yaml"
        settings.write_text(
            yaml.safe_dump(
                {
                    "apiVersion": "config.lws.x-k8s.io/v1alpha1",
                    "kind": "Configuration",
                    "health": {"healthProbeBindAddress": f"{LOOPBACK}:{health}"},
                    "metrics": {"bindAddress": f"{LOOPBACK}:{metrics}"},
                    "webhook": {"host": LOOPBACK, "port": webhook, "certDir": str(cert_dir)},
                    "leaderElection": {"leaderElect": False},
                    "internalCertManagement": {"enable": False},
                },
                sort_keys=False,
            )
        )
        ready_url = f"http://{LOOPBACK}:{health}/readyz"
        argv: list[str | Path] = [binary, f"--config={settings}", "--zap-devel=false"]
        self._run(
            "lws", argv, lambda: http_status(ready_url) == 200, deadline, {"KUBECONFIG": str(kubeconfig)}
        )

        manifests = webhook_manifests(config, webhook, self.cluster.ca.cert.read_bytes())
        kubectl.apply(yaml.safe_dump_all(manifests), server_side=True)
        # LWS registers its webhooks from a goroutine once its controllers are set up, possibly
        # after /readyz answers: wait until the pod webhook's path is served
        wait_for(
            lambda: _webhook_serving(webhook, self.cluster.ca.cert),
            timeout=max(1.0, deadline - time.monotonic()),
            interval=0.2,
            message="the LWS webhook server",
        )


def _webhook_serving(port: int, ca: Path) -> bool:
    """Whether the pod webhook answers over TLS with our certificate (a GET without a review is
    refused by the handler; 404 means not registered yet, 0 nothing listening)."""
    context = ssl.create_default_context(cafile=str(ca))
    return http_status(f"https://{LOOPBACK}:{port}/mutate--v1-pod", context) not in (0, 404)
