"""The fault proxy itself (e2e/faultproxy.py), each fault proven against the real kube-apiserver.

The fault tests of issue #13 trust the proxy to do exactly what it is told and
nothing else; these tests are that trust. Clients are kubectl (Go, as
controllers are) and the official Python client; objects are created behind the
proxy's back with the session's admin kubectl, as another actor would.
"""

from __future__ import annotations

import contextlib
import json
import queue
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import urllib3
from kubernetes import client, config, watch

from e2e.cluster import Cluster
from e2e.faultproxy import FaultProxy
from e2e.kube import Kubectl

pytestmark = pytest.mark.e2e

ApiException = client.exceptions.ApiException


@pytest.fixture
def proxy(cluster: Cluster, tmp_path: Path) -> Iterator[FaultProxy]:
    with FaultProxy(cluster.kubeconfig, tmp_path / "faultproxy") as proxy:
        yield proxy


@pytest.fixture
def api(proxy: FaultProxy) -> Iterator[Any]:
    """CoreV1Api through the proxy; urllib3's retries off, so that each call is exactly one request."""
    configuration = client.Configuration()
    config.load_kube_config(  # type: ignore[no-untyped-call]
        config_file=str(proxy.kubeconfig), client_configuration=configuration
    )
    configuration.retries = False
    api_client = client.ApiClient(configuration)
    yield client.CoreV1Api(api_client)
    api_client.close()  # type: ignore[no-untyped-call]


class _Watch:
    """A configmap watch through the proxy, read in a thread: each event is queued as it arrives.

    Opened from `resource_version`, so that only changes made afterwards show;
    returns once the response head arrived (the watch is established).
    """

    def __init__(self, api: Any, namespace: str, resource_version: str) -> None:
        self.response = api.list_namespaced_config_map(
            namespace,
            watch=True,
            resource_version=resource_version,
            timeout_seconds=30,
            _preload_content=False,
        )
        self.events: queue.Queue[dict[str, Any]] = queue.Queue()
        self.ended = threading.Event()
        self.error: Exception | None = None
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        buffer = b""
        try:
            for chunk in self.response.stream(amt=None, decode_content=False):
                *lines, buffer = (buffer + chunk).split(b"\n")
                for line in filter(None, lines):
                    self.events.put(json.loads(line))
        except (urllib3.exceptions.HTTPError, OSError) as error:
            self.error = error
        finally:
            self.ended.set()

    def next_event(self, timeout: float = 5.0) -> dict[str, Any]:
        return self.events.get(timeout=timeout)

    def close(self) -> None:
        # Closing alone would wait for the blocked reader (they share a lock) until the watch ends.
        if not self.ended.is_set():
            with contextlib.suppress(ValueError, RuntimeError, OSError):
                self.response.shutdown()
            self.ended.wait(5)
        self.response.close()


def _resource_version(api: Any, namespace: str) -> str:
    return str(api.list_namespaced_config_map(namespace).metadata.resource_version)


def _configmap(name: str, data: dict[str, str] | None = None) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}, "data": data or {}}


def _api_error(call: Callable[[], object]) -> ApiException:
    with pytest.raises(ApiException) as caught:
        call()
    return caught.value


def _status(error: ApiException) -> dict[str, Any]:
    """The Status document the client was answered with."""
    status: dict[str, Any] = json.loads(error.body or "{}")
    return status


def test_requests_pass_through_as_the_same_user(
    proxy: FaultProxy, api: Any, kubectl: Kubectl, namespace: str, tmp_path: Path
) -> None:
    via_proxy = Kubectl(proxy.kubeconfig, cache_dir=tmp_path / "kubectl-cache")
    # The proxy presents the kubeconfig's client certificate upstream: the same identity.
    assert (
        via_proxy.json("auth", "whoami")["status"]["userInfo"]
        == kubectl.json("auth", "whoami")["status"]["userInfo"]
    )
    via_proxy("create", "configmap", "through", "--from-literal=key=value", namespace=namespace)
    assert kubectl.json("get", "configmap", "through", namespace=namespace)["data"] == {"key": "value"}
    # A body larger than any buffer both ways; kubectl accepts gzip, which the API server uses
    # for large answers and the proxy passes on untouched.
    big = {"blob": "x" * 600_000}
    api.create_namespaced_config_map(namespace, _configmap("big", big))
    assert via_proxy.json("get", "configmap", "big", namespace=namespace)["data"] == big
    via_proxy("delete", "configmap", "through", namespace=namespace)

    configmaps = rf"^/api/v1/namespaces/{namespace}/configmaps"
    assert proxy.requests("POST", configmaps + "$", status=201) == 2
    assert proxy.requests("GET", configmaps + "/big$", status=200) == 1
    assert proxy.requests("DELETE", configmaps + "/through$", status=200) == 1
    assert all(record.status is not None and record.fault is None for record in proxy.records())


def test_a_watch_streams_each_event_as_it_happens(
    proxy: FaultProxy, api: Any, kubectl: Kubectl, namespace: str
) -> None:
    stream = _Watch(api, namespace, _resource_version(api, namespace))
    try:
        # The watch runs for 30 s: an event seen within 5 s was not held back until its end.
        for name in ("first", "second"):
            kubectl("create", "configmap", name, namespace=namespace)
            event = stream.next_event()
            assert (event["type"], event["object"]["metadata"]["name"]) == ("ADDED", name)
        assert not stream.ended.is_set()
    finally:
        stream.close()
    [record] = [r for r in proxy.records() if r.watch]
    assert (record.method, record.status) == ("GET", 200)


def test_injected_errors_answer_only_matching_requests_count_times(
    proxy: FaultProxy, api: Any, namespace: str
) -> None:
    configmaps = rf"/namespaces/{namespace}/configmaps"
    proxy.inject(409, "POST", configmaps + "$", count=2)
    for _ in range(2):
        error = _api_error(lambda: api.create_namespaced_config_map(namespace, _configmap("a")))
        assert (error.status, _status(error)["reason"]) == (409, "Conflict")
        api.list_namespaced_config_map(namespace)  # another method on the same path passes
    # Neither refused create reached the API server, or this one would be AlreadyExists.
    api.create_namespaced_config_map(namespace, _configmap("a"))

    proxy.inject(429, "GET", configmaps + "/a$", count=1, retry_after=3)
    error = _api_error(lambda: api.read_namespaced_config_map("a", namespace))
    assert (error.status, (error.headers or {}).get("Retry-After")) == (429, "3")
    assert _status(error)["reason"] == "TooManyRequests"
    assert _status(error)["details"] == {"retryAfterSeconds": 3}
    api.read_namespaced_config_map("a", namespace)

    proxy.inject(500, None, configmaps + "/a$")  # any method, until clear()
    for call in (
        lambda: api.read_namespaced_config_map("a", namespace),
        lambda: api.patch_namespaced_config_map("a", namespace, {"data": {"k": "v"}}),
        lambda: api.delete_namespaced_config_map("a", namespace),
    ):
        error = _api_error(call)
        assert (error.status, _status(error)["reason"]) == (500, "InternalError")
    api.list_namespaced_config_map(namespace)
    proxy.clear()
    assert api.read_namespaced_config_map("a", namespace).data is None  # the PATCH never arrived
    api.delete_namespaced_config_map("a", namespace)

    injected = [(r.method, r.status) for r in proxy.records() if r.fault == "inject"]
    assert injected == [("POST", 409)] * 2 + [("GET", 429), ("GET", 500), ("PATCH", 500), ("DELETE", 500)]


def test_a_watch_is_answered_410_expired_as_the_api_server_does(
    proxy: FaultProxy, api: Any, kubectl: Kubectl, namespace: str
) -> None:
    proxy.gone_watches(1)
    resource_version = _resource_version(api, namespace)  # a list is no watch: it passes
    stream = _Watch(api, namespace, resource_version)
    # kube-apiserver's answer to a watch from a compacted resourceVersion: 200, one ERROR
    # event with a 410 Expired Status, then the end of the stream.
    assert stream.response.status == 200
    assert stream.next_event() == {
        "type": "ERROR",
        "object": {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": "The resourceVersion for the provided watch is too old.",
            "reason": "Expired",
            "code": 410,
        },
    }
    assert stream.ended.wait(5) and stream.error is None

    # The official client's Watch surfaces it as the 410 it is.
    proxy.gone_watches(1)
    with pytest.raises(ApiException) as caught:
        for _ in watch.Watch().stream(  # type: ignore[no-untyped-call]
            api.list_namespaced_config_map, namespace, resource_version=resource_version, timeout_seconds=5
        ):
            pass
    assert caught.value.status == 410

    # Both spent: the next watch is the API server's.
    stream = _Watch(api, namespace, resource_version)
    try:
        kubectl("create", "configmap", "after-410", namespace=namespace)
        assert stream.next_event()["object"]["metadata"]["name"] == "after-410"
    finally:
        stream.close()
    assert [(r.status, r.fault) for r in proxy.records() if r.watch] == [(200, "gone")] * 2 + [(200, None)]


def test_delay_adds_latency_to_each_request(proxy: FaultProxy, api: Any, namespace: str) -> None:
    def seconds_per_list() -> float:
        started = time.monotonic()
        api.list_namespaced_config_map(namespace)
        return time.monotonic() - started

    direct = min(seconds_per_list() for _ in range(3))
    proxy.delay(0.5)
    for slowed in (seconds_per_list(), seconds_per_list()):
        assert 0.5 <= slowed < 0.5 + direct + 1.0
    proxy.delay(0)
    assert seconds_per_list() < 0.5


def test_pause_holds_requests_and_watch_events_until_resume(
    proxy: FaultProxy, api: Any, kubectl: Kubectl, namespace: str
) -> None:
    stream = _Watch(api, namespace, _resource_version(api, namespace))
    try:
        proxy.pause()
        kubectl("create", "configmap", "during-pause", namespace=namespace)  # straight to the API server
        with ThreadPoolExecutor(1) as pool:
            held = pool.submit(api.read_namespaced_config_map, "during-pause", namespace)
            time.sleep(1.0)
            assert not held.done()
            assert stream.events.empty()
            assert [r.status for r in proxy.records() if r.path.endswith("/during-pause")] == [None]
            proxy.resume()
            assert held.result(timeout=5).metadata.name == "during-pause"
        event = stream.next_event()
        assert (event["type"], event["object"]["metadata"]["name"]) == ("ADDED", "during-pause")
    finally:
        stream.close()


def test_drop_all_breaks_open_watches_and_serves_on(proxy: FaultProxy, api: Any, namespace: str) -> None:
    stream = _Watch(api, namespace, _resource_version(api, namespace))
    try:
        assert proxy.drop_all() >= 1
        # Broken, not ended cleanly: the client must notice and watch again.
        assert stream.ended.wait(5)
        assert stream.error is not None
    finally:
        stream.close()
    api.list_namespaced_config_map(namespace)  # a new connection, to a new upstream session
