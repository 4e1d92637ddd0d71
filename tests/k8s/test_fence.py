"""A deposed leader's writes stop at the fence as they are sent, and no write is resent by the client."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import pytest
from aiohttp import web
from kubernetes import client as k8s_client

from kubeforge.k8s.client import ApiError, Kube
from kubeforge.k8s.resources import SERVICE


@asynccontextmanager
async def _server(
    handler: Callable[[web.Request], web.StreamResponse],
) -> AsyncIterator[tuple[int, list[str]]]:
    seen: list[str] = []

    async def record(request: web.Request) -> web.StreamResponse:
        seen.append(f"{request.method} {request.path}")
        return handler(request)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", record)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield runner.addresses[0][1], seen
    finally:
        await runner.cleanup()


def _kube(port: int) -> Kube:
    configuration = k8s_client.Configuration(host=f"http://127.0.0.1:{port}")
    configuration.retries = False  # as load_api_client sets it
    return Kube(k8s_client.ApiClient(configuration))


async def _deposed_while_queued() -> list[str]:
    async with _server(lambda _: web.json_response({}, status=200)) as (port, seen):
        kube = _kube(port)
        answers = iter([True])  # leading when the call is made, deposed by the time it is sent
        kube.may_write = lambda: next(answers, False)
        with pytest.raises(ApiError) as info:
            await kube.delete(SERVICE, "ns", "s", uid="u")
        assert info.value.reason == "NotLeader"
        await kube.aclose()
        return seen


def test_a_write_is_fenced_again_when_it_is_sent() -> None:
    assert asyncio.run(_deposed_while_queued()) == []


async def _dropped_connections(retries: object) -> int:
    """A server that reads each request and closes the connection without an answer (a dead
    socket): how many times one DELETE reached it."""
    received = 0

    async def drop(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal received
        await reader.readuntil(b"\r\n\r\n")
        received += 1
        writer.close()

    server = await asyncio.start_server(drop, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    configuration = k8s_client.Configuration(host=f"http://127.0.0.1:{port}")
    configuration.retries = retries
    kube = Kube(k8s_client.ApiClient(configuration))
    with pytest.raises(ApiError):
        await kube.delete(SERVICE, "ns", "s", uid="u")
    await kube.aclose()
    server.close()
    return received


def test_a_write_on_a_dead_connection_is_sent_once() -> None:
    assert asyncio.run(_dropped_connections(None)) > 1  # urllib3's default: sent again and again
    assert asyncio.run(_dropped_connections(False)) == 1  # as load_api_client configures it


def test_the_operator_client_has_no_retries(tmp_path: object) -> None:
    from pathlib import Path

    from kubeforge.k8s.client import load_api_client

    config = Path(str(tmp_path)) / "kubeconfig"
    config.write_text(
        "apiVersion: v1\nkind: Config\ncurrent-context: c\n"
        "clusters: [{name: c, cluster: {server: 'http://127.0.0.1:1'}}]\n"
        "users: [{name: u, user: {token: t}}]\n"
        "contexts: [{name: c, context: {cluster: c, user: u}}]\n"
    )
    assert load_api_client(kubeconfig=str(config)).configuration.retries is False
