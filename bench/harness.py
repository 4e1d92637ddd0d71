"""Shared pieces of the benchmarks: a cluster with room for thousands of pods, the operator, clients."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from e2e.cluster import Cluster
from e2e.kube import wait_established
from e2e.net import free_ports
from e2e.nodes import SimulatedNode, default_nodes
from e2e.procs import ManagedProcess
from kubeforge.k8s.client import Kube, load_api_client

ROOT = Path(__file__).resolve().parents[1]


def bench_nodes(cpu_nodes: int = 8) -> list[SimulatedNode]:
    """The default GPU nodes plus CPU nodes with room for the benchmark's pods."""
    extra = [
        SimulatedNode(
            name=f"bench-cpu-{i}",
            cpu=256,
            memory_gi=2048,
            zone="local-a",
            instance_type="bench.xlarge",
            pod_cidr=f"10.245.{i}.0/24",
            max_pods=1000,
        )
        for i in range(cpu_nodes)
    ]
    return [*default_nodes(), *extra]


@contextmanager
def bench_cluster(state: Path) -> Iterator[Cluster]:
    cluster = Cluster(
        state,
        nodes=bench_nodes(),
        # the defaults (400/200 in flight) throttle a burst of 1,000 creates plus the controllers
        extra_args={
            "kube-apiserver": ["--max-requests-inflight=800", "--max-mutating-requests-inflight=400"]
        },
    ).start()
    try:
        kubectl = cluster.kubectl()
        kubectl.apply(ROOT / "crds", server_side=True)
        for crd in ("modeldeployments", "trainingjobs"):
            wait_established(kubectl, f"{crd}.kubeforge.io")
        yield cluster
    finally:
        cluster.stop()


@dataclass
class OperatorProcess:
    process: ManagedProcess
    metrics_port: int

    def metrics(self) -> dict[str, float]:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5) as response:
            text = response.read().decode()
        out: dict[str, float] = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                out[name] = float(value)
        return out

    def writes(self) -> int:
        # watches and dry runs write nothing (a watch is re-established every 45 s)
        reads = ('verb="get"', 'verb="list"', 'verb="discovery"', 'verb="watch"', 'verb="dry_run"')
        return int(
            sum(
                v
                for k, v in self.metrics().items()
                if k.startswith("kubeforge_api_calls_total")
                and not k.endswith(reads)
                and not any(r in k for r in reads)
            )
        )

    def cpu_seconds(self) -> float:
        """User + system CPU the process has used so far (/proc/<pid>/stat)."""
        pid = self.process.pid()
        assert pid is not None
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def rss_mb(self) -> float:
        pid = self.process.pid()
        assert pid is not None
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return 0.0


@contextmanager
def operator(
    cluster: Cluster,
    state: Path,
    namespaces: tuple[str, ...] = (),
    resync: float = 600.0,
    extra_args: tuple[str, ...] = (),
    env: dict[str, str] | None = None,
    name: str = "operator",
) -> Iterator[OperatorProcess]:
    liveness, metrics = free_ports(2)
    # the marker must occur in the command line: the liveness URL's free port makes it unique
    marker = f"http://127.0.0.1:{liveness}/healthz"
    process = ManagedProcess(name, state / f"{name}.pid", state / f"{name}.log", marker=marker)
    args = [
        sys.executable,
        "-m",
        "kubeforge",
        "run",
        "--liveness",
        f"http://127.0.0.1:{liveness}/healthz",
        "--metrics-port",
        str(metrics),
        "--metrics-host",
        "127.0.0.1",
    ]
    for ns in namespaces:
        args += ["--namespace", ns]
    args += extra_args
    environ = {
        **os.environ,
        "KUBECONFIG": str(cluster.kubeconfig),
        "KUBEFORGE_MODEL_PROBE": "false",
        "KUBEFORGE_RESYNC_SECONDS": str(resync),
        **(env or {}),
    }
    process.start(args, env=environ)
    op = OperatorProcess(process, metrics)
    deadline = time.monotonic() + 60
    while True:
        try:
            op.metrics()
            break
        except OSError:
            if time.monotonic() > deadline or process.exit_code() is not None:
                raise RuntimeError(f"operator did not start:\n{process.log_tail()}") from None
            time.sleep(0.2)
    try:
        yield op
    finally:
        process.stop()


def kube_client(cluster: Cluster, workers: int = 16) -> Kube:
    return Kube(
        load_api_client(pool_size=2 * workers, kubeconfig=str(cluster.kubeconfig)),
        field_manager="bench",
        workers=workers,
    )


def machine() -> dict[str, Any]:
    mem_kb = next(
        int(line.split()[1])
        for line in Path("/proc/meminfo").read_text().splitlines()
        if line.startswith("MemTotal")
    )
    versions = {
        "python": platform.python_version(),
        "kube-apiserver": subprocess.run(
            [str(Path.home() / ".cache/kubeforge/bin/kube-apiserver"), "--version"],
            capture_output=True,
            text=True,
        ).stdout.strip(),
    }
    return {
        "cores": os.cpu_count(),
        "memory_gib": round(mem_kb / 1024 / 1024, 1),
        "platform": platform.platform(),
        "versions": versions,
    }


def is_ready(obj: dict[str, Any]) -> bool:
    """Whether an object's Ready condition is True."""
    conditions = (obj.get("status") or {}).get("conditions") or []
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    k = (len(ordered) - 1) * p / 100
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def write_results(name: str, results: dict[str, Any], table: str) -> Path:
    stamp = time.strftime("%Y-%m-%d")
    out = ROOT / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{stamp}-{name}.json").write_text(json.dumps(results, indent=2) + "\n")
    (out / f"{stamp}-{name}.md").write_text(table)
    return out / f"{stamp}-{name}.md"
