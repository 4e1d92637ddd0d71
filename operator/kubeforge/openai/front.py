"""The OpenAI API in front of Triton: `/v1/models`, `/v1/completions`, `/v1/chat/completions`.

`kubeforge openai-front` runs beside tritonserver in a server pod and translates each request into one
call of Triton's `generate_stream` (server-sent events) on the same pod, whether or not the client
asked to stream: tokens are passed on as Triton sends them (never buffered when streaming), the usage
is counted from what was generated, and a client that goes away closes the call to Triton, which
cancels the generation and frees its slot. aiohttp is the HTTP server and client.

A served model is a directory of the model repository the pod's init container laid out: its
`tokenizer_config.json` gives the chat template, how prompt tokens are counted, and the prompt limit;
Triton's model config gives `max_tokens_limit`.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from kubeforge.openai import BYTE_TOKENIZER, TOKENIZER_CONFIG, TOKENIZER_KEY, chat
from kubeforge.openai.protocol import ChatCompletionRequest, CompletionRequest, OpenAIError, parse

log = logging.getLogger(__name__)

DEFAULT_COMPLETION_TOKENS = 16  # OpenAI's default max_tokens for /v1/completions
DEFAULT_MAX_TOKENS_LIMIT = 4096  # a python-llm model's, where its config does not say (max_tokens_limit)
UPSTREAM_TIMEOUT = aiohttp.ClientTimeout(total=None, sock_connect=5, sock_read=None)
SSE_DATA = b"data: "


@dataclass(frozen=True)
class ServedModel:
    """A model the front serves, as its repository directory describes it."""

    name: str
    chat_template: str | None
    max_prompt_tokens: int | None
    created: int

    @classmethod
    def load(cls, repository: Path, name: str) -> ServedModel:
        path = repository / name / TOKENIZER_CONFIG
        try:
            config = json.loads(path.read_text())
        except FileNotFoundError:
            raise ValueError(f"model {name}: no {TOKENIZER_CONFIG} in {repository / name}") from None
        if config.get(TOKENIZER_KEY) != BYTE_TOKENIZER:
            raise ValueError(
                f"model {name}: {path} must say {TOKENIZER_KEY}: {BYTE_TOKENIZER} (the front counts byte tokens)"
            )
        limit = config.get("model_max_length")
        return cls(
            name=name,
            chat_template=config.get("chat_template"),
            max_prompt_tokens=int(limit) if limit is not None else None,
            created=int(path.stat().st_mtime),
        )

    def prompt_tokens(self, prompt: str) -> int:
        return len(prompt.encode())


def _event(document: Mapping[str, Any]) -> bytes:
    return b"data: " + json.dumps(document, separators=(",", ":")).encode() + b"\n\n"


def _error_response(error: OpenAIError) -> web.Response:
    return web.json_response(error.body(), status=error.status)


@dataclass
class _Generation:
    """What one request asked Triton for, and what came back."""

    model: ServedModel
    prompt: str
    max_tokens: int
    payload: dict[str, Any]
    text: str = ""
    completion_tokens: int = 0
    finish_reason: str | None = None

    def usage(self) -> dict[str, int]:
        prompt = self.model.prompt_tokens(self.prompt)
        return {
            "prompt_tokens": prompt,
            "completion_tokens": self.completion_tokens,
            "total_tokens": prompt + self.completion_tokens,
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
                include_usage = bool(body.stream_options and body.stream_options.include_usage)
                return await self._stream(request, generation, chunk, include_usage)
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
            prompt = chat.render(model.chat_template, messages)
            max_tokens = body.limit() or await self._max_tokens_limit(model)
            generation = await self._generation(model, prompt, max_tokens, body)
            created, ident = int(time.time()), f"chatcmpl-{uuid.uuid4().hex}"

            def chunk(text: str, finish: str | None, first: bool = False) -> dict[str, Any]:
                delta = {"role": "assistant", "content": text} if first else {"content": text} if text else {}
                choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
                return {"id": ident, "object": "chat.completion.chunk", "created": created, "model": model.name,
                        "choices": [choice]}  # fmt: skip

            if body.stream:
                include_usage = bool(body.stream_options and body.stream_options.include_usage)
                return await self._stream(
                    request, generation, chunk, include_usage, opening=chunk("", None, first=True)
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
        if model.name not in self._limits:
            not_ready = OpenAIError(
                503, f"model {model.name} is not ready on this server", kind="server_error"
            )
            try:
                async with self.session.get(f"{self.triton_url}/v2/models/{model.name}/config") as response:
                    if response.status != 200:
                        raise not_ready
                    config = await response.json()
            except aiohttp.ClientError:
                raise not_ready from None
            entry = (config.get("parameters") or {}).get("max_tokens_limit") or {}
            self._limits[model.name] = int(entry.get("string_value") or DEFAULT_MAX_TOKENS_LIMIT)
        return self._limits[model.name]

    async def _generation(self, model: ServedModel, prompt: str, max_tokens: int, body: Any) -> _Generation:
        limit = await self._max_tokens_limit(model)
        if max_tokens > limit:
            param = "max_completion_tokens" if getattr(body, "max_completion_tokens", None) else "max_tokens"
            raise OpenAIError(
                400, f"{param} is {max_tokens}, more than this model's limit of {limit}", param=param
            )
        tokens = model.prompt_tokens(prompt)
        if model.max_prompt_tokens is not None and tokens > model.max_prompt_tokens:
            raise OpenAIError(
                400,
                f"This model's maximum prompt length is {model.max_prompt_tokens} tokens; the prompt has {tokens}",
                param="messages" if isinstance(body, ChatCompletionRequest) else "prompt",
                code="context_length_exceeded",
            )
        payload: dict[str, Any] = {"text_input": prompt, "max_tokens": max_tokens, "stream": True}
        for field in ("temperature", "top_p", "seed"):
            if getattr(body, field) is not None:
                payload[field] = getattr(body, field)
        if body.stops():
            payload["stop"] = body.stops()
        return _Generation(model, prompt, max_tokens, payload)

    @asynccontextmanager
    async def _upstream(
        self, generation: _Generation
    ) -> AsyncIterator[AsyncIterator[tuple[str, str | None]]]:
        """Triton's generate_stream for this generation: (text, finish reason) per generated token."""
        url = f"{self.triton_url}/v2/models/{generation.model.name}/generate_stream"
        try:
            async with self.session.post(url, json=generation.payload) as response:
                if response.status != 200:
                    raise _upstream_error(response.status, await response.text())
                yield _tokens(response, generation)
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
        async with self._upstream(generation) as tokens:
            response = web.StreamResponse(
                headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
            )
            await response.prepare(request)
            if opening is not None:
                await response.write(_event({**opening, **({"usage": None} if include_usage else {})}))
            try:
                async for text, finish in tokens:
                    if text or finish:
                        document = chunk(text, finish)
                        await response.write(
                            _event({**document, **({"usage": None} if include_usage else {})})
                        )
            except OpenAIError as error:  # after the headers: the error as the stream's last event
                await response.write(_event(error.body()))
                return response
            if include_usage:
                last = chunk("", None)
                await response.write(_event({**last, "choices": [], "usage": generation.usage()}))
            await response.write(b"data: [DONE]\n\n")
            await response.write_eof()
            return response


async def _tokens(
    response: aiohttp.ClientResponse, generation: _Generation
) -> AsyncIterator[tuple[str, str | None]]:
    async for line in response.content:
        if not line.startswith(SSE_DATA):
            continue
        event = json.loads(line[len(SSE_DATA) :])
        if "error" in event:
            raise OpenAIError(400, str(event["error"]))
        text, finish = str(event.get("text_output") or ""), event.get("finish_reason") or None
        generation.completion_tokens += 1  # one response per generated token
        generation.text += text
        generation.finish_reason = finish or generation.finish_reason
        yield text, finish


def _upstream_error(status: int, body: str) -> OpenAIError:
    try:
        message = str(json.loads(body).get("error") or body)
    except (ValueError, AttributeError):
        message = body
    if status == 400:
        return OpenAIError(400, message)
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
    models = []
    for name in names:
        try:
            models.append(ServedModel.load(repository, name))
        except ValueError as error:  # a streaming model that is not a language model: Triton still serves it
            log.warning("not served through the OpenAI API: %s", error)
    log.info("openai front on %s:%d for %s (Triton at %s)", host, port, ", ".join(names), triton_url)
    # a client that disconnects cancels its handler, and with it the call to Triton
    web.run_app(Front(triton_url, models).app(), host=host, port=port, handler_cancellation=True, print=None)
    return 0
