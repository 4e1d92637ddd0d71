"""The autoscaling stack, each part real: Prometheus, prometheus-adapter with the repository's rules, KEDA.

Substitution: kwok pods run no containers, so the data plane is one real tritonserver (the
nvidia-pytriton wheel's) on loopback, serving a Python-backend model; Prometheus scrapes it
under the `namespace`/`pod` labels of a kwok pod that stands for it (file_sd). Everything
downstream of the scrape is real: Prometheus, prometheus-adapter loading
charts/prometheus-adapter-rules.yaml, the kube-apiserver's aggregation layer, KEDA's operator
and metrics server, and the HPA that KEDA makes.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Iterator

import pytest

from e2e.cluster import Cluster
from e2e.kube import Kubectl, find_condition, fresh_namespace, wait_for
from e2e.monitoring import Keda, Prometheus, PrometheusAdapter
from kubeforge.testing.triton import TritonServer, run_tritonserver
from kubeforge.testing.workloads import drive_load, fixed_cost_model, write_model
from tests.harness import TRITONSERVER, require

pytestmark = pytest.mark.e2e

POD = "triton-0"
MODEL = "fixed"


@pytest.fixture(scope="module")
def namespace(kubectl: Kubectl) -> Iterator[str]:
    """One namespace for the module: the scrape labels, the pod and the ScaledObject all name it."""
    with fresh_namespace(kubectl, f"e2e-monitoring-{uuid.uuid4().hex[:5]}") as name:
        yield name


@pytest.fixture(scope="module")
def triton(cluster: Cluster) -> Iterator[TritonServer]:
    """A real tritonserver with the fixed-cost model, which has served a few requests."""
    require(TRITONSERVER)
    state = cluster.state_dir / "triton"
    write_model(state / "models", fixed_cost_model(MODEL, max_batch_size=8, batching=True, step_ms=1.0))
    with run_tritonserver(
        repository=state / "models", wait="ready", log_path=state / "tritonserver.log"
    ) as server:
        asyncio.run(drive_load(server.grpc_url, MODEL, clients=2, seconds=1.0, max_per_client=50))
        yield server


@pytest.fixture(scope="module")
def prometheus(cluster: Cluster, triton: TritonServer, namespace: str) -> Iterator[Prometheus]:
    with Prometheus(cluster.state_dir / "prometheus") as server:
        server.set_targets([(f"127.0.0.1:{triton.metrics_port}", {"namespace": namespace, "pod": POD})])
        yield server


def test_prometheus_scrapes_triton_through_file_sd(prometheus: Prometheus, namespace: str) -> None:
    count = prometheus.wait_for_query(
        f'sum(nv_inference_count{{namespace="{namespace}", pod="{POD}", model="{MODEL}"}})', lambda v: v > 0
    )
    assert count > 0
    # one target, with the labels the file gave it
    (target,) = prometheus.targets()
    assert target["health"] == "up" and target["labels"]["pod"] == POD


def test_adapter_serves_the_repository_rules_for_a_pod_of_the_cluster(
    cluster: Cluster, kubectl: Kubectl, prometheus: Prometheus, namespace: str
) -> None:
    kubectl.apply(_pod(namespace, POD))
    with PrometheusAdapter(cluster, prometheus.url) as adapter:
        # what the HPA asks for a `Pods` metric: every pod of the namespace, by the rule's name
        values = wait_for(
            lambda: adapter.pod_metrics(namespace, "triton_inferences_per_second"),
            timeout=30,
            message="triton_inferences_per_second served for the pod",
        )
        assert set(values) == {POD}
        assert values[POD] >= 0
        # the preferred version lists the rules' metrics too
        discovery = json.loads(kubectl("get", "--raw", "/apis/custom.metrics.k8s.io/v1beta2").stdout)
        assert "pods/triton_queue_time_per_request_microseconds" in {
            r["name"] for r in discovery["resources"]
        }


def test_keda_turns_a_scaled_object_into_an_hpa_and_serves_its_external_metric(
    cluster: Cluster, kubectl: Kubectl, prometheus: Prometheus, namespace: str
) -> None:
    kubectl.apply(_deployment(namespace, "web"))
    query = f'sum(nv_inference_count{{namespace="{namespace}"}})'
    # waited for: a scrape that timed out on a loaded machine leaves the series stale for a moment
    expected = prometheus.wait_for_query(query, lambda v: v > 0)
    with Keda(cluster, prometheus.url) as keda:
        scaled_object = {
            "apiVersion": "keda.sh/v1alpha1",
            "kind": "ScaledObject",
            "metadata": {"name": "web", "namespace": namespace},
            "spec": {
                "scaleTargetRef": {"name": "web"},
                "pollingInterval": 1,
                "minReplicaCount": 1,
                "maxReplicaCount": 3,
                "triggers": [keda.prometheus_trigger(query, threshold=1_000_000)],
            },
        }
        kubectl.apply(json.dumps(scaled_object))
        hpa = wait_for(
            lambda: kubectl.json("get", "hpa", "keda-hpa-web", namespace=namespace),
            timeout=60,
            message="the HPA keda-hpa-web",
        )
        assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "web"}
        metric = hpa["spec"]["metrics"][0]["external"]["metric"]["name"]
        value = wait_for(
            lambda: keda.external_metric(namespace, metric, scaled_object="web"),
            timeout=30,
            message=f"external metric {metric}",
        )
        assert value == pytest.approx(expected)
        ready = find_condition(kubectl.json("get", "scaledobject", "web", namespace=namespace), "Ready")
        assert ready and ready["status"] == "True", ready
        # the HPA controller itself reads it through the aggregation layer (its sync period: 15 s)
        last: dict[str, object] = {}

        def scaling_active() -> bool:
            nonlocal last
            last = kubectl.json("get", "hpa", "keda-hpa-web", namespace=namespace)
            condition = find_condition(last, "ScalingActive")
            return bool(condition and condition["status"] == "True")

        wait_for(
            scaling_active, timeout=45, message=lambda: f"HPA ScalingActive (status: {last.get('status')})"
        )
        kubectl("delete", "scaledobject", "web", "--timeout=30s", namespace=namespace)


def _pod(namespace: str, name: str) -> str:
    """A pod for the simulated nodes (kwok runs it: Running and Ready, no container)."""
    return json.dumps(
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name, "namespace": namespace, "labels": {"app": "triton"}},
            "spec": {"containers": [{"name": "triton", "image": "nvcr.io/nvidia/tritonserver:24.10-py3"}]},
        }
    )


def _deployment(namespace: str, name: str) -> str:
    return json.dumps(
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {
                "replicas": 1,
                "selector": {"matchLabels": {"app": name}},
                "template": {
                    "metadata": {"labels": {"app": name}},
                    "spec": {"containers": [{"name": name, "image": "registry.k8s.io/pause:3.10"}]},
                },
            },
        }
    )
