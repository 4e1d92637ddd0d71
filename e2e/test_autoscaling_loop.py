"""The autoscaling loop end to end: Triton's metrics -> Prometheus -> prometheus-adapter or KEDA ->
the HPA -> the ModelDeployment's /scale -> more (or no) pods -> more (or no) Triton servers.

One substitution, because kwok runs no containers: each simulated serving pod is backed by a real
tritonserver on loopback, started from the pod's own spec (its init container assembles the model
repository, its Triton container runs with the operator's rendered config; e2e/podservers.py), and
scraped by the real Prometheus under the pod's `namespace` and `pod` labels, as Kubernetes service
discovery would label it. For scale from zero, a stand-in for ingress-nginx (e2e/front.py) forwards
requests and counts them in ingress-nginx's metric. Everything downstream of the scrape is real:
Prometheus, the adapter loading charts/prometheus-adapter-rules.yaml itself, KEDA's operator and
metrics server, kube-controller-manager's HPA controller, /scale, and the operator.

The model takes 20 ms per request with one instance and no batching, so one replica serves 50
requests/s at most and a queue forms under load.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from e2e.cluster import Cluster
from e2e.front import CONTROLLER_LABELS, IngressFront, Load, one_request
from e2e.kube import Kubectl, find_condition, wait_for
from e2e.monitoring import Keda, PrometheusAdapter
from e2e.operator_proc import OperatorProcess
from e2e.podservers import PodServers, Target
from e2e.prometheus import Prometheus
from kubeforge.testing.workloads import fixed_cost_model, write_model

# Scale-out and scale-in timings (HPA sync periods, stabilization windows, KEDA's cool-down): alone.
pytestmark = [pytest.mark.e2e, pytest.mark.serial]
NAME = "loop"
MODEL = fixed_cost_model("fixed", max_batch_size=0, batching=False, step_ms=20.0)
DASHBOARD = Path(__file__).resolve().parents[1] / "charts" / "kubeforge" / "dashboards" / "kubeforge.json"


@pytest.fixture(scope="module")
def prometheus(cluster: Cluster) -> Iterator[Prometheus]:
    server = Prometheus(cluster.state_dir / "loop-prometheus", scrape_interval=1.0).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def adapter(cluster: Cluster, prometheus: Prometheus) -> Iterator[PrometheusAdapter]:
    served = PrometheusAdapter(cluster, prometheus.url).start()
    try:
        yield served
    finally:
        served.stop()


@pytest.fixture
def keda(cluster: Cluster, prometheus: Prometheus) -> Iterator[Keda]:
    served = Keda(cluster, prometheus.url).start()
    try:
        yield served
    finally:
        served.stop()


def _model_store(root: Path) -> Path:
    """The `models` claim's content: the 20 ms model at pvc://models/fixed."""
    write_model(root / "models", MODEL)
    return root


def _md(namespace: str, autoscaling: dict[str, Any]) -> str:
    return json.dumps(
        {
            "apiVersion": "kubeforge.io/v1alpha1",
            "kind": "ModelDeployment",
            "metadata": {"name": NAME, "namespace": namespace},
            "spec": {"models": [MODEL.wire()], "autoscaling": autoscaling},
        }
    )


def _status(kubectl: Kubectl, namespace: str) -> dict[str, Any]:
    md: dict[str, Any] = kubectl.json("get", "md", NAME, namespace=namespace)
    return md


@contextmanager
def _data_plane(
    kubectl: Kubectl, namespace: str, prometheus: Prometheus, root: Path, extra: list[Target]
) -> Iterator[tuple[PodServers, IngressFront]]:
    """Real servers for the pods, the front before them, all scraped by Prometheus with `extra`."""
    front_target: list[Target] = []

    def publish(targets: list[Target]) -> None:
        prometheus.set_targets([*targets, *front_target, *extra])

    servers = PodServers(kubectl, namespace, NAME, _model_store(root / "pvc"), root / "servers", publish)
    with servers, IngressFront(namespace, NAME, servers.http_addresses) as front:
        front_target.append((front.address, CONTROLLER_LABELS))
        publish(servers.targets())
        yield servers, front


def _replicas(kubectl: Kubectl, namespace: str, at_least: int) -> Callable[[], dict[str, Any] | None]:
    def check() -> dict[str, Any] | None:
        md = _status(kubectl, namespace)
        ready = (md.get("status") or {}).get("readyReplicas") or 0
        return md if md["spec"]["replicas"] >= at_least and ready >= at_least else None

    return check


def _autoscaling_ready(kubectl: Kubectl, namespace: str) -> dict[str, Any]:
    def ready() -> dict[str, Any] | None:
        condition = find_condition(_status(kubectl, namespace), "AutoscalingReady")
        return condition if condition and condition["status"] == "True" else None

    return wait_for(ready, timeout=120, message="the HPA reading the metric (AutoscalingReady=True)")


def _has_data(prometheus: Prometheus, title: str, query: str) -> None:
    def data() -> bool:
        return bool(prometheus.query_vector(query))

    wait_for(data, timeout=60, message=f"data for the dashboard panel {title!r}: {query}")


def _dashboard_queries(namespace: str) -> list[tuple[str, str]]:
    board = json.loads(DASHBOARD.read_text())
    return [
        (panel["title"], target["expr"].replace("$namespace", namespace).replace("$modeldeployment", NAME))
        for panel in board["panels"]
        for target in panel.get("targets", [])
    ]


@contextmanager
def _dcgm_stand_in(servers: PodServers) -> Iterator[Callable[[], list[Target]]]:
    """No GPU here: a stand-in for dcgm-exporter reports DCGM_FI_DEV_GPU_UTIL for each serving pod,
    so the dashboard's GPU panel is checked against Prometheus (its query and labels, not a GPU)."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = b'# TYPE DCGM_FI_DEV_GPU_UTIL gauge\nDCGM_FI_DEV_GPU_UTIL{gpu="0"} 42\n'
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4")  # Prometheus 3 requires one
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_: object) -> None:
            pass

    exporter = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=exporter.serve_forever, daemon=True)
    thread.start()
    address = f"127.0.0.1:{exporter.server_address[1]}"
    try:
        yield lambda: [(address, labels) for _, labels in servers.targets()]
    finally:
        exporter.shutdown()
        exporter.server_close()


def _hpa(max_replicas: int, targets: dict[str, int]) -> dict[str, Any]:
    """engine hpa from one replica, reacting at once both ways (the test's timescale)."""
    return {
        "engine": "hpa",
        "minReplicas": 1,
        "maxReplicas": max_replicas,
        "targets": targets,
        "behavior": {"scaleUpStabilizationSeconds": 0, "scaleDownStabilizationSeconds": 0},
    }


@contextmanager
def _serving_with_hpa(
    kubectl: Kubectl,
    namespace: str,
    prometheus: Prometheus,
    root: Path,
    extra: list[Target],
    autoscaling: dict[str, Any],
) -> Iterator[tuple[PodServers, IngressFront]]:
    """The ModelDeployment applied, its first server up, and the HPA reading its metric."""
    kubectl.apply(_md(namespace, autoscaling))
    with _data_plane(kubectl, namespace, prometheus, root, extra) as (servers, front):
        servers.wait_for_servers(1)
        _autoscaling_ready(kubectl, namespace)
        yield servers, front


def test_hpa_adds_replicas_when_requests_queue_and_removes_them_after(
    kubectl: Kubectl,
    namespace: str,
    operator: OperatorProcess,
    models_claim: str,
    prometheus: Prometheus,
    adapter: PrometheusAdapter,
    tmp_path: Path,
) -> None:
    extra: list[Target] = [(f"127.0.0.1:{operator.metrics_port}", {"job": "kubeforge"})]
    hpa = _hpa(3, {"queueTimeMicroseconds": 20000})
    with _serving_with_hpa(kubectl, namespace, prometheus, tmp_path, extra, hpa) as (servers, front):
        started = time.monotonic()
        with Load(front, MODEL.name, clients=6, seconds=240):
            scaled = wait_for(_replicas(kubectl, namespace, 2), timeout=180, message="a second replica Ready")
            # ... and its real server up (while the load lasts: afterwards the HPA removes it again)
            wait_for(
                lambda: len(servers.http_addresses()) >= 2, timeout=120, message="a second server serving"
            )
            scale_out = time.monotonic() - started
            with _dcgm_stand_in(servers) as gpu_targets:
                extra += gpu_targets()  # kept in every later publish of the pod servers' targets
                prometheus.set_targets([*servers.targets(), (front.address, CONTROLLER_LABELS), *extra])
                # every dashboard panel returns data from this Prometheus, mid-load
                for title, query in _dashboard_queries(namespace):
                    _has_data(prometheus, title, query)
        status = scaled["status"]
        assert status["desiredReplicas"] >= 2 and status["readyReplicas"] >= 2
        wait_for(
            lambda: _status(kubectl, namespace)["spec"]["replicas"] == 1,
            timeout=240,
            message="scaled back to one replica once the queue is gone",
        )
        scale_in = time.monotonic() - started
    print(
        f"queue time: a second replica serving {scale_out:.0f}s after the load began; back to 1 at {scale_in:.0f}s"
    )
    assert not servers.errors, servers.errors


def test_hpa_scales_out_on_inferences_per_second(
    kubectl: Kubectl,
    namespace: str,
    operator: OperatorProcess,
    models_claim: str,
    prometheus: Prometheus,
    adapter: PrometheusAdapter,
    tmp_path: Path,
) -> None:
    hpa = _hpa(2, {"inferencesPerSecond": 20})
    with (
        _serving_with_hpa(kubectl, namespace, prometheus, tmp_path, [], hpa) as (servers, front),
        Load(front, MODEL.name, clients=4, seconds=240),  # ~50/s on one replica: 2.5x the target
    ):
        wait_for(_replicas(kubectl, namespace, 2), timeout=180, message="a second replica serving")
    assert not servers.errors, servers.errors


def test_keda_scales_to_zero_when_idle_and_wakes_on_a_request(
    kubectl: Kubectl,
    namespace: str,
    own_operator: OperatorProcess,
    models_claim: str,
    prometheus: Prometheus,
    keda: Keda,
    tmp_path: Path,
) -> None:
    own_operator.start(env={"KUBEFORGE_PROMETHEUS_ADDRESS": prometheus.url})
    autoscaling = {
        "engine": "keda",
        "minReplicas": 0,
        "maxReplicas": 2,
        "targets": {"queueTimeMicroseconds": 20000},
        "activation": {"source": "ingress-nginx"},
        "behavior": {"scaleDownStabilizationSeconds": 5},
    }
    kubectl.apply(_md(namespace, autoscaling))
    with _data_plane(kubectl, namespace, prometheus, tmp_path, []) as (servers, front):
        created = time.monotonic()

        def at_zero() -> dict[str, Any] | None:
            md = _status(kubectl, namespace)
            status = md.get("status") or {}
            return md if status.get("phase") == "ScaledToZero" and status.get("ready") == "0/0" else None

        md = wait_for(at_zero, timeout=180, message="scaled to zero while idle")
        idle_to_zero = time.monotonic() - created
        ready = find_condition(md, "Ready")
        assert ready is not None and (ready["status"], ready["reason"]) == ("True", "ScaledToZero")
        row = kubectl("get", "md", NAME, "--no-headers", namespace=namespace).stdout.split()
        assert row[1:3] == ["ScaledToZero", "0/0"]
        wait_for(servers.idle, timeout=60, message="no server left, none starting")

        # a request arrives: no endpoint yet, so the front answers 503 and counts it; KEDA wakes the
        # ModelDeployment on that count; the client retries until a replica serves
        woken = time.monotonic()
        answered = wait_for(
            lambda: one_request(front, MODEL.name) == 200,
            timeout=180,
            interval=1.0,
            message="served after waking",
        )
        first_answer = time.monotonic() - woken
        assert answered and front.requests[503] >= 1

        def cold_start() -> dict[str, Any] | None:
            record = (_status(kubectl, namespace).get("status") or {}).get("coldStart") or {}
            return record if record.get("seconds") is not None else None  # 0 s is a value: kwok is quick

        cold = wait_for(cold_start, timeout=60, message="the cold start recorded")["seconds"]
    print(
        f"idle -> 0 in {idle_to_zero:.0f}s; first request answered {first_answer:.0f}s after the first try; coldStart {cold:.1f}s"
    )
    assert not servers.errors, servers.errors


def test_a_metric_that_never_comes_is_reported_as_absent(
    kubectl: Kubectl,
    namespace: str,
    own_operator: OperatorProcess,
    models_claim: str,
    adapter: PrometheusAdapter,
) -> None:
    """The adapter serves custom.metrics, but nothing scrapes the pods (no data plane here): after the
    bound (10 s in this test, 5 minutes by default) the status says what to check."""
    own_operator.start(env={"KUBEFORGE_METRIC_ABSENT_SECONDS": "10"})
    kubectl.apply(_md(namespace, {"engine": "hpa", "minReplicas": 1, "maxReplicas": 2}))

    def absent() -> dict[str, Any] | None:
        condition = find_condition(_status(kubectl, namespace), "AutoscalingReady")
        return condition if condition and condition["reason"] == "MetricAbsent" else None

    condition = wait_for(absent, timeout=120, message="AutoscalingReady=False/MetricAbsent")
    assert condition["status"] == "False"
    assert "is Prometheus scraping the Triton pods" in condition["message"]
