"""A real tritonserver for every simulated serving pod: the data plane behind kwok's pods.

kwok runs no containers, so the autoscaling loop would have nothing to measure. `PodServers`
follows a ModelDeployment's pods: for each pod that is Running it runs the pod template's own init
container (the repository assembly) and tritonserver container locally (kubeforge.testing.triton_pod,
with the operator's rendered config, on free loopback ports), and its `openai` container (the OpenAI
front over that server) when it has one, and publishes the server's metrics
port as a Prometheus scrape target labelled with the pod's `namespace` and `pod`, exactly the labels
Prometheus' Kubernetes discovery gives a real pod. When a pod goes, its server stops and its target
is removed. Everything downstream of the scrape (Prometheus, the adapter or KEDA, the HPA, /scale)
is real.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from e2e.kube import Kubectl
from e2e.netns import add_pod_address
from kubeforge.testing.openai_front import running_front, with_flag_values
from kubeforge.testing.triton import TritonServer
from kubeforge.testing.triton_pod import run_init_container, run_triton_container

log = logging.getLogger(__name__)
Target = tuple[str, dict[str, str]]  # (host:port, labels)


@dataclass
class _Served:
    server: TritonServer
    stack: ExitStack  # the pod's tritonserver, and its OpenAI front when it has an `openai` container


@dataclass
class PodServers:
    """Keep one local tritonserver per Running pod of `name` in `namespace`.

    `publish(targets)` is called with the scrape targets whenever they change (e.g.
    `Prometheus.set_targets`). `pvc_root` holds the claims the model sources name
    (`pvc://<claim>/...` -> `<pvc_root>/<claim>/...`).
    """

    kubectl: Kubectl
    namespace: str
    name: str
    pvc_root: Path
    work_dir: Path
    publish: Callable[[list[Target]], None]
    poll_seconds: float = 0.5
    servers: dict[str, _Served] = field(default_factory=dict)
    # pods whose server is starting (tritonserver takes seconds): not yet serving, not yet gone
    starting: set[str] = field(default_factory=set)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)
    # the servers of gone pods while they stop, with their addresses (a new pod may get the same IP)
    _stopping: list[tuple[str, threading.Thread]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    # where the claims the pods mount elsewhere live (e.g. the model cache at /cache: `<claims_root>/<claim>`)
    claims_root: Path | None = None
    # bind each server to its pod's IP on the container's own ports (inside hack/netns.sh only,
    # e2e/netns.py), instead of free loopback ports: reachable at the pod's EndpointSlice address
    pod_ips: bool = False
    # pod name -> its labels, of every pod that has a server
    pod_labels: dict[str, dict[str, str]] = field(default_factory=dict)

    def __enter__(self) -> PodServers:
        self._thread = threading.Thread(target=self._run, name=f"pod servers {self.name}", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=60)
        with self._lock:
            for pod in list(self.servers):
                self._stop_server(pod)
        for _host, stopping in self._stopping:
            stopping.join(timeout=60)
        self.publish([])

    def pod_labels_now(self) -> list[dict[str, str]]:
        """The labels of each pod whose server serves now."""
        with self._lock:
            return [self.pod_labels[pod] for pod in self.servers]

    def metrics_urls(self) -> dict[str, str]:
        """pod name -> its server's metrics URL."""
        with self._lock:
            return {pod: s.server.metrics_url for pod, s in self.servers.items()}

    def http_addresses(self) -> list[str]:
        """host:port of every ready server's HTTP API (what a Service would balance over)."""
        with self._lock:
            return [s.server.http_address for s in self.servers.values()]

    def idle(self) -> bool:
        """No server serves and none is starting: a request now finds no backend."""
        with self._lock:
            return not self.servers and not self.starting

    def _pods(self) -> list[dict[str, Any]]:
        selector = f"kubeforge.io/owner-kind=modeldeployment,kubeforge.io/owner-name={self.name}"
        items: list[dict[str, Any]] = self.kubectl.json(
            "get", "pods", "-l", selector, namespace=self.namespace
        )["items"]
        return [
            p
            for p in items
            if p.get("status", {}).get("phase") == "Running" and not p["metadata"].get("deletionTimestamp")
        ]

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._sync()
            except Exception as err:  # the loop must outlive one bad poll; the test reads `errors`
                self.errors.append(repr(err))
                log.exception("pod servers: sync failed")
            self._stop.wait(self.poll_seconds)

    def _sync(self) -> None:
        pods = {p["metadata"]["name"]: p for p in self._pods()}
        changed = False
        for gone in set(self.servers) - set(pods):
            with self._lock:
                self._stop_server(gone)
            changed = True
        for name, pod in pods.items():
            if name not in self.servers and not self._stop.is_set():
                with self._lock:
                    self.starting.add(name)
                try:
                    served = self._start_server(pod)
                    # the pod may have gone while its server started (scaled to zero at once): a
                    # server of a gone pod must never take a request
                    try:
                        current = name in {p["metadata"]["name"] for p in self._pods()}
                    except Exception:
                        served.stack.close()
                        raise
                    with self._lock:
                        if current:
                            self.servers[name] = served
                        else:
                            served.stack.close()
                finally:
                    with self._lock:
                        self.starting.discard(name)
                changed = True
        if changed:
            self.publish(self.targets())

    def targets(self) -> list[Target]:
        with self._lock:
            return [
                (
                    f"{s.server.host}:{s.server.metrics_port}",
                    {"namespace": self.namespace, "pod": pod},
                )
                for pod, s in sorted(self.servers.items())
            ]

    def _start_server(self, pod: dict[str, Any]) -> _Served:
        name = pod["metadata"]["name"]
        spec = pod["spec"]
        repository = self.work_dir / name / "models"
        repository.mkdir(parents=True, exist_ok=True)
        paths = {"/models": repository, "/mnt/pvc": self.pvc_root}
        if self.claims_root is not None:
            claims = {
                v["name"]: v["persistentVolumeClaim"]["claimName"]
                for v in spec.get("volumes") or []
                if "persistentVolumeClaim" in v
            }
            for container in [*(spec.get("initContainers") or []), *spec["containers"]]:
                for mount in container.get("volumeMounts") or []:
                    if mount["name"] in claims and not mount["mountPath"].startswith("/mnt/pvc"):
                        paths[mount["mountPath"]] = self.claims_root / claims[mount["name"]]
        for init in spec.get("initContainers") or []:
            done = run_init_container(init, paths=paths)
            if done.returncode != 0:
                raise RuntimeError(f"init container of {name} failed: {done.stdout}{done.stderr}")
        triton = next(c for c in spec["containers"] if c["name"] == "triton")
        pod_ip = pod["status"]["podIP"] if self.pod_ips else None
        options: dict[str, Any] = {}
        if pod_ip is not None:
            add_pod_address(pod_ip)
            for host, stopping in self._stopping:
                if host == pod_ip:  # kwok gave a gone pod's IP to this one: its server must let go
                    stopping.join(timeout=60)
            # a gone pod's server stops at once rather than waiting for its in-flight requests
            options = {"pod_ip": pod_ip, "stop_timeout": 2.0}
        stack = ExitStack()
        try:
            server = stack.enter_context(run_triton_container(triton, paths=paths, **options))
            self.pod_labels[name] = dict(pod["metadata"].get("labels") or {})
            server.wait_until("ready", timeout=120)
            openai = next((c for c in spec["containers"] if c["name"] == "openai"), None)
            if openai is not None:  # the OpenAI front over this pod's tritonserver, on the pod's address
                args = with_flag_values(
                    openai["args"], {"--triton": server.http_url, "--repository": str(repository)}
                )
                port = int(openai["ports"][0]["containerPort"]) if pod_ip is not None else None
                stack.enter_context(
                    running_front(args, self.work_dir / name / "openai.log", host=server.host, port=port)
                )
        except BaseException:
            stack.close()  # what started of this pod's servers
            raise
        log.info("pod servers: %s/%s serves on %s", self.namespace, name, server.http_url)
        return _Served(server, stack)

    def _stop_server(self, pod: str) -> None:
        """Stop a pod's server in the background (under the lock): a server still taking requests
        waits out its exit timeout, and the servers of new pods must not wait for that."""
        served = self.servers.pop(pod, None)
        if served is not None:
            stopping = threading.Thread(target=served.stack.close, name=f"stop {pod}", daemon=True)
            stopping.start()
            self._stopping.append((served.server.host, stopping))

    def wait_for_servers(self, count: int, timeout: float = 180) -> None:
        deadline = time.monotonic() + timeout
        while len(self.servers) < count:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{len(self.servers)}/{count} pod servers after {timeout}s; {self.errors}")
            time.sleep(0.2)
