"""A Triton Python-backend model with a fixed cost per execution, for load tests and benchmarks.

Each `execute` call costs `step_ms` (a sleep, standing in for a GPU kernel launch and transfer)
whatever the batch size, plus a tiny numpy computation per request. That is the shape where
server-side dynamic batching pays: one execution serves many queued requests.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from kubeforge.api.modeldeployment import ModelFormat, ModelSpec, TritonModelConfig
from kubeforge.triton.config import render_model_config

FIXED_COST_MODEL_PY = """
import json
import time

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        self.step = float(params.get("step_ms", "4")) / 1000.0
        self.error_every = int(params.get("error_every", "0"))
        self.served = 0

    def execute(self, requests):
        time.sleep(self.step)
        self.served += 1
        if self.error_every and self.served % self.error_every == 0:
            # raised, not an error response: Triton's Python backend counts a response carrying an
            # error as a success in nv_inference_request_success, and a raised one as a failure
            raise pb_utils.TritonModelException(f"execution {self.served} failed on purpose (error_every)")
        responses = []
        for request in requests:
            x = pb_utils.get_input_tensor_by_name(request, "INPUT").as_numpy()
            y = np.tanh(x).astype(np.float32)
            responses.append(pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor("OUTPUT", y)]))
        return responses
"""


def fixed_cost_model(
    name: str, *, max_batch_size: int, batching: bool, step_ms: float = 4.0, error_every: int = 0
) -> ModelSpec:
    """The spec of the model, as a ModelDeployment would carry it; with `error_every` N, every Nth
    execution of an instance fails (a broken model for rollback tests)."""
    config: dict[str, object] = {
        "maxBatchSize": max_batch_size,
        "instanceGroups": [{"kind": "KIND_CPU", "count": 1}],
        "inputs": [{"name": "INPUT", "dataType": "TYPE_FP32", "dims": [16]}],
        "outputs": [{"name": "OUTPUT", "dataType": "TYPE_FP32", "dims": [16]}],
        "parameters": {"step_ms": str(step_ms), **({"error_every": str(error_every)} if error_every else {})},
    }
    if batching:
        config["dynamicBatching"] = {"maxQueueDelayMicroseconds": 500}
    return ModelSpec(
        name=name,
        source=f"pvc://models/{name}",
        format=ModelFormat.PYTHON,
        config=TritonModelConfig.model_validate(config),
    )


def write_model(repository: Path, model: ModelSpec) -> Path:
    """Lay the model out in a Triton repository: config.pbtxt and 1/model.py."""
    directory = repository / model.name
    (directory / "1").mkdir(parents=True, exist_ok=True)
    (directory / "1" / "model.py").write_text(FIXED_COST_MODEL_PY)
    config = render_model_config(model)
    assert config is not None
    (directory / "config.pbtxt").write_text(config)
    return directory


@dataclass(frozen=True)
class LoadResult:
    """What a bounded load run saw: each request's latency, and the wall time it took."""

    latencies: list[float]
    seconds: float

    @property
    def requests_per_second(self) -> float:
        return len(self.latencies) / self.seconds


async def drive_load(
    grpc_address: str, model: str, clients: int, seconds: float, max_per_client: int = 20_000
) -> LoadResult:
    """`clients` concurrent request loops against the fixed-cost model, for `seconds` at most.

    Each loop is bounded in count too (`max_per_client`), so a load test always stops by itself.
    """
    from tritonclient.grpc.aio import InferenceServerClient, InferInput

    client = InferenceServerClient(grpc_address)
    data = np.ones((1, 16), dtype=np.float32)
    latencies: list[float] = []
    deadline = time.perf_counter() + seconds

    async def loop() -> None:
        for _ in range(max_per_client):
            if time.perf_counter() >= deadline:
                return
            request = InferInput("INPUT", [1, 16], "FP32")
            request.set_data_from_numpy(data)
            start = time.perf_counter()
            await client.infer(model, [request])
            latencies.append(time.perf_counter() - start)

    start = time.perf_counter()
    try:
        await asyncio.gather(*(loop() for _ in range(clients)))
    finally:
        await client.close()
    return LoadResult(latencies, time.perf_counter() - start)
