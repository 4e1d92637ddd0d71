"""The OpenAI API (`kubeforge openai-front`) over the real tritonserver serving the trained language model,
driven by the real `openai` client, sync and async, streaming and not. Every body the front returned is
also read back into the `openai` package's typed models with no field they do not define."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
from openai.types import Completion, Model
from openai.types.chat import ChatCompletion, ChatCompletionChunk
from pydantic import BaseModel

from kubeforge.api import ModelDeployment
from kubeforge.builders.modeldeployment import build_triton_deployment
from kubeforge.openai.chat import render
from kubeforge.settings import Settings
from kubeforge.testing.openai_front import RunningFront, running_front, with_flag_values
from kubeforge.testing.streaming import model_metrics, stream_sse
from kubeforge.testing.triton import TritonServer
from kubeforge.trainer.llm_export import CHAT_TEMPLATE
from kubeforge.trainer.triton_llm_model import DEFAULT_MAX_PROMPT_TOKENS
from tests.trainer.runs import LM_MODEL_NAME, LM_SINGLE_MODEL_NAME

pytestmark = [pytest.mark.torch, pytest.mark.triton]

MODEL = LM_MODEL_NAME
PROMPT = "Of the Refraction of Light"
ACTIVE = "kubeforge_active_streams"
TOKENS = "kubeforge_generated_tokens_total"
PASSES = "kubeforge_forward_passes_total"


def sync_client(front: RunningFront) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{front.url}/v1", api_key="unused", max_retries=0, timeout=60)


def async_client(front: RunningFront) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=f"{front.url}/v1", api_key="unused", max_retries=0, timeout=60)


def _front_container() -> dict[str, Any]:
    """The `openai` container the operator puts in the server pods of a ModelDeployment of both models."""
    model = {"source": "pvc://model-store/language", "format": "python", "config": {"decoupled": True}}
    md = ModelDeployment.model_validate(
        {
            "metadata": {"name": "lm", "namespace": "team-a", "uid": "u", "generation": 1},
            "spec": {"models": [{**model, "name": MODEL}, {**model, "name": LM_SINGLE_MODEL_NAME}]},
        }
    )
    pod = build_triton_deployment(md, Settings())["spec"]["template"]["spec"]
    return next(c for c in pod["containers"] if c["name"] == "openai")


@pytest.fixture(scope="module")
def front(
    llm_server: TritonServer, llm_repository: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningFront]:
    """The operator's `openai` container as the server pod runs it: its command and arguments, with the
    pod's paths moved to this machine's (the local Triton, the local model repository)."""
    container = _front_container()
    assert container["command"] == ["kubeforge", "openai-front"]
    args = with_flag_values(
        container["args"], {"--triton": llm_server.http_url, "--repository": str(llm_repository)}
    )
    with running_front(args, tmp_path_factory.mktemp("front") / "front.log") as running:
        yield running


def _conforms(model: type[BaseModel], body: dict[str, Any]) -> BaseModel:
    """`body` read into the openai package's typed model, which must know every field of it."""
    parsed = model.model_validate(body)

    def check(value: Any, where: str) -> None:
        if isinstance(value, BaseModel):
            assert not value.model_extra, (
                f"{where}: fields the OpenAI API does not define: {value.model_extra}"
            )
            for name in type(value).model_fields:
                check(getattr(value, name), f"{where}.{name}")
        elif isinstance(value, list):
            for index, item in enumerate(value):
                check(item, f"{where}[{index}]")

    check(parsed, model.__name__)
    return parsed


def _events(raw: bytes) -> list[dict[str, Any]]:
    lines = [line for line in raw.decode().split("\n\n") if line.startswith("data: ")]
    assert lines[-1] == "data: [DONE]", lines[-3:]
    return [json.loads(line.removeprefix("data: ")) for line in lines[:-1]]


def test_models_lists_what_the_front_serves(front: RunningFront) -> None:
    models = sync_client(front).models.list()
    assert [m.id for m in models.data] == [MODEL, LM_SINGLE_MODEL_NAME]
    status, body = front.call(f"/v1/models/{MODEL}")
    assert status == 200
    _conforms(Model, json.loads(body))


def test_a_completion_is_what_triton_generates_and_its_usage_is_exact(
    front: RunningFront, llm_server: TritonServer
) -> None:
    completion = sync_client(front).completions.create(
        model=MODEL, prompt=PROMPT, max_tokens=40, temperature=0.7, seed=3
    )
    direct = stream_sse(
        llm_server.http_url, MODEL, {"text_input": PROMPT, "max_tokens": 40, "temperature": 0.7, "seed": 3}
    )
    (choice,) = completion.choices
    assert choice.text == direct.text
    assert choice.finish_reason == "length"
    assert completion.usage is not None
    assert completion.usage.completion_tokens == 40 == len(direct.responses)
    assert completion.usage.prompt_tokens == len(PROMPT.encode())  # a byte is a token
    assert completion.usage.total_tokens == 40 + len(PROMPT.encode())
    status, body = front.call(
        "/v1/completions", {"model": MODEL, "prompt": PROMPT, "max_tokens": 5, "seed": 1}
    )
    assert status == 200
    _conforms(Completion, json.loads(body))


def test_the_same_seed_gives_the_same_text(front: RunningFront) -> None:
    openai_client = sync_client(front)

    def text(seed: int) -> str:
        return openai_client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=60, temperature=0.9, seed=seed).choices[0].text  # fmt: skip

    assert text(11) == text(11)
    assert text(11) != text(12)


def test_a_stream_arrives_token_by_token_and_ends_with_its_usage(front: RunningFront) -> None:
    started = time.monotonic()
    arrivals: list[float] = []
    chunks = []
    stream = sync_client(front).completions.create(
        model=MODEL,
        prompt=PROMPT,
        max_tokens=200,
        seed=5,
        stream=True,
        stream_options={"include_usage": True},
    )
    for chunk in stream:
        arrivals.append(time.monotonic())
        chunks.append(chunk)
    text_chunks = [c for c in chunks if c.choices]
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 200
    assert text_chunks[-1].choices[0].finish_reason == "length"
    # passed on as generated: the first token long before the last
    assert arrivals[0] - started < (arrivals[-1] - started) / 2, (
        arrivals[0] - started,
        arrivals[-1] - started,
    )
    assert len(text_chunks) > 100
    status, raw = front.call(
        "/v1/completions", {"model": MODEL, "prompt": PROMPT, "max_tokens": 8, "stream": True}
    )
    assert status == 200
    events = _events(raw)
    # the last chunk conforms; the others are the same object with finish_reason null, as OpenAI's own
    # stream sends them (the typed model, made for whole completions, requires a finish reason)
    _conforms(Completion, events[-1])
    assert all(e.keys() == events[-1].keys() for e in events)
    assert all(e["choices"][0].keys() == events[-1]["choices"][0].keys() for e in events)
    assert [e["choices"][0]["finish_reason"] for e in events] == [None] * (len(events) - 1) + ["length"]


def test_stop_sequences_stop_the_text_before_them(front: RunningFront) -> None:
    openai_client = sync_client(front)
    greedy = {"model": MODEL, "prompt": PROMPT, "max_tokens": 80, "temperature": 0.0}
    full = openai_client.completions.create(**greedy).choices[0].text
    stop = full[30:33]
    stopped = openai_client.completions.create(**greedy, stop=[stop, "never seen"]).choices[0]
    assert stopped.finish_reason == "stop"
    assert stopped.text == full[: full.index(stop)]


def test_chat_renders_the_models_own_template(front: RunningFront) -> None:
    messages = [
        {"role": "system", "content": "Answer as Newton would."},
        {"role": "user", "content": "What is white light?"},
    ]
    chat = sync_client(front).chat.completions.create(model=MODEL, messages=messages, max_completion_tokens=30, temperature=0.0)  # type: ignore[arg-type]  # fmt: skip
    prompt = render(CHAT_TEMPLATE, messages)
    assert prompt == "Answer as Newton would.\n\nQ: What is white light?\nA:"
    same = sync_client(front).completions.create(model=MODEL, prompt=prompt, max_tokens=30, temperature=0.0)
    assert chat.choices[0].message.content == same.choices[0].text
    assert chat.choices[0].message.role == "assistant"
    assert chat.usage is not None and chat.usage.prompt_tokens == len(prompt.encode())
    status, body = front.call("/v1/chat/completions", {"model": MODEL, "messages": messages, "max_tokens": 4})
    assert status == 200
    _conforms(ChatCompletion, json.loads(body))
    status, raw = front.call(
        "/v1/chat/completions",
        {
            "model": MODEL,
            "messages": messages,
            "max_tokens": 6,
            "stream": True,
            "stream_options": {"include_usage": True},
        },
    )
    events = _events(raw)
    assert events[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert events[-1]["usage"]["completion_tokens"] == 6
    for event in events:
        _conforms(ChatCompletionChunk, event)


def test_the_async_client_streams_a_chat(front: RunningFront) -> None:
    async def chat() -> tuple[str, str | None]:
        client = async_client(front)
        stream = await client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": "Of colours"}],
            max_tokens=25,
            stream=True,
            seed=4,
        )
        parts, finish = [], None
        async for chunk in stream:
            parts.append(chunk.choices[0].delta.content or "")
            finish = chunk.choices[0].finish_reason or finish
        await client.close()
        return "".join(parts), finish

    text, finish = asyncio.run(chat())
    assert text and finish == "length"


@pytest.mark.parametrize(
    ("body", "status", "param", "code", "message"),
    [
        ({"model": "nope", "prompt": "x"}, 404, "model", "model_not_found", "does not exist"),
        ({"model": MODEL, "prompt": "x", "n": 2}, 400, "n", "unsupported_value", "n=2"),
        ({"model": MODEL, "prompt": "x", "max_tokens": 5000}, 400, "max_tokens", None, "limit of 4096"),
        ({"model": MODEL, "prompt": "x" * (DEFAULT_MAX_PROMPT_TOKENS + 1)}, 400, "prompt", "context_length_exceeded", "4096"),
        # refused by the model before its first token: the answer's status, not an event in a 200 stream
        ({"model": MODEL, "prompt": "x" * (DEFAULT_MAX_PROMPT_TOKENS + 1), "stream": True}, 400, "prompt", "context_length_exceeded", "4096"),
        ({"model": MODEL, "prompt": "x", "temperature": 3}, 400, "temperature", None, "less than or equal to 2"),
        ({"model": MODEL, "prompt": "x", "frobnicate": 1}, 400, "frobnicate", None, "Unrecognized request argument"),
        ({"model": MODEL}, 400, "prompt", None, "Missing required parameter"),
        ({"model": MODEL, "prompt": "x", "stop": ""}, 400, "stop", None, "must not be empty"),
    ],
)  # fmt: skip
def test_bad_requests_get_openais_error_body(
    front: RunningFront, body: dict[str, Any], status: int, param: str, code: str | None, message: str
) -> None:
    got, raw = front.call("/v1/completions", body)
    assert got == status, raw
    error = json.loads(raw)["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert (error["param"], error["code"], error["type"]) == (param, code, "invalid_request_error")
    assert message in error["message"]


def test_the_client_raises_openais_errors(front: RunningFront) -> None:
    with pytest.raises(openai.NotFoundError) as missing:
        sync_client(front).completions.create(model="nope", prompt="x")
    assert missing.value.code == "model_not_found"
    with pytest.raises(openai.BadRequestError) as refused:
        sync_client(front).chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "x"}], n=3
        )
    assert refused.value.param == "n"


@pytest.mark.parametrize("stream", [True, False])
def test_a_client_that_goes_away_frees_the_slot(
    front: RunningFront, llm_server: TritonServer, stream: bool
) -> None:
    # one slot: had the abandoned request kept generating its 4096 bytes, the next would wait for them
    single = LM_SINGLE_MODEL_NAME
    before = model_metrics(llm_server.metrics_url, single)[TOKENS]
    if stream:
        chunks = sync_client(front).completions.create(
            model=single, prompt=PROMPT, max_tokens=4096, stream=True, seed=2
        )
        for index, _ in enumerate(chunks):
            if index == 5:
                break
        chunks.close()
    else:  # the client gives up waiting for the whole text: its handler is cancelled, and the call to Triton
        with pytest.raises(openai.APITimeoutError):
            sync_client(front).with_options(timeout=0.5).completions.create(
                model=single, prompt=PROMPT, max_tokens=4096
            )
    deadline = time.monotonic() + 10
    while model_metrics(llm_server.metrics_url, single)[ACTIVE] != 0:
        assert time.monotonic() < deadline, "the abandoned generation still holds the slot"
        time.sleep(0.05)
    generated = model_metrics(llm_server.metrics_url, single)[TOKENS] - before
    # a generation that runs its course makes exactly its 4096 (about 3 s at this model's speed on a
    # fast 2-core machine, ~1400 tokens/s); one the front cancelled stops where the cancel reached it
    # (with a 1.5 s timeout: 2074 tokens alone, 2179 beside the other unit tests)
    assert generated < 4096, generated
    started = time.monotonic()
    following = sync_client(front).completions.create(model=single, prompt=PROMPT, max_tokens=8)
    assert following.usage is not None and following.usage.completion_tokens == 8
    assert time.monotonic() - started < 5.0


def test_sixteen_streams_share_forward_passes(front: RunningFront, llm_server: TritonServer) -> None:
    before = model_metrics(llm_server.metrics_url, MODEL)

    async def streams() -> list[int]:
        client = async_client(front)

        async def one(seed: int) -> int:
            stream = await client.completions.create(
                model=MODEL, prompt=PROMPT, max_tokens=60, stream=True, seed=seed
            )
            return sum([1 async for chunk in stream if chunk.choices and (chunk.choices[0].text or chunk.choices[0].finish_reason)])  # fmt: skip

        counts = await asyncio.gather(*(one(seed) for seed in range(16)))
        await client.close()
        return list(counts)

    assert all(count > 0 for count in asyncio.run(streams()))
    after = model_metrics(llm_server.metrics_url, MODEL)
    tokens, passes = after[TOKENS] - before[TOKENS], after[PASSES] - before[PASSES]
    assert tokens == 16 * 60
    assert passes < 0.5 * tokens, (tokens, passes)  # batched: many streams advanced per forward pass
