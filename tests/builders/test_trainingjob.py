"""Spec in, headless Service and per-attempt Indexed Job out; the Kubeflow env table."""

from __future__ import annotations

import json
from typing import Any

import pytest

from kubeforge.api import ModelDeployment, TrainingJob
from kubeforge.builders.modeldeployment import endpoints
from kubeforge.builders.output import build_output_model_deployment
from kubeforge.builders.trainingjob import build_headless_service, build_worker_job, worker_spec_hash
from kubeforge.settings import Settings


def _variant(body: dict[str, Any], **spec: Any) -> TrainingJob:
    body = json.loads(json.dumps(body))
    body["spec"].update(spec)
    return TrainingJob.model_validate(body)


def _env(job: dict[str, Any]) -> dict[str, Any]:
    env = job["spec"]["template"]["spec"]["containers"][0]["env"]
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in env}


def test_headless_service_publishes_not_ready_addresses(tj: TrainingJob) -> None:
    svc = build_headless_service(tj)
    assert svc["spec"]["clusterIP"] == "None"
    assert svc["spec"]["publishNotReadyAddresses"] is True
    assert svc["metadata"]["name"] == "mnist-ddp-workers"


def test_indexed_job_gang_shape(tj: TrainingJob) -> None:
    job = build_worker_job(tj, 2, suspend=False)
    assert job["metadata"]["name"] == "mnist-ddp-2"
    spec = job["spec"]
    assert (spec["completionMode"], spec["completions"], spec["parallelism"], spec["backoffLimit"]) == (
        "Indexed",
        2,
        2,
        0,
    )
    pod = spec["template"]["spec"]
    assert pod["subdomain"] == "mnist-ddp-workers"
    assert pod["restartPolicy"] == "Never"
    assert pod["terminationGracePeriodSeconds"] == 120
    assert spec["template"]["metadata"]["labels"]["kubeforge.io/attempt"] == "2"


RANK = {"fieldRef": {"fieldPath": "metadata.annotations['batch.kubernetes.io/job-completion-index']"}}


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("MASTER_ADDR", "mnist-ddp-0-0.mnist-ddp-workers"),
        ("PET_MASTER_ADDR", "mnist-ddp-0-0.mnist-ddp-workers"),
        ("MASTER_PORT", "23456"),
        ("PET_MASTER_PORT", "23456"),
        ("WORLD_SIZE", "2"),
        ("RANK", RANK),
        ("PET_NODE_RANK", RANK),
        ("PET_NNODES", "2"),
        ("PET_NPROC_PER_NODE", "1"),
        ("PYTHONUNBUFFERED", "1"),
        ("KUBEFORGE_CHECKPOINT_DIR", "/checkpoints"),
    ],
)
def test_kubeflow_compatible_environment(tj: TrainingJob, name: str, value: Any) -> None:
    assert _env(build_worker_job(tj, 0, suspend=False))[name] == value


def test_world_size_is_workers_times_processes(tj_body: dict[str, Any]) -> None:
    tj = _variant(tj_body, gpu={"count": 8}, workers=4)
    env = _env(build_worker_job(tj, 0, suspend=False))
    assert (env["WORLD_SIZE"], env["PET_NPROC_PER_NODE"], env["PET_NNODES"]) == ("32", "8", "4")


def test_gpu_checkpoint_shm_and_placement(tj: TrainingJob) -> None:
    pod = build_worker_job(tj, 0, suspend=False)["spec"]["template"]["spec"]
    worker = pod["containers"][0]
    assert worker["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert {"name": "checkpoint", "mountPath": "/checkpoints", "subPath": "mnist-ddp"} in worker[
        "volumeMounts"
    ]
    assert {"name": "checkpoint", "persistentVolumeClaim": {"claimName": "training-checkpoints"}} in pod[
        "volumes"
    ]
    assert pod["volumes"][0]["emptyDir"]["medium"] == "Memory"
    expr = pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][
        "nodeSelectorTerms"
    ][0]
    assert expr["matchExpressions"][0]["values"] == ["NVIDIA-H100-80GB-HBM3"]
    assert any(t["key"] == "nvidia.com/gpu" for t in pod["tolerations"])


def test_kueue_queue_label_and_suspended_creation(tj_body: dict[str, Any]) -> None:
    tj = _variant(tj_body, scheduling={"queue": "gpu-queue"})
    job = build_worker_job(tj, 0, suspend=True)
    assert job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "gpu-queue"
    assert job["spec"]["suspend"] is True
    plain = build_worker_job(_variant(tj_body), 0, suspend=False)
    assert "kueue.x-k8s.io/queue-name" not in plain["metadata"]["labels"]


def test_output_env_and_mount(tj_body: dict[str, Any]) -> None:
    tj = _variant(tj_body, output={"uri": "pvc://model-store/run1", "modelName": "mnist"})
    job = build_worker_job(tj, 0, suspend=False)
    env = _env(job)
    assert env["KUBEFORGE_OUTPUT_URI"] == "pvc://model-store/run1"
    assert env["KUBEFORGE_MODEL_NAME"] == "mnist"
    assert env["KUBEFORGE_PVC_ROOT"] == "/mnt/pvc"
    mounts = job["spec"]["template"]["spec"]["containers"][0]["volumeMounts"]
    assert {"name": "output", "mountPath": "/mnt/pvc/model-store"} in mounts


def test_output_model_deployment_gets_the_trained_source(tj_body: dict[str, Any]) -> None:
    template = {"name": "mnist-serving", "spec": {"replicas": 2, "gpu": {"count": 1}}}
    tj = _variant(
        tj_body, output={"uri": "pvc://model-store/run1/", "modelName": "mnist", "modelDeployment": template}
    )
    md = build_output_model_deployment(tj)
    assert md is not None
    assert md["metadata"] == {
        "name": "mnist-serving",
        "namespace": "team-a",
        "labels": {"kubeforge.io/trained-by": "mnist-ddp", "app.kubernetes.io/managed-by": "kubeforge"},
        "annotations": {
            "kubeforge.io/trained-by-uid": tj.metadata.uid,
            # what the job recorded: no validation yet in this spec-only object
            "kubeforge.io/proposal": '{"job":"mnist-ddp","uri":"pvc://model-store/run1/mnist",'
            '"validationLoss":null,"model":"mnist"}',
        },
    }
    assert md["spec"]["models"] == [
        {"name": "mnist", "source": "pvc://model-store/run1/mnist", "format": "python"}
    ]
    assert md["spec"]["replicas"] == 2
    assert "ownerReferences" not in md["metadata"]


def test_a_language_model_is_handed_off_as_a_decoupled_model(tj_body: dict[str, Any]) -> None:
    template = {"name": "lm-serving", "spec": {"replicas": 1}}
    output = {
        "uri": "pvc://model-store/lm",
        "modelName": "opticks",
        "format": "python-llm",
        "modelDeployment": template,
    }
    tj = _variant(tj_body, output=output)
    assert _env(build_worker_job(tj, 0, suspend=False))["KUBEFORGE_EXPORT_FORMAT"] == "python-llm"
    md = build_output_model_deployment(tj)
    assert md is not None
    # served by the Python backend; decoupled is rendered over the exported config.pbtxt, which keeps the rest
    assert md["spec"]["models"] == [
        {
            "name": "opticks",
            "source": "pvc://model-store/lm/opticks",
            "format": "python",
            "config": {"maxBatchSize": 0, "decoupled": True},
        }
    ]
    served = ModelDeployment.model_validate({**md, "metadata": {**md["metadata"], "uid": "u"}})
    assert endpoints(served, Settings())["generate_stream"] == [
        "http://lm-serving.team-a.svc.cluster.local:8000/v2/models/opticks/generate_stream"
    ]


def test_a_template_entry_for_the_trained_model_is_kept(tj_body: dict[str, Any]) -> None:
    mine = {
        "name": "opticks",
        "source": "pvc://elsewhere/x",
        "format": "python",
        "config": {"decoupled": True, "instanceGroups": [{"count": 2}]},
    }
    template = {"name": "lm-serving", "spec": {"models": [mine]}}
    output = {
        "uri": "pvc://model-store/lm",
        "modelName": "opticks",
        "format": "python-llm",
        "modelDeployment": template,
    }
    md = build_output_model_deployment(_variant(tj_body, output=output))
    assert md is not None
    assert md["spec"]["models"][0]["source"] == "pvc://model-store/lm/opticks"
    assert md["spec"]["models"][0]["config"]["instanceGroups"] == [{"kind": "KIND_AUTO", "count": 2}]


# -- the worker spec hash: only an edit of what shapes the workers restarts a running attempt -------


def test_the_job_records_the_worker_spec_hash(tj: TrainingJob) -> None:
    job = build_worker_job(tj, 0, suspend=False)
    assert job["metadata"]["annotations"]["kubeforge.io/spec-hash"] == worker_spec_hash(tj)


@pytest.mark.parametrize(
    ("edit", "restarts"),
    [
        ({"image": "registry.local/trainer:2"}, True),
        ({"env": [{"name": "LR", "value": "0.1"}]}, True),
        ({"workers": 4}, True),
        ({"runPolicy": {"activeDeadlineSeconds": 60}}, False),
        ({"failurePolicy": {"maxRestarts": 9}}, False),
        ({"shmSize": "2Gi"}, False),  # the default, written out: the same request
        ({"shmSize": "8Gi"}, True),
    ],
)
def test_the_worker_spec_hash_changes_with_what_shapes_the_workers(
    tj_body: dict[str, Any], edit: dict[str, Any], restarts: bool
) -> None:
    before = worker_spec_hash(TrainingJob.model_validate(tj_body))
    assert (worker_spec_hash(_variant(tj_body, **edit)) != before) is restarts


def test_the_hand_offs_model_deployment_spec_is_not_a_worker_edit(tj_body: dict[str, Any]) -> None:
    output = {"uri": "pvc://models/mnist", "modelName": "mnist"}
    plain = _variant(tj_body, output=output)
    served = {"name": "served", "spec": {"replicas": 3, "models": []}}
    handed_off = _variant(tj_body, output={**output, "modelDeployment": served})
    assert worker_spec_hash(handed_off) == worker_spec_hash(plain)
    assert worker_spec_hash(_variant(tj_body, output={**output, "uri": "pvc://models/other"})) != (
        worker_spec_hash(plain)
    )
