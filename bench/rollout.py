"""From a retrain's success to its model fully promoted, against the pauses the rollout asks for.

`python -m bench.rollout` (part of `make bench`) runs the loop of e2e/test_retrain.py on a fresh
bench cluster: a first TrainingJob creates a ModelDeployment of 4 replicas whose canary has two
steps (25 %, then 50 %, 20 s pauses) with analysis every 10 s, and then each retrain (a better
validation loss every time) proposes its model. Real tritonservers stand behind the simulated
pods, under round-robin load, and the real Prometheus (scraping every second) feeds the analysis.

Measured for each retrain: from the job's Succeeded (seen by polling every 0.2 s) to its proposal
Promoted and the ModelDeployment Ready with every replica on the new model. The floor is the sum
of the pauses (40 s); what comes on top is the gate and patch, starting the canary's pods and
servers for each step (a step's pause counts from its pods being ready), analyses that must pass
(one per interval), and the stable's own rolling update after promotion.
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
from e2e.front import IngressFront, Load
from e2e.kube import Kubectl, find_condition, wait_for
from e2e.podservers import PodServers
from e2e.prometheus import Prometheus
from e2e.storage import bound_claim
from kubeforge.testing.workloads import fixed_cost_model, write_model

NS, MD = "bench-ro", "shop"
MODEL = fixed_cost_model("shop", max_batch_size=0, batching=False, step_ms=2.0)
STEPS = [{"weight": 25, "pauseSeconds": 20}, {"weight": 50, "pauseSeconds": 20}]
INTERVAL_S = 10
ROLLOUT = {
    "canary": {
        "steps": STEPS,
        "analysis": {"intervalSeconds": INTERVAL_S, "minRequests": 20, "maxLatencyRatio": 20},
    },
    "proposals": {"jobLabels": {"pipeline": "shop"}, "model": "shop", "gate": {"betterThanServing": True}},
}
SIM = {"sim.kubeforge.io/exit-code": "0", "sim.kubeforge.io/exit-after": "1s"}


def _job(name: str, loss: float, output: dict[str, Any]) -> str:
    message = json.dumps({"state": "succeeded", "step": 100, "validation": {"step": 100, "loss": loss}})
    return json.dumps(
        {
            "apiVersion": "kubeforge.io/v1alpha1",
            "kind": "TrainingJob",
            "metadata": {"name": name, "namespace": NS, "labels": {"pipeline": "shop"}},
            "spec": {
                "image": "ghcr.io/kubeforge/kubeforge-trainer:0.1.0",
                "workers": 1,
                "podMetadata": {"annotations": {**SIM, "sim.kubeforge.io/message": message}},
                "output": {"uri": f"pvc://models/{name}", "modelName": "shop", "format": "python", **output},
            },
        }
    )


def _get(kubectl: Kubectl, kind: str, name: str) -> dict[str, Any]:
    obj: dict[str, Any] = kubectl.json("get", kind, name, namespace=NS)
    return obj


def _succeeded(kubectl: Kubectl, job: str) -> bool:
    condition = find_condition(_get(kubectl, "tj", job), "Succeeded")
    return condition is not None and condition["status"] == "True"


def _promoted(kubectl: Kubectl, job: str, replicas: int) -> bool:
    proposal = (_get(kubectl, "tj", job).get("status") or {}).get("proposal") or {}
    if proposal.get("phase") == "RolledBack":
        raise RuntimeError(f"{job} was rolled back: {proposal.get('message')}")
    if proposal.get("phase") != "Promoted":
        return False
    md = _get(kubectl, "md", MD)
    ready = find_condition(md, "Ready")
    deployment = kubectl.json("get", "deployment", MD, namespace=NS)["status"]
    return (
        ready is not None
        and ready["status"] == "True"
        and deployment.get("updatedReplicas") == replicas
        and deployment.get("readyReplicas") == replicas
        and deployment.get("replicas") == replicas
    )


def _measure(kubectl: Kubectl, job: str, loss: float) -> float:
    kubectl.apply(_job(job, loss, {"proposeTo": MD}))
    wait_for(lambda: _succeeded(kubectl, job), timeout=120, interval=0.2, message=f"{job} Succeeded")
    succeeded = time.monotonic()
    wait_for(lambda: _promoted(kubectl, job, 4), timeout=600, interval=0.2, message=f"{job} promoted")
    return time.monotonic() - succeeded


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--retrains", type=int, default=3)
    args = parser.parse_args(argv)
    state = Path(tempfile.mkdtemp(prefix="kubeforge-bench-rollout-"))
    results: dict[str, Any] = {"date": time.strftime("%Y-%m-%d %H:%M:%S"), "machine": machine()}
    jobs = [f"job-{i}" for i in range(args.retrains + 1)]
    for job in jobs:
        write_model(state / "pvc" / "models" / job, MODEL)
    with bench_cluster(state / "cluster") as cluster:
        kubectl = cluster.kubectl()
        prometheus = Prometheus(state / "prometheus", scrape_interval=1.0).start()
        try:
            with operator(cluster, state, env={"KUBEFORGE_PROMETHEUS_ADDRESS": prometheus.url}):
                kubectl("create", "namespace", NS)
                bound_claim(kubectl, NS, "models")
                template = {"name": MD, "spec": {"replicas": 4, "models": [MODEL.wire()], "rollout": ROLLOUT}}
                kubectl.apply(_job(jobs[0], 2.0, {"modelDeployment": template}))
                servers = PodServers(
                    kubectl, NS, MD, state / "pvc", state / "servers", prometheus.set_targets
                )
                with servers, IngressFront(NS, MD, servers.http_addresses) as front:
                    servers.wait_for_servers(4, timeout=300)
                    with Load(front, MODEL.name, clients=2, seconds=1800, max_requests=2_000_000):
                        results["seconds"] = [
                            _measure(kubectl, job, 2.0 - 0.1 * (i + 1)) for i, job in enumerate(jobs[1:])
                        ]
        finally:
            prometheus.stop()
    pauses = sum(step["pauseSeconds"] for step in STEPS)
    results["pauses_s"] = pauses
    seconds = results["seconds"]
    results["ratios"] = [s / pauses for s in seconds]
    rows = "".join(
        f"| {job} | {s:.1f} s | {s / pauses:.2f}x |\n" for job, s in zip(jobs[1:], seconds, strict=True)
    )
    text = (
        f"Canary of 4 replicas: steps 25 % then 50 %, {pauses} s of pauses in all, analysis every {INTERVAL_S} s.\n\n"
        "| retrain | its Succeeded -> promoted, all 4 replicas on its model | / the pauses |\n|---|---|---|\n"
        + rows
    )
    print(text)
    print(f"written: {write_results('rollout', results, text)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
