"""The autoscaling stack, real and out of cluster on loopback: Prometheus, prometheus-adapter, KEDA.

    with Prometheus(state / "prometheus") as prometheus:                # e2e/prometheus.py
        prometheus.set_targets([(triton.metrics_address, {"namespace": ns, "pod": "triton-0"})])
        with PrometheusAdapter(cluster, prometheus.url) as adapter:     # custom.metrics.k8s.io
            adapter.pod_metrics(ns, "triton_inferences_per_second")     # {"triton-0": 0.0}
        with Keda(cluster, prometheus.url) as keda:                      # external.metrics.k8s.io
            keda.external_metric(ns, "s0-prometheus", scaled_object="my-so")

Each is built from its Go module by e2e/binaries.sh (cached in ~/.cache/kubeforge/bin; a missing
one is built, never skipped) and runs in the background (e2e/procs.py BackgroundService) with
its files and logs under its state directory (default: under the cluster's, whose logs a failed
session keeps), on free loopback ports; `stop()` (or leaving the `with`) ends it and removes the
APIServices it registered. The two metrics servers are registered on the cluster's aggregation
layer (e2e/aggregation.py), authenticate to the API server as the ServiceAccounts of their own
manifests with those manifests' RBAC, and serve TLS with a certificate from the cluster's CA
(the APIServices' caBundle).
"""

from __future__ import annotations

import json
import ssl
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from e2e.aggregation import LOOPBACK, AggregatedAPI, service_account_kubeconfig
from e2e.cluster import REPO_ROOT, Cluster, tool_binary
from e2e.kube import Kubectl, wait_established
from e2e.net import free_ports, http_status
from e2e.pki import issue_serving_certificate
from e2e.procs import BackgroundService, StartError
from e2e.prometheus import Prometheus, PrometheusQueryError, Sample

# Must match e2e/binaries.sh (checked against the binary's version stamp): the CRDs and RBAC
# installed come from this version's module.
KEDA_VERSION = "v2.21.0"
KEDA_MODULE = "github.com/kedacore/keda/v2"
KEDA_FINALIZER = "finalizer.keda.sh"
KEDA_KINDS = ("scaledobjects.keda.sh", "scaledjobs.keda.sh")
# The generated prometheus-adapter chart values (`make manifests`), read at every start.
ADAPTER_RULES = REPO_ROOT / "charts" / "prometheus-adapter-rules.yaml"

CUSTOM_METRICS = AggregatedAPI(
    "monitoring", "prometheus-adapter", "custom.metrics.k8s.io", ("v1beta2", "v1beta1")
)
EXTERNAL_METRICS = AggregatedAPI("keda", "keda-metrics-apiserver", "external.metrics.k8s.io", ("v1beta1",))

__all__ = [
    "ADAPTER_RULES",
    "CUSTOM_METRICS",
    "EXTERNAL_METRICS",
    "KEDA_VERSION",
    "Keda",
    "Prometheus",
    "PrometheusAdapter",
    "PrometheusQueryError",
    "Sample",
    "StartError",
    "adapter_config",
]


def go_module_dir(module: str, version: str) -> Path:
    """The module's folder in the Go module cache (downloaded through the module proxy if missing)."""
    out = subprocess.run(
        ["go", "mod", "download", "-json", f"{module}@{version}"],
        capture_output=True,
        text=True,
        check=True,
        cwd="/tmp",
    )
    return Path(json.loads(out.stdout)["Dir"])


# -- prometheus-adapter -------------------------------------------------------------------------------


def adapter_config(values: Mapping[str, Any]) -> dict[str, Any]:
    """The adapter's `--config` document from prometheus-adapter chart values, as the chart renders it.

    charts/prometheus-adapter-rules.yaml is a values file for the prometheus-community chart
    (`rules.custom`, `rules.external`, `rules.resource`): its ConfigMap template copies those lists,
    unchanged, to the adapter's `rules`, `externalRules` and `resourceRules`, which is the only
    shape the adapter binary reads. The chart's built-in `rules.default` set is not reproduced.
    """
    rules = values.get("rules") or {}
    if rules.get("default") or rules.get("existing"):
        raise ValueError(
            "rules.default and rules.existing need the chart itself; the generated file sets neither"
        )
    config: dict[str, Any] = {}
    for key, target in (("custom", "rules"), ("external", "externalRules"), ("resource", "resourceRules")):
        if rules.get(key):
            config[target] = rules[key]
    return config


# The RBAC of the prometheus-community chart's templates (auth delegation, reading the
# request-header configuration, the resources it maps series to, the HPA reading the API).
_ADAPTER_RBAC = """
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: "prometheus-adapter:system:auth-delegator"}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: "system:auth-delegator"}
subjects: [{kind: ServiceAccount, name: prometheus-adapter, namespace: monitoring}]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: prometheus-adapter-auth-reader, namespace: kube-system}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: Role, name: extension-apiserver-authentication-reader}
subjects: [{kind: ServiceAccount, name: prometheus-adapter, namespace: monitoring}]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: prometheus-adapter-resource-reader}
rules: [{apiGroups: [""], resources: [namespaces, pods, services, configmaps], verbs: [get, list, watch]}]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: prometheus-adapter-resource-reader}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: prometheus-adapter-resource-reader}
subjects: [{kind: ServiceAccount, name: prometheus-adapter, namespace: monitoring}]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: prometheus-adapter-server-resources}
rules: [{apiGroups: [custom.metrics.k8s.io], resources: ["*"], verbs: ["*"]}]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: prometheus-adapter-hpa-controller}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: prometheus-adapter-server-resources}
subjects: [{kind: ServiceAccount, name: horizontal-pod-autoscaler, namespace: kube-system}]
"""


class PrometheusAdapter(BackgroundService):
    """prometheus-adapter serving custom.metrics.k8s.io (v1beta2 and v1beta1) from `prometheus_url`.

    Its rules are `rules` (default: the repository's generated charts/prometheus-adapter-rules.yaml,
    read at each start and rendered as the chart renders it, see `adapter_config`). It re-lists
    Prometheus' series every `relist_interval` seconds, so a series that appears after the start
    (a new pod) is served that much later (the chart's default is 1 minute).
    """

    def __init__(
        self,
        cluster: Cluster,
        prometheus_url: str,
        *,
        state_dir: Path | None = None,
        rules: Path = ADAPTER_RULES,
        relist_interval: float = 2.0,
    ) -> None:
        super().__init__(state_dir or cluster.state_dir / "prometheus-adapter", ["prometheus-adapter"])
        self.cluster = cluster
        self.prometheus_url = prometheus_url
        self.rules = rules
        self.relist_interval = relist_interval
        self.port = 0

    def stop(self, timeout: float = 10.0) -> None:
        """Remove the APIServices (an unavailable one stalls namespace deletion), then stop."""
        if self.cluster.is_running():
            CUSTOM_METRICS.unregister(self.cluster.kubectl())
        super().stop(timeout)

    def pod_metrics(self, namespace: str, metric: str, pod: str = "*") -> dict[str, float]:
        """`kubectl get --raw /apis/custom.metrics.k8s.io/v1beta1/namespaces/<ns>/pods/<pod>/<metric>`: pod -> value."""
        path = f"/apis/custom.metrics.k8s.io/v1beta1/namespaces/{namespace}/pods/{pod}/{metric}"
        items = json.loads(self.cluster.kubectl()("get", "--raw", path).stdout)["items"]
        return {item["describedObject"]["name"]: _quantity(item["value"]) for item in items}

    def _launch(self, deadline: float) -> None:
        kubectl = self.cluster.kubectl()
        kubeconfig = service_account_kubeconfig(
            self.cluster, CUSTOM_METRICS.namespace, "prometheus-adapter", self.state_dir / "kubeconfig"
        )
        kubectl.apply(_ADAPTER_RBAC)
        serving = issue_serving_certificate(
            self.cluster.ca,
            self.state_dir / "certs",
            "serving",
            [LOOPBACK],
            dns_names=[CUSTOM_METRICS.dns_name],
        )
        config = self.state_dir / "adapter-config.yaml"
        config.write_text(
            yaml.safe_dump(adapter_config(yaml.safe_load(self.rules.read_text())), sort_keys=False)
        )
        (self.port,) = free_ports(1)
        argv: list[str | Path] = [
            tool_binary("prometheus-adapter"),
            f"--config={config}",
            f"--prometheus-url={self.prometheus_url}/",
            f"--metrics-relist-interval={round(self.relist_interval * 1000)}ms",
            f"--bind-address={LOOPBACK}",
            f"--secure-port={self.port}",
            f"--tls-cert-file={serving.cert}",
            f"--tls-private-key-file={serving.key}",
            f"--cert-dir={self.state_dir / 'certs'}",
            f"--lister-kubeconfig={kubeconfig}",
            f"--authentication-kubeconfig={kubeconfig}",
            f"--authorization-kubeconfig={kubeconfig}",
        ]
        url = f"https://{LOOPBACK}:{self.port}/readyz"
        context = ssl.create_default_context(cafile=str(self.cluster.ca.cert))
        self._run("prometheus-adapter", argv, lambda: http_status(url, context) == 200, deadline)
        CUSTOM_METRICS.register(kubectl, self.port, self.cluster.ca.cert)
        CUSTOM_METRICS.wait_available(kubectl, timeout=max(1.0, deadline - time.monotonic()))


# -- KEDA ---------------------------------------------------------------------------------------------


class Keda(BackgroundService):
    """KEDA's operator and its metrics API server (external.metrics.k8s.io), in namespace `keda`.

    Installs KEDA's CRDs and RBAC from its module's config/ (KEDA_VERSION, the binaries' version)
    and runs both as the ServiceAccount keda/keda-operator, as KEDA's manifests do. Without
    KEDA's certificate rotation (it writes Secrets and patches webhooks for in-cluster use), both
    share a certificate from the cluster's CA: the operator's gRPC metrics service and the
    metrics server's client authenticate each other with it (mutual TLS over 127.0.0.1), and the
    API server trusts it for the APIService. `prometheus_url` is what prometheus triggers point at
    (`prometheus_trigger`); KEDA itself needs no Prometheus.
    """

    def __init__(
        self, cluster: Cluster, prometheus_url: str | None = None, *, state_dir: Path | None = None
    ) -> None:
        super().__init__(state_dir or cluster.state_dir / "keda", ["keda-operator", "keda-metrics-apiserver"])
        self.cluster = cluster
        self.prometheus_url = prometheus_url

    def stop(self, timeout: float = 10.0) -> None:
        """Remove the APIService, stop, and take KEDA's finalizer off what it can no longer finalize.

        Both would otherwise hold namespaces in Terminating: an unavailable APIService makes
        discovery incomplete, and a ScaledObject keeps its `finalizer.keda.sh` until a running
        KEDA removes it. The CRDs and the objects themselves stay.
        """
        running = self.cluster.is_running()
        if running:
            EXTERNAL_METRICS.unregister(self.cluster.kubectl())
        super().stop(timeout)
        if running:
            _remove_finalizer(self.cluster.kubectl(), KEDA_FINALIZER, KEDA_KINDS)

    def prometheus_trigger(
        self, query: str, threshold: float, activation_threshold: float | None = None
    ) -> dict[str, Any]:
        """A ScaledObject trigger of type prometheus on `prometheus_url` (KEDA wants the numbers as strings)."""
        if self.prometheus_url is None:
            raise ValueError("Keda(..., prometheus_url=...) is needed for a prometheus trigger")
        metadata = {"serverAddress": self.prometheus_url, "query": query, "threshold": str(threshold)}
        if activation_threshold is not None:
            metadata["activationThreshold"] = str(activation_threshold)
        return {"type": "prometheus", "metadata": metadata}

    def external_metric(self, namespace: str, metric: str, scaled_object: str) -> float | None:
        """What the HPA reads: `/apis/external.metrics.k8s.io/v1beta1/namespaces/<ns>/<metric>` for one ScaledObject.

        `metric` is the name in the HPA KEDA made (`s<trigger index>-<scaler>`, e.g. `s0-prometheus`).
        """
        selector = urllib.parse.quote(f"scaledobject.keda.sh/name={scaled_object}")
        path = (
            f"/apis/external.metrics.k8s.io/v1beta1/namespaces/{namespace}/{metric}?labelSelector={selector}"
        )
        items = json.loads(self.cluster.kubectl()("get", "--raw", path).stdout)["items"]
        return _quantity(items[0]["value"]) if items else None

    def _launch(self, deadline: float) -> None:
        binary = tool_binary("keda")
        stamp = (binary.parent / ".keda.version").read_text().strip()
        if stamp != KEDA_VERSION:
            raise StartError(
                f"{binary} is KEDA {stamp}, its CRDs here are {KEDA_VERSION}: align e2e/binaries.sh"
            )
        kubectl = self.cluster.kubectl()
        config = go_module_dir(KEDA_MODULE, KEDA_VERSION) / "config"
        kubectl.apply(config / "crd" / "bases", server_side=True)
        wait_established(kubectl, config / "crd" / "bases")
        kubeconfig = service_account_kubeconfig(
            self.cluster, "keda", "keda-operator", self.state_dir / "kubeconfig"
        )
        for path in (
            "rbac/role.yaml",
            "rbac/role_binding.yaml",
            "metrics-server/role.yaml",
            "metrics-server/role_binding.yaml",
        ):
            kubectl.apply(config / path, server_side=True)

        # The layout KEDA reads from --cert-dir: ca.crt, tls.crt, tls.key.
        cert_dir = self.state_dir / "certs"
        names = ["keda-operator.keda.svc", EXTERNAL_METRICS.dns_name]
        pair = issue_serving_certificate(
            self.cluster.ca, cert_dir, "tls", [LOOPBACK], dns_names=names, client_auth=True
        )
        (cert_dir / "ca.crt").write_bytes(self.cluster.ca.cert.read_bytes())
        (self.state_dir / "ca").mkdir(exist_ok=True)  # --ca-dir: no extra CAs for scalers
        health, metrics, grpc, secure, adapter_metrics = free_ports(5)
        env = {
            "KUBECONFIG": str(kubeconfig),
            "WATCH_NAMESPACE": "",
            "POD_NAMESPACE": "keda",
            "KEDA_CLUSTER_OBJECT_NAMESPACE": "keda",
            "POD_NAME": "keda-operator",
        }
        operator: list[str | Path] = [
            binary,
            f"--health-probe-bind-address={LOOPBACK}:{health}",
            f"--metrics-bind-address={LOOPBACK}:{metrics}",
            f"--metrics-service-bind-address={LOOPBACK}:{grpc}",
            f"--cert-dir={cert_dir}",
            f"--ca-dir={self.state_dir / 'ca'}",
            "--enable-cert-rotation=false",
            "--enable-webhook-patching=false",
            "--enable-apiservice-patching=false",
            "--leader-elect=false",
            "--zap-encoder=console",
        ]
        self._run(
            "keda-operator",
            operator,
            lambda: _tcp_open(grpc) and http_status(f"http://{LOOPBACK}:{health}/readyz") == 200,
            deadline,
            env,
        )
        metrics_server: list[str | Path] = [
            tool_binary("keda", "keda-adapter"),
            f"--bind-address={LOOPBACK}",
            f"--secure-port={secure}",
            f"--tls-cert-file={pair.cert}",
            f"--tls-private-key-file={pair.key}",
            f"--cert-dir={cert_dir}",
            f"--metrics-service-address={LOOPBACK}:{grpc}",
            # its own /metrics listens on all interfaces: KEDA has a port flag only
            f"--port={adapter_metrics}",
            f"--lister-kubeconfig={kubeconfig}",
            f"--authentication-kubeconfig={kubeconfig}",
            f"--authorization-kubeconfig={kubeconfig}",
            "--zap-encoder=console",
        ]
        url = f"https://{LOOPBACK}:{secure}/readyz"
        context = ssl.create_default_context(cafile=str(self.cluster.ca.cert))
        self._run(
            "keda-metrics-apiserver", metrics_server, lambda: http_status(url, context) == 200, deadline, env
        )
        EXTERNAL_METRICS.register(kubectl, secure, self.cluster.ca.cert)
        EXTERNAL_METRICS.wait_available(kubectl, timeout=max(1.0, deadline - time.monotonic()))


def _remove_finalizer(kubectl: Kubectl, finalizer: str, kinds: Sequence[str]) -> None:
    """Take `finalizer` off every object of `kinds` in the cluster (kinds whose CRD is missing: none)."""
    for kind in kinds:
        listed = kubectl("get", kind, "--all-namespaces", "-o", "json", check=False)
        if listed.returncode != 0:
            continue
        for item in json.loads(listed.stdout)["items"]:
            meta = item["metadata"]
            if finalizer in meta.get("finalizers", []):
                kept = [f for f in meta["finalizers"] if f != finalizer]
                patch = json.dumps(
                    {"metadata": {"finalizers": kept, "resourceVersion": meta["resourceVersion"]}}
                )
                kubectl(
                    "patch",
                    kind,
                    meta["name"],
                    "--type=merge",
                    "-p",
                    patch,
                    namespace=meta["namespace"],
                    check=False,
                )


def _tcp_open(port: int) -> bool:
    import socket

    with socket.socket() as sock:
        sock.settimeout(1.0)
        return sock.connect_ex((LOOPBACK, port)) == 0


def _quantity(value: str) -> float:
    """A Kubernetes quantity as the metrics APIs give values ("1500m", "2", "3k")."""
    from kubernetes.utils.quantity import parse_quantity

    return float(parse_quantity(value))  # type: ignore[no-untyped-call]
