"""The streaming text model of kubeforge.testing.workloads (the language model the Gateway e2e rolls
out) in the real tritonserver, behind the real OpenAI front: every concurrent completion is answered,
with the tokens asked for, and its time to first token is in the histogram the analysis reads."""

from __future__ import annotations

import json
import urllib.request
from collections import Counter
from collections.abc import Iterator

import pytest

from kubeforge.testing.openai_front import RunningFront, call, running_front
from kubeforge.testing.streaming import model_metrics
from kubeforge.testing.triton import TritonServer, run_tritonserver
from kubeforge.testing.workloads import in_threads, streaming_text_model, write_model

pytestmark = pytest.mark.triton
FIRST_TOKEN_MS = 200.0


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[TritonServer, RunningFront]]:
    tmp = tmp_path_factory.mktemp("streaming-text")
    write_model(tmp / "models", streaming_text_model("quick", first_token_ms=0))
    write_model(tmp / "models", streaming_text_model("slow", first_token_ms=FIRST_TOKEN_MS))
    with run_tritonserver(repository=tmp / "models", wait="ready") as server:
        args = ["--triton", server.http_url, "--repository", str(tmp / "models"), "--model", "quick"]
        with running_front([*args, "--model", "slow"], tmp / "front.log") as front:
            yield server, front


def _complete(front: RunningFront, model: str, count: int, clients: int) -> Counter[tuple[int, str]]:
    """`count` completions of 3 tokens from `clients` threads: (status, text) of each."""

    def one() -> tuple[int, str]:
        status, body = call(f"{front.url}/v1/completions", {"model": model, "prompt": "Hi", "max_tokens": 3})
        return status, json.loads(body)["choices"][0]["text"] if status == 200 else body.decode()

    return in_threads(count, clients, one)


def test_concurrent_completions_are_all_answered(served: tuple[TritonServer, RunningFront]) -> None:
    server, front = served
    # many at once: one thread sends every response (the stub's senders crash tritonserver otherwise)
    assert _complete(front, "quick", 400, 16) == Counter({(200, "xxx"): 400})
    assert server.process.poll() is None  # still up


def test_the_first_token_comes_after_its_set_time_and_is_measured(
    served: tuple[TritonServer, RunningFront],
) -> None:
    server, front = served
    before = model_metrics(server.metrics_url, "slow")
    assert _complete(front, "slow", 16, 8) == Counter({(200, "xxx"): 16})
    after = model_metrics(server.metrics_url, "slow")
    count = after["kubeforge_time_to_first_token_seconds_count"] - before.get(
        "kubeforge_time_to_first_token_seconds_count", 0.0
    )
    total = after["kubeforge_time_to_first_token_seconds_sum"] - before.get(
        "kubeforge_time_to_first_token_seconds_sum", 0.0
    )
    assert count == 16 and total / count >= FIRST_TOKEN_MS / 1000, (count, total)
    # streamed through the front: one event per token, then [DONE]
    request = urllib.request.Request(
        f"{front.url}/v1/completions",
        data=json.dumps({"model": "slow", "prompt": "Hi", "max_tokens": 3, "stream": True}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        events = [line for line in response.read().decode().split("\n\n") if line]
    assert events[-1] == "data: [DONE]" and len(events) == 4, events
