"""The OpenAI API in front of Triton: `/v1/models`, `/v1/completions`, `/v1/chat/completions`.

`kubeforge openai-front` runs beside tritonserver in a server pod and translates each request into one
call of Triton's `generate_stream` (server-sent events) on the same pod, whether or not the client
asked to stream: tokens are passed on as Triton sends them (never buffered when streaming), the usage
is counted from what was generated, and a client that goes away closes the call to Triton, which
cancels the generation and frees its slot. aiohttp is the HTTP server and client.

Both kinds of language model speak the vLLM backend's request contract
(https://github.com/triton-inference-server/vllm_backend, `src/utils/request.py`), which the python-llm
export implements too: `text_input`, `stream`, `exclude_input_in_output`, `sampling_parameters` (a JSON
object: max_tokens, temperature, top_p, seed, stop, and lora_name for an adapter) and the flags that
return `finish_reason`, `num_input_tokens` and `num_output_tokens`, which is what `usage` counts. The
model refuses an over-long prompt itself (its tokenizer is the one that counts).

A served model is a directory of the model repository the pod's init container laid out (`models`
in `kubeforge.openai`): the chat template, the adapters, the longest context.
"""

from __future__ import annotations

import json
import logging
import re
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from kubeforge.openai import chat
from kubeforge.openai.models import ServedModel, served_models
from kubeforge.openai.protocol import ChatCompletionRequest, CompletionRequest, OpenAIError, parse

log = logging.getLogger(__name__)

DEFAULT_COMPLETION_TOKENS = 16  # OpenAI's default max_tokens for /v1/completions
DEFAULT_MAX_TOKENS_LIMIT = 4096  # a python-llm model's, where its config does not say (max_tokens_limit)
UPSTREAM_TIMEOUT = aiohttp.ClientTimeout(total=None, sock_connect=5, sock_read=None)
SSE_DATA = b"data: "
# the vLLM backend's flags: every response says why it ended and how many tokens it holds
RETURN_FLAGS = {
    "stream": True,
    "exclude_input_in_output": True,
    "return_finish_reason": True,
    "return_num_input_tokens": True,
    "return_num_output_tokens": True,
}
# "longer than this model's maximum prompt length of N tokens" (python-llm), "longer than the maximum
# model length of N" (vLLM's input check)
TOO_LONG = re.compile(r"longer than (?:this model's|the) maximum (?:prompt|model) length of (\d+)")
NOT_FINISHED = ("", "None")  # the finish_reason of a response that is not the last (python-llm, vLLM)


def _event(document: Mapping[str, Any]) -> bytes:
    return b"data: " + json.dumps(document, separators=(",", ":")).encode() + b"\n\n"


def _error_response(error: OpenAIError) -> web.Response:
    return web.json_response(error.body(), status=error.status)


@dataclass
class _Generation:
    """What one request asked Triton for, and what came back."""

    model: ServedModel
    payload: dict[str, Any]
    param: str  # the request field the prompt came from: prompt or messages
    texts: list[str] = field(default_factory=list)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    finish_reason: str | None = None

    @property
    def text(self) -> str:
        return "".join(self.texts)

    def usage(self) -> dict[str, int]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
        }


class Front:
    """The aiohttp application: OpenAI's routes over one Triton server's HTTP endpoint."""

    def __init__(self, triton_url: str, models: Sequence[ServedModel]) -> None:
        self.triton_url = triton_url.rstrip("/")
        self.models = {m.name: m for m in models}
        self._limits: dict[str, int] = {}
        self._session: aiohttp.ClientSession | None = None

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/v1/models", self.list_models)
        app.router.add_get("/v1/models/{model}", self.get_model)
        app.router.add_post("/v1/completions", self.completions)
        app.router.add_post("/v1/chat/completions", self.chat_completions)
        app.router.add_get("/health", self.health)
        app.on_cleanup.append(self._close)
        return app

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            # one connection per request, closed with it: a client that goes away closes its call to
            # Triton, which cancels the generation (a pooled connection would keep it running)
            connector = aiohttp.TCPConnector(force_close=True)
            self._session = aiohttp.ClientSession(connector=connector, timeout=UPSTREAM_TIMEOUT)
        return self._session

    async def _close(self, _: web.Application) -> None:
        if self._session is not None:
            await self._session.close()

    # -- routes ------------------------------------------------------------------------------------

    def _model_card(self, model: ServedModel) -> dict[str, Any]:
        return {"id": model.name, "object": "model", "created": model.created, "owned_by": "kubeforge"}

    async def list_models(self, _: web.Request) -> web.Response:
        return web.json_response(
            {"object": "list", "data": [self._model_card(m) for m in self.models.values()]}
        )

    async def get_model(self, request: web.Request) -> web.Response:
        try:
            return web.json_response(self._model_card(self._model(request.match_info["model"])))
        except OpenAIError as error:
            return _error_response(error)

    async def health(self, _: web.Request) -> web.Response:
        try:
            async with self.session.get(f"{self.triton_url}/v2/health/ready") as response:
                ready = response.status == 200
        except aiohttp.ClientError:
            ready = False
        return web.json_response({"triton_ready": ready}, status=200 if ready else 503)

    async def completions(self, request: web.Request) -> web.StreamResponse:
        async def handle() -> web.StreamResponse:
            body = parse(CompletionRequest, await _json(request))
            model = self._model(body.model)
            max_tokens = body.max_tokens or DEFAULT_COMPLETION_TOKENS
            generation = await self._generation(model, body.text(), max_tokens, body)
            created, ident = int(time.time()), f"cmpl-{uuid.uuid4().hex}"

            def chunk(text: str, finish: str | None) -> dict[str, Any]:
                choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish}
                return {"id": ident, "object": "text_completion", "created": created, "model": model.name,
                        "choices": [choice]}  # fmt: skip

            if body.stream:
                return await self._stream(request, generation, chunk, _include_usage(body))
            await self._run(generation)
            document = chunk(generation.text, generation.finish_reason)
            return web.json_response({**document, "usage": generation.usage()})

        return await _answer(handle)

    async def chat_completions(self, request: web.Request) -> web.StreamResponse:
        async def handle() -> web.StreamResponse:
            body = parse(ChatCompletionRequest, await _json(request))
            model = self._model(body.model)
            if model.chat_template is None:
                raise OpenAIError(
                    400, f"model {model.name} has no chat template: use /v1/completions", param="model"
                )
            messages = [
                {"role": m.role, "content": m.text(), **({"name": m.name} if m.name else {})}
                for m in body.messages
            ]
            prompt = chat.render(model.chat_template, messages, special_tokens=model.special_tokens)
            generation = await self._generation(model, prompt, body.limit(), body)
            created, ident = int(time.time()), f"chatcmpl-{uuid.uuid4().hex}"

            def chunk(text: str, finish: str | None, first: bool = False) -> dict[str, Any]:
                delta = {"role": "assistant", "content": text} if first else {"content": text} if text else {}
                choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
                return {"id": ident, "object": "chat.completion.chunk", "created": created, "model": model.name,
                        "choices": [choice]}  # fmt: skip

            if body.stream:
                return await self._stream(
                    request, generation, chunk, _include_usage(body), opening=chunk("", None, first=True)
                )
            await self._run(generation)
            message = {"role": "assistant", "content": generation.text, "refusal": None}
            choice = {
                "index": 0,
                "message": message,
                "logprobs": None,
                "finish_reason": generation.finish_reason,
            }
            return web.json_response(
                {
                    "id": ident,
                    "object": "chat.completion",
                    "created": created,
                    "model": model.name,
                    "choices": [choice],
                    "usage": generation.usage(),
                }
            )

        return await _answer(handle)

    # -- generation --------------------------------------------------------------------------------

    def _model(self, name: str) -> ServedModel:
        model = self.models.get(name)
        if model is None:
            raise OpenAIError(
                404, f"The model `{name}` does not exist; this server serves {sorted(self.models)}",
                param="model", code="model_not_found",
            )  # fmt: skip
        return model

    async def _max_tokens_limit(self, model: ServedModel) -> int:
        """The most tokens one request may generate: a vLLM model's context length, else the Triton
        config's `max_tokens_limit` (a python-llm model's), read once."""
        if model.context_length is not None:
            return model.context_length
        if model.triton_model not in self._limits:
            not_ready = OpenAIError(
                503, f"model {model.name} is not ready on this server", kind="server_error"
            )
            url = f"{self.triton_url}/v2/models/{model.triton_model}/config"
            try:
                async with self.session.get(url) as response:
                    if response.status != 200:
                        raise not_ready
                    config = await response.json()
            except aiohttp.ClientError:
                raise not_ready from None
            entry = (config.get("parameters") or {}).get("max_tokens_limit") or {}
            self._limits[model.triton_model] = int(entry.get("string_value") or DEFAULT_MAX_TOKENS_LIMIT)
        return self._limits[model.triton_model]

    async def _generation(
        self, model: ServedModel, prompt: str, max_tokens: int | None, body: Any
    ) -> _Generation:
        """The call to Triton for a request; `max_tokens` None asks for the model's limit."""
        limit = await self._max_tokens_limit(model)
        if max_tokens is None:
            max_tokens = limit
        elif max_tokens > limit:
            param = "max_completion_tokens" if getattr(body, "max_completion_tokens", None) else "max_tokens"
            raise OpenAIError(
                400, f"{param} is {max_tokens}, more than this model's limit of {limit}", param=param
            )
        return _Generation(
            model,
            {
                "text_input": prompt,
                **RETURN_FLAGS,
                "sampling_parameters": sampling_parameters(model, max_tokens, body),
            },
            "messages" if isinstance(body, ChatCompletionRequest) else "prompt",
        )

    @asynccontextmanager
    async def _upstream(
        self, generation: _Generation
    ) -> AsyncIterator[AsyncIterator[tuple[str, str | None]]]:
        """Triton's generate_stream for this generation: (text, finish reason) per response. An error
        before the first token is raised here, so that it is the request's answer and status."""
        url = f"{self.triton_url}/v2/models/{generation.model.triton_model}/generate_stream"
        try:
            async with self.session.post(url, json=generation.payload) as response:
                if response.status != 200:
                    raise _upstream_error(response.status, await response.text(), generation.param)
                tokens = _tokens(response, generation)
                try:
                    first = await anext(tokens)
                except StopAsyncIteration:
                    first = None
                yield _after(first, tokens)
        except aiohttp.ClientError as error:
            raise OpenAIError(
                503, f"the model server is not answering: {error}", kind="server_error"
            ) from None

    async def _run(self, generation: _Generation) -> None:
        async with self._upstream(generation) as tokens:
            async for _ in tokens:
                pass

    async def _stream(
        self,
        request: web.Request,
        generation: _Generation,
        chunk: Callable[..., dict[str, Any]],
        include_usage: bool,
        opening: dict[str, Any] | None = None,
    ) -> web.StreamResponse:
        usage_field = {"usage": None} if include_usage else {}
        async with self._upstream(generation) as tokens:
            response = web.StreamResponse(
                headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
            )
            await response.prepare(request)
            if opening is not None:
                await response.write(_event({**opening, **usage_field}))
            try:
                async for text, finish in tokens:
                    if text or finish:
                        await response.write(_event({**chunk(text, finish), **usage_field}))
            except OpenAIError as error:  # after the headers: the error as the stream's last event
                await response.write(_event(error.body()))
                return response
            if include_usage:
                last = chunk("", None)
                await response.write(_event({**last, "choices": [], "usage": generation.usage()}))
            await response.write(b"data: [DONE]\n\n")
            await response.write_eof()
            return response


def sampling_parameters(model: ServedModel, max_tokens: int, body: Any) -> str:
    """The `sampling_parameters` input: vLLM's SamplingParams fields (and the backend's lora_name)."""
    parameters: dict[str, Any] = {"max_tokens": max_tokens}
    for name in ("temperature", "top_p", "seed"):
        if getattr(body, name) is not None:
            parameters[name] = getattr(body, name)
    if body.stops():
        parameters["stop"] = body.stops()
    if model.lora is not None:
        parameters["lora_name"] = model.lora
    return json.dumps(parameters, separators=(",", ":"))


def _include_usage(body: Any) -> bool:
    return bool(body.stream_options and body.stream_options.include_usage)


async def _after(
    first: tuple[str, str | None] | None, rest: AsyncIterator[tuple[str, str | None]]
) -> AsyncIterator[tuple[str, str | None]]:
    if first is not None:
        yield first
        async for item in rest:
            yield item


def _count(value: Any) -> int:
    """A token count output: a number, or a list of one (an output of dims [-1])."""
    if isinstance(value, list):
        return sum(int(v) for v in value)
    return int(value or 0)


async def _tokens(
    response: aiohttp.ClientResponse, generation: _Generation
) -> AsyncIterator[tuple[str, str | None]]:
    async for line in response.content:
        if not line.startswith(SSE_DATA):
            continue
        event = json.loads(line[len(SSE_DATA) :])
        if "error" in event:
            raise model_error(str(event["error"]), generation.param)
        text = str(event.get("text_output") or "")
        finish = str(event.get("finish_reason") or "")
        finished = None if finish in NOT_FINISHED else finish
        generation.prompt_tokens = _count(event.get("num_input_tokens")) or generation.prompt_tokens
        generation.completion_tokens += _count(event.get("num_output_tokens"))
        generation.texts.append(text)
        generation.finish_reason = finished or generation.finish_reason
        yield text, finished


def model_error(message: str, param: str) -> OpenAIError:
    """An error the model answered with: an over-long prompt is OpenAI's context_length_exceeded;
    the vLLM backend's engine failures ("Error generating stream: ...") are the server's; the rest
    is the request's."""
    if TOO_LONG.search(message):
        return OpenAIError(400, message, param=param, code="context_length_exceeded")
    if message.startswith("Error generating stream"):
        return OpenAIError(500, message, kind="server_error")
    return OpenAIError(400, message)


def _upstream_error(status: int, body: str, param: str) -> OpenAIError:
    try:
        message = str(json.loads(body).get("error") or body)
    except (ValueError, AttributeError):
        message = body
    if status == 400:
        return model_error(message, param)
    return OpenAIError(503, f"the model server answered {status}: {message}", kind="server_error")


async def _json(request: web.Request) -> Any:
    try:
        return await request.json()
    except ValueError as error:
        raise OpenAIError(400, f"the request body is not JSON: {error}") from None


async def _answer(handle: Callable[[], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
    try:
        return await handle()
    except OpenAIError as error:
        if error.status >= 500:
            log.warning("openai front: %s", error.message)
        return _error_response(error)


def run_front(host: str, port: int, triton_url: str, repository: Path, names: Sequence[str]) -> int:
    """`kubeforge openai-front`: serve until SIGTERM/SIGINT."""
    models = served_models(repository, names)
    log.info(
        "openai front on %s:%d for %s (Triton at %s)",
        host,
        port,
        ", ".join(m.name for m in models),
        triton_url,
    )
    # a client that disconnects cancels its handler, and with it the call to Triton
    web.run_app(Front(triton_url, models).app(), host=host, port=port, handler_cancellation=True, print=None)
    return 0
