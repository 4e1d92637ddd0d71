"""A fault-injecting HTTPS proxy between a Kubernetes client (the operator) and kube-apiserver.

    with FaultProxy(cluster.kubeconfig, tmp_path / "proxy") as proxy:
        operator = OperatorProcess(proxy.kubeconfig, ...)  # every API call now goes through it
        proxy.inject(409, "PATCH", r"/deployments/", count=3)
        proxy.pause()          # a partition: nothing moves either way
        proxy.resume()
        proxy.drop_all()       # every connection reset, watches included
        assert proxy.requests("PATCH", status=409) == 3

The fault tests of issue #13 must show how the real operator (kopf's aiohttp
client, its watch loops, its retries and back-off) meets what a network and an
API server really do: partitions, resets, slow answers, conflicts, throttling,
internal errors and expired watches. Mocks would test our idea of those; the
proxy produces them on the wire, between two real programs.

TLS is terminated here, so the proxy cannot pass the client's certificate on:
it authenticates upstream with the client certificate of the kubeconfig it
fronts, and the kubeconfig it writes (`kubeconfig`) holds that same user, so the
API server sees the same identity either way. Bearer tokens (the kubeconfig's
`token`, or an exec plugin's) travel in the request's Authorization header,
which is forwarded as is. The proxy's serving certificate for 127.0.0.1 is issued
by the cluster's CA, so that kubeconfig differs from the original only in its
server URL.

Only HTTP/1.1 is spoken on both sides (ALPN says so; Go clients fall back from
HTTP/2 by themselves); upgrades (exec, attach, port-forward) are not supported.
"""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import contextlib
import json
import logging
import re
import ssl
import threading
import time
from collections.abc import Coroutine, Mapping
from dataclasses import dataclass, replace
from http import HTTPStatus
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

import aiohttp
import yaml
from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy

from e2e.pki import CertKey, issue_serving_certificate

log = logging.getLogger(__name__)

T = TypeVar("T")

# Headers that describe one hop, not the message (RFC 9110, section 7.6.1), plus the ones
# aiohttp writes itself from the body it sends (Content-Length) or the URL it dials (Host).
_HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "expect",
        "host",
        "content-length",
    }
)

# The `reason` kube-apiserver puts in a Status for each code (k8s.io/apimachinery/pkg/api/errors).
# 410 on a watch is "Expired" (NewResourceExpired), not "Gone".
_STATUS_REASONS = {
    400: "BadRequest",
    401: "Unauthorized",
    403: "Forbidden",
    404: "NotFound",
    405: "MethodNotAllowed",
    409: "Conflict",
    410: "Expired",
    422: "Invalid",
    429: "TooManyRequests",
    500: "InternalError",
    503: "ServiceUnavailable",
    504: "Timeout",
}

# What kube-apiserver writes when etcd has compacted the requested revision (checked against
# kube-apiserver with --watch-cache=false); its watch cache says "too old resource version: N (M)".
_EXPIRED_WATCH_MESSAGE = "The resourceVersion for the provided watch is too old."
_INJECTED = "injected by the fault proxy"


@dataclass(frozen=True)
class RequestRecord:
    """One request as the proxy saw it, for assertions like "no error storm".

    `time` is `time.monotonic()` when it arrived; `path` has no query string.
    `status` is what the client was answered; None while it has no answer yet
    (held by `pause()`, waiting for the API server) or when its connection was
    dropped first. `fault` says which fault answered ("inject", "gone"); None when
    the API server did. `forwarded` is `time.monotonic()` when it was sent on to the API
    server; None when it never was (e.g. its client gave up while `pause()` held it).
    """

    time: float
    method: str
    path: str
    status: int | None
    watch: bool
    fault: str | None = None
    forwarded: float | None = None


@dataclass(frozen=True)
class _CannedAnswer:
    """An answer the proxy gives itself, instead of forwarding the request."""

    status: int
    body: bytes
    headers: Mapping[str, str]
    fault: str


@dataclass
class _Injection:
    status: int
    method: str | None
    path: re.Pattern[str]
    remaining: int | None
    body: Mapping[str, Any] | None
    retry_after: int

    def matches(self, method: str, path: str) -> bool:
        return self.method in (None, method) and self.path.search(path) is not None

    def answer(self, path: str) -> _CannedAnswer:
        headers = {"Content-Type": "application/json"}
        if self.status == 429:
            headers["Retry-After"] = str(self.retry_after)
        body = self.body if self.body is not None else _default_status(self.status, path, self.retry_after)
        return _CannedAnswer(self.status, _compact(body), headers, "inject")


def kubernetes_status(code: int, message: str, details: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """A `Status` failure as kube-apiserver writes it, which clients parse for `reason` and `code`."""
    status: dict[str, Any] = {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": _STATUS_REASONS.get(code, HTTPStatus(code).phrase.replace(" ", "")),
        "code": code,
    }
    if details:
        status["details"] = dict(details)
    return status


def _default_status(code: int, path: str, retry_after: int) -> dict[str, Any]:
    """The apiserver's own wording for each code, marked as injected (it shows in the operator's log)."""
    if code == 409:
        return kubernetes_status(
            code,
            f"Operation cannot be fulfilled on {path}: the object has been modified; "
            f"please apply your changes to the latest version and try again ({_INJECTED})",
        )
    if code == 429:
        return kubernetes_status(
            code,
            f"Too many requests, please try again later. ({_INJECTED})",
            {"retryAfterSeconds": retry_after},
        )
    if code == 500:
        return kubernetes_status(
            code, f"Internal error occurred: {_INJECTED}", {"causes": [{"message": _INJECTED}]}
        )
    return kubernetes_status(code, f"{HTTPStatus(code).phrase} ({_INJECTED})")


class FaultProxy:
    """An HTTPS proxy in front of the API server of `upstream_kubeconfig`, with faults on demand.

    It runs its own asyncio loop in a background thread, so that synchronous
    tests drive it while the operator talks through it; every method may be
    called from any thread and returns once the fault is in effect. Responses
    are streamed chunk by chunk as they arrive (a watch event reaches the client
    when the API server sends it), so the proxy adds no latency of its own.

    `ca` is the cluster's CA with its key, which signs the proxy's serving
    certificate; by default the one of an e2e.cluster.Cluster (`pki/` beside
    its kubeconfig). The proxy's files (certificates, its kubeconfig) go under
    `state_dir`.
    """

    def __init__(self, upstream_kubeconfig: Path, state_dir: Path, ca: CertKey | None = None) -> None:
        self.upstream_kubeconfig = upstream_kubeconfig.resolve()
        self.state_dir = state_dir.resolve()
        pki = self.upstream_kubeconfig.parent / "pki"
        self.ca = ca or CertKey(pki / "ca.crt", pki / "ca.key")
        self.port = 0
        self._lock = threading.Lock()
        self._records: list[RequestRecord] = []
        self._delay = 0.0
        self._injections: list[_Injection] = []
        self._gone_watches = 0
        # watches open when silence_watches() was called: they deliver nothing more (index -> True)
        self._open_watches: dict[int, bool] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._upstream = ""
        self._upstream_ssl: ssl.SSLContext | None = None
        # Created on the proxy's loop (in _open), used only there.
        self._flowing: asyncio.Event | None = None
        self._session: aiohttp.ClientSession | None = None
        self._web_server: web.Server | None = None
        self._listener: asyncio.Server | None = None

    # -- lifecycle --------------------------------------------------------------------------------

    def start(self) -> FaultProxy:
        """Listen on a free loopback port and write `kubeconfig`; returns self."""
        if self._thread is not None:
            raise RuntimeError("the fault proxy is already running")
        self.state_dir.mkdir(parents=True, exist_ok=True)
        config = yaml.safe_load(self.upstream_kubeconfig.read_text())
        cluster, user = _current_cluster_and_user(config)
        upstream_ssl = self._upstream_ssl_context(cluster, user)
        serving = issue_serving_certificate(self.ca, self.state_dir, "faultproxy", ["127.0.0.1"])
        server_ssl = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        server_ssl.load_cert_chain(serving.cert, serving.key)
        server_ssl.set_alpn_protocols(["http/1.1"])

        loop = asyncio.new_event_loop()
        self._loop = loop
        self._thread = threading.Thread(target=loop.run_forever, name="faultproxy", daemon=True)
        self._thread.start()
        try:
            self.port = self._call(self._open(str(cluster["server"]).rstrip("/"), upstream_ssl, server_ssl))
        except BaseException:
            self.stop()
            raise
        self._write_kubeconfig(user)
        log.info("fault proxy %s -> %s", self.server, cluster["server"])
        return self

    def stop(self) -> None:
        """Close the listener and every connection; the proxy can be started again afterwards."""
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        try:
            self._call(self._close())
        finally:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(timeout=10)
            loop.close()
            self._loop = self._thread = None

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    @property
    def server(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    @property
    def kubeconfig(self) -> Path:
        """The kubeconfig to give the client: same user as upstream, server = this proxy."""
        if not self.port:
            raise RuntimeError("the fault proxy has not been started")
        return self.state_dir / "kubeconfig"

    # -- faults -----------------------------------------------------------------------------------

    def pause(self) -> None:
        """Hold all traffic, new and in flight, both ways (a partition) until `resume()`.

        Requests wait before they are forwarded; answers wait before their head
        and before each chunk, so an open watch delivers nothing meanwhile.
        Connections stay open, as they do in a real partition.
        """
        self._call(self._set_flowing(False))

    def resume(self) -> None:
        """Let everything held by `pause()` through, in order."""
        self._call(self._set_flowing(True))

    def drop_all(self) -> int:
        """Close every open connection at once, to clients and to the API server, watches included.

        Returns how many client connections were closed. The proxy keeps
        listening: clients reconnect as they would after a network blip.
        """
        return self._call(self._drop_all())

    def silence_watches(self) -> int:
        """Every watch open now goes silent, as on a half-open TCP connection (a NAT that forgot
        it): its events, bookmarks and end are swallowed and its connection stays open until the
        client gives up. Watches opened later flow as usual. Returns how many were silenced."""
        with self._lock:
            for index in self._open_watches:
                self._open_watches[index] = True
            return len(self._open_watches)

    def delay(self, seconds: float) -> None:
        """Hold each request `seconds` before it is forwarded or answered (0 to stop)."""
        with self._lock:
            self._delay = max(0.0, seconds)

    def inject(
        self,
        status: int,
        method: str | None = None,
        path_regex: str = "",
        count: int | None = None,
        body: Mapping[str, Any] | None = None,
        *,
        retry_after: int = 1,
    ) -> None:
        """Answer matching requests with `status` instead of forwarding them.

        A request matches when its method equals `method` (None: any) and
        `path_regex` is found in its path (no query string; "" matches all).
        `count` answers (None: until `clear()`). `body` defaults to the Status that
        kube-apiserver sends for the code (reason Conflict, TooManyRequests,
        InternalError...); a 429 carries `Retry-After: retry_after` as the
        apiserver's max-in-flight filter does, which clients honour. Earlier
        injections win when several match.
        """
        if not 400 <= status <= 599:
            raise ValueError(f"inject answers with an error status, not {status}")
        if count is not None and count < 1:
            raise ValueError(f"count must be at least 1 (None: until clear()), not {count}")
        injection = _Injection(status, method, re.compile(path_regex), count, body, retry_after)
        with self._lock:
            self._injections.append(injection)

    def gone_watches(self, count: int) -> None:
        """Answer the next `count` watch requests as an API server whose history was compacted.

        kube-apiserver answers a watch from a too-old resourceVersion with HTTP
        200 and a single ERROR event holding a Status with code 410, reason
        Expired, then ends the stream (the same with or without its watch
        cache); kopf, client-go and the Python client all react by listing
        again. That is what JSON clients get here. A client that does not accept
        JSON (protobuf-only) gets a plain HTTP 410 with the Status instead, which
        client-go treats the same way.
        """
        if count < 0:
            raise ValueError(f"count must not be negative, not {count}")
        with self._lock:
            self._gone_watches += count

    def clear(self) -> None:
        """Remove every fault: resume, no delay, no injections, no pending 410s. Records stay."""
        with self._lock:
            self._delay = 0.0
            self._injections.clear()
            self._gone_watches = 0
        self.resume()

    # -- what happened ----------------------------------------------------------------------------

    def records(self) -> list[RequestRecord]:
        """Every request so far, in order of arrival."""
        with self._lock:
            return list(self._records)

    def requests(
        self,
        method: str | None = None,
        path_regex: str | None = None,
        *,
        status: int | None = None,
        since: float | None = None,
    ) -> int:
        """How many requests arrived that have `method`, a path matching `path_regex`, `status`
        (None: any, answered or not), and arrived at or after `since` (`time.monotonic()`)."""
        pattern = re.compile(path_regex) if path_regex is not None else None
        return sum(
            1
            for record in self.records()
            if method in (None, record.method)
            and (pattern is None or pattern.search(record.path))
            and status in (None, record.status)
            and (since is None or record.time >= since)
        )

    # -- the proxy's loop -------------------------------------------------------------------------

    def _call(self, coroutine: Coroutine[Any, Any, T], timeout: float = 30.0) -> T:
        """Run `coroutine` on the proxy's loop and wait for its result."""
        if self._loop is None:
            coroutine.close()
            raise RuntimeError("the fault proxy is not running")
        future = asyncio.run_coroutine_threadsafe(coroutine, self._loop)
        try:
            return future.result(timeout)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise

    async def _open(self, upstream: str, upstream_ssl: ssl.SSLContext, server_ssl: ssl.SSLContext) -> int:
        self._upstream = upstream
        self._upstream_ssl = upstream_ssl
        self._flowing = asyncio.Event()
        self._flowing.set()
        self._session = self._new_session()
        # handler_cancellation: a client that goes away cancels its handler, which closes the
        # upstream request too (otherwise an abandoned watch would stay open upstream).
        self._web_server = web.Server(self._handle, handler_cancellation=True, access_log=None)
        self._listener = await asyncio.get_running_loop().create_server(
            self._web_server, "127.0.0.1", 0, ssl=server_ssl
        )
        port: int = self._listener.sockets[0].getsockname()[1]
        return port

    def _new_session(self) -> aiohttp.ClientSession:
        assert self._upstream_ssl is not None
        return aiohttp.ClientSession(
            # No limit: each open watch holds a connection.
            connector=aiohttp.TCPConnector(ssl=self._upstream_ssl, limit=0),
            # Watches last as long as the client wants; only connecting is bounded.
            timeout=aiohttp.ClientTimeout(total=None, connect=10),
            # Bytes pass through untouched (gzip included), with only the client's own headers.
            auto_decompress=False,
            skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding", "Content-Type"),
            cookie_jar=aiohttp.DummyCookieJar(),
        )

    async def _close(self) -> None:
        assert self._listener is not None and self._session is not None
        self._listener.close()
        self._abort_clients()
        await self._session.close()
        current = asyncio.current_task()
        tasks = [task for task in asyncio.all_tasks() if task is not current]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _set_flowing(self, flowing: bool) -> None:
        assert self._flowing is not None
        if flowing:
            self._flowing.set()
        else:
            self._flowing.clear()
        log.info("fault proxy %s", "resumed" if flowing else "paused")

    async def _drop_all(self) -> int:
        assert self._session is not None
        dropped = self._abort_clients()
        # Closing the session closes its connections, in use or idle; later requests get a new one.
        old, self._session = self._session, self._new_session()
        await old.close()
        log.info("fault proxy dropped %d client connections and all upstream ones", dropped)
        return dropped

    def _abort_clients(self) -> int:
        """Reset every client connection, idle keep-alive ones included; returns how many."""
        assert self._web_server is not None
        connections = self._web_server.connections
        for connection in connections:
            if connection.transport is not None:
                connection.transport.abort()
        return len(connections)

    async def _handle(self, request: web.BaseRequest) -> web.StreamResponse:
        assert self._flowing is not None
        watch = _is_watch(request)
        index = self._arrived(request.method, request.path, watch)
        body = await request.content.read()
        with self._lock:
            delay = self._delay
        if delay:
            await asyncio.sleep(delay)
        await self._flowing.wait()
        if request.transport is None or request.transport.is_closing():
            # the client gave up while the request was held: in a real partition it never arrives
            return web.Response(status=499)
        answer = self._take_fault(request.method, request.path, watch, request.headers.get("Accept", ""))
        if answer is not None:
            return await self._answer(request, index, answer)
        with self._lock:
            self._records[index] = replace(self._records[index], forwarded=time.monotonic())
        return await self._forward(request, index, body)

    async def _answer(
        self, request: web.BaseRequest, index: int, answer: _CannedAnswer
    ) -> web.StreamResponse:
        response = web.StreamResponse(status=answer.status, headers=answer.headers)
        if answer.status != 200:  # a 200 here is the 410 watch event: chunked, as the apiserver's
            response.content_length = len(answer.body)
        await response.prepare(request)
        self._answered(index, answer.status, answer.fault)
        with contextlib.suppress(ConnectionError):
            await response.write(answer.body)
            await response.write_eof()
        return response

    async def _forward(self, request: web.BaseRequest, index: int, body: bytes) -> web.StreamResponse:
        assert self._flowing is not None and self._session is not None
        response: web.StreamResponse | None = None
        try:
            async with self._session.request(
                request.method,
                f"{self._upstream}{request.raw_path}",
                headers=_end_to_end(request.headers),
                data=body or None,
                allow_redirects=False,
            ) as upstream:
                await self._flowing.wait()
                response = web.StreamResponse(
                    status=upstream.status, reason=upstream.reason, headers=_end_to_end(upstream.headers)
                )
                if upstream.content_length is not None:
                    response.content_length = upstream.content_length
                await response.prepare(request)
                self._answered(index, upstream.status, None)
                watch = _is_watch(request)
                if watch:
                    with self._lock:
                        self._open_watches[index] = False
                try:
                    async for chunk in upstream.content.iter_any():
                        await self._flowing.wait()
                        if watch and self._open_watches.get(index):
                            continue  # silenced: swallowed
                        await response.write(chunk)
                    while watch and self._open_watches.get(index):
                        # silenced: the end is swallowed too; hold until the client gives up
                        if request.transport is None or request.transport.is_closing():
                            break
                        await asyncio.sleep(0.2)
                finally:
                    with self._lock:
                        self._open_watches.pop(index, None)
                await response.write_eof()
                return response
        except (aiohttp.ClientError, OSError, RuntimeError) as error:
            # The client went away, or the API server is unreachable, or a connection broke
            # (drop_all, an apiserver restart; RuntimeError: a session closed by drop_all). The
            # client sees its connection reset, as it would without the proxy, never a made-up answer.
            log.info("fault proxy: %s %s ended early: %r", request.method, request.path, error)
            if request.transport is not None:
                request.transport.abort()
            return response or web.Response(status=502)

    # -- bookkeeping (any thread) -----------------------------------------------------------------

    def _arrived(self, method: str, path: str, watch: bool) -> int:
        with self._lock:
            self._records.append(RequestRecord(time.monotonic(), method, path, None, watch))
            return len(self._records) - 1

    def _answered(self, index: int, status: int, fault: str | None) -> None:
        with self._lock:
            self._records[index] = replace(self._records[index], status=status, fault=fault)

    def _take_fault(self, method: str, path: str, watch: bool, accept: str) -> _CannedAnswer | None:
        """The canned answer for this request, if a fault claims it (counts are spent here)."""
        with self._lock:
            if watch and self._gone_watches > 0:
                self._gone_watches -= 1
                return _expired_watch(accept)
            for injection in self._injections:
                if injection.matches(method, path):
                    if injection.remaining is not None:
                        injection.remaining -= 1
                        if injection.remaining == 0:
                            self._injections.remove(injection)
                    return injection.answer(path)
        return None

    # -- files ------------------------------------------------------------------------------------

    def _upstream_ssl_context(self, cluster: Mapping[str, Any], user: Mapping[str, Any]) -> ssl.SSLContext:
        """Trust the cluster's CA and present the kubeconfig user's client certificate, if it has one."""
        context = ssl.create_default_context(cadata=self._pem(cluster, "certificate-authority").decode())
        context.set_alpn_protocols(["http/1.1"])
        if "client-certificate-data" in user or "client-certificate" in user:
            cert, key = self.state_dir / "upstream-client.crt", self.state_dir / "upstream-client.key"
            for path, field in ((cert, "client-certificate"), (key, "client-key")):
                path.write_bytes(self._pem(user, field))
                path.chmod(0o600)
            context.load_cert_chain(cert, key)
        return context

    def _pem(self, entry: Mapping[str, Any], field: str) -> bytes:
        """A kubeconfig field given inline (`<field>-data`) or as a file (relative to the kubeconfig)."""
        if f"{field}-data" in entry:
            return base64.b64decode(entry[f"{field}-data"])
        if field in entry:
            return (self.upstream_kubeconfig.parent / str(entry[field])).read_bytes()
        raise ValueError(f"{self.upstream_kubeconfig}: no {field} for the fault proxy to use")

    def _write_kubeconfig(self, user: Mapping[str, Any]) -> None:
        # File paths in the user entry are made absolute: the new kubeconfig lives elsewhere.
        user = {
            key: str(self.upstream_kubeconfig.parent / value)
            if key in ("client-certificate", "client-key", "tokenFile")
            else value
            for key, value in user.items()
        }
        ca = base64.b64encode(self.ca.cert.read_bytes()).decode()
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {"name": "faultproxy", "cluster": {"server": self.server, "certificate-authority-data": ca}}
            ],
            "users": [{"name": "faultproxy", "user": user}],
            "contexts": [{"name": "faultproxy", "context": {"cluster": "faultproxy", "user": "faultproxy"}}],
            "current-context": "faultproxy",
            "preferences": {},
        }
        path = self.state_dir / "kubeconfig"
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        path.chmod(0o600)


def _current_cluster_and_user(config: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The cluster and user entries of the kubeconfig's current context."""
    context = next(c["context"] for c in config["contexts"] if c["name"] == config["current-context"])
    cluster = next(c["cluster"] for c in config["clusters"] if c["name"] == context["cluster"])
    user = next(u["user"] for u in config["users"] if u["name"] == context["user"])
    return dict(cluster), dict(user)


def _is_watch(request: web.BaseRequest) -> bool:
    """A watch by query (`watch=true`/`watch=1`) or by the legacy `/watch/` path prefix."""
    return request.query.get("watch", "").lower() in ("true", "1") or "/watch/" in request.path


def _end_to_end(headers: CIMultiDictProxy[str]) -> CIMultiDict[str]:
    """The headers that describe the message rather than the connection it came on."""
    named = {token.strip().lower() for token in headers.get("Connection", "").split(",")}
    return CIMultiDict(
        (key, value) for key, value in headers.items() if key.lower() not in _HOP_BY_HOP | named
    )


def _expired_watch(accept: str) -> _CannedAnswer:
    status = kubernetes_status(410, _EXPIRED_WATCH_MESSAGE)
    headers = {"Content-Type": "application/json"}
    if accept and "json" not in accept and "*/*" not in accept:
        return _CannedAnswer(410, _compact(status), headers, "gone")
    return _CannedAnswer(200, _compact({"type": "ERROR", "object": status}) + b"\n", headers, "gone")


def _compact(document: Mapping[str, Any]) -> bytes:
    """JSON as the API server writes it: one line, no spaces (a watch event is one line)."""
    return json.dumps(document, separators=(",", ":")).encode()
