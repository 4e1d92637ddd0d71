"""A create burst on a busy API server: does the leader's write fence cut healthy writes short?

    python -m bench.create_burst [--count 100] [--rounds 2] [--before REF]

The operator runs with leader election (it holds the Lease alone). In each round, `count`
ModelDeployments are created at once (16 concurrent creates) for it, while another controller (a
bare client, `bench.controlplane.floor_burst`) creates `count` more in another namespace with the
same children: the API server allocates about 2 x `count` ClusterIPs and takes every write of both
at the same time, on the same 2 cores. Measured per round, from the first create: the time until
every ModelDeployment of the operator shows a status, and until every one is Ready; and, from the
operator's log, how many of its reconciles failed on a timed-out write (a client-side timeout or
the API server's 504) and how many failed at all.

The same run alternates the operator of this checkout with the one at `--before` (default: the
commit before the write fence took its time from the Lease: every write then had a fixed 1.5 s
connect + 3 s read timeout), run from a git worktree on PYTHONPATH, in the order before, after,
after, before, ... so neither always meets the busier cluster.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.controlplane import StatusWatch, _create_all, floor_burst, md_body
from bench.harness import ROOT, OperatorProcess, bench_cluster, is_ready, kube_client, operator, write_results
from e2e.cluster import Cluster
from kubeforge.k8s.client import load_api_client

BEFORE = "536e8af"  # the fixed 1.5 s + 3 s write timeout
FAILED = re.compile(r"reconcile of .* failed \(\d+ in a row\): (.*)")
TIMED_OUT = re.compile(r"ReadTimeoutError|Read timed out|TimeoutError|504 |Timeout: request did not complete")


def _leading(op: OperatorProcess, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(k.startswith("kubeforge_leader") and v == 1 for k, v in op.metrics().items()):
            return
        time.sleep(0.2)
    raise TimeoutError("the operator did not take the Lease")


def _failures(log: str) -> tuple[int, int, list[str]]:
    """(failed reconciles, of which on a timed-out write, a few of those lines)."""
    reasons = [m.group(1) for m in FAILED.finditer(log)]
    timed_out = [r for r in reasons if TIMED_OUT.search(r)]
    return len(reasons), len(timed_out), timed_out[:3]


async def _round(cluster: Cluster, namespace: str, other: str, count: int) -> dict[str, Any]:
    """`count` ModelDeployments in `namespace` (the operator's, created with its Lease), `count` more by
    a bare client in `other`, all at once."""
    kube = kube_client(cluster)
    api = load_api_client(kubeconfig=str(cluster.kubeconfig))
    status = StatusWatch(api, "modeldeployments", namespace)
    ready = StatusWatch(api, "modeldeployments", namespace, done=is_ready)
    names = [f"md-{i}" for i in range(count)]
    start = time.perf_counter()
    try:
        await asyncio.gather(
            _create_all(kube, [md_body(namespace, n) for n in names]),
            floor_burst(kube, other, count, 0),
        )
        reconciled = await asyncio.to_thread(status.wait, names, 300)
        all_ready = await asyncio.to_thread(ready.wait, names, 300)
    finally:
        status.stop()
        ready.stop()
        await kube.aclose()
    return {"all_reconciled_s": reconciled - start, "all_ready_s": all_ready - start}


def _worktree(ref: str, where: Path) -> Path:
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(where), ref], check=True)
    return where


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--count", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--before", default=BEFORE)
    args = parser.parse_args()
    state = Path(tempfile.mkdtemp(prefix="kubeforge-bench-burst-"))
    old = _worktree(args.before, state / "before")
    commit = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
    ).stdout.strip()
    results: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "count": args.count,
        "before": args.before,
        "after": commit,
        "rounds": {"before": [], "after": []},
    }
    order = [("before", "after")[(i + i // 2) % 2] for i in range(2 * args.rounds)]  # b a a b b a ...
    try:
        with bench_cluster(state / "cluster") as cluster:
            for i, label in enumerate(order):
                env = {"PYTHONPATH": str(old / "operator")} if label == "before" else {}
                namespace = f"burst-{label}-{i}"
                subprocess.run(
                    ["kubectl", "--kubeconfig", str(cluster.kubeconfig), "create", "namespace", namespace],
                    check=True,
                    capture_output=True,
                )
                lease = ("--leader-elect", "--leader-election-namespace", namespace, "--namespace", namespace)
                name = f"operator-{label}-{i}"
                with operator(cluster, state, extra_args=lease, env=env, name=name) as op:
                    _leading(op)
                    row = asyncio.run(_round(cluster, namespace, f"other-{label}-{i}", args.count))
                    log = (state / f"{name}.log").read_text()
                failed, timed_out, examples = _failures(log)
                row.update(failed_reconciles=failed, timed_out_writes=timed_out, examples=examples)
                results["rounds"][label].append(row)
                print(label, json.dumps(row), flush=True)
    finally:
        subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(old)], check=False)
    rows = [
        "| operator | rounds | all reconciled (median) | all Ready (median) | failed reconciles | "
        "of them on a timed-out write |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for label in ("before", "after"):
        runs = results["rounds"][label]
        rows.append(
            f"| {label} ({results[label]}) | {len(runs)} | "
            f"{statistics.median(r['all_reconciled_s'] for r in runs):.1f} s | "
            f"{statistics.median(r['all_ready_s'] for r in runs):.1f} s | "
            f"{sum(r['failed_reconciles'] for r in runs)} | {sum(r['timed_out_writes'] for r in runs)} |"
        )
    table = "\n".join(rows) + "\n"
    print(table)
    print(f"written: {write_results('create-burst', results, table)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
