"""Reconcile latency of the LeaderWorkerSet path against the Deployment path, each beside its floor.

`python -m bench.multinode` (part of `make bench`, about 20 seconds) on a fresh bench cluster with
the real LeaderWorkerSet controller (e2e/lws.py) and the operator:

- The same vLLM ModelDeployment (1 GPU a pod) created 5 times as a replica of one node (a
  Deployment) and 5 times as a replica of two nodes (`pipelineParallelSize: 2`: a LeaderWorkerSet
  group of 2 pods), interleaved; the time from the create call to its `Ready` condition True,
  seen on a watch.
- The **floor** of each path, in the same run: a bare client creating the same ModelDeployment in a
  namespace the operator does not watch, applying the builders' children (concurrently), waiting
  until every pod of the replica is Ready, and writing a status. What is left between the two is
  the operator's own cost (its watches, the 0.5 s fold of child events, the status).

Nothing is deleted in between (30 GPUs of the 48 are used at the end), so no object waits for
another's GPUs.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path
from statistics import median
from typing import Any

from kubernetes import config as k8s_config

from bench.controlplane import StatusWatch, ensure_namespace
from bench.harness import bench_cluster, is_ready, kube_client, machine, operator, write_results
from e2e.cluster import Cluster
from e2e.lws import LWS_VERSION, LeaderWorkerSetController
from kubeforge.api import ModelDeployment
from kubeforge.builders.leaderworkerset import build_leader_service, build_leaderworkerset
from kubeforge.builders.modeldeployment import build_service, build_triton_deployment
from kubeforge.k8s import resources as r
from kubeforge.k8s.client import Kube
from kubeforge.settings import Settings

WATCHED, FLOOR = "bench-mn", "bench-mn-floor"
ROUNDS = 5
PATHS = {"deployment": 1, "leaderworkerset": 2}  # path -> nodes (pods) per replica


def md_body(namespace: str, name: str, nodes: int) -> dict[str, Any]:
    llm = {"pipelineParallelSize": nodes} if nodes > 1 else {}
    return {
        "apiVersion": "kubeforge.io/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "models": [{"name": "lm", "source": "hf://Qwen/Qwen2.5-0.5B-Instruct@main", "format": "vllm", "llm": llm}],
            "gpu": {"count": 1},
            "resources": {"cpu": "1", "memory": "4Gi"},
        },
    }  # fmt: skip


async def operator_one(kube: Kube, watch: StatusWatch, name: str, nodes: int) -> float:
    start = time.perf_counter()
    await kube.create(md_body(WATCHED, name, nodes))
    return await asyncio.to_thread(watch.wait, [name], 120.0) - start


async def floor_one(kube: Kube, name: str, nodes: int, settings: Settings) -> float:
    """A bare client: create, apply the same children, wait for the replica's pods Ready, write status."""
    start = time.perf_counter()
    md = ModelDeployment.model_validate(await kube.create(md_body(FLOOR, name, nodes)))
    if nodes > 1:
        children = [build_leaderworkerset(md, settings), build_leader_service(md)]
    else:
        children = [build_triton_deployment(md, settings), build_service(md)]
    await asyncio.gather(*(kube.apply(child) for child in children))
    selector = f"kubeforge.io/owner-kind=modeldeployment,kubeforge.io/owner-name={name}"
    deadline = start + 120.0
    while True:
        pods = await kube.list(r.POD, FLOOR, selector)
        if sum(1 for p in pods if is_ready(p)) >= nodes:
            break
        if time.perf_counter() > deadline:
            raise TimeoutError(f"{name}: {len(pods)} pods, not {nodes} Ready")
        await asyncio.sleep(0.05)
    await kube.patch_status(r.MODEL_DEPLOYMENT, FLOOR, name, {"observedGeneration": 1, "phase": "Ready"})
    return time.perf_counter() - start


async def measure(
    cluster: Cluster, watch: StatusWatch, settings: Settings, rounds: int
) -> dict[str, list[float]]:
    kube = kube_client(cluster)
    try:
        for namespace in (WATCHED, FLOOR):
            await ensure_namespace(kube, namespace)
        series: dict[str, list[float]] = {
            f"{who}-{path}": [] for path in PATHS for who in ("operator", "floor")
        }
        for i in range(rounds):
            for path, nodes in PATHS.items():
                name = f"{path[:3]}-{i}"
                series[f"operator-{path}"].append(await operator_one(kube, watch, name, nodes))
                series[f"floor-{path}"].append(await floor_one(kube, name, nodes, settings))
        return series
    finally:
        await kube.aclose()


def _table(results: dict[str, Any]) -> str:
    rows = [
        "| path | operator p50 | operator max | floor p50 | ratio to the floor (p50) |",
        "|---|---|---|---|---|",
    ]
    for path, nodes in PATHS.items():
        op, fl = results["series"][f"operator-{path}"], results["series"][f"floor-{path}"]
        rows.append(
            f"| {path} ({nodes} pod{'s' if nodes > 1 else ''} a replica) | {median(op):.2f} s | {max(op):.2f} s "
            f"| {median(fl):.2f} s | {median(op) / median(fl):.2f}x |"
        )
    ratio = results["lws_over_deployment_p50"]
    rows.append("")
    rows.append(f"LeaderWorkerSet path / Deployment path (operator, p50): {ratio:.2f}x")
    rows.append("")
    rows.append(
        "The operator's time includes the 0.5 s for which it folds a burst of child events into one "
        "reconcile (controllers/handlers.py CHILD_EVENT_DELAY); kwok makes pods Ready at once, so the "
        "floor is the control plane's own time."
    )
    return "\n".join(rows) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=ROUNDS)
    args = parser.parse_args(argv)
    state = Path(tempfile.mkdtemp(prefix="kubeforge-bench-multinode-"))
    results: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "machine": machine(),
        "lws_version": LWS_VERSION,
        "rounds": args.rounds,
    }
    settings = Settings.from_env()
    with (
        bench_cluster(state / "cluster") as cluster,
        LeaderWorkerSetController(cluster, state_dir=state / "lws"),
        operator(cluster, state, namespaces=(WATCHED,)),
    ):
        api = k8s_config.new_client_from_config(config_file=str(cluster.kubeconfig))  # type: ignore[no-untyped-call]
        watch = StatusWatch(api, "modeldeployments", WATCHED, done=is_ready)
        try:
            results["series"] = asyncio.run(measure(cluster, watch, settings, args.rounds))
        finally:
            watch.stop()
            api.close()
    series = results["series"]
    results["lws_over_deployment_p50"] = median(series["operator-leaderworkerset"]) / median(
        series["operator-deployment"]
    )
    text = _table(results)
    print(text)
    print(f"written: {write_results('multinode', results, text)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
