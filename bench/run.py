"""`make bench` (and `make bench-smoke`): run every benchmark, print and record the figures."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import controlplane as cp
from bench.harness import bench_cluster, kube_client, machine, operator, write_results

TARGETS = {
    "latency_ratio_p50": 1.5,
    "throughput_1000_s": 60.0,
    "rss_at_1000_mb": 200.0,
    "steady_writes": 0,
    "dataplane_throughput_ratio_c32": 2.0,
}


OPERATOR_NAMESPACES = (
    "bench-op",
    "bench-burst",
    "bench-scale-10",
    "bench-scale-30",
    "bench-scale-100",
    "bench-scale-3000",
)


def _sizes(smoke: bool) -> dict[str, Any]:
    if smoke:
        return {"latency": 5, "burst_md": 20, "burst_tj": 5, "scale": [10, 30], "steady_s": 10, "resync_s": 3}
    return {
        "latency": 200,
        "burst_md": 1000,
        "burst_tj": 200,
        "scale": [100, 3000],
        "steady_s": 60,
        "resync_s": 10,
    }


async def control_plane(smoke: bool, state: Path) -> dict[str, Any]:
    sizes = _sizes(smoke)
    results: dict[str, Any] = {"sizes": sizes}
    with (
        bench_cluster(state / "cluster") as cluster,
        # the operator watches only its namespaces: the floor's objects are the bare client's alone
        operator(cluster, state, namespaces=OPERATOR_NAMESPACES, resync=sizes["resync_s"]) as op,
    ):
        kube = kube_client(cluster)
        api = kube.api
        results["rss_idle_mb"] = op.rss_mb()
        print("latency vs floor ...", flush=True)
        results["latency"] = await cp.latency_vs_floor(kube, api, sizes["latency"], "bench-op", "bench-floor")
        print(json.dumps(results["latency"]), flush=True)
        scale: dict[int, float] = {}
        small = sizes["scale"][0]
        print(f"scale {small} ...", flush=True)
        scale[small] = (await cp.burst(kube, api, f"bench-scale-{small}", small, 0, timeout=600))[
            "all_reconciled_s"
        ]
        print(f"throughput {sizes['burst_md']} + {sizes['burst_tj']} ...", flush=True)
        results["throughput"] = await cp.burst(
            kube, api, "bench-burst", sizes["burst_md"], sizes["burst_tj"], timeout=600
        )
        print(json.dumps(results["throughput"]), flush=True)
        results["rss_at_burst_mb"] = op.rss_mb()
        print("throughput floor ...", flush=True)
        results["throughput_floor"] = await cp.floor_burst(
            kube, "bench-floor-burst", sizes["burst_md"], sizes["burst_tj"]
        )
        print(json.dumps(results["throughput_floor"]), flush=True)
        print("steady state ...", flush=True)
        results["steady"] = cp.steady_state(
            op, sizes["steady_s"], settle_window=max(20.0, sizes["resync_s"]), settle_timeout=60
        )
        print(json.dumps(results["steady"]), flush=True)
        large = sizes["scale"][1]
        scale[sizes["burst_md"]] = results["throughput"]["all_reconciled_s"]
        print(f"scale {large} ...", flush=True)
        scale[large] = (await cp.burst(kube, api, f"bench-scale-{large}", large, 0, timeout=900))[
            "all_reconciled_s"
        ]
        results["scale_s"] = scale
        results["rss_at_scale_mb"] = op.rss_mb()
        results["operator_objects"] = sizes["latency"] + small + sizes["burst_md"] + sizes["burst_tj"] + large
        kube.close()
    return results


def table(results: dict[str, Any]) -> str:
    lat, thr, steady = results["latency"], results["throughput"], results["steady"]
    sizes = results["sizes"]
    rows = [
        (
            "Reconcile latency p50 (operator / floor)",
            f"{lat['operator_p50_ms']:.1f} ms / {lat['floor_p50_ms']:.1f} ms = {lat['ratio_p50']:.2f}x",
            f"<= {TARGETS['latency_ratio_p50']}x",
        ),
        (
            "Reconcile latency p99 (operator / floor)",
            f"{lat['operator_p99_ms']:.1f} ms / {lat['floor_p99_ms']:.1f} ms = {lat['ratio_p99']:.2f}x",
            "",
        ),
        (
            "Throughput floor: the same burst by a bare client",
            f"{results['throughput_floor']['all_done_s']:.1f} s (ratio {thr['all_reconciled_s'] / results['throughput_floor']['all_done_s']:.2f}x)",
            "",
        ),
        (
            f"{thr['modeldeployments']} MD + {thr['trainingjobs']} TJ at once, all reconciled",
            f"{thr['all_reconciled_s']:.1f} s (creates took {thr['create_s']:.1f} s)",
            f"< {TARGETS['throughput_1000_s']:.0f} s",
        ),
        (
            "Scale: objects -> seconds",
            ", ".join(
                f"{n}: {s:.1f} s" for n, s in sorted(results["scale_s"].items(), key=lambda kv: int(kv[0]))
            ),
            "linear",
        ),
        (
            "Operator RSS idle / after burst / after scale",
            f"{results['rss_idle_mb']:.0f} / {results['rss_at_burst_mb']:.0f} / {results['rss_at_scale_mb']:.0f} MB",
            f"< {TARGETS['rss_at_1000_mb']:.0f} MB at 1,000",
        ),
        (
            f"API writes during {steady['seconds']:.0f} s of resyncs (every {sizes['resync_s']} s)",
            f"{steady['writes']} writes in {steady['reconciles']:.0f} reconciles",
            "0",
        ),
    ]
    if "dataplane" in results:
        dp = results["dataplane"]
        for c in dp["concurrency"]:
            row = dp["points"][str(c)]
            rows.append(
                (
                    f"Triton throughput, concurrency {c} (operator config / default)",
                    f"{row['operator_rps']:.0f} / {row['default_rps']:.0f} req/s = {row['throughput_ratio']:.2f}x; p99 {row['operator_p99_ms']:.1f} / {row['default_p99_ms']:.1f} ms",
                    f">= {TARGETS['dataplane_throughput_ratio_c32']}x at 32" if c == 32 else "",
                )
            )
    head = f"# Benchmark run {results['date']}\n\nMachine: {results['machine']['cores']} cores, {results['machine']['memory_gib']} GiB; {results['machine']['versions']}\n\n"
    return (
        head
        + "| measure | result | target |\n|---|---|---|\n"
        + "\n".join(f"| {a} | {b} | {c} |" for a, b, c in rows)
        + "\n"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: checks the harness works")
    parser.add_argument("--skip-dataplane", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    started = time.time()
    results: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "machine": machine(),
        "targets": TARGETS,
        "smoke": args.smoke,
    }
    tmp = tempfile.mkdtemp(prefix="kubeforge-bench-")
    print(f"state: {tmp}", flush=True)
    results.update(asyncio.run(control_plane(args.smoke, Path(tmp))))
    if not os.environ.get("KUBEFORGE_BENCH_KEEP"):
        shutil.rmtree(tmp, ignore_errors=True)
    if not args.skip_dataplane:
        from bench.dataplane import dataplane

        results["dataplane"] = asyncio.run(dataplane(smoke=args.smoke))
    results["duration_s"] = time.time() - started
    text = table(results)
    print(text)
    if not args.smoke:
        print(f"written: {write_results('bench', results, text)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
