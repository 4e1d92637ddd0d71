"""A deposed leader's writes stop at the fence as they are sent, each write lasts at most what is left
of its Lease (and the API server is told so), and no write is resent by the client."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import pytest
from aiohttp import web
from kubernetes import client as k8s_client

from kubeforge.k8s.client import ApiError, Kube
from kubeforge.k8s.resources import SERVICE


@asynccontextmanager
async def _server(
    handler: Callable[[web.Request], web.StreamResponse | Awaitable[web.StreamResponse]],
) -> AsyncIterator[tuple[int, list[str]]]:
    seen: list[str] = []

    async def record(request: web.Request) -> web.StreamResponse:
        seen.append(f"{request.method} {request.path_qs}")
        answer = handler(request)
        return await answer if isinstance(answer, Awaitable) else answer

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
        answers = iter([5.0])  # leading when the call is made, deposed by the time it is sent
        kube.write_budget = lambda: next(answers, 0.0)
        with pytest.raises(ApiError) as info:
            await kube.delete(SERVICE, "ns", "s", uid="u")
        assert info.value.reason == "NotLeader"
        await kube.aclose()
        return seen


def test_a_write_is_fenced_again_when_it_is_sent() -> None:
    assert asyncio.run(_deposed_while_queued()) == []


def _answers_after(seconds: float) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    async def slow(_: web.Request) -> web.StreamResponse:
        await asyncio.sleep(seconds)
        return web.json_response({})

    return slow


async def _delete_within(budget: float | None, answer_after: float) -> tuple[list[str], float, str]:
    """One DELETE under a Lease that leaves `budget` seconds (None: no election) to a server that
    answers after `answer_after`: what reached it, how long the call took, how it ended."""
    async with _server(_answers_after(answer_after)) as (port, seen):
        kube = _kube(port)
        if budget is not None:
            kube.write_budget = lambda: budget
        started = time.monotonic()
        outcome = "ok"
        try:
            await kube.delete(SERVICE, "ns", "s", uid="u")
        except ApiError as err:
            outcome = err.reason
        took = time.monotonic() - started
        await kube.aclose()
        return seen, took, outcome


def test_a_slow_write_on_a_healthy_leader_is_not_cut_short() -> None:
    # a busy API server answering after 3.5 s: a fixed 3 s write timeout gave up and retried
    seen, took, outcome = asyncio.run(_delete_within(6.0, 3.5))
    assert outcome == "ok"
    assert took >= 3.5
    # the server is told to give up half a second before the client does
    assert seen == ["DELETE /api/v1/namespaces/ns/services/s?timeout=5500ms"]


def test_a_write_is_abandoned_when_its_lease_runs_out() -> None:
    seen, took, outcome = asyncio.run(_delete_within(1.0, 3.0))
    assert outcome != "ok"
    assert took < 2.0  # abandoned at the budget, not after the server's 3 s
    assert seen == ["DELETE /api/v1/namespaces/ns/services/s?timeout=500ms"]


def test_without_election_a_write_has_the_client_s_own_bound() -> None:
    seen, _, outcome = asyncio.run(_delete_within(None, 0.0))
    assert outcome == "ok"
    assert seen == ["DELETE /api/v1/namespaces/ns/services/s?timeout=29500ms"]


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
