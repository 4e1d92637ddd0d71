"""How fast the autoscaling loop reacts, against the best it could do.

`python -m bench.autoscaling` (part of `make bench`) runs the loop of e2e/test_autoscaling_loop.py
on a fresh bench cluster with kube-controller-manager's default HPA sync period (15 s): real
tritonservers behind the simulated pods (20 ms per request, one instance), the real Prometheus
(scraping every second), prometheus-adapter with the generated rules, KEDA, the operator.

- Scale-out reaction: from the start of a load that queues requests (6 clients on one replica)
  to a second replica Ready and serving. Floor: the HPA's sync period + the scrape interval.
- Idle to zero: from the end of the load to 0 replicas, with `scaleDownStabilizationSeconds: 30`
  (the ScaledObject's cooldown) and KEDA's polling interval (15 s, what the operator writes).
  Floor: cooldown + polling interval.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.harness import bench_cluster, machine, operator, write_results
from e2e.front import CONTROLLER_LABELS, IngressFront, Load
from e2e.kube import Kubectl, find_condition, wait_for
from e2e.monitoring import Keda, PrometheusAdapter
from e2e.podservers import PodServers, Target
from e2e.prometheus import Prometheus
from e2e.storage import bound_claim
from kubeforge.testing.workloads import fixed_cost_model, write_model

MODEL = fixed_cost_model("fixed", max_batch_size=0, batching=False, step_ms=20.0)
HPA_SYNC_S = 15.0  # kube-controller-manager's default --horizontal-pod-autoscaler-sync-period
SCRAPE_S = 1.0
KEDA_POLLING_S = 15.0  # what build_scaled_object writes
COOLDOWN_S = 30


def _md(namespace: str, name: str, autoscaling: dict[str, Any]) -> str:
    return json.dumps(
        {
            "apiVersion": "kubeforge.io/v1alpha1",
            "kind": "ModelDeployment",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"models": [MODEL.wire()], "autoscaling": autoscaling},
        }
    )


def _get(kubectl: Kubectl, namespace: str, name: str) -> dict[str, Any]:
    md: dict[str, Any] = kubectl.json("get", "md", name, namespace=namespace)
    return md


def _measure(
    kubectl: Kubectl, prometheus: Prometheus, state: Path, namespace: str, name: str, keda: bool
) -> float:
    autoscaling: dict[str, Any] = {
        "minReplicas": 1,
        "maxReplicas": 2,
        "targets": {"queueTimeMicroseconds": 20000},
        "behavior": {"scaleUpStabilizationSeconds": 0, "scaleDownStabilizationSeconds": COOLDOWN_S},
    }
    if keda:
        autoscaling.update(engine="keda", minReplicas=0, activation={"source": "ingress-nginx"})
    kubectl.apply(_md(namespace, name, autoscaling))
    write_model(state / "pvc" / "models", MODEL)
    front_target: list[Target] = []

    def publish(targets: list[Target]) -> None:
        prometheus.set_targets([*targets, *front_target])

    servers = PodServers(kubectl, namespace, name, state / "pvc", state / f"servers-{name}", publish)
    with servers, IngressFront(namespace, name, servers.http_addresses) as front:
        front_target.append((front.address, CONTROLLER_LABELS))
        publish(servers.targets())
        if not keda:
            servers.wait_for_servers(1)
            wait_for(
                lambda: (
                    (c := find_condition(_get(kubectl, namespace, name), "AutoscalingReady"))
                    and c["status"] == "True"
                ),
                timeout=180,
                message="the HPA reading the metric",
            )
            started = time.monotonic()
            with Load(front, MODEL.name, clients=6, seconds=300):
                wait_for(
                    lambda: len(servers.http_addresses()) >= 2,
                    timeout=240,
                    message="a second replica serving",
                )
                return time.monotonic() - started
        # KEDA: busy first (it must be active and hold a replica), then idle until it goes to zero
        with Load(front, MODEL.name, clients=2, seconds=300) as load:
            wait_for(lambda: len(servers.http_addresses()) >= 1, timeout=240, message="a replica serving")
            time.sleep(20)
            load.stopped.set()
        idle = time.monotonic()
        wait_for(lambda: _get(kubectl, namespace, name)["spec"]["replicas"] == 0, timeout=600, message="zero")
        return time.monotonic() - idle


def main(argv: list[str] | None = None) -> int:
    argparse.ArgumentParser().parse_args(argv)
    state = Path(tempfile.mkdtemp(prefix="kubeforge-bench-autoscaling-"))
    results: dict[str, Any] = {"date": time.strftime("%Y-%m-%d %H:%M:%S"), "machine": machine()}
    with bench_cluster(state / "cluster") as cluster:
        kubectl = cluster.kubectl()
        prometheus = Prometheus(state / "prometheus", scrape_interval=SCRAPE_S).start()
        adapter = PrometheusAdapter(cluster, prometheus.url, state_dir=state / "adapter").start()
        keda = Keda(cluster, prometheus.url, state_dir=state / "keda").start()
        try:
            env = {"KUBEFORGE_PROMETHEUS_ADDRESS": prometheus.url}
            with operator(cluster, state, env=env):
                kubectl("create", "namespace", "bench-as")
                bound_claim(kubectl, "bench-as", "models")
                results["scale_out_s"] = _measure(kubectl, prometheus, state, "bench-as", "out", keda=False)
                results["idle_to_zero_s"] = _measure(
                    kubectl, prometheus, state, "bench-as", "zero", keda=True
                )
        finally:
            keda.stop()
            adapter.stop()
            prometheus.stop()
    results["scale_out_floor_s"] = HPA_SYNC_S + SCRAPE_S
    results["idle_to_zero_floor_s"] = COOLDOWN_S + KEDA_POLLING_S
    text = (
        "| measure | result | the best the loop could do | ratio |\n|---|---|---|---|\n"
        f"| load step -> a second replica Ready and serving (HPA sync 15 s, scrape 1 s) "
        f"| {results['scale_out_s']:.1f} s | {results['scale_out_floor_s']:.0f} s "
        f"| {results['scale_out_s'] / results['scale_out_floor_s']:.2f}x |\n"
        f"| idle -> zero replicas (cooldown {COOLDOWN_S} s, KEDA polling 15 s) "
        f"| {results['idle_to_zero_s']:.1f} s | {results['idle_to_zero_floor_s']:.0f} s "
        f"| {results['idle_to_zero_s'] / results['idle_to_zero_floor_s']:.2f}x |\n"
    )
    print(text)
    print(f"written: {write_results('autoscaling', results, text)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
