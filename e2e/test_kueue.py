"""Kueue (built from its Go module) admits TrainingJobs as gangs against a ClusterQueue of 8 GPUs."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from e2e.cluster import Cluster
from e2e.kube import Kubectl, find_condition, wait_for
from e2e.kueue import start_kueue
from e2e.storage import bound_claim

pytestmark = pytest.mark.e2e
EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
EXIT_CODE = "sim.kubeforge.io/exit-code"


@pytest.fixture(scope="module")
def kueue(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    process = start_kueue(cluster, tmp_path_factory.mktemp("kueue"))
    yield
    process.stop()


def _queues(namespace: str) -> str:
    """8 GPUs; a workload of a higher priority preempts lower ones in the same ClusterQueue."""
    return f"""
apiVersion: kueue.x-k8s.io/v1beta2
kind: ResourceFlavor
metadata: {{name: default-flavor}}
---
apiVersion: kueue.x-k8s.io/v1beta2
kind: ClusterQueue
metadata: {{name: gpus-{namespace}}}
spec:
  namespaceSelector: {{matchLabels: {{kubernetes.io/metadata.name: {namespace}}}}}
  preemption: {{withinClusterQueue: LowerPriority}}
  resourceGroups:
    - coveredResources: [cpu, memory, nvidia.com/gpu]
      flavors:
        - name: default-flavor
          resources:
            - {{name: cpu, nominalQuota: 1000}}
            - {{name: memory, nominalQuota: 10000Gi}}
            - {{name: nvidia.com/gpu, nominalQuota: 8}}
---
apiVersion: kueue.x-k8s.io/v1beta2
kind: LocalQueue
metadata: {{name: gpu-queue, namespace: {namespace}}}
spec: {{clusterQueue: gpus-{namespace}}}
"""


PRIORITIES = """
apiVersion: scheduling.k8s.io/v1
kind: PriorityClass
metadata: {name: e2e-training-low}
value: 100
---
apiVersion: scheduling.k8s.io/v1
kind: PriorityClass
metadata: {name: e2e-training-high}
value: 1000
"""


def _job(namespace: str, name: str, priority: str | None = None, **run_policy: Any) -> str:
    doc = yaml.safe_load((EXAMPLES / "training-job.yaml").read_text())
    doc["metadata"].update(name=name, namespace=namespace)
    scheduling: dict[str, Any] = {"queue": "gpu-queue"}
    if priority:
        scheduling["placement"] = {"priorityClassName": priority}
    doc["spec"].update(
        workers=1,
        gpu={"count": 8, "product": "NVIDIA-A100-SXM4-80GB"},
        scheduling=scheduling,
    )
    doc["spec"]["runPolicy"].update(run_policy)
    return json.dumps(doc)


def _phase(kubectl: Kubectl, namespace: str, name: str) -> tuple[str, dict[str, Any]]:
    tj = kubectl.json("get", "tj", name, namespace=namespace)
    return tj.get("status", {}).get("phase", ""), tj


def test_two_8_gpu_jobs_are_admitted_one_after_the_other(
    kubectl: Kubectl, namespace: str, operator: Any, kueue: None
) -> None:
    bound_claim(kubectl, namespace, "training-checkpoints")
    kubectl.apply(_queues(namespace))
    kubectl.apply(_job(namespace, "first"))
    wait_for(
        lambda: _phase(kubectl, namespace, "first")[0] == "Running",
        timeout=90,
        message="first admitted and running",
    )
    # it waits in the queue longer than its pending deadline: only the time since admission counts
    # (its workers start 3 s after they are created, so they are seen pending once admitted)
    second = json.loads(_job(namespace, "second", pendingDeadlineSeconds=8))
    second["spec"]["podMetadata"] = {"annotations": {"sim.kubeforge.io/start-after": "3s"}}
    kubectl.apply(json.dumps(second))

    def queued() -> bool:
        phase, tj = _phase(kubectl, namespace, "second")
        succeeded = find_condition(tj, "Succeeded")
        return phase == "Pending" and succeeded is not None and succeeded["reason"] == "Queued"

    wait_for(queued, timeout=60, message="second waiting for Kueue")
    job = kubectl.json("get", "job", "second-0", namespace=namespace)
    assert job["spec"]["suspend"] is True
    assert job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "gpu-queue"
    workload = wait_for(
        lambda: [
            w
            for w in kubectl.json("get", "workloads", namespace=namespace)["items"]
            if "second" in w["metadata"]["name"]
        ],
        timeout=30,
        message="Kueue's Workload for the second job",
    )[0]
    assert (
        find_condition(workload, "QuotaReserved") is None
        or find_condition(workload, "QuotaReserved")["status"] == "False"
    )  # type: ignore[index]
    time.sleep(10)  # past the pending deadline, still queued
    assert _phase(kubectl, namespace, "second")[0] == "Pending"

    kubectl(
        "annotate",
        "pods",
        "-l",
        "batch.kubernetes.io/job-name=first-0",
        f"{EXIT_CODE}=0",
        namespace=namespace,
    )
    wait_for(
        lambda: _phase(kubectl, namespace, "first")[0] == "Succeeded", timeout=60, message="first succeeded"
    )
    wait_for(
        lambda: _phase(kubectl, namespace, "second")[0] == "Running",
        timeout=90,
        message="second admitted once the GPUs are free",
    )
    assert _phase(kubectl, namespace, "second")[1]["status"]["restarts"] == 0


def test_a_job_preempted_by_kueue_is_requeued_and_resumes_with_restarts_unchanged(
    kubectl: Kubectl, namespace: str, operator: Any, kueue: None
) -> None:
    bound_claim(kubectl, namespace, "training-checkpoints")
    kubectl.apply(PRIORITIES)
    kubectl.apply(_queues(namespace))
    kubectl.apply(_job(namespace, "low", priority="e2e-training-low"))
    wait_for(lambda: _phase(kubectl, namespace, "low")[0] == "Running", timeout=90, message="low running")

    kubectl.apply(_job(namespace, "high", priority="e2e-training-high"))

    def requeued() -> dict[str, Any] | None:
        phase, tj = _phase(kubectl, namespace, "low")
        succeeded = find_condition(tj, "Succeeded")
        return tj if phase == "Pending" and succeeded and succeeded["reason"] == "Requeued" else None

    tj = wait_for(requeued, timeout=90, message="low preempted by Kueue and requeued")
    assert (tj["status"]["restarts"], tj["status"]["attempt"], tj["status"]["preemptions"]) == (0, 0, 1)
    wait_for(lambda: _phase(kubectl, namespace, "high")[0] == "Running", timeout=90, message="high running")
    assert kubectl.json("get", "job", "low-0", namespace=namespace)["spec"]["suspend"] is True

    kubectl(
        "annotate", "pods", "-l", "batch.kubernetes.io/job-name=high-0", f"{EXIT_CODE}=0", namespace=namespace
    )
    wait_for(lambda: _phase(kubectl, namespace, "low")[0] == "Running", timeout=90, message="low resumed")
    status = _phase(kubectl, namespace, "low")[1]["status"]
    # the same attempt (the same Job, Kueue's same Workload) resumes: no restart was counted
    assert (status["restarts"], status["attempt"], status["preemptions"]) == (0, 0, 1)
    events = kubectl.json("get", "events", "--field-selector", "involvedObject.name=low", namespace=namespace)
    assert any(e["reason"] == "Requeued" for e in events["items"])
