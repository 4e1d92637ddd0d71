"""Triton Python-backend models for load tests, rollouts and benchmarks.

- The fixed-cost model: each `execute` call costs `step_ms` (a sleep, standing in for a GPU kernel
  launch and transfer) whatever the batch size, plus a tiny numpy computation per request. That is
  the shape where server-side dynamic batching pays: one execution serves many queued requests.
- The streaming text model: a language model's interface (the vLLM backend's, as
  kubeforge.trainer.triton_llm_model has it, so the OpenAI front serves it) without the weights or
  torch. It waits `first_token_ms`, then streams `max_tokens` tokens, and records its time to first
  token in the histogram the autoscaler and the canary analysis read.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections import Counter
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np

from kubeforge.api.modeldeployment import (
    InstanceGroup,
    InstanceGroupKind,
    ModelFormat,
    ModelSpec,
    TensorSpec,
    TritonModelConfig,
)
from kubeforge.openai import TOKENIZER_CONFIG
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


STREAMING_TEXT_MODEL_PY = """
import heapq
import itertools
import json
import queue
import threading
import time

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        self.first_token = float(params.get("first_token_ms", "5")) / 1000.0
        self.family = pb_utils.MetricFamily(
            name="kubeforge_time_to_first_token_seconds",
            description="Seconds from a request's arrival to its first token",
            kind=pb_utils.MetricFamily.HISTOGRAM,
        )
        labels = {"model": args["model_name"], "version": args["model_version"]}
        self.ttft = self.family.Metric(labels=labels, buckets=[0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0])
        # one thread sends every response (the stub's response senders are not for concurrent threads),
        # each request's first token when it is due: the waits of concurrent requests overlap
        self.arrivals = queue.Queue()
        self.sender = threading.Thread(target=self._serve, daemon=True)
        self.sender.start()

    def execute(self, requests):
        arrived = time.monotonic()
        for request in requests:  # decoupled: answered by the sender thread; execute returns at once
            self.arrivals.put((arrived, request))
        return None

    def _serve(self):
        due, order = [], itertools.count()
        while True:
            while due and due[0][0] <= time.monotonic():  # what is due first, however busy the queue
                _, _, arrived, request = heapq.heappop(due)
                self._answer(request, arrived)
            wait = max(0.0, due[0][0] - time.monotonic()) if due else None
            try:
                arrived, request = self.arrivals.get(timeout=wait)
            except queue.Empty:
                continue
            if request is None:
                return
            heapq.heappush(due, (arrived + self.first_token, next(order), arrived, request))

    def _answer(self, request, arrived):
        sender = request.get_response_sender()
        prompt = pb_utils.get_input_tensor_by_name(request, "text_input").as_numpy().reshape(-1)[0]
        sampling = pb_utils.get_input_tensor_by_name(request, "sampling_parameters")
        parameters = json.loads(sampling.as_numpy().reshape(-1)[0]) if sampling is not None else {}
        count = max(1, int(parameters.get("max_tokens", 4)))
        self.ttft.observe(time.monotonic() - arrived)
        for index in range(count):
            last = index == count - 1
            outputs = [
                pb_utils.Tensor("text_output", np.array([b"x"], dtype=np.object_)),
                pb_utils.Tensor("finish_reason", np.array([b"length" if last else b""], dtype=np.object_)),
                pb_utils.Tensor("num_input_tokens", np.array([len(prompt) if index == 0 else 0], dtype=np.uint32)),
                pb_utils.Tensor("num_output_tokens", np.array([1], dtype=np.uint32)),
            ]
            flags = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL if last else 0
            sender.send(pb_utils.InferenceResponse(output_tensors=outputs), flags=flags)

    def finalize(self):
        self.arrivals.put((0.0, None))
        self.sender.join(timeout=10)
        del self.ttft  # a Metric goes before its MetricFamily
        del self.family
"""


STREAMING_CHAT_TEMPLATE = "{% for m in messages %}{{ m.content }}\n{% endfor %}"


def _tensor(name: str, data_type: str, optional: bool = False) -> TensorSpec:
    return TensorSpec.model_validate(
        {"name": name, "dataType": data_type, "dims": [1], **({"optional": True} if optional else {})}
    )


def streaming_text_model(name: str, *, first_token_ms: float = 5.0) -> ModelSpec:
    """The spec of the streaming text model (a language model to Kubeforge: decoupled, served by the
    OpenAI front), with its first token `first_token_ms` after a request arrives."""
    flags = ("stream", "exclude_input_in_output", "return_finish_reason", "return_num_input_tokens",
             "return_num_output_tokens")  # fmt: skip
    config = TritonModelConfig(
        max_batch_size=0,
        inputs=[
            _tensor("text_input", "TYPE_STRING"),
            _tensor("sampling_parameters", "TYPE_STRING", optional=True),
            *(_tensor(flag, "TYPE_BOOL", optional=True) for flag in flags),
        ],
        outputs=[
            _tensor("text_output", "TYPE_STRING"),
            _tensor("finish_reason", "TYPE_STRING"),
            _tensor("num_input_tokens", "TYPE_UINT32"),
            _tensor("num_output_tokens", "TYPE_UINT32"),
        ],
        instance_groups=[InstanceGroup(kind=InstanceGroupKind.CPU, count=1)],
        decoupled=True,
        parameters={"first_token_ms": str(first_token_ms)},
    )
    return ModelSpec(name=name, source=f"pvc://models/{name}", format=ModelFormat.PYTHON, config=config)


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


R = TypeVar("R", bound=Hashable)


def in_threads(count: int, clients: int, call: Callable[[], R], timeout: float = 300) -> Counter[R]:
    """Make `call` `count` times from `clients` threads at once: how many times each result came."""
    results: Counter[R] = Counter()
    left = [count]
    lock = threading.Lock()

    def loop() -> None:
        while True:
            with lock:
                if left[0] == 0:
                    return
                left[0] -= 1
            result = call()
            with lock:
                results[result] += 1

    threads = [threading.Thread(target=loop, daemon=True) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=timeout)
    return results


def write_model(repository: Path, model: ModelSpec) -> Path:
    """Lay the model out in a Triton repository: config.pbtxt and 1/model.py (the streaming text
    model's when its config is decoupled, else the fixed-cost model's)."""
    directory = repository / model.name
    (directory / "1").mkdir(parents=True, exist_ok=True)
    streaming = model.config is not None and model.config.decoupled
    (directory / "1" / "model.py").write_text(STREAMING_TEXT_MODEL_PY if streaming else FIXED_COST_MODEL_PY)
    if streaming:  # what makes it a language model to the OpenAI front (kubeforge.openai.models)
        (directory / TOKENIZER_CONFIG).write_text(json.dumps({"chat_template": STREAMING_CHAT_TEMPLATE}))
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
