"""Kueue's controller, built from its Go module, run out-of-cluster against a local control plane.

Its CRDs come from the module's own config/ folder in the Go module cache (never copied into this
repo). Webhooks are not registered with the API server (the operator creates queued Jobs suspended
itself, which is what Kueue's Job webhook would do); the webhook server still starts, so it gets a
self-signed certificate.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from e2e.cluster import Cluster
from e2e.kube import wait_established, wait_for
from e2e.net import free_ports
from e2e.procs import ManagedProcess

KUEUE_VERSION = "v0.17.0"
ROOT = Path(__file__).resolve().parents[1]


def kueue_module_dir() -> Path:
    gomodcache = subprocess.run(
        ["go", "env", "GOMODCACHE"], capture_output=True, text=True, check=True
    ).stdout.strip()
    path = Path(gomodcache) / f"sigs.k8s.io/kueue@{KUEUE_VERSION}"
    if not path.is_dir():
        subprocess.run(
            ["go", "mod", "download", f"sigs.k8s.io/kueue@{KUEUE_VERSION}"], check=True, cwd="/tmp"
        )
    return path


def kueue_binary() -> Path:
    """The kueue manager from ~/.cache/kubeforge/bin, built by e2e/binaries.sh if missing."""
    out = subprocess.run(
        [str(ROOT / "e2e" / "binaries.sh"), "kueue"], capture_output=True, text=True, check=True
    )
    return Path(out.stdout.strip().splitlines()[-1]) / "kueue"


# Kueue v0.17 reads its metrics-server certificate from this fixed path when it does not manage
# certificates itself (its Deployment mounts a Secret there); out of cluster we write one there.
METRICS_CERT_DIR = Path("/etc/kueue/metrics/certs")


def _self_signed(cert_dir: Path) -> None:
    if (cert_dir / "tls.crt").is_file() and (cert_dir / "tls.key").is_file():
        return
    cert_dir.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
         "-days", "2", "-subj", "/CN=kueue-webhook", "-keyout", str(cert_dir / "tls.key"),
         "-out", str(cert_dir / "tls.crt")],
        check=True,
        capture_output=True,
    )  # fmt: skip


def start_kueue(cluster: Cluster, state_dir: Path) -> ManagedProcess:
    """Install Kueue's CRDs into `cluster` and start its manager; returns once it is healthy."""
    kubectl = cluster.kubectl()
    crds = kueue_module_dir() / "config" / "components" / "crd" / "bases"
    kubectl.apply(crds, server_side=True)
    for crd in ("clusterqueues", "localqueues", "resourceflavors", "workloads"):
        wait_established(kubectl, f"{crd}.kueue.x-k8s.io")
    kubectl("create", "namespace", "kueue-system", check=False)
    health, metrics, webhook = free_ports(3)
    _self_signed(state_dir / "certs")
    try:
        _self_signed(METRICS_CERT_DIR)
    except OSError as err:
        raise RuntimeError(
            f"kueue needs a certificate in {METRICS_CERT_DIR} (run as root, or create it): {err}"
        ) from err
    config = state_dir / "kueue-config.yaml"
    config.write_text(
        f"""apiVersion: config.kueue.x-k8s.io/v1beta2
kind: Configuration
namespace: kueue-system
health: {{healthProbeBindAddress: "127.0.0.1:{health}"}}
metrics: {{bindAddress: "127.0.0.1:{metrics}", enableClusterQueueResources: false}}
webhook: {{port: {webhook}, host: 127.0.0.1, certDir: "{state_dir / "certs"}"}}
leaderElection: {{leaderElect: false}}
internalCertManagement: {{enable: false}}
manageJobsWithoutQueueName: false
integrations: {{frameworks: ["batch/job"]}}
"""
    )
    process = ManagedProcess(
        name="kueue",
        pid_file=state_dir / "kueue.pid",
        log_file=state_dir / "kueue.log",
        marker=str(state_dir),
    )
    env = {**os.environ, "KUBECONFIG": str(cluster.kubeconfig)}
    # the on-demand visibility API server wants certificates from the Deployment's mounts; not needed here
    argv = [kueue_binary(), f"--config={config}", "--feature-gates=VisibilityOnDemand=false"]
    process.start(argv, env=env)

    def healthy() -> bool:
        if not process.is_running():
            raise RuntimeError(f"kueue exited:\n{process.log_tail()}")
        import urllib.request

        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{health}/readyz", timeout=2) as response:
                return bool(response.status == 200)
        except OSError:
            return False

    wait_for(healthy, timeout=90, interval=0.5, message="kueue readyz")
    return process
