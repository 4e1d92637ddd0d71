"""Clients of a streaming (decoupled) Triton model that time every token, for tests and benchmarks.

Two ways in, both as users stream from Triton: the HTTP generate extension's ``generate_stream``
(server-sent events: one ``data: {...}`` event per response) and gRPC bidirectional streaming with
``tritonclient.grpc``'s ``start_stream``. Each response's arrival is stamped with ``time.monotonic``
as the client receives it, so a test can tell a stream from a response delivered in one piece.
"""

from __future__ import annotations

import http.client
import json
import queue
import time
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from prometheus_client.parser import text_string_to_metric_families

SSE_DATA = b"data: "
NUMPY_INPUTS: dict[str, tuple[str, type[np.generic]]] = {
    "max_tokens": ("INT32", np.int32),
    "temperature": ("FP32", np.float32),
    "top_k": ("INT32", np.int32),
    "top_p": ("FP32", np.float32),
    "seed": ("INT64", np.int64),
    "stream": ("BOOL", np.bool_),
}


class StreamError(RuntimeError):
    """The server answered the request with an error (an HTTP status or an error event/response)."""


@dataclass
class Stream:
    """One generation as the client saw it: each response's arrival time and contents."""

    started: float
    arrivals: list[float] = field(default_factory=list)
    responses: list[dict[str, Any]] = field(default_factory=list)
    reads: int = 0  # network reads that brought at least one response (HTTP only)

    @property
    def text(self) -> str:
        return "".join(str(r.get("text_output", "")) for r in self.responses)

    @property
    def finish_reason(self) -> str:
        return str(self.responses[-1].get("finish_reason", "")) if self.responses else ""

    @property
    def time_to_first_token(self) -> float:
        return self.arrivals[0] - self.started

    @property
    def duration(self) -> float:
        return self.arrivals[-1] - self.started


def _connection(base_url: str, timeout: float) -> http.client.HTTPConnection:
    host_port = base_url.removeprefix("http://").rstrip("/")
    host, _, port = host_port.partition(":")
    return http.client.HTTPConnection(host, int(port or 80), timeout=timeout)


def stream_sse(
    base_url: str,
    model: str,
    request: Mapping[str, Any],
    timeout: float = 60.0,
    stop_after: int | None = None,
) -> Stream:
    """POST ``request`` to ``/v2/models/<model>/generate_stream`` and read the events as they come.

    With ``stop_after``, the client closes the connection after that many responses (a user who
    gives up); the model should then stop generating for it.
    """
    connection = _connection(base_url, timeout)
    result = Stream(started=time.monotonic())
    try:
        connection.request(
            "POST",
            f"/v2/models/{model}/generate_stream",
            body=json.dumps(request),
            headers={"Content-Type": "application/json", "Accept": "text/event-stream"},
        )
        response = connection.getresponse()
        if response.status != 200:
            raise StreamError(f"HTTP {response.status}: {response.read().decode(errors='replace')}")
        buffer = b""
        while stop_after is None or len(result.responses) < stop_after:
            chunk = response.read1(65536)
            now = time.monotonic()
            if not chunk:
                break
            buffer += chunk
            *events, buffer = buffer.split(b"\n\n")
            parsed = [json.loads(e[len(SSE_DATA) :]) for e in events if e.startswith(SSE_DATA)]
            for event in parsed:
                if "error" in event:
                    raise StreamError(str(event["error"]))
                result.responses.append(event)
                result.arrivals.append(now)
            result.reads += bool(parsed)
    finally:
        connection.close()
    return result


def generate(base_url: str, model: str, request: Mapping[str, Any], timeout: float = 60.0) -> Stream:
    """POST to the non-streaming ``/v2/models/<model>/generate``: one response with the whole text."""
    connection = _connection(base_url, timeout)
    result = Stream(started=time.monotonic())
    try:
        connection.request(
            "POST",
            f"/v2/models/{model}/generate",
            body=json.dumps(request),
            headers={"Content-Type": "application/json"},
        )
        response = connection.getresponse()
        body = response.read()
        if response.status != 200:
            raise StreamError(f"HTTP {response.status}: {body.decode(errors='replace')}")
        result.responses.append(json.loads(body))
        result.arrivals.append(time.monotonic())
    finally:
        connection.close()
    return result


def grpc_inputs(prompt: str, parameters: Mapping[str, Any]) -> list[Any]:
    """The model's inputs as ``tritonclient.grpc.InferInput``s (``stop`` may be a string or a list)."""
    import tritonclient.grpc as grpcclient

    def tensor(name: str, datatype: str, array: np.ndarray[Any, Any]) -> Any:
        value = grpcclient.InferInput(name, list(array.shape), datatype)
        value.set_data_from_numpy(array)
        return value

    inputs = [tensor("text_input", "BYTES", np.array([prompt.encode()], dtype=np.object_))]
    for name, value in parameters.items():
        if name == "stop":
            stops = [value] if isinstance(value, str) else list(value)
            inputs.append(tensor("stop", "BYTES", np.array([s.encode() for s in stops], dtype=np.object_)))
        else:
            datatype, dtype = NUMPY_INPUTS[name]
            inputs.append(tensor(name, datatype, np.array([value], dtype=dtype)))
    return inputs


def stream_grpc(
    url: str,
    model: str,
    prompt: str,
    parameters: Mapping[str, Any],
    timeout: float = 60.0,
    cancel_after: int | None = None,
) -> Stream:
    """One request over a gRPC stream (``start_stream``/``async_stream_infer``), read until its last response.

    With ``cancel_after``, the client stops the stream after that many responses with
    ``cancel_requests=True``, which cancels the request on the server.
    """
    import tritonclient.grpc as grpcclient

    arrivals: queue.Queue[tuple[float, Any, Any]] = queue.Queue()
    client = grpcclient.InferenceServerClient(url)
    result = Stream(started=time.monotonic())
    client.start_stream(callback=lambda result, error: arrivals.put((time.monotonic(), result, error)))
    cancelled = False
    try:
        client.async_stream_infer(model, grpc_inputs(prompt, parameters))
        deadline = result.started + timeout
        while True:
            at, response, error = arrivals.get(timeout=max(0.0, deadline - time.monotonic()))
            if error is not None:
                raise StreamError(str(error))
            event = {
                name: response.as_numpy(name).reshape(-1)[0].decode(errors="replace")
                for name in ("text_output", "finish_reason")
            }
            result.responses.append(event)
            result.arrivals.append(at)
            if event["finish_reason"]:
                break
            if cancel_after is not None and len(result.responses) >= cancel_after:
                client.stop_stream(cancel_requests=True)
                cancelled = True
                break
    finally:
        if not cancelled:
            client.stop_stream()
        client.close()
    return result


def model_metrics(metrics_url: str, model: str) -> dict[str, float]:
    """The model's own samples on Triton's /metrics (``kubeforge_*``, histogram buckets left out), by name."""
    with urllib.request.urlopen(metrics_url, timeout=10) as response:
        text = response.read().decode()
    return {
        sample.name: sample.value
        for family in text_string_to_metric_families(text)
        if family.name.startswith("kubeforge_")
        for sample in family.samples
        if sample.labels.get("model") == model and not sample.name.endswith("_bucket")
    }
