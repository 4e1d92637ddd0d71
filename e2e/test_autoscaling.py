"""Autoscaling children against the real API server: KEDA and Prometheus-operator CRDs from their Go modules.

The first test runs before those CRDs exist (the clear condition, no crash); the module then installs
them from the Go module cache, as a cluster with KEDA and the Prometheus operator would have them.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from e2e.kube import Kubectl, find_condition, wait_established, wait_for
from e2e.monitoring import KEDA_MODULE, KEDA_VERSION
from e2e.operator_proc import OperatorProcess
from e2e.storage import bound_claim

pytestmark = pytest.mark.e2e
EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "model-deployment.yaml"
# The CRDs of the KEDA that e2e/monitoring.py runs (e2e/binaries.sh builds the same version).
KEDA = f"{KEDA_MODULE}@{KEDA_VERSION}"
PROMETHEUS_OPERATOR = "github.com/prometheus-operator/prometheus-operator@v0.85.0"


def module_dir(module: str) -> Path:
    out = subprocess.run(
        ["go", "mod", "download", "-json", module], capture_output=True, text=True, check=True, cwd="/tmp"
    )
    return Path(json.loads(out.stdout)["Dir"])


def _md(namespace: str, **autoscaling: Any) -> str:
    doc = yaml.safe_load(EXAMPLE.read_text())
    doc["metadata"]["namespace"] = namespace
    if autoscaling.pop("off", False):
        doc["spec"].pop("autoscaling")
    else:
        doc["spec"]["autoscaling"].update(autoscaling)
    return json.dumps(doc)


def _autoscaling_condition(kubectl: Kubectl, namespace: str) -> dict[str, Any] | None:
    return find_condition(kubectl.json("get", "md", "resnet50", namespace=namespace), "AutoscalingReady")


def test_without_keda_the_condition_says_so(kubectl: Kubectl, namespace: str, operator: Any) -> None:
    # KEDA uninstalled: a test file that ran earlier on this worker's cluster may have installed its
    # CRDs (e2e files run in any order, several per cluster); they come back with the next user.
    keda_crds = [
        crd["metadata"]["name"]
        for crd in kubectl.json("get", "crd")["items"]
        if crd["spec"]["group"] in ("keda.sh", "eventing.keda.sh")
    ]
    if keda_crds:
        kubectl("delete", "crd", *keda_crds, "--wait=true")
    assert kubectl("get", "--raw", "/apis/keda.sh/v1alpha1", check=False).returncode != 0
    bound_claim(kubectl, namespace, "models")
    kubectl.apply(_md(namespace, engine="keda", minReplicas=0, activation={"source": "ingress-nginx"}))
    condition = wait_for(
        lambda: (c := _autoscaling_condition(kubectl, namespace)) and c["reason"] == "KedaNotInstalled" and c,
        timeout=60,
        message="AutoscalingReady=False/KedaNotInstalled",
    )
    assert condition["status"] == "False"
    assert "install KEDA" in condition["message"]
    # the rest of the ModelDeployment still works
    md = kubectl.json("get", "md", "resnet50", namespace=namespace)
    assert kubectl("get", "deployment", "resnet50", namespace=namespace, check=False).returncode == 0
    assert md["status"]["phase"] in ("Progressing", "Ready")
    annotations = kubectl.json("get", "deployment", "resnet50", namespace=namespace)["spec"]["template"][
        "metadata"
    ]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true" and annotations["prometheus.io/port"] == "8002"


@pytest.fixture(scope="module")
def third_party_crds(kubectl: Kubectl) -> None:
    kubectl.apply(
        module_dir(KEDA) / "config" / "crd" / "bases" / "keda.sh_scaledobjects.yaml", server_side=True
    )
    crd = (
        module_dir(PROMETHEUS_OPERATOR)
        / "example"
        / "prometheus-operator-crd"
        / "monitoring.coreos.com_servicemonitors.yaml"
    )
    kubectl.apply(crd, server_side=True)
    for name in ("scaledobjects.keda.sh", "servicemonitors.monitoring.coreos.com"):
        wait_established(kubectl, name)


def test_keda_scaled_object_and_service_monitor_are_created(
    kubectl: Kubectl, namespace: str, operator: Any, third_party_crds: None
) -> None:
    bound_claim(kubectl, namespace, "models")
    kubectl.apply(_md(namespace, engine="keda", minReplicas=0, activation={"source": "ingress-nginx"}))
    so = wait_for(
        lambda: kubectl.json("get", "scaledobject", "resnet50", namespace=namespace),
        timeout=60,
        message="the ScaledObject",
    )
    assert so["spec"]["scaleTargetRef"] == {
        "apiVersion": "kubeforge.io/v1alpha1",
        "kind": "ModelDeployment",
        "name": "resnet50",
    }
    assert so["spec"]["minReplicaCount"] == 0
    queries = [t["metadata"]["query"] for t in so["spec"]["triggers"]]
    assert any("nv_inference_queue_duration_us" in q for q in queries)
    sm = wait_for(
        lambda: kubectl.json("get", "servicemonitor", "resnet50", namespace=namespace),
        timeout=60,
        message="the ServiceMonitor",
    )
    assert sm["spec"]["endpoints"][0]["port"] == "metrics"
    # no HPA beside KEDA's: KEDA creates its own
    assert kubectl("get", "hpa", "resnet50", namespace=namespace, check=False).returncode != 0
    # the status follows once the operator's discovery cache (10 s) has seen KEDA's API
    wait_for(
        lambda: (
            (c := _autoscaling_condition(kubectl, namespace)) is not None
            and c["reason"] == "KedaMetricsServerMissing"
        ),
        timeout=60,
        message="AutoscalingReady=False/KedaMetricsServerMissing (KEDA's CRDs, but no metrics server here)",
    )


def test_switching_engines_and_turning_autoscaling_off(
    kubectl: Kubectl, namespace: str, operator: Any, third_party_crds: None
) -> None:
    bound_claim(kubectl, namespace, "models")
    kubectl.apply(_md(namespace, engine="keda"))
    wait_for(
        lambda: kubectl.json("get", "scaledobject", "resnet50", namespace=namespace),
        timeout=60,
        message="the ScaledObject",
    )
    kubectl.apply(_md(namespace, engine="hpa"))
    wait_for(
        lambda: kubectl.json("get", "hpa", "resnet50", namespace=namespace), timeout=60, message="the HPA"
    )
    wait_for(
        lambda: kubectl("get", "scaledobject", "resnet50", namespace=namespace, check=False).returncode != 0,
        timeout=60,
        message="the ScaledObject removed",
    )
    kubectl.apply(_md(namespace, off=True))
    wait_for(
        lambda: kubectl("get", "hpa", "resnet50", namespace=namespace, check=False).returncode != 0,
        timeout=60,
        message="the HPA removed",
    )
    wait_for(
        lambda: _autoscaling_condition(kubectl, namespace) is None,
        timeout=60,
        message="AutoscalingReady gone",
    )
    kubectl("scale", "md/resnet50", "--replicas=2", namespace=namespace)
    wait_for(
        lambda: kubectl.json("get", "deployment", "resnet50", namespace=namespace)["spec"]["replicas"] == 2,
        timeout=60,
        message="spec.replicas back in control",
    )


def test_optional_children_are_watched_and_known_after_a_restart(
    kubectl: Kubectl, namespace: str, own_operator: OperatorProcess, third_party_crds: None
) -> None:
    """ScaledObjects are children like any other: a deleted one is recreated, and an operator that
    restarted (SIGKILL) still knows its ScaledObject, so switching to the HPA removes it: never two
    autoscalers on one /scale."""
    bound_claim(kubectl, namespace, "models")
    own_operator.start()
    kubectl.apply(_md(namespace, engine="keda"))
    first = wait_for(
        lambda: kubectl.json("get", "scaledobject", "resnet50", namespace=namespace),
        timeout=60,
        message="the ScaledObject",
    )
    kubectl("delete", "scaledobject", "resnet50", namespace=namespace)

    def recreated() -> bool:
        result = kubectl("get", "scaledobject", "resnet50", "-o", "json", namespace=namespace, check=False)
        return (
            result.returncode == 0
            and json.loads(result.stdout)["metadata"]["uid"] != first["metadata"]["uid"]
        )

    wait_for(recreated, timeout=30, message="the deleted ScaledObject recreated")
    own_operator.kill()
    own_operator.start()
    kubectl.apply(_md(namespace, engine="hpa"))
    wait_for(
        lambda: kubectl.json("get", "hpa", "resnet50", namespace=namespace), timeout=60, message="the HPA"
    )
    wait_for(
        lambda: kubectl("get", "scaledobject", "resnet50", namespace=namespace, check=False).returncode != 0,
        timeout=30,
        message="the ScaledObject removed by the restarted operator",
    )
