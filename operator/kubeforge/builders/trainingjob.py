"""Desired children of a TrainingJob: a headless Service and, per attempt, an Indexed batch/v1 Job.

Each attempt is its own Job, `<name>-<attempt>`: a gang restart deletes the failed attempt's Job
and creates the next one, so no worker of a failed attempt can rejoin a new one half-way. Worker i
of an attempt has the stable DNS name `<name>-<attempt>-<i>.<name>-workers` through the headless
Service (the pod's subdomain), which is what MASTER_ADDR points at. The `-workers` suffix keeps the
Service clear of a ModelDeployment of the same name (train `resnet50`, serve `resnet50`).
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from kubeforge.api.trainingjob import TrainingJob
from kubeforge.builders import pods
from kubeforge.builders.meta import Object, object_meta, owner_reference, recommended_labels, selector_labels

KIND = "TrainingJob"
ATTEMPT_LABEL = "kubeforge.io/attempt"
KUEUE_QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
COMPLETION_INDEX = "metadata.annotations['batch.kubernetes.io/job-completion-index']"
PVC_ROOT = "/mnt/pvc"
CHECKPOINT_ENV = "KUBEFORGE_CHECKPOINT_DIR"
# on each attempt's Job: a digest of the spec fields that shape its workers (worker_spec_hash)
SPEC_HASH_ANNOTATION = "kubeforge.io/spec-hash"
# spec fields that never shape a worker: they apply at once to a running attempt
_NOT_WORKER_SHAPING = ("runPolicy", "failurePolicy")


def labels(tj: TrainingJob) -> dict[str, str]:
    return recommended_labels(KIND, tj.metadata.name, component="trainer", app="pytorch")


def job_name(tj: TrainingJob, attempt: int) -> str:
    return f"{tj.metadata.name}-{attempt}"


SERVICE_SUFFIX = "-workers"


def service_name(tj: TrainingJob) -> str:
    """The headless Service: `<name>-workers` (a ModelDeployment's Service is `<name>`)."""
    return f"{tj.metadata.name}{SERVICE_SUFFIX}"


def master_addr(tj: TrainingJob, attempt: int) -> str:
    """Worker 0's stable DNS name for this attempt (resolvable before it is ready: publishNotReadyAddresses)."""
    return f"{job_name(tj, attempt)}-0.{service_name(tj)}"


def worker_spec_hash(tj: TrainingJob) -> str:
    """A digest of what the user asked of the workers, independent of the operator's release.

    A running attempt is restarted only when this changes (an edit of the spec), never because a
    new release of the builders (or a new setting) would render the same spec differently: the
    new template applies to the next attempt. Fields left at their defaults are left out, so a
    field that a newer CRD or operator adds with a default does not count as an edit; so are the
    run and failure policies (they apply at once) and the hand-off's ModelDeployment spec.
    """
    spec = tj.spec.model_dump(by_alias=True, exclude_none=True, exclude_defaults=True, mode="json")
    for key in _NOT_WORKER_SHAPING:
        spec.pop(key, None)
    if isinstance(spec.get("output"), dict):
        spec["output"].pop("modelDeployment", None)
    canonical = json.dumps(spec, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:20]


def _meta(tj: TrainingJob, name: str, extra_labels: dict[str, str] | None = None) -> dict[str, Any]:
    assert tj.metadata.uid is not None and tj.metadata.namespace is not None
    owner = owner_reference(KIND, tj.metadata.name, tj.metadata.uid)
    return object_meta(name, tj.metadata.namespace, {**labels(tj), **(extra_labels or {})}, owner)


def build_headless_service(tj: TrainingJob) -> Object:
    """Gives each worker a DNS name before it is ready, so rendezvous does not race pod readiness."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _meta(tj, service_name(tj)),
        "spec": {
            "clusterIP": "None",
            "publishNotReadyAddresses": True,
            "selector": selector_labels(KIND, tj.metadata.name),
            "ports": [{"name": "rendezvous", "port": tj.spec.master_port, "targetPort": tj.spec.master_port}],
        },
    }


def _claim_and_path(uri: str) -> tuple[str, str]:
    claim, _, path = uri.removeprefix("pvc://").partition("/")
    return claim, path


def rendezvous_env(tj: TrainingJob, attempt: int) -> list[dict[str, Any]]:
    """The environment of Kubeflow's PyTorchJob (v1 and the PET_* of torchrun), so scripts run unchanged."""
    spec = tj.spec
    nproc = spec.nproc_per_worker
    rank = {"valueFrom": {"fieldRef": {"fieldPath": COMPLETION_INDEX}}}
    addr, port = master_addr(tj, attempt), str(spec.master_port)
    return [
        {"name": "MASTER_ADDR", "value": addr},
        {"name": "MASTER_PORT", "value": port},
        {"name": "WORLD_SIZE", "value": str(spec.workers * nproc)},
        {"name": "RANK", **rank},
        {"name": "PET_MASTER_ADDR", "value": addr},
        {"name": "PET_MASTER_PORT", "value": port},
        {"name": "PET_NNODES", "value": str(spec.workers)},
        {"name": "PET_NPROC_PER_NODE", "value": str(nproc)},
        {"name": "PET_NODE_RANK", **rank},
        {"name": "PYTHONUNBUFFERED", "value": "1"},
        {"name": "KUBEFORGE_JOB_NAME", "value": tj.metadata.name},
        {"name": "KUBEFORGE_ATTEMPT", "value": str(attempt)},
    ]


def _storage(tj: TrainingJob) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]]:
    """(env, volumes, mounts) for the checkpoint claim and a pvc:// output."""
    spec = tj.spec
    env: list[dict[str, Any]] = []
    volumes: list[dict[str, Any]] = []
    mounts: list[dict[str, Any]] = []
    if spec.checkpoint:
        volumes.append(
            {"name": "checkpoint", "persistentVolumeClaim": {"claimName": spec.checkpoint.claim_name}}
        )
        mounts.append(
            {
                "name": "checkpoint",
                "mountPath": spec.checkpoint.mount_path,
                # one directory per job, so jobs sharing a claim never resume from each other
                "subPath": spec.checkpoint.sub_path or tj.metadata.name,
            }
        )
        env.append({"name": CHECKPOINT_ENV, "value": spec.checkpoint.mount_path})
    if spec.output:
        env += [
            {"name": "KUBEFORGE_OUTPUT_URI", "value": spec.output.uri},
            {"name": "KUBEFORGE_MODEL_NAME", "value": spec.output.model_name},
            {"name": "KUBEFORGE_EXPORT_FORMAT", "value": spec.output.format},
        ]
        if spec.output.uri.startswith("pvc://"):
            claim, _ = _claim_and_path(spec.output.uri)
            if not (spec.checkpoint and spec.checkpoint.claim_name == claim):
                volumes.append({"name": "output", "persistentVolumeClaim": {"claimName": claim}})
            volume = "checkpoint" if spec.checkpoint and spec.checkpoint.claim_name == claim else "output"
            mounts.append({"name": volume, "mountPath": f"{PVC_ROOT}/{claim}"})
            env.append({"name": "KUBEFORGE_PVC_ROOT", "value": PVC_ROOT})
    return env, volumes, mounts


def worker_container(tj: TrainingJob, attempt: int) -> dict[str, Any]:
    spec = tj.spec
    env, _, mounts = _storage(tj)
    container: dict[str, Any] = {
        "name": "worker",
        "image": spec.image,
        "env": [*rendezvous_env(tj, attempt), *env, *pods.env_vars(spec.env)],
        "ports": [{"name": "rendezvous", "containerPort": spec.master_port, "protocol": "TCP"}],
        "volumeMounts": [pods.SHM_MOUNT, *mounts],
        # the trainer writes its last progress here; it lands in the pod's status on exit
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "securityContext": pods.container_security_context(),
    }
    if spec.command:
        container["command"] = list(spec.command)
    if spec.args:
        container["args"] = list(spec.args)
    resources = pods.container_resources(spec.resources, spec.gpu)
    if resources:
        container["resources"] = resources
    return container


def build_worker_job(tj: TrainingJob, attempt: int, *, suspend: bool) -> Object:
    """The Indexed Job of one attempt: all workers start together and any failure ends the attempt."""
    spec = tj.spec
    _, volumes, _ = _storage(tj)
    attempt_label = {ATTEMPT_LABEL: str(attempt)}
    job_labels = dict(attempt_label)
    scheduling = spec.scheduling
    if scheduling and scheduling.queue:
        job_labels[KUEUE_QUEUE_LABEL] = scheduling.queue
    pod_labels = {**labels(tj), **attempt_label}
    pod_annotations: dict[str, str] = {}
    if spec.pod_metadata:
        pod_labels = {**(spec.pod_metadata.labels or {}), **pod_labels}
        pod_annotations = dict(spec.pod_metadata.annotations or {})
    placement = scheduling.placement if scheduling else None
    pod_spec: dict[str, Any] = {
        "subdomain": service_name(tj),
        "restartPolicy": "Never",
        "enableServiceLinks": False,
        "terminationGracePeriodSeconds": spec.termination_grace_period_seconds,
        "securityContext": pods.pod_security_context(),
        "containers": [worker_container(tj, attempt)],
        "volumes": [pods.shm_volume(spec.shm_size), *volumes],
        **pods.placement_fields(spec.gpu, placement),
    }
    if spec.service_account_name:
        pod_spec["serviceAccountName"] = spec.service_account_name
    if spec.image_pull_secrets:
        pod_spec["imagePullSecrets"] = [{"name": n} for n in spec.image_pull_secrets]
    template_meta: dict[str, Any] = {"labels": pod_labels}
    if pod_annotations:
        template_meta["annotations"] = pod_annotations
    meta = _meta(tj, job_name(tj, attempt), job_labels)
    meta["annotations"] = {SPEC_HASH_ANNOTATION: worker_spec_hash(tj)}
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": meta,
        "spec": {
            "completionMode": "Indexed",
            "completions": spec.workers,
            "parallelism": spec.workers,
            # the operator decides about retries for the whole gang; the Job never replaces one pod
            "backoffLimit": 0,
            "suspend": suspend,
            "template": {"metadata": template_meta, "spec": pod_spec},
        },
    }
