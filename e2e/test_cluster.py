"""The local cluster itself: CRDs served, GPU nodes scheduled by the real scheduler, pod lifecycles.

These tests need no operator; they prove that what the operator's e2e tests rely
on behaves like a real cluster (see e2e/kwok/stages/pod.yaml for the annotations).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from e2e.cluster import REPO_ROOT, Cluster
from e2e.kube import Kubectl, find_condition, wait_condition, wait_for
from e2e.nodes import A100_80GB, GPU_TOLERATION, H100_80GB
from e2e.procs import pid_alive

pytestmark = pytest.mark.e2e

CRD_FILES = sorted((REPO_ROOT / "crds").glob("*.yaml"))
EXAMPLES = REPO_ROOT / "examples"


def _crd(path: Path) -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load(path.read_text())
    return doc


def _crd_by_kind(kind: str) -> dict[str, Any]:
    return next(doc for doc in map(_crd, CRD_FILES) if doc["spec"]["names"]["kind"] == kind)


def _pod(
    name: str,
    *,
    gpus: int = 0,
    resource: str = "nvidia.com/gpu",
    product: str | None = None,
    annotations: dict[str, str] | None = None,
    restart_policy: str = "Never",
) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "restartPolicy": restart_policy,
        "initContainers": [{"name": "fetch-model", "image": "busybox:1.36"}],
        "containers": [{"name": "main", "image": "nvcr.io/nvidia/pytorch:24.10-py3"}],
    }
    if gpus:
        spec["containers"][0]["resources"] = {"limits": {resource: str(gpus)}}
        spec["tolerations"] = [GPU_TOLERATION]
    if product:
        spec["nodeSelector"] = {"nvidia.com/gpu.product": product}
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "annotations": annotations or {}},
        "spec": spec,
    }


def _create(kubectl: Kubectl, namespace: str, *objects: dict[str, Any]) -> None:
    kubectl("create", "-f", "-", namespace=namespace, input=yaml.safe_dump_all(objects))


def _get_pod(kubectl: Kubectl, namespace: str, name: str) -> dict[str, Any]:
    pod: dict[str, Any] = kubectl.json("get", "pod", name, namespace=namespace)
    return pod


def _wait_phase(
    kubectl: Kubectl, namespace: str, name: str, phase: str, timeout: float = 30
) -> dict[str, Any]:
    return wait_for(
        lambda: (pod := _get_pod(kubectl, namespace, name))["status"].get("phase") == phase and pod,
        timeout=timeout,
        message=f"pod {name} {phase}",
    )


# -- CRDs -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", CRD_FILES, ids=lambda p: p.name)
def test_crd_is_established(kubectl: Kubectl, path: Path) -> None:
    crd = kubectl.json("get", "crd", _crd(path)["metadata"]["name"])
    for condition in ("NamesAccepted", "Established"):
        assert (find_condition(crd, condition) or {}).get("status") == "True", crd["status"]


def test_explain_shows_field_descriptions(kubectl: Kubectl) -> None:
    spec = _crd_by_kind("ModelDeployment")["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"][
        "spec"
    ]
    out = " ".join(kubectl("explain", "modeldeployment.spec").stdout.split())
    assert " ".join(spec["description"].split()) in out
    for field, schema in spec["properties"].items():
        assert re.search(rf"\b{field}\b", out), f"{field} missing from kubectl explain"
        # The beginning of each description; `explain` re-wraps long lines.
        assert " ".join(schema["description"].split())[:40] in out, f"{field}: description missing"


def test_printer_columns_short_names_and_category(kubectl: Kubectl, namespace: str) -> None:
    for kind, short, example in (
        ("ModelDeployment", "md", "model-deployment.yaml"),
        ("TrainingJob", "tj", "training-job.yaml"),
    ):
        doc = next(yaml.safe_load_all((EXAMPLES / example).read_text()))
        doc["metadata"].pop("namespace", None)
        kubectl.apply(yaml.safe_dump(doc), namespace=namespace)
        columns = _crd_by_kind(kind)["spec"]["versions"][0]["additionalPrinterColumns"]
        header, row = kubectl("get", short, namespace=namespace).stdout.splitlines()[:2]
        assert header.split() == ["NAME", *(c["name"].upper() for c in columns)]
        assert row.split()[0] == doc["metadata"]["name"]
    listed = kubectl("get", "kubeforge", "-o", "name", namespace=namespace).stdout.split()
    assert sorted(n.split("/")[0] for n in listed) == [
        "modeldeployment.kubeforge.io",
        "trainingjob.kubeforge.io",
    ]


# -- scheduling on simulated GPU nodes ------------------------------------------------------------


def test_simulated_nodes_look_like_gpu_feature_discovery(kubectl: Kubectl) -> None:
    nodes = {n["metadata"]["name"]: n for n in kubectl.json("get", "nodes")["items"]}
    products = sorted(n["metadata"]["labels"].get("nvidia.com/gpu.product", "-") for n in nodes.values())
    assert products == ["-", "-", A100_80GB, A100_80GB, A100_80GB, *[H100_80GB] * 4]
    for node in nodes.values():
        assert (find_condition(node, "Ready") or {}).get("status") == "True"
        labels = node["metadata"]["labels"]
        if labels.get("nvidia.com/gpu.present") == "true":
            assert node["spec"]["taints"] == [
                {"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}
            ]
    assert nodes["gpu-h100-0"]["status"]["allocatable"]["nvidia.com/gpu"] == "8"
    assert nodes["gpu-h100-0"]["metadata"]["labels"]["nvidia.com/gpu.count"] == "8"
    assert nodes["gpu-mig-0"]["status"]["allocatable"]["nvidia.com/mig-1g.10gb"] == "7"
    assert nodes["gpu-mig-0"]["metadata"]["labels"]["nvidia.com/mig.strategy"] == "mixed"


def test_gpu_pod_lands_on_h100_and_becomes_ready(kubectl: Kubectl, namespace: str) -> None:
    _create(kubectl, namespace, _pod("trainer", gpus=2, product=H100_80GB))
    wait_condition(kubectl, "pod", "trainer", "Ready", namespace=namespace, timeout=30)
    pod = _get_pod(kubectl, namespace, "trainer")
    node = kubectl.json("get", "node", pod["spec"]["nodeName"])
    assert node["metadata"]["labels"]["nvidia.com/gpu.product"] == H100_80GB
    status = pod["status"]
    assert status["phase"] == "Running"
    assert status["podIP"] and status["podIP"] != status["hostIP"]
    assert status["containerStatuses"][0]["state"]["running"]
    assert status["initContainerStatuses"][0]["state"]["terminated"]["reason"] == "Completed"


def test_too_many_gpus_stay_pending_with_the_schedulers_reason(kubectl: Kubectl, namespace: str) -> None:
    _create(kubectl, namespace, _pod("greedy", gpus=16, product=H100_80GB))
    scheduled = wait_condition(
        kubectl, "pod", "greedy", "PodScheduled", "False", namespace=namespace, timeout=30
    )
    condition = find_condition(scheduled, "PodScheduled") or {}
    assert condition["reason"] == "Unschedulable"
    assert "Insufficient nvidia.com/gpu" in condition["message"]
    assert scheduled["status"]["phase"] == "Pending"


def test_gpu_pod_without_toleration_avoids_gpu_nodes(kubectl: Kubectl, namespace: str) -> None:
    pod = _pod("cpu-only")
    _create(kubectl, namespace, pod)
    wait_condition(kubectl, "pod", "cpu-only", "Ready", namespace=namespace, timeout=30)
    node = _get_pod(kubectl, namespace, "cpu-only")["spec"]["nodeName"]
    assert node.startswith("cpu-")


def test_mig_pod_lands_on_the_mig_node(kubectl: Kubectl, namespace: str) -> None:
    _create(kubectl, namespace, _pod("mig", gpus=1, resource="nvidia.com/mig-1g.10gb"))
    wait_condition(kubectl, "pod", "mig", "Ready", namespace=namespace, timeout=30)
    assert _get_pod(kubectl, namespace, "mig")["spec"]["nodeName"] == "gpu-mig-0"


# -- pod lifecycle through the sim.kubeforge.io annotations ---------------------------------------


def test_exit_code_137_fails_the_pod(kubectl: Kubectl, namespace: str) -> None:
    annotations = {"sim.kubeforge.io/exit-code": "137", "sim.kubeforge.io/reason": "OOMKilled"}
    _create(kubectl, namespace, _pod("oom", annotations=annotations))
    pod = _wait_phase(kubectl, namespace, "oom", "Failed")
    terminated = pod["status"]["containerStatuses"][0]["state"]["terminated"]
    assert (terminated["exitCode"], terminated["reason"]) == (137, "OOMKilled")
    assert pod["status"]["podIP"], "it ran before it failed"


def test_exit_code_0_after_a_delay_succeeds(kubectl: Kubectl, namespace: str) -> None:
    annotations = {"sim.kubeforge.io/exit-code": "0", "sim.kubeforge.io/exit-after": "2s"}
    _create(kubectl, namespace, _pod("done", annotations=annotations))
    wait_condition(kubectl, "pod", "done", "Ready", namespace=namespace, timeout=30)
    pod = _wait_phase(kubectl, namespace, "done", "Succeeded", timeout=30)
    terminated = pod["status"]["containerStatuses"][0]["state"]["terminated"]
    assert (terminated["exitCode"], terminated["reason"]) == (0, "Completed")


def test_annotating_a_running_pod_ends_it(kubectl: Kubectl, namespace: str) -> None:
    _create(kubectl, namespace, _pod("server"))
    wait_condition(kubectl, "pod", "server", "Ready", namespace=namespace, timeout=30)
    kubectl("annotate", "pod", "server", "sim.kubeforge.io/exit-code=3", namespace=namespace)
    pod = _wait_phase(kubectl, namespace, "server", "Failed")
    assert pod["status"]["containerStatuses"][0]["state"]["terminated"]["reason"] == "Error"


def test_restart_policy_always_crash_loops(kubectl: Kubectl, namespace: str) -> None:
    annotations = {
        "sim.kubeforge.io/exit-code": "137",
        "sim.kubeforge.io/reason": "OOMKilled",
        "sim.kubeforge.io/exit-after": "1s",
        "sim.kubeforge.io/restart-after": "1s",
    }
    _create(kubectl, namespace, _pod("crashy", annotations=annotations, restart_policy="Always"))
    pod = wait_for(
        lambda: (
            (p := _get_pod(kubectl, namespace, "crashy"))["status"]["containerStatuses"][0]["restartCount"]
            >= 2
            and p
        ),
        timeout=30,
        message="two restarts",
    )
    status = pod["status"]["containerStatuses"][0]
    assert pod["status"]["phase"] == "Running"
    assert status["lastState"]["terminated"]["reason"] == "OOMKilled"


def test_deleted_pod_is_removed(kubectl: Kubectl, namespace: str) -> None:
    _create(kubectl, namespace, _pod("short-lived"))
    wait_condition(kubectl, "pod", "short-lived", "Ready", namespace=namespace, timeout=30)
    kubectl("delete", "pod", "short-lived", "--timeout=30s", namespace=namespace)
    assert kubectl("get", "pod", "short-lived", namespace=namespace, check=False).returncode != 0


def test_indexed_job_completes(kubectl: Kubectl, namespace: str) -> None:
    job = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": "shards"},
        "spec": {
            "completions": 2,
            "parallelism": 2,
            "completionMode": "Indexed",
            "template": {
                "metadata": {
                    "annotations": {"sim.kubeforge.io/exit-code": "0", "sim.kubeforge.io/exit-after": "1s"}
                },
                "spec": {"restartPolicy": "Never", "containers": [{"name": "main", "image": "busybox:1.36"}]},
            },
        },
    }
    _create(kubectl, namespace, job)
    done = wait_condition(kubectl, "job", "shards", "Complete", namespace=namespace, timeout=60)
    assert done["status"]["succeeded"] == 2
    assert done["status"]["completedIndexes"] == "0,1"
    # The Job controller removed its tracking finalizers once it had counted the pods.
    pods = kubectl.json("get", "pods", "-l", "job-name=shards", namespace=namespace)["items"]
    assert len(pods) == 2
    assert all(not p["metadata"].get("finalizers") for p in pods)


def test_pod_failure_policy_sees_the_exit_code(kubectl: Kubectl, namespace: str) -> None:
    job = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": "fatal"},
        "spec": {
            "backoffLimit": 3,
            "podFailurePolicy": {
                "rules": [{"action": "FailJob", "onExitCodes": {"operator": "In", "values": [42]}}]
            },
            "template": {
                "metadata": {"annotations": {"sim.kubeforge.io/exit-code": "42"}},
                "spec": {"restartPolicy": "Never", "containers": [{"name": "main", "image": "busybox:1.36"}]},
            },
        },
    }
    _create(kubectl, namespace, job)
    failed = wait_condition(kubectl, "job", "fatal", "Failed", namespace=namespace, timeout=60)
    assert (find_condition(failed, "Failed") or {})["reason"] == "PodFailurePolicy"


# -- isolation ------------------------------------------------------------------------------------


def test_a_second_cluster_runs_alongside(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> None:
    second = Cluster(tmp_path_factory.mktemp("second-cluster"), bin_dir=cluster.bin_dir)
    try:
        second.start()
        assert second.is_running() and cluster.is_running()
        assert set(vars(second.ports).values()).isdisjoint(vars(cluster.ports).values())
        pids = [pid for pid in (p.pid() for p in second.processes.values()) if pid]
        assert len(pids) == len(second.processes)
    finally:
        second.stop()
    assert not any(pid_alive(pid) for pid in pids), "stop() leaves no process behind"
    assert cluster.is_running()
