"""A burst of quick edits to one ModelDeployment: API writes and reconciles per edit.

    python -m bench.edit_burst [--edits 40]

Edits as a person or a script makes them (`kubectl patch`, one process each, one after the
other), each changing `spec.replicas` or an env var. Measured twice in one run, against the same
cluster: with the operator's edit window off (KUBEFORGE_EDIT_COALESCE_SECONDS=0: each edit is
reconciled as it arrives) and at its default (0.5 s). The operator's own counters say how many
writes (applies, status patches, ...) and reconciles the burst cost, from the first edit until
nothing was written for 5 s.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.harness import bench_cluster, operator, write_results

NAMESPACE = "bench-edits"
SETTLE_SECONDS = 5.0


def _model_deployment(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "kubeforge.io/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": name, "namespace": NAMESPACE},
        "spec": {"replicas": 1, "models": [{"name": "m", "source": "pvc://models/m", "format": "onnx"}]},
    }


def _reconciles(metrics: dict[str, float]) -> float:
    return sum(v for k, v in metrics.items() if k.startswith("kubeforge_reconcile_total"))


def _settle(op: Any) -> None:
    while True:
        before = op.writes()
        time.sleep(SETTLE_SECONDS)
        if op.writes() == before:
            return


def burst(kubectl: list[str], op: Any, name: str, edits: int) -> dict[str, Any]:
    subprocess.run(
        [*kubectl, "apply", "-f", "-"], input=json.dumps(_model_deployment(name)), text=True, check=True
    )
    _settle(op)
    writes, reconciles = op.writes(), _reconciles(op.metrics())
    started = time.monotonic()
    for i in range(edits):
        spec: dict[str, Any] = (
            {"replicas": 1 + i % 2} if i % 2 else {"runtime": {"env": [{"name": "EDIT", "value": str(i)}]}}
        )
        subprocess.run(
            [
                *kubectl,
                "-n",
                NAMESPACE,
                "patch",
                "md",
                name,
                "--type=merge",
                "-p",
                json.dumps({"spec": spec}),
            ],
            check=True,
            capture_output=True,
        )
    edit_seconds = time.monotonic() - started
    _settle(op)
    return {
        "edits": edits,
        "edit_seconds": round(edit_seconds, 2),
        "writes": op.writes() - writes,
        "reconciles": _reconciles(op.metrics()) - reconciles,
    }


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--edits", type=int, default=40)
    args = parser.parse_args()
    state = Path(tempfile.mkdtemp(prefix="kubeforge-bench-edits-"))
    results: dict[str, Any] = {"date": time.strftime("%Y-%m-%d %H:%M:%S"), "edits": args.edits}
    with bench_cluster(state / "cluster") as cluster:
        kubectl = ["kubectl", "--kubeconfig", str(cluster.kubeconfig)]
        subprocess.run([*kubectl, "create", "namespace", NAMESPACE], check=True, capture_output=True)
        for label, window in (("window_off", "0"), ("window_0.5s", "0.5")):
            env = {"KUBEFORGE_EDIT_COALESCE_SECONDS": window}
            with operator(cluster, state, namespaces=(NAMESPACE,), env=env, name=f"operator-{label}") as op:
                results[label] = burst(
                    kubectl, op, f"edits-{label.replace('_', '-').replace('.', '')}", args.edits
                )
            print(label, json.dumps(results[label]), flush=True)
    rows = [
        "| edit window | edits | over | API writes | reconciles | writes per edit |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for label in ("window_off", "window_0.5s"):
        r = results[label]
        rows.append(
            f"| {label.removeprefix('window_')} | {r['edits']} | {r['edit_seconds']} s | {r['writes']} | "
            f"{r['reconciles']:.0f} | {r['writes'] / r['edits']:.2f} |"
        )
    table = "\n".join(rows) + "\n"
    print(table)
    print(f"written: {write_results('edit-burst', results, table)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
