"""TrainingJob against the real control plane, with kwok simulating worker exits (sim.kubeforge.io/*)."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from e2e.kube import Kubectl, find_condition, wait_condition, wait_for
from e2e.storage import bound_claim

pytestmark = pytest.mark.e2e
EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
EXIT_CODE = "sim.kubeforge.io/exit-code"
EXIT_AFTER = "sim.kubeforge.io/exit-after"
# what the reference trainer writes to its termination message on exit (kubeforge.trainer.progress)
PROGRESS = {
    "state": "succeeded",
    "step": 500,
    "checkpoint": {
        "step": 500,
        "path": "/checkpoints/train/ckpt-00000500.pt",
        "time": "2026-11-28T12:00:00Z",
        "loss": 0.05,
    },
}


def _job(namespace: str, name: str = "train", annotations: dict[str, str] | None = None, **spec: Any) -> str:
    doc = yaml.safe_load((EXAMPLES / "training-job.yaml").read_text())
    doc["metadata"].update(name=name, namespace=namespace)
    doc["spec"]["gpu"] = {"count": 1, "product": "NVIDIA-A100-SXM4-80GB"}
    doc["spec"]["failurePolicy"]["backoffSeconds"] = 1
    if annotations:
        doc["spec"]["podMetadata"] = {"annotations": annotations}
    for key, value in spec.items():
        doc["spec"][key] = value
    return json.dumps(doc)


@pytest.fixture
def checkpoints(kubectl: Kubectl, namespace: str) -> str:
    bound_claim(kubectl, namespace, "training-checkpoints")
    return "training-checkpoints"


def _tj(kubectl: Kubectl, namespace: str, name: str = "train") -> dict[str, Any]:
    obj: dict[str, Any] = kubectl.json("get", "tj", name, namespace=namespace)
    return obj


def _running_workers(kubectl: Kubectl, namespace: str, job: str, count: int) -> list[dict[str, Any]]:
    def running() -> list[dict[str, Any]] | None:
        pods = kubectl.json("get", "pods", "-l", f"batch.kubernetes.io/job-name={job}", namespace=namespace)[
            "items"
        ]
        live = [
            p
            for p in pods
            if p["status"].get("phase") == "Running" and not p["metadata"].get("deletionTimestamp")
        ]
        return live if len(live) == count else None

    return wait_for(running, timeout=60, message=f"{count} running workers of {job}")


def _exit_worker(kubectl: Kubectl, namespace: str, job: str, index: int, code: int) -> None:
    selector = f"batch.kubernetes.io/job-name={job},batch.kubernetes.io/job-completion-index={index}"
    kubectl("annotate", "pods", "-l", selector, f"{EXIT_CODE}={code}", "--overwrite", namespace=namespace)


def test_two_workers_succeed_then_ttl_removes_children(
    kubectl: Kubectl, namespace: str, operator: Any, checkpoints: str
) -> None:
    kubectl.apply(
        _job(
            namespace,
            annotations={EXIT_CODE: "0", EXIT_AFTER: "3s", "sim.kubeforge.io/message": json.dumps(PROGRESS)},
            runPolicy={"ttlSecondsAfterFinished": 5},
        )
    )
    pods = _running_workers(kubectl, namespace, "train-0", 2)
    for pod in pods:
        node = kubectl.json("get", "node", pod["spec"]["nodeName"])
        assert node["metadata"]["labels"]["nvidia.com/gpu.product"] == "NVIDIA-A100-SXM4-80GB"
        env = {e["name"]: e.get("value") for e in pod["spec"]["containers"][0]["env"]}
        assert env["MASTER_ADDR"] == "train-0-0.train-workers" and env["WORLD_SIZE"] == "2"
    # `kubectl wait` is how users block on a job
    kubectl("wait", "--for=condition=Succeeded", "tj/train", "--timeout=60s", namespace=namespace, timeout=70)
    tj = _tj(kubectl, namespace)
    assert tj["status"]["phase"] == "Succeeded"
    assert tj["status"]["completionTime"]
    assert tj["status"]["restarts"] == 0
    assert tj["status"]["gpuSeconds"] > 0
    assert tj["status"]["lastCheckpoint"]["step"] == 500
    wait_for(
        lambda: (
            kubectl("get", "job", "train-0", namespace=namespace, check=False).returncode != 0
            and kubectl("get", "service", "train-workers", namespace=namespace, check=False).returncode != 0
        ),
        timeout=60,
        message="TTL to delete the workers and the Service",
    )
    assert _tj(kubectl, namespace)["status"]["phase"] == "Succeeded"


def test_retryable_exit_restarts_the_whole_gang(
    kubectl: Kubectl, namespace: str, operator: Any, checkpoints: str
) -> None:
    kubectl.apply(_job(namespace))
    _running_workers(kubectl, namespace, "train-0", 2)
    _exit_worker(kubectl, namespace, "train-0", 1, 137)
    # a new attempt: both workers replaced, not only the failed one
    _running_workers(kubectl, namespace, "train-1", 2)
    tj = wait_condition(kubectl, "tj", "train", "Running", "True", namespace=namespace, timeout=60)
    assert tj["status"]["restarts"] == 1
    assert tj["status"]["lastFailure"]["exitCode"] == 137
    assert tj["status"]["lastFailure"]["worker"] == 1
    assert kubectl("get", "job", "train-0", namespace=namespace, check=False).returncode != 0
    for index in (0, 1):
        _exit_worker(kubectl, namespace, "train-1", index, 0)
    tj = wait_condition(kubectl, "tj", "train", "Succeeded", "True", namespace=namespace, timeout=60)
    assert tj["status"]["restarts"] == 1


def test_permanent_exit_fails_without_restart(
    kubectl: Kubectl, namespace: str, operator: Any, checkpoints: str
) -> None:
    kubectl.apply(_job(namespace))
    _running_workers(kubectl, namespace, "train-0", 2)
    _exit_worker(kubectl, namespace, "train-0", 1, 1)
    tj = wait_condition(kubectl, "tj", "train", "Failed", "True", namespace=namespace, timeout=60)
    status = tj["status"]
    assert status["phase"] == "Failed"
    assert status["restarts"] == 0
    assert (status["lastFailure"]["worker"], status["lastFailure"]["exitCode"]) == (1, 1)
    assert status["lastFailure"]["retryable"] is False
    assert find_condition(tj, "Failed")["reason"] == "PermanentFailure"  # type: ignore[index]
    assert kubectl("get", "job", "train-1", namespace=namespace, check=False).returncode != 0


def test_max_restarts_exhausted(kubectl: Kubectl, namespace: str, operator: Any, checkpoints: str) -> None:
    kubectl.apply(_job(namespace, failurePolicy={"maxRestarts": 1, "backoffSeconds": 1}))
    _running_workers(kubectl, namespace, "train-0", 2)
    _exit_worker(kubectl, namespace, "train-0", 0, 143)
    _running_workers(kubectl, namespace, "train-1", 2)
    _exit_worker(kubectl, namespace, "train-1", 0, 137)
    tj = wait_condition(kubectl, "tj", "train", "Failed", "True", namespace=namespace, timeout=60)
    assert tj["status"]["restarts"] == 1
    assert find_condition(tj, "Failed")["reason"] == "RestartsExhausted"  # type: ignore[index]


def _set_suspend(kubectl: Kubectl, namespace: str, suspend: bool) -> None:
    patch = {"spec": {"runPolicy": {"suspend": suspend}}}
    kubectl("patch", "tj", "train", "--type=merge", "-p", json.dumps(patch), namespace=namespace)


def test_suspend_then_resume(kubectl: Kubectl, namespace: str, operator: Any, checkpoints: str) -> None:
    """The suspended time does not count against activeDeadlineSeconds: it runs afresh on resume."""
    deadline = 12
    kubectl.apply(_job(namespace, runPolicy={"activeDeadlineSeconds": deadline}))
    _running_workers(kubectl, namespace, "train-0", 2)
    started = time.monotonic()
    time.sleep(4)
    _set_suspend(kubectl, namespace, True)
    tj = wait_condition(kubectl, "tj", "train", "Suspended", "True", namespace=namespace, timeout=60)
    assert tj["status"]["phase"] == "Suspended"
    wait_for(
        lambda: kubectl("get", "job", "train-0", namespace=namespace, check=False).returncode != 0,
        timeout=30,
        message="workers removed",
    )
    time.sleep(
        max(0.0, deadline + 1 - (time.monotonic() - started))
    )  # past the deadline, counted from the start
    _set_suspend(kubectl, namespace, False)
    tj = wait_condition(kubectl, "tj", "train", "Running", "True", namespace=namespace, timeout=60)
    resumed = time.monotonic()
    assert tj["status"]["phase"] == "Running"
    assert find_condition(tj, "Suspended")["status"] == "False"  # type: ignore[index]
    assert tj["status"]["restarts"] == 0  # a suspension is not a failure
    tj = wait_condition(kubectl, "tj", "train", "Failed", "True", namespace=namespace, timeout=60)
    assert find_condition(tj, "Failed")["reason"] == "DeadlineExceeded"  # type: ignore[index]
    assert time.monotonic() - resumed >= deadline - 2  # the resumed workers had their full deadline


def test_pending_deadline_fails_with_the_scheduler_message(
    kubectl: Kubectl, namespace: str, operator: Any, checkpoints: str
) -> None:
    kubectl.apply(_job(namespace, gpu={"count": 16}, runPolicy={"pendingDeadlineSeconds": 5}))
    tj = wait_condition(kubectl, "tj", "train", "Failed", "True", namespace=namespace, timeout=60)
    failed = find_condition(tj, "Failed")
    assert failed is not None and failed["reason"] == "PendingDeadlineExceeded"
    assert "Insufficient nvidia.com/gpu" in failed["message"]


def test_train_then_serve_creates_the_model_deployment(
    kubectl: Kubectl, namespace: str, operator: Any, checkpoints: str
) -> None:
    bound_claim(kubectl, namespace, "model-store")
    doc = yaml.safe_load((EXAMPLES / "train-then-serve.yaml").read_text())
    doc["metadata"]["namespace"] = namespace
    doc["spec"]["podMetadata"] = {"annotations": {EXIT_CODE: "0", EXIT_AFTER: "2s"}}
    kubectl.apply(json.dumps(doc))
    wait_condition(kubectl, "tj", "tabular-mlp", "Succeeded", "True", namespace=namespace, timeout=60)
    md = wait_for(
        lambda: kubectl.json("get", "md", "tabular-mlp-serving", namespace=namespace),
        timeout=30,
        message="the hand-off ModelDeployment",
    )
    assert md["spec"]["models"][0]["source"] == "pvc://model-store/tabular/tabular-mlp"
    tj = _tj(kubectl, namespace, "tabular-mlp")
    assert tj["status"]["outputModel"] == {
        "uri": "pvc://model-store/tabular",
        "modelDeployment": "tabular-mlp-serving",
    }


def test_a_language_model_is_handed_off_as_a_streaming_model(
    kubectl: Kubectl, namespace: str, operator: Any, checkpoints: str
) -> None:
    bound_claim(kubectl, namespace, "model-store")
    doc = yaml.safe_load((EXAMPLES / "language-model.yaml").read_text())
    doc["metadata"]["namespace"] = namespace
    validation = {"step": 500, "loss": 1.62, "perplexity": 5.05}
    message = json.dumps({**PROGRESS, "validation": validation})
    doc["spec"]["podMetadata"] = {
        "annotations": {EXIT_CODE: "0", EXIT_AFTER: "2s", "sim.kubeforge.io/message": message}
    }
    kubectl.apply(json.dumps(doc))
    wait_condition(kubectl, "tj", "opticks-lm", "Succeeded", "True", namespace=namespace, timeout=60)
    assert _tj(kubectl, namespace, "opticks-lm")["status"]["validation"] == validation
    worker = kubectl.json("get", "jobs", namespace=namespace)["items"][0]["spec"]["template"]["spec"]
    env = {e["name"]: e.get("value") for e in worker["containers"][0]["env"]}
    assert env["KUBEFORGE_EXPORT_FORMAT"] == "python-llm"

    md = wait_condition(kubectl, "md", "opticks-lm-serving", "Ready", "True", namespace=namespace, timeout=90)
    assert md["spec"]["models"] == [
        {
            "name": "opticks",
            "source": "pvc://model-store/language/opticks",
            "format": "python",
            "config": {"maxBatchSize": 0, "decoupled": True},
        }
    ]
    assert md["status"]["endpoints"]["generateStream"] == [
        f"http://opticks-lm-serving.{namespace}.svc.cluster.local:8000/v2/models/opticks/generate_stream"
    ]
    # the init container renders the decoupled policy over the exported config.pbtxt
    pod = kubectl.json("get", "deployment", "opticks-lm-serving", namespace=namespace)["spec"]["template"][
        "spec"
    ]
    plan = json.loads(
        next(e["value"] for e in pod["initContainers"][0]["env"] if e["name"] == "KUBEFORGE_MODELS")
    )
    assert "model_transaction_policy {\n  decoupled: true\n}" in plan[0]["configPbtxt"]


def test_kubectl_wait_times_out_honestly_while_running(
    kubectl: Kubectl, namespace: str, operator: Any, checkpoints: str
) -> None:
    kubectl.apply(_job(namespace))
    _running_workers(kubectl, namespace, "train-0", 2)
    result = kubectl(
        "wait", "--for=condition=Succeeded", "tj/train", "--timeout=2s", namespace=namespace, check=False
    )
    assert result.returncode != 0
    assert isinstance(result, subprocess.CompletedProcess)
