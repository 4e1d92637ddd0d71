"""An asyncio facade over the official `kubernetes` client.

The official client is synchronous; every call runs in a thread pool so the event loop never
blocks. Writes go through server-side apply under one field manager. Read and write calls are
counted (by verb) so that tests and the operator's metrics can prove a no-op resync writes nothing.
"""

from __future__ import annotations

import asyncio
import json
import logging
import ssl
from collections import Counter
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any

import aiohttp
from kubernetes import client as k8s_client
from kubernetes import config as k8s_config
from kubernetes.client.exceptions import ApiException
from urllib3.exceptions import HTTPError as TransportError

from kubeforge.k8s.resources import EVENT, LEASE, Resource, resource_for

log = logging.getLogger(__name__)
Object = dict[str, Any]
APPLY_PATCH = "application/apply-patch+yaml"
# (connect, read) seconds: no call may hang a reconcile worker; a timeout is retried with backoff.
REQUEST_TIMEOUT = (5.0, 30.0)
# seconds in all for a write when no Lease bounds it (no leader election)
WRITE_SECONDS = 30.0
# reading and renewing the Lease itself: a renewal must be over well within the renew deadline
LEASE_TIMEOUT = (1.5, 3.0)
# with leader election, a write gets what is left of the Lease (Kube.write_budget); the API server is
# told to give up this much earlier (`?timeout=`), so that its own deadline answers first (a 504)
SERVER_DEADLINE_MARGIN = 0.5
# calls that write nothing (a dry run is admitted as a write would be, and persists nothing)
READ_VERBS = frozenset({"get", "list", "discovery", "dry_run"})
# a watch that delivered nothing (no event, no bookmark, not the server's own close at its
# timeoutSeconds) for that long plus this margin is on a dead connection
WATCH_READ_MARGIN = 15


class ApiError(Exception):
    """An API call failed; `status` is the HTTP status (0 when the server was not reached or timed out)."""

    def __init__(
        self, status: int, reason: str, message: str, call: str = "", causes: tuple[str, ...] = ()
    ) -> None:
        super().__init__(f"{call + ': ' if call else ''}{status} {reason}: {message}")
        self.status = status
        self.reason = reason
        self.message = message
        self.call = call  # e.g. "apply Service ns/name": what the operator was doing
        self.causes = causes  # the reasons in the Status's details.causes

    @property
    def namespace_terminating(self) -> bool:
        """A create refused because its namespace is being deleted (the NamespaceLifecycle plugin)."""
        return self.status == 403 and (
            "NamespaceTerminating" in self.causes or "because it is being terminated" in self.message
        )

    @property
    def retryable(self) -> bool:
        """Conflicts, throttling, timeouts and server errors go away; invalid objects and denials do not."""
        return self.status in (0, 409, 429) or self.status >= 500

    @property
    def condition_reason(self) -> str:
        """A CamelCase reason for a status condition: the API server's own (Forbidden, Invalid, ...)."""
        reason = (
            "".join(ch for ch in self.reason.title() if ch.isalnum()) if " " in self.reason else self.reason
        )
        return reason if reason and reason.isalnum() else f"Http{self.status}"

    def describe(self) -> str:
        """One line for a condition and an Event: the call, the status and the API server's message."""
        return f"{self.call + ': ' if self.call else ''}{self.status} {self.reason}: {self.message}"


def _error(exc: ApiException, call: str) -> ApiError:
    message = exc.reason or ""
    reason = exc.reason or ""
    causes: tuple[str, ...] = ()
    try:
        body = json.loads(exc.body or "{}")
        message = body.get("message", message)
        reason = body.get("reason", reason)
        details = body.get("details") or {}
        causes = tuple(str(c.get("reason", "")) for c in details.get("causes") or [] if isinstance(c, dict))
    except (TypeError, ValueError, AttributeError):
        pass
    return ApiError(int(exc.status or 0), str(reason), str(message), call, causes)


def load_api_client(pool_size: int = 16, kubeconfig: str | None = None) -> k8s_client.ApiClient:
    """An ApiClient from `kubeconfig`, else in-cluster config, else the current kubeconfig."""
    configuration = k8s_client.Configuration()
    try:
        if kubeconfig:
            raise k8s_config.ConfigException("an explicit kubeconfig was given")
        k8s_config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
    except k8s_config.ConfigException:
        k8s_config.load_kube_config(config_file=kubeconfig, client_configuration=configuration)  # type: ignore[no-untyped-call]
    configuration.connection_pool_maxsize = pool_size
    # no retries inside the client: urllib3 would resend a request (a DELETE, 4 times over 12 s)
    # on a dead connection long after the leader's fence was checked; the work queue retries
    configuration.retries = False
    return k8s_client.ApiClient(configuration)


class Kube:
    """Async reads, server-side-apply writes, status patches and events; one instance per operator."""

    def __init__(self, api: k8s_client.ApiClient, field_manager: str = "kubeforge", workers: int = 8) -> None:
        self.api = api
        self.field_manager = field_manager
        self.calls: Counter[str] = Counter()
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="kube")
        # the Lease has a connection pool and a thread of its own: a renewal never queues behind
        # reconcile calls (on a busy operator, it would miss its deadline and cost the leadership)
        self._lease_api = k8s_client.ApiClient(api.configuration)
        self._lease_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="kube-lease")
        self._api_groups: dict[str, tuple[float, bool]] = {}
        self._session: aiohttp.ClientSession | None = None
        # with leader election: the seconds a write sent now may take, from the Lease it was sent
        # under; 0 when this replica may not write (Lease writes are exempt). None: no election
        self.write_budget: Callable[[], float] | None = None

    async def _call(
        self,
        verb: str,
        method: str,
        path: str,
        *,
        body: Any = None,
        content_type: str | None = None,
        query: list[tuple[str, Any]] | None = None,
        describe: str = "",
    ) -> Any:
        lease = verb.startswith("lease")
        write = verb not in READ_VERBS and not lease  # fenced and timed by the leader's Lease
        budget = self.write_budget if write else None
        if budget is not None and budget() <= 0:
            raise ApiError(0, "NotLeader", "this replica does not hold the leader Lease", describe)
        self.calls[verb] += 1
        headers = {"Accept": "application/json"}
        if content_type:
            headers["Content-Type"] = content_type

        api: Any = self._lease_api if lease else self.api  # the generated client is untyped
        if content_type == APPLY_PATCH and not isinstance(body, str):
            body = json.dumps(body)  # YAML is a superset of JSON; the REST layer sends strings as they are

        def call() -> Any:
            # a write may take what is left of the Lease it is sent under (checked as it is sent:
            # the call may have waited for a thread), so a slow write on a healthy leader is not
            # cut short, and no write of a deposed leader outlives its Lease
            timeout: float | tuple[float, float] = LEASE_TIMEOUT if lease else REQUEST_TIMEOUT
            params = list(query or [])
            if write:
                seconds = budget() if budget is not None else WRITE_SECONDS
                if seconds <= 0:
                    raise ApiError(
                        0,
                        "NotLeader",
                        "this replica lost the leader Lease before the call was sent",
                        describe,
                    )
                server_ms = max(int((seconds - SERVER_DEADLINE_MARGIN) * 1000), 1)
                params.append(("timeout", f"{server_ms}ms"))
                timeout = seconds
            method_, url, header_params, payload, _ = api.param_serialize(
                method=method,
                resource_path=path,
                query_params=params,
                header_params=headers,
                body=body,
                auth_settings=["BearerToken"],
            )
            # a write's one number is urllib3's total for connecting and reading the whole answer
            response = api.call_api(
                method_, url, header_params=header_params, body=payload, _request_timeout=timeout
            )
            data = response.read()
            if not 200 <= response.status < 300:
                raise ApiException(status=response.status, reason=response.reason, http_resp=response)
            return json.loads(data) if data else {}

        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._lease_pool if lease else self._pool, call)
        except ApiException as exc:
            raise _error(exc, describe or f"{method} {path}") from None
        except TransportError as exc:  # connection refused or reset, timeouts
            raise ApiError(0, type(exc).__name__, str(exc), describe or f"{method} {path}") from None

    @property
    def writes(self) -> int:
        return sum(n for verb, n in self.calls.items() if verb not in READ_VERBS)

    async def get(
        self, resource: Resource, namespace: str | None, name: str, *, verb: str = "get"
    ) -> Object | None:
        """The object, or None when it does not exist. (`verb` names the call in the counts.)"""
        try:
            result: Object = await self._call(verb, "GET", resource.path(namespace, name))
            return result
        except ApiError as err:
            if err.status == 404:
                return None
            raise

    async def list_with_version(
        self,
        resource: Resource,
        namespace: str | None,
        label_selector: str | None = None,
        page: int = 500,
        field_selector: str | None = None,
    ) -> tuple[list[Object], str]:
        """Every object (in pages, so a large cluster is not one huge response) and the list's
        resourceVersion, from which a watch continues without a gap."""
        items: list[Object] = []
        token: str | None = None
        while True:
            query: list[tuple[str, Any]] = [("limit", page)]
            if label_selector:
                query.append(("labelSelector", label_selector))
            if field_selector:
                query.append(("fieldSelector", field_selector))
            if token:
                query.append(("continue", token))
            result = await self._call("list", "GET", resource.path(namespace), query=query)
            for item in result.get("items", []):
                item.setdefault("apiVersion", resource.api_version)
                item.setdefault("kind", resource.kind)
                items.append(item)
            token = (result.get("metadata") or {}).get("continue")
            if not token:
                return items, str((result.get("metadata") or {}).get("resourceVersion", ""))

    async def list(
        self,
        resource: Resource,
        namespace: str | None,
        label_selector: str | None = None,
        field_selector: str | None = None,
    ) -> list[Object]:
        items, _ = await self.list_with_version(
            resource, namespace, label_selector, field_selector=field_selector
        )
        return items

    def _http(self) -> aiohttp.ClientSession:
        """An aiohttp session with the client's credentials, for long-lived watch streams."""
        if self._session is None:
            config: Any = self.api.configuration
            context = ssl.create_default_context(cafile=config.ssl_ca_cert) if config.verify_ssl else None
            if context is None:
                context = ssl.create_default_context()
                context.check_hostname = False
                context.verify_mode = ssl.CERT_NONE
            if config.cert_file:
                context.load_cert_chain(config.cert_file, config.key_file)
            self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=context))
        return self._session

    async def watch(
        self,
        resource: Resource,
        namespace: str | None,
        resource_version: str,
        label_selector: str | None = None,
        timeout_seconds: int = 300,
    ) -> AsyncIterator[Object]:
        """Watch events from `resource_version` on, with bookmarks, until the server ends the stream.

        An `ERROR` event (410 Gone: the version is too old) is yielded as it is; the caller lists again.
        """
        config: Any = self.api.configuration
        params = {
            "watch": "true",
            "allowWatchBookmarks": "true",
            "resourceVersion": resource_version,
            "timeoutSeconds": str(timeout_seconds),
        }
        if label_selector:
            params["labelSelector"] = label_selector
        headers = {"Accept": "application/json"}
        # the same key the generated client authenticates with (kubernetes >= 26 stores the token as
        # BearerToken; older releases as authorization); the call refreshes a rotated in-cluster token
        token = config.get_api_key_with_prefix("BearerToken", alias="authorization")
        if token:
            headers["Authorization"] = token
        self.calls["watch"] += 1
        url = config.host.rstrip("/") + resource.path(namespace)
        silent = timeout_seconds + WATCH_READ_MARGIN
        client_timeout = aiohttp.ClientTimeout(
            total=silent + WATCH_READ_MARGIN, sock_connect=REQUEST_TIMEOUT[0], sock_read=silent
        )
        try:
            async with self._http().get(
                url, params=params, headers=headers, timeout=client_timeout
            ) as response:
                if response.status != 200:
                    text = await response.text()
                    try:
                        body = json.loads(text)
                    except ValueError:
                        body = {}
                    raise ApiError(
                        response.status,
                        str(body.get("reason", response.reason)),
                        str(body.get("message", text[:200])),
                        f"watch {resource.kind}",
                    )
                buffer = b""
                async for chunk in response.content.iter_any():
                    buffer += chunk
                    *lines, buffer = buffer.split(b"\n")
                    for line in lines:
                        if line.strip():
                            yield json.loads(line)
        except TimeoutError:
            message = f"nothing received for {silent}s: the connection is presumed dead"
            raise ApiError(0, "Timeout", message, f"watch {resource.kind}") from None
        except aiohttp.ClientError as exc:
            raise ApiError(0, type(exc).__name__, str(exc), f"watch {resource.kind}") from None

    async def apply(self, obj: Object, *, force: bool = True, dry_run: bool = False) -> Object:
        """Server-side apply under our field manager.

        `force` takes back fields someone edited by hand on a child we already own; creating a
        child is applied without it, so an object that appeared in the meantime is a conflict.
        `dry_run`: admitted and validated as the apply would be, and nothing persisted.
        """
        resource = resource_for(obj["apiVersion"], obj["kind"])
        meta = obj["metadata"]
        query = [("fieldManager", self.field_manager), ("force", "true" if force else "false")]
        if dry_run:
            query.append(("dryRun", "All"))
        result: Object = await self._call(
            "dry_run" if dry_run else "apply",
            "PATCH",
            resource.path(meta.get("namespace"), meta["name"]),
            body=obj,
            content_type=APPLY_PATCH,
            query=query,
            describe=f"apply {obj['kind']} {meta.get('namespace')}/{meta['name']}",
        )
        return result

    async def lease(self, namespace: str, name: str) -> Object | None:
        """Read a coordination.k8s.io Lease (leader election: exempt from the leader's write gate)."""
        return await self.get(LEASE, namespace, name, verb="lease_get")

    async def write_lease(self, lease: Object, *, create: bool) -> Object:
        """Create a Lease, or replace it under its resourceVersion (409 when another replica won)."""
        meta = lease["metadata"]
        if create:
            method, path = "POST", LEASE.path(meta["namespace"])
        else:
            method, path = "PUT", LEASE.path(meta["namespace"], meta["name"])
        result: Object = await self._call(
            "lease_write",
            method,
            path,
            body=lease,
            describe=f"write Lease {meta['namespace']}/{meta['name']}",
        )
        return result

    async def create(self, obj: Object) -> Object:
        resource = resource_for(obj["apiVersion"], obj["kind"])
        query = [("fieldManager", self.field_manager)]
        meta = obj["metadata"]
        result: Object = await self._call(
            "create",
            "POST",
            resource.path(meta.get("namespace")),
            body=obj,
            query=query,
            describe=f"create {obj['kind']} {meta.get('namespace')}/{meta['name']}",
        )
        return result

    async def delete(
        self,
        resource: Resource,
        namespace: str | None,
        name: str,
        *,
        uid: str,
        propagation: str = "Background",
    ) -> bool:
        """Delete exactly the object with `uid`; False when it was already gone (or replaced by another)."""
        body = {
            "kind": "DeleteOptions",
            "apiVersion": "v1",
            "propagationPolicy": propagation,
            "preconditions": {"uid": uid},
        }
        try:
            await self._call(
                "delete",
                "DELETE",
                resource.path(namespace, name),
                body=body,
                describe=f"delete {resource.kind} {namespace}/{name}",
            )
            return True
        except ApiError as err:
            # 409 with a UID precondition: the name now belongs to another object, which is not ours to delete
            if err.status == 404 or (err.status == 409 and "Precondition failed" in err.message):
                return False
            raise

    async def patch_status(
        self,
        resource: Resource,
        namespace: str,
        name: str,
        status: Object,
        resource_version: str | None = None,
    ) -> Object:
        """A merge patch of the status subresource (the spec is the user's: never touched).

        With `resource_version` the write is refused (409) unless the object is still at that
        version: a status that records an intent (the next attempt) must not be based on a stale read.
        """
        body: Object = {"status": status}
        if resource_version is not None:
            body["metadata"] = {"resourceVersion": resource_version}
        result: Object = await self._call(
            "patch_status",
            "PATCH",
            resource.path(namespace, name, "status"),
            body=body,
            content_type="application/merge-patch+json",
            describe=f"update the status of {resource.kind} {namespace}/{name}",
        )
        return result

    async def json_patch(
        self, resource: Resource, namespace: str, name: str, ops: Sequence[Object]
    ) -> Object:
        """A JSON patch (RFC 6902): its `test` operations make it refused (422) when the object changed."""
        result: Object = await self._call(
            "patch",
            "PATCH",
            resource.path(namespace, name),
            body=ops,
            content_type="application/json-patch+json",
            query=[("fieldManager", self.field_manager)],
            describe=f"patch {resource.kind} {namespace}/{name}",
        )
        return result

    async def remove_annotation(self, resource: Resource, namespace: str, name: str, key: str) -> Object:
        """Remove one annotation (a merge patch of metadata alone): a one-shot verb acted on."""
        result: Object = await self._call(
            "patch",
            "PATCH",
            resource.path(namespace, name),
            body={"metadata": {"annotations": {key: None}}},
            content_type="application/merge-patch+json",
            query=[("fieldManager", self.field_manager)],
            describe=f"remove the annotation {key} of {resource.kind} {namespace}/{name}",
        )
        return result

    async def scale(self, resource: Resource, namespace: str, name: str, replicas: int) -> Object:
        """Set the replicas through the /scale subresource (a merge patch), leaving the rest as it is."""
        result: Object = await self._call(
            "patch",
            "PATCH",
            resource.path(namespace, name, "scale"),
            body={"spec": {"replicas": replicas}},
            content_type="application/merge-patch+json",
            query=[("fieldManager", self.field_manager)],
            describe=f"scale {resource.kind} {namespace}/{name} to {replicas}",
        )
        return result

    async def event(self, owner: Object, type_: str, reason: str, message: str) -> None:
        """Record a core/v1 Event on an owner; failures are logged, never raised (events are best effort)."""
        meta = owner["metadata"]
        now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        event = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"generateName": f"{meta['name']}.", "namespace": meta["namespace"]},
            "involvedObject": {
                "apiVersion": owner["apiVersion"],
                "kind": owner["kind"],
                "name": meta["name"],
                "namespace": meta["namespace"],
                "uid": meta.get("uid"),
            },
            "type": type_,
            "reason": reason,
            "message": message[:1024],
            "source": {"component": self.field_manager},
            "reportingComponent": self.field_manager,
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        }
        try:
            await self._call("event", "POST", EVENT.path(meta["namespace"]), body=event)
        except ApiError as err:
            # an Event into a namespace being deleted is refused; the object goes with it
            level = logging.DEBUG if err.namespace_terminating else logging.WARNING
            log.log(
                level, "could not record event %s on %s/%s: %s", reason, meta["namespace"], meta["name"], err
            )

    async def api_group_served(self, api_version: str, ttl: float = 10.0) -> bool:
        """Whether an API group/version is served (e.g. keda.sh/v1alpha1: KEDA's CRDs are installed)."""
        loop = asyncio.get_running_loop()
        cached = self._api_groups.get(api_version)
        if cached and loop.time() - cached[0] < ttl:
            return cached[1]
        try:
            await self._call("discovery", "GET", f"/apis/{api_version}")
            served = True
        except ApiError as err:
            # 503: an aggregated API (custom/external metrics) is registered, but its server is not up
            if err.status not in (404, 503):
                raise
            served = False
        self._api_groups[api_version] = (loop.time(), served)
        return served

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
        self.close()

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._lease_pool.shutdown(wait=False, cancel_futures=True)
        self.api.close()  # type: ignore[no-untyped-call]
        self._lease_api.close()  # type: ignore[no-untyped-call]
