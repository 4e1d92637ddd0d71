"""Data plane: the same model served with the operator's rendered config and with Triton's plain default.

A real tritonserver (nvidia-pytriton's, on CPU) serves a Python-backend model whose every execution
costs a fixed 4 ms whatever the batch (a stand-in for a GPU kernel launch). The operator's config is
what the builder renders for `maxBatchSize: 32` (it adds a dynamic batcher by default); the plain
default is the same model with no dynamic batcher. Load: tritonclient's asyncio gRPC client with
1, 8 and 32 concurrent request loops, each point bounded in time and count.
"""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path
from typing import Any

from bench.harness import percentile
from kubeforge.builders.modeldeployment import served_models
from kubeforge.testing.triton import run_tritonserver
from kubeforge.testing.workloads import drive_load, fixed_cost_model, write_model

CONCURRENCY = (1, 8, 32)


async def dataplane(smoke: bool = False) -> dict[str, Any]:
    seconds = 1.0 if smoke else 4.0
    operator_model = served_models_for("operator", batching_from_operator=True)
    default_model = served_models_for("default", batching_from_operator=False)
    points: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="kubeforge-dataplane-") as tmp:
        repo = Path(tmp)
        write_model(repo, operator_model)
        write_model(repo, default_model)
        with run_tritonserver(
            ["--model-control-mode=none", "--strict-readiness=true"], repository=repo, wait="ready"
        ) as server:
            grpc = server.grpc_url.removeprefix("grpc://")
            for model in ("operator", "default"):  # warm up both
                await drive_load(grpc, model, 4, 0.5)
            for clients in CONCURRENCY:
                op = await drive_load(grpc, "operator", clients, seconds)
                de = await drive_load(grpc, "default", clients, seconds)
                op_rps, op_lat = op.requests_per_second, op.latencies
                de_rps, de_lat = de.requests_per_second, de.latencies
                points[str(clients)] = {
                    "operator_rps": op_rps,
                    "default_rps": de_rps,
                    "throughput_ratio": op_rps / de_rps,
                    "operator_p99_ms": percentile(op_lat, 99) * 1000,
                    "default_p99_ms": percentile(de_lat, 99) * 1000,
                    "p99_ratio": percentile(op_lat, 99) / percentile(de_lat, 99),
                }
    return {"concurrency": list(CONCURRENCY), "seconds_per_point": seconds, "points": points}


def served_models_for(name: str, *, batching_from_operator: bool) -> Any:
    """The model as the operator's builder serves it (its default batching), or with Triton's default."""
    spec = fixed_cost_model(name, max_batch_size=32, batching=False)
    if not batching_from_operator:
        return spec
    from kubeforge.api import ModelDeployment

    md = ModelDeployment.model_validate(
        {"metadata": {"name": "bench", "namespace": "bench", "uid": "u"}, "spec": {"models": [spec.wire()]}}
    )
    return served_models(md)[0]


if __name__ == "__main__":
    import json

    print(json.dumps(asyncio.run(dataplane()), indent=2))
