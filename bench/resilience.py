"""Resilience benchmarks: failover time with two replicas, and what unrelated objects cost the operator.

`python -m bench.resilience` (also run by `make bench`) prints the figures and writes them to
bench/results/. Failover: two operators with leader election (the Lease settings of
kubeforge.controllers.leader: 12 s lease, 7 s renew deadline, 1.5 s retry); the leader is SIGKILLed
(no chance to release the Lease: the worst case) and a ModelDeployment is created at once; the
figure is the time from the kill to that object's first status, written by the new leader.
Unrelated objects: 5,000 Pods and 5,000 ConfigMaps without the operator's labels are created in a
cluster-wide operator's cluster; its RSS and CPU are read before and after, beside the same window
idle.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from kubernetes import client as k8s_client

from bench.harness import bench_cluster, kube_client, machine, operator, write_results
from e2e.cluster import Cluster
from kubeforge.k8s.client import Kube
from kubeforge.k8s.resources import LEASE, MODEL_DEPLOYMENT, NAMESPACE

HA_NAMESPACE = "bench-ha"


def _md(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "kubeforge.io/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": name, "namespace": HA_NAMESPACE},
        "spec": {"models": [{"name": "m", "source": "pvc://models/m", "format": "onnx"}]},
    }


async def _reconciled(kube: Kube, name: str, timeout: float = 60) -> float:
    """Wait until the ModelDeployment has a status; returns the monotonic time it was seen."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        obj = await kube.get(MODEL_DEPLOYMENT, HA_NAMESPACE, name)
        if obj and (obj.get("status") or {}).get("observedGeneration"):
            return time.monotonic()
        await asyncio.sleep(0.05)
    raise TimeoutError(f"ModelDeployment {name} not reconciled within {timeout}s")


async def _holder(kube: Kube) -> str:
    for _ in range(200):
        lease = await kube.get(LEASE, HA_NAMESPACE, "kubeforge-leader")
        holder = ((lease or {}).get("spec") or {}).get("holderIdentity")
        if holder:
            return str(holder)
        await asyncio.sleep(0.1)
    raise TimeoutError("no leader")


async def failover(cluster: Cluster, state: Path, rounds: int) -> dict[str, Any]:
    kube = kube_client(cluster)
    await kube.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": HA_NAMESPACE}})
    times: list[float] = []
    args = ("--leader-elect", "--leader-election-namespace", HA_NAMESPACE, "--namespace", HA_NAMESPACE)
    with contextlib.ExitStack() as stack:
        ops = {
            name: stack.enter_context(
                operator(cluster, state, extra_args=args, env={"POD_NAME": name}, name=name)
            )
            for name in ("replica-a", "replica-b")
        }
        for i in range(rounds):
            await kube.create(_md(f"warm-{i}"))
            await _reconciled(kube, f"warm-{i}")
            leader = await _holder(kube)
            pid = ops[leader].process.pid()
            assert pid is not None
            killed = time.monotonic()
            os.kill(pid, signal.SIGKILL)
            await kube.create(_md(f"after-{i}"))
            times.append(await _reconciled(kube, f"after-{i}") - killed)
            print(f"failover {i}: {times[-1]:.2f}s (killed {leader})", flush=True)
            # the killed replica comes back as the standby
            ops[leader] = stack.enter_context(
                operator(cluster, state, extra_args=args, env={"POD_NAME": leader}, name=f"{leader}-{i}")
            )
    await kube.aclose()
    return {
        "rounds": rounds,
        "failover_s": times,
        "failover_median_s": statistics.median(times),
        "lease": {"duration_s": 12, "renew_deadline_s": 7, "retry_period_s": 1.5},
    }


def _create_many(kube: Kube, bodies: list[dict[str, Any]], concurrency: int = 16) -> None:
    """Create objects the operator has nothing to do with, with the official client (16 at a time)."""
    core = k8s_client.CoreV1Api(kube.api)

    def create(body: dict[str, Any]) -> None:
        ns = body["metadata"]["namespace"]
        if body["kind"] == "Pod":
            core.create_namespaced_pod(ns, body)
        else:
            core.create_namespaced_config_map(ns, body)

    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        list(pool.map(create, bodies))


async def unrelated_objects(cluster: Cluster, state: Path, count: int, settle: float) -> dict[str, Any]:
    kube = kube_client(cluster)
    ns = "bench-unrelated"
    await kube.create({"apiVersion": NAMESPACE.api_version, "kind": "Namespace", "metadata": {"name": ns}})
    with operator(cluster, state, name="operator-unrelated") as op:
        await asyncio.sleep(settle)
        rss_before, cpu_before = op.rss_mb(), op.cpu_seconds()
        await asyncio.sleep(settle)
        idle_cpu = op.cpu_seconds() - cpu_before
        started, cpu_start = time.monotonic(), op.cpu_seconds()
        pods = [
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": f"unrelated-{i}", "namespace": ns, "labels": {"app": "unrelated"}},
                # never scheduled: the objects exist, no node runs them
                "spec": {
                    "nodeSelector": {"bench.kubeforge.io/nowhere": "true"},
                    "containers": [{"name": "c", "image": "x"}],
                },
            }
            for i in range(count)
        ]
        configmaps = [
            {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {"name": f"unrelated-{i}", "namespace": ns},
                "data": {"key": "x" * 256},
            }
            for i in range(count)
        ]
        await asyncio.to_thread(_create_many, kube, pods + configmaps)
        created_in = time.monotonic() - started
        await asyncio.sleep(settle)
        cpu_during = op.cpu_seconds() - cpu_start
        window = time.monotonic() - started
        rss_after = op.rss_mb()
    await kube.aclose()
    return {
        "pods": count,
        "configmaps": count,
        "created_in_s": created_in,
        "rss_before_mb": rss_before,
        "rss_after_mb": rss_after,
        "rss_growth_mb": rss_after - rss_before,
        "cpu_during_s": cpu_during,
        "window_s": window,
        "cpu_idle_same_window_s": idle_cpu * window / settle,
    }


def table(results: dict[str, Any]) -> str:
    f, u = results["failover"], results["unrelated"]
    rows = [
        "| measure | result | target |",
        "|---|---|---|",
        f"| failover, leader SIGKILLed -> first reconcile by the new leader (median of {f['rounds']}) "
        f"| {f['failover_median_s']:.1f} s (each: {', '.join(f'{t:.1f}' for t in f['failover_s'])}); "
        f"lease {f['lease']['duration_s']} s, renew deadline {f['lease']['renew_deadline_s']} s, "
        f"retry {f['lease']['retry_period_s']} s | < 15 s |",
        f"| operator RSS with {u['pods']:,} unrelated Pods + {u['configmaps']:,} ConfigMaps "
        f"| {u['rss_before_mb']:.0f} -> {u['rss_after_mb']:.0f} MB ({u['rss_growth_mb']:+.1f} MB) | growth < 10 MB |",
        f"| operator CPU while they were created ({u['window_s']:.0f} s) | {u['cpu_during_s']:.2f} s; "
        f"idle over the same window: {u['cpu_idle_same_window_s']:.2f} s | nothing spent on them |",
    ]
    return "\n".join(rows) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--smoke", action="store_true")
    args = parser.parse_args(argv)
    state = Path(tempfile.mkdtemp(prefix="kubeforge-bench-resilience-"))
    results: dict[str, Any] = {"date": time.strftime("%Y-%m-%d %H:%M:%S"), "machine": machine()}
    with bench_cluster(state / "cluster") as cluster:
        results["failover"] = asyncio.run(failover(cluster, state, rounds=1 if args.smoke else 3))
        count, settle = (200, 2.0) if args.smoke else (5000, 10.0)
        results["unrelated"] = asyncio.run(unrelated_objects(cluster, state, count, settle))
    text = table(results)
    print(text)
    if not args.smoke:
        print(f"written: {write_results('resilience', results, text)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
