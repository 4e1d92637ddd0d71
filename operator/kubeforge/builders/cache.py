"""The model cache's children: the claim the operator creates (cache.size) and the Job that fills it.

The serving pods' side (the claim mounted read-only, the init container linking from the cache)
is in builders/modeldeployment.py. See kubeforge.triton.cache for the layout on the claim.
"""

from __future__ import annotations

import hashlib
from typing import Any

from kubeforge.api.modeldeployment import ModelDeployment
from kubeforge.builders import pods
from kubeforge.builders.meta import Object, object_meta, owner_reference, recommended_labels, selector_labels
from kubeforge.settings import Settings
from kubeforge.triton.cache import DEFAULT_ROOT, cache_entries, cache_key, fill_args, fill_plan
from kubeforge.triton.cache import PLAN_ENV as CACHE_PLAN_ENV
from kubeforge.triton.repository import pvc_claims
from kubeforge.triton.sources import DEFAULT_PVC_ROOT, STORAGE_ENV_PREFIX

KIND = "ModelDeployment"
COMPONENT = "model-cache"
CACHE_VOLUME = "model-cache"
CACHE_ROOT = DEFAULT_ROOT
FILL_CONTAINER = "fill"
CACHE_KEY_LABEL = "kubeforge.io/cache-key"
# the fill container's exit codes for "a source or the plan is wrong": retrying cannot help
PERMANENT_EXIT_CODES = (1, 2)
FILL_BACKOFF_LIMIT = 2
MAX_JOB_NAME = 63  # the Job controller copies the name into a label of its pods
TERMINATION_LOG = "/dev/termination-log"


def cache_labels(md: ModelDeployment) -> dict[str, str]:
    return recommended_labels(KIND, md.metadata.name, component=COMPONENT, app="kubeforge")


def _meta(md: ModelDeployment, name: str) -> dict[str, Any]:
    assert md.metadata.uid is not None and md.metadata.namespace is not None
    owner = owner_reference(KIND, md.metadata.name, md.metadata.uid)
    return object_meta(name, md.metadata.namespace, cache_labels(md), owner)


def cache_claim_name(md: ModelDeployment) -> str | None:
    """The claim holding the cache: the user's (cache.claimName) or the operator's, None without a cache.

    The operator's claim is named after the fields a claim cannot change (storage class, access
    mode): changing one fills a new claim while the pods keep serving from the old one.
    """
    cache = md.spec.cache
    if cache is None:
        return None
    if cache.claim_name is not None:
        return cache.claim_name
    immutable = f"{cache.storage_class_name or ''}/{cache.access_mode}"
    return f"{md.metadata.name}-model-cache-{hashlib.sha256(immutable.encode()).hexdigest()[:5]}"


def one_node_cache(md: ModelDeployment) -> bool:
    """The operator's claim is ReadWriteOnce: every pod that mounts it must run on one node.

    Its serving pods then require each other's node (builders/modeldeployment.py), and its fill
    pod runs where they can run, beside them when they do (a node-local volume binds to the node
    of its first pod, the fill's).
    """
    cache = md.spec.cache
    return cache is not None and cache.size is not None and cache.access_mode == "ReadWriteOnce"


def fill_placement(md: ModelDeployment) -> dict[str, Any]:
    """The fill pod's placement: none on a shared claim; on a ReadWriteOnce one, the serving pods'
    node selection (GPU nodes, the user's placement) and a preference for their node."""
    if not one_node_cache(md):
        return {}
    spec = md.spec
    placement = pods.placement_fields(spec.gpu, spec.placement)
    placement.pop("priorityClassName", None)  # the serving pods' priority is not the fill's
    affinity = placement.get("affinity") or {}
    if spec.gpu is not None and spec.gpu.product is None:
        # any GPU node: the serving pods tolerate them, and a node-local volume binds where the fill runs
        affinity = pods.require_node_label(affinity, {"key": pods.GPU_PRODUCT_LABEL, "operator": "Exists"})
    placement["affinity"] = pods.with_pod_affinity(
        affinity, selector_labels(KIND, md.metadata.name), required=False
    )
    return placement


def model_cache_key(md: ModelDeployment) -> str | None:
    """The cache key of the spec's models on its claim; None without a cache."""
    claim = cache_claim_name(md)
    return None if claim is None else cache_key(md.spec.models, claim)


def fill_job_name(md: ModelDeployment, key: str) -> str:
    suffix = f"-fill-{key}"
    return md.metadata.name[: MAX_JOB_NAME - len(suffix)].rstrip("-.") + suffix


def build_cache_claim(md: ModelDeployment) -> Object | None:
    """The PersistentVolumeClaim the operator creates for `cache.size`; None for a user's claim or no cache."""
    cache = md.spec.cache
    if cache is None or cache.size is None:
        return None
    name = cache_claim_name(md)
    assert name is not None
    spec: dict[str, Any] = {
        "accessModes": [cache.access_mode],
        "resources": {"requests": {"storage": pods.quantity(cache.size)}},
    }
    if cache.storage_class_name is not None:
        spec["storageClassName"] = cache.storage_class_name
    return {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": _meta(md, name), "spec": spec}


def storage_env_from(md: ModelDeployment) -> dict[str, Any]:
    """The fetching container's `envFrom` of the storage Secret ({} without one): by reference (the
    values never appear in a spec), prefixed (`kubeforge.triton.sources.credentials` takes the prefix
    off). Not optional: a Secret that does not exist keeps the container from starting
    (CreateContainerConfigError: secret "..." not found), which the status then names, rather than a
    fetch without credentials."""
    if md.spec.storage is None:
        return {}
    return {"envFrom": [{"prefix": STORAGE_ENV_PREFIX, "secretRef": {"name": md.spec.storage.secret_name}}]}


def build_cache_fill_job(
    md: ModelDeployment, settings: Settings, pvc_root: str = DEFAULT_PVC_ROOT
) -> Object | None:
    """The Job that fetches every source into `<claim>/<key>` once; None without a cache.

    Its name carries the key, so a change of source is a new Job (a Job's template cannot change).
    Its pods carry no owner labels: the Deployment's and the Service's selectors must never pick
    them up. The fill container writes its summary (bytes, digest) as its termination message.
    """
    claim, key = cache_claim_name(md), model_cache_key(md)
    if claim is None or key is None:
        return None
    spec = md.spec
    mounts: list[dict[str, Any]] = [{"name": CACHE_VOLUME, "mountPath": CACHE_ROOT}]
    volumes: list[dict[str, Any]] = [{"name": CACHE_VOLUME, "persistentVolumeClaim": {"claimName": claim}}]
    for source_claim in pvc_claims(md.spec.models):
        mounts.append(
            {"name": f"pvc-{source_claim}", "mountPath": f"{pvc_root}/{source_claim}", "readOnly": True}
        )
        volumes.append(
            {
                "name": f"pvc-{source_claim}",
                "persistentVolumeClaim": {"claimName": source_claim, "readOnly": True},
            }
        )
    container = {
        "name": FILL_CONTAINER,
        "image": settings.helper_image,
        "command": ["kubeforge"],
        # the operator's own claim holds this cache alone: earlier fills are pruned (a user's claim
        # may be shared, so nothing else on it is touched)
        "args": [
            *fill_args(key, CACHE_ROOT),
            "--pvc-root",
            pvc_root,
            *(["--prune"] if spec.cache and spec.cache.size else []),
        ],
        "env": [{"name": CACHE_PLAN_ENV, "value": fill_plan(spec.models)}],
        **storage_env_from(md),
        "volumeMounts": mounts,
        "resources": {"requests": {"cpu": "500m", "memory": "512Mi"}, "limits": {"memory": "2Gi"}},
        "securityContext": pods.container_security_context(),
        "terminationMessagePath": TERMINATION_LOG,
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    pod_labels = {
        **{k: v for k, v in cache_labels(md).items() if not k.startswith("kubeforge.io/")},
        CACHE_KEY_LABEL: key,
    }
    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "enableServiceLinks": False,
        "securityContext": pods.pod_security_context(),
        "containers": [container],
        "volumes": volumes,
        **fill_placement(md),
    }
    if spec.service_account_name:
        pod_spec["serviceAccountName"] = spec.service_account_name
    if spec.image_pull_secrets:
        pod_spec["imagePullSecrets"] = [{"name": n} for n in spec.image_pull_secrets]
    job_labels = {**cache_labels(md), CACHE_KEY_LABEL: key}
    meta = _meta(md, fill_job_name(md, key))
    meta["labels"] = job_labels
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": meta,
        "spec": {
            "backoffLimit": FILL_BACKOFF_LIMIT,
            # a wrong source or credentials fail at once; an evicted or OOM-killed fill is retried
            "podFailurePolicy": {
                "rules": [
                    {
                        "action": "FailJob",
                        "onExitCodes": {
                            "containerName": FILL_CONTAINER,
                            "operator": "In",
                            "values": list(PERMANENT_EXIT_CODES),
                        },
                    },
                    {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]},
                ]
            },
            "template": {"metadata": {"labels": pod_labels}, "spec": pod_spec},
        },
    }


def cache_entries_count(md: ModelDeployment) -> int:
    """How many sources a fill fetches (models and LoRA adapters)."""
    return len(cache_entries(md.spec.models))
