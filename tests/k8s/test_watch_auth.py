"""The watch stream authenticates as the generated client does: a token kubeconfig or an in-cluster
ServiceAccount token must not turn into an anonymous watch (403 on every informer)."""

from __future__ import annotations

import asyncio
import json

from aiohttp import web
from kubernetes import client as k8s_client

from kubeforge.k8s.client import Kube
from kubeforge.k8s.resources import POD


async def _watch_headers(api_key: dict[str, str], api_key_prefix: dict[str, str]) -> list[str | None]:
    """Run one watch against a local server; the Authorization headers it received."""
    seen: list[str | None] = []

    async def watch(request: web.Request) -> web.StreamResponse:
        seen.append(request.headers.get("Authorization"))
        response = web.StreamResponse()
        await response.prepare(request)
        bookmark = {"type": "BOOKMARK", "object": {"metadata": {"resourceVersion": "2"}}}
        await response.write(json.dumps(bookmark).encode() + b"\n")
        return response

    app = web.Application()
    app.router.add_get("/api/v1/pods", watch)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    configuration = k8s_client.Configuration(host=f"http://127.0.0.1:{port}")
    configuration.api_key = api_key
    configuration.api_key_prefix = api_key_prefix
    kube = Kube(k8s_client.ApiClient(configuration))
    try:
        events = [event async for event in kube.watch(POD, None, "1", timeout_seconds=5)]
        assert [e["type"] for e in events] == ["BOOKMARK"]
    finally:
        await kube.aclose()
        await runner.cleanup()
    return seen


def test_the_token_of_a_kubeconfig_or_service_account_is_sent() -> None:
    # what kubernetes.config.load_kube_config / load_incluster_config set (kubernetes >= 26)
    assert asyncio.run(_watch_headers({"BearerToken": "Bearer sa-token"}, {})) == ["Bearer sa-token"]


def test_the_older_authorization_key_still_works() -> None:
    headers = asyncio.run(_watch_headers({"authorization": "sa-token"}, {"authorization": "Bearer"}))
    assert headers == ["Bearer sa-token"]


def test_no_credentials_no_header() -> None:
    assert asyncio.run(_watch_headers({}, {})) == [None]
