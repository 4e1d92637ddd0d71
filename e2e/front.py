"""A stand-in for ingress-nginx in front of one ModelDeployment (the e2e cluster runs no ingress).

It does the two things of an ingress that scale-from-zero relies on: it forwards Triton's HTTP
API to a ready server (round robin over the PodServers), answering 503 while there is none, and it
counts every request in ingress-nginx's own metric, `nginx_ingress_controller_requests{namespace,
ingress, service, status}`, whether or not a server exists. Prometheus scrapes it with target labels
`namespace`/`service` of the controller's pod, so the request's own labels arrive as
`exported_namespace`/`exported_service`, as with kube-prometheus-stack: exactly what the
ScaledObject's activation query reads. It buffers nothing, like ingress-nginx.
"""

from __future__ import annotations

import itertools
import json
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from kubeforge.testing.triton import LOOPBACK

# a request for kubeforge.testing.workloads' fixed-cost model (one FP32[16] input)
INFER_BODY = json.dumps(
    {"inputs": [{"name": "INPUT", "shape": [16], "datatype": "FP32", "data": [0.5] * 16}]}
).encode()

# the labels Prometheus gives the controller's own pod (they push the request's labels to exported_*)
CONTROLLER_LABELS = {"namespace": "ingress-nginx", "service": "ingress-nginx-controller"}


class IngressFront:
    def __init__(self, namespace: str, service: str, backends: Callable[[], list[str]]) -> None:
        """`backends()`: the HTTP host:port of every ready Triton server right now."""
        self.namespace = namespace
        self.service = service
        self.backends = backends
        self.requests: Counter[int] = Counter()  # by status
        self._lock = threading.Lock()
        self._turn = itertools.count()
        front = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path == "/metrics":
                    self._send(200, front.exposition().encode(), "text/plain; version=0.0.4")
                else:
                    front.forward(self, b"")

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                front.forward(self, self.rfile.read(length))

            def _send(self, status: int, body: bytes, content_type: str) -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *_: object) -> None:
                pass

        self._server = ThreadingHTTPServer((LOOPBACK, 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, name="ingress front", daemon=True)

    @property
    def address(self) -> str:
        return f"{LOOPBACK}:{self._server.server_address[1]}"

    def __enter__(self) -> IngressFront:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def forward(self, handler: BaseHTTPRequestHandler, body: bytes) -> None:
        backends = self.backends()
        status, payload = 503, b"no endpoints available for service\n"
        if backends:
            target = backends[next(self._turn) % len(backends)]
            request = urllib.request.Request(
                f"http://{target}{handler.path}",
                data=body or None,
                method=handler.command,
                headers={"Content-Type": handler.headers.get("Content-Type", "application/json")},
            )
            try:
                with urllib.request.urlopen(request, timeout=30) as response:
                    status, payload = response.status, response.read()
            except urllib.error.HTTPError as err:
                status, payload = err.code, err.read()
            except OSError:
                status, payload = 502, b"upstream went away\n"
        with self._lock:
            self.requests[status] += 1
        handler.send_response(status)
        handler.send_header("Content-Length", str(len(payload)))
        handler.end_headers()
        handler.wfile.write(payload)

    def exposition(self) -> str:
        with self._lock:
            counts = dict(self.requests)
        lines = [
            "# HELP nginx_ingress_controller_requests The total number of client requests",
            "# TYPE nginx_ingress_controller_requests counter",
        ]
        for status, count in sorted(counts.items()):
            labels = (
                f'namespace="{self.namespace}",ingress="{self.service}",service="{self.service}",'
                f'status="{status}",method="POST"'
            )
            lines.append(f"nginx_ingress_controller_requests{{{labels}}} {count}")
        return "\n".join(lines) + "\n"


class Load:
    """Closed-loop clients sending inference requests through the front, bounded in time and count."""

    def __init__(
        self, front: IngressFront, model: str, clients: int, seconds: float, max_requests: int = 50_000
    ) -> None:
        self.url = f"http://{front.address}/v2/models/{model}/infer"
        self.body = INFER_BODY
        self.deadline = time.monotonic() + seconds
        self.budget = max_requests
        self.stopped = threading.Event()
        self.threads = [threading.Thread(target=self._loop, daemon=True) for _ in range(clients)]

    def _loop(self) -> None:
        while not self.stopped.is_set() and time.monotonic() < self.deadline and self.budget > 0:
            self.budget -= 1
            request = urllib.request.Request(self.url, data=self.body, method="POST")
            try:
                with urllib.request.urlopen(request, timeout=30) as response:
                    response.read()
            except (urllib.error.URLError, OSError):
                time.sleep(0.05)

    def __enter__(self) -> Load:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stopped.set()
        for thread in self.threads:
            thread.join(timeout=40)


def one_request(front: IngressFront, model: str) -> int:
    """One inference request through the front; its HTTP status (0: no answer at all)."""
    url = f"http://{front.address}/v2/models/{model}/infer"
    request = urllib.request.Request(url, data=INFER_BODY, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return int(response.status)
    except urllib.error.HTTPError as err:
        return int(err.code)
    except OSError:
        return 0
