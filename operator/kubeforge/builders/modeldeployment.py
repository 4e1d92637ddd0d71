"""Desired children of a ModelDeployment: the Triton Deployment, its Service and PodDisruptionBudget."""

from __future__ import annotations

from typing import Any

from kubeforge.api.modeldeployment import (
    ModelControlMode,
    ModelDeployment,
    ModelFormat,
    ModelSpec,
    gateway_of,
)
from kubeforge.builders import pods
from kubeforge.builders.cache import (
    CACHE_ROOT,
    CACHE_VOLUME,
    cache_claim_name,
    model_cache_key,
    one_node_cache,
    storage_env_from,
)
from kubeforge.builders.meta import Object, object_meta, owner_reference, recommended_labels, selector_labels
from kubeforge.settings import Settings
from kubeforge.triton.cache import key_dir
from kubeforge.triton.config import with_recommended_batching
from kubeforge.triton.repository import pvc_claim, repository_plan, source_uris
from kubeforge.triton.sources import DEFAULT_PVC_ROOT

KIND = "ModelDeployment"
HTTP_PORT, GRPC_PORT, METRICS_PORT = 8000, 8001, 8002
OPENAI_PORT = 9000
MODEL_REPOSITORY = "/models"
PVC_ROOT = DEFAULT_PVC_ROOT
PROBE_PERIOD_SECONDS = 10
# the canary revision (spec.rollout.canary): `<name>-canary`, its pods labelled as such
CANARY_SUFFIX = "-canary"
REVISION_LABEL = "kubeforge.io/revision"
CANARY = "canary"
# with rollout.canary.gateway the stable pods carry REVISION_LABEL=stable, and the route's Services
STABLE = "stable"
STABLE_SUFFIX = "-stable"
CANARY_REVISION_ANNOTATION = "kubeforge.io/canary-revision"
# the model cache, read-only in every serving container (spec.cache)
CACHE_MOUNT = {"name": CACHE_VOLUME, "mountPath": CACHE_ROOT, "readOnly": True}


def labels(md: ModelDeployment) -> dict[str, str]:
    return recommended_labels(KIND, md.metadata.name, component="inference-server", app="triton")


def selector(md: ModelDeployment) -> dict[str, str]:
    return selector_labels(KIND, md.metadata.name)


def selector_string(md: ModelDeployment) -> str:
    """The pod selector in the string form /scale and the HPA read (status.selector)."""
    return ",".join(f"{k}={v}" for k, v in sorted(selector(md).items()))


def child_meta(md: ModelDeployment, name: str | None = None) -> dict[str, Any]:
    """A child's metadata: named after the ModelDeployment (or `name`), its labels, owned by it."""
    assert md.metadata.uid is not None and md.metadata.namespace is not None
    owner = owner_reference(KIND, md.metadata.name, md.metadata.uid)
    return object_meta(name or md.metadata.name, md.metadata.namespace, labels(md), owner)


def pvc_claims(models: list[ModelSpec]) -> list[str]:
    """PersistentVolumeClaims the sources (models and LoRA adapters) live on, in first-seen order."""
    claims: list[str] = []
    for uri in source_uris(models):
        claim = pvc_claim(uri)
        if claim is not None and claim not in claims:
            claims.append(claim)
    return claims


# Triton's APIs that no client outside the pod needs and that change or expose the server: shared
# memory (the server reads and writes a region of its own /dev/shm that a client registers by name),
# trace and log settings (trace files are written on the server); in explicit model control mode also
# the model repository (load, unload). They are restricted to a header whose value is drawn at each
# start inside the container and never leaves it: closed to every client, in every namespace.
RESTRICTED_APIS = ("shared-memory", "trace", "logging")
RESTRICTED_APIS_ENV = "KUBEFORGE_RESTRICTED_APIS"
RESTRICTED_HEADER = "kubeforge-restricted"
RESTRICT_SCRIPT = (
    "token=$(cat /proc/sys/kernel/random/uuid)\n"
    'exec "$0" "$@" '
    f'--http-restricted-api="${RESTRICTED_APIS_ENV}:{RESTRICTED_HEADER}=$token" '
    f'--grpc-restricted-protocol="${RESTRICTED_APIS_ENV}:{RESTRICTED_HEADER}=$token"\n'
)


def restricted_apis(md: ModelDeployment) -> list[str]:
    runtime = md.spec.runtime
    explicit = runtime is not None and runtime.model_control_mode == ModelControlMode.EXPLICIT
    return [*RESTRICTED_APIS, *(["model-repository"] if explicit else [])]


def restricted_api_flags(apis: str, token: str) -> list[str]:
    """What RESTRICT_SCRIPT adds to tritonserver's arguments (for running a container spec locally)."""
    return [
        f"--http-restricted-api={apis}:{RESTRICTED_HEADER}={token}",
        f"--grpc-restricted-protocol={apis}:{RESTRICTED_HEADER}={token}",
    ]


def triton_args(md: ModelDeployment) -> list[str]:
    """tritonserver's arguments. Strict readiness makes /v2/health/ready mean every model is loaded."""
    runtime = md.spec.runtime
    mode = runtime.model_control_mode if runtime else ModelControlMode.NONE
    args = [
        f"--model-repository={MODEL_REPOSITORY}",
        f"--model-control-mode={mode.value}",
        "--strict-readiness=true",
        "--exit-on-error=true",
        f"--http-port={HTTP_PORT}",
        f"--grpc-port={GRPC_PORT}",
        f"--metrics-port={METRICS_PORT}",
        "--allow-metrics=true",
        f"--allow-gpu-metrics={'true' if md.spec.gpu else 'false'}",
        # per-model latency quantiles (nv_inference_request_summary_us): the dashboard's p99
        "--metrics-config=summary_latencies=true",
    ]
    if mode == ModelControlMode.EXPLICIT:
        # explicit mode loads nothing at start-up unless told which models to load
        args += [f"--load-model={m.name}" for m in md.spec.models]
    if mode == ModelControlMode.POLL:
        args.append("--repository-poll-secs=30")
    return args + list(runtime.args or []) if runtime else args


def parallelism(md: ModelDeployment) -> tuple[int, int]:
    """(GPUs per pod, nodes per replica): what a vLLM engine's parallelism defaults resolve against."""
    return (md.spec.gpu.resource_count if md.spec.gpu else 1), md.spec.replica_nodes


def served_models(md: ModelDeployment) -> list[ModelSpec]:
    """The models as served: the spec plus the operator's defaults (dynamic batching when a model batches).

    A default lives here, in the builder, never in a patch of the user's spec.
    """
    return [with_recommended_batching(m) for m in md.spec.models]


def _probe(path: str, failure_threshold: int, period: int = PROBE_PERIOD_SECONDS) -> dict[str, Any]:
    return {
        "httpGet": {"path": path, "port": "http"},
        "periodSeconds": period,
        "timeoutSeconds": 5,
        "failureThreshold": failure_threshold,
    }


def _repository_init_container(md: ModelDeployment, settings: Settings) -> dict[str, Any]:
    """Lays out /models: fetches every model, or with a model cache links them from it (no download,
    no credentials)."""
    mounts: list[dict[str, Any]] = [{"name": "models", "mountPath": MODEL_REPOSITORY}]
    args = ["--out", MODEL_REPOSITORY, "--pvc-root", PVC_ROOT]
    env = [{"name": "KUBEFORGE_MODELS", "value": repository_plan(served_models(md), *parallelism(md))}]
    key = model_cache_key(md)
    if key is not None:
        mounts.append(CACHE_MOUNT)
        args += ["--cache-dir", key_dir(CACHE_ROOT, key)]
    else:
        mounts += [
            {"name": f"pvc-{claim}", "mountPath": f"{PVC_ROOT}/{claim}", "readOnly": True}
            for claim in pvc_claims(md.spec.models)
        ]
    return {
        "name": "model-repository",
        "image": settings.helper_image,
        "command": ["kubeforge", "assemble-repository"],
        "args": args,
        "env": env,
        **(storage_env_from(md) if key is None else {}),
        "volumeMounts": mounts,
        "resources": {"requests": {"cpu": "100m", "memory": "256Mi"}, "limits": {"memory": "1Gi"}},
        "securityContext": pods.container_security_context(),
    }


def triton_image(md: ModelDeployment, settings: Settings) -> str:
    """The spec's image, else the operator's: the vLLM build of Triton when a model needs its backend."""
    if md.spec.runtime and md.spec.runtime.image:
        return md.spec.runtime.image
    if any(m.format == ModelFormat.VLLM for m in md.spec.models):
        return settings.triton_vllm_image
    return settings.triton_image


def triton_container(md: ModelDeployment, settings: Settings) -> dict[str, Any]:
    """The tritonserver container: named ports, health probes, GPUs, /dev/shm, the assembled repository."""
    runtime = md.spec.runtime
    startup_timeout = runtime.startup_timeout_seconds if runtime else 1800
    container: dict[str, Any] = {
        "name": "triton",
        "image": triton_image(md, settings),
        # `$0 "$@"` is tritonserver with its arguments (the container's args, readable in the spec)
        "command": ["/bin/sh", "-c", RESTRICT_SCRIPT, "tritonserver"],
        "args": triton_args(md),
        "ports": [
            {"name": "http", "containerPort": HTTP_PORT, "protocol": "TCP"},
            {"name": "grpc", "containerPort": GRPC_PORT, "protocol": "TCP"},
            {"name": "metrics", "containerPort": METRICS_PORT, "protocol": "TCP"},
        ],
        # large models take minutes to load: the startup probe holds liveness off until then
        "startupProbe": _probe("/v2/health/ready", max(1, startup_timeout // PROBE_PERIOD_SECONDS)),
        "readinessProbe": _probe("/v2/health/ready", 3, period=5),
        "livenessProbe": _probe("/v2/health/live", 3),
        "volumeMounts": [{"name": "models", "mountPath": MODEL_REPOSITORY}, pods.SHM_MOUNT],
        "securityContext": pods.container_security_context(),
    }
    if md.spec.cache is not None:
        # the repository's version folders (and a vLLM model's weights) are links into the cache
        container["volumeMounts"].append(CACHE_MOUNT)
    container["env"] = [
        {"name": RESTRICTED_APIS_ENV, "value": ",".join(restricted_apis(md))},
        *pods.env_vars(runtime.env if runtime else None),
    ]
    resources = pods.container_resources(md.spec.resources, md.spec.gpu)
    if resources:
        container["resources"] = resources
    return container


def openai_models(md: ModelDeployment) -> list[str]:
    """The language models the OpenAI front serves (spec.openai): the vLLM models, and the streaming
    Python models (how the trainer's python-llm export is served); none when spec.openai.enabled is
    false. The front finds a vLLM model's LoRA adapters and chat template in its repository folder."""
    if md.spec.openai is not None and md.spec.openai.enabled is False:
        return []
    return [
        m.name
        for m in md.spec.models
        if m.format == ModelFormat.VLLM or (m.format == ModelFormat.PYTHON and streams(m))
    ]


def openai_container(md: ModelDeployment, settings: Settings) -> dict[str, Any]:
    """`kubeforge openai-front` (the operator's image) beside tritonserver: OpenAI's API over the pod's Triton."""
    args = [
        "--port",
        str(OPENAI_PORT),
        "--triton",
        f"http://127.0.0.1:{HTTP_PORT}",
        "--repository",
        MODEL_REPOSITORY,
    ]
    for name in openai_models(md):
        args += ["--model", name]
    mounts: list[dict[str, Any]] = [{"name": "models", "mountPath": MODEL_REPOSITORY, "readOnly": True}]
    if md.spec.cache is not None:
        mounts.append(CACHE_MOUNT)  # the repository's folders are links into the cache
    return {
        "name": "openai",
        "image": settings.helper_image,
        "command": ["kubeforge", "openai-front"],
        "args": args,
        "ports": [{"name": "openai", "containerPort": OPENAI_PORT, "protocol": "TCP"}],
        # ready when Triton is: the front answers 503 on /health until then
        "readinessProbe": {
            "httpGet": {"path": "/health", "port": "openai"},
            "periodSeconds": 5,
            "timeoutSeconds": 5,
            "failureThreshold": 3,
        },
        "volumeMounts": mounts,
        "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}, "limits": {"memory": "512Mi"}},
        "securityContext": pods.container_security_context(),
    }


def rollout_strategy(md: ModelDeployment) -> dict[str, Any]:
    """With GPUs, replace a pod before starting its successor: a surge pod would wait for a free GPU forever."""
    rollout = md.spec.rollout
    gpu = md.spec.gpu is not None
    surge = rollout.max_surge if rollout and rollout.max_surge is not None else (0 if gpu else "25%")
    unavailable = (
        rollout.max_unavailable if rollout and rollout.max_unavailable is not None else (1 if gpu else "25%")
    )
    return {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": surge, "maxUnavailable": unavailable}}


def pod_annotations(md: ModelDeployment) -> dict[str, str]:
    annotations = {
        "prometheus.io/scrape": "true",
        "prometheus.io/port": str(METRICS_PORT),
        "prometheus.io/path": "/metrics",
    }
    if md.spec.pod_metadata and md.spec.pod_metadata.annotations:
        annotations.update(md.spec.pod_metadata.annotations)
    return annotations


def build_triton_deployment(md: ModelDeployment, settings: Settings) -> Object:
    """The Deployment running tritonserver for a ModelDeployment."""
    spec = md.spec
    pod_labels = dict(labels(md))
    if gateway_of(md) is not None:  # what the Service `<name>-stable` selects (build_revision_services)
        pod_labels[REVISION_LABEL] = STABLE
    if spec.pod_metadata and spec.pod_metadata.labels:
        pod_labels = {**spec.pod_metadata.labels, **pod_labels}
    volumes: list[dict[str, Any]] = [{"name": "models", "emptyDir": {}}, pods.shm_volume(spec.shm_size)]
    claim = cache_claim_name(md)
    if claim is not None:
        volumes.append(
            {"name": CACHE_VOLUME, "persistentVolumeClaim": {"claimName": claim, "readOnly": True}}
        )
    else:
        volumes += [
            {"name": f"pvc-{c}", "persistentVolumeClaim": {"claimName": c, "readOnly": True}}
            for c in pvc_claims(spec.models)
        ]
    pod_spec: dict[str, Any] = {
        "enableServiceLinks": False,
        "securityContext": pods.pod_security_context(),
        "initContainers": [_repository_init_container(md, settings)],
        "containers": [
            triton_container(md, settings),
            *([openai_container(md, settings)] if openai_models(md) else []),
        ],
        "volumes": volumes,
        **pods.placement_fields(spec.gpu, spec.placement),
    }
    if one_node_cache(md):
        # a ReadWriteOnce cache attaches to one node: every replica runs there
        pod_spec["affinity"] = pods.with_pod_affinity(
            pod_spec.get("affinity") or {}, selector(md), required=True
        )
    if spec.service_account_name:
        pod_spec["serviceAccountName"] = spec.service_account_name
    if spec.image_pull_secrets:
        pod_spec["imagePullSecrets"] = [{"name": n} for n in spec.image_pull_secrets]
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": child_meta(md),
        "spec": {
            "replicas": spec.replicas,
            "selector": {"matchLabels": selector(md)},
            "strategy": rollout_strategy(md),
            "revisionHistoryLimit": 5,
            "template": {
                "metadata": {"labels": pod_labels, "annotations": pod_annotations(md)},
                "spec": pod_spec,
            },
        },
    }


def canary_name(md: ModelDeployment) -> str:
    return f"{md.metadata.name}{CANARY_SUFFIX}"


def build_canary_deployment(md: ModelDeployment, settings: Settings, replicas: int, revision: str) -> Object:
    """The canary revision (spec.rollout.canary): the Deployment of the current spec, beside the stable
    one, annotated with the revision (the stable's template hash of this spec) it runs. Its pods carry
    the Service's selector labels, so the Service balances over both revisions by their ready pods; its
    own selector adds the revision label, so the two Deployments never share pods."""
    deployment = build_triton_deployment(md, settings)
    spec = deployment["spec"]
    spec["replicas"] = replicas
    spec["selector"] = {"matchLabels": {**selector(md), REVISION_LABEL: CANARY}}
    spec["template"]["metadata"]["labels"][REVISION_LABEL] = CANARY
    spec["template"]["metadata"]["labels"][CANARY_REVISION_ANNOTATION] = (
        revision  # which pods the analysis reads
    )
    meta = child_meta(md, canary_name(md))
    meta["annotations"] = {CANARY_REVISION_ANNOTATION: revision}
    return {**deployment, "metadata": meta}


def stable_name(md: ModelDeployment) -> str:
    return f"{md.metadata.name}{STABLE_SUFFIX}"


def build_revision_services(md: ModelDeployment) -> list[Object]:
    """With rollout.canary.gateway: a Service per revision, `<name>-stable` and `<name>-canary`, that
    the HTTPRoute weights (builders/gateway.py); none otherwise."""
    if gateway_of(md) is None:
        return []
    return [
        build_service(md, stable_name(md), {REVISION_LABEL: STABLE}),
        build_service(md, canary_name(md), {REVISION_LABEL: CANARY}),
    ]


def build_service(
    md: ModelDeployment, name: str | None = None, revision: dict[str, str] | None = None
) -> Object:
    """A ClusterIP Service in front of the servers: KServe v2 HTTP and gRPC, metrics, and OpenAI's API
    where the pods have the front. `name` and `revision` (selector labels added): one revision's."""
    openai = [{"name": "openai", "port": OPENAI_PORT, "targetPort": "openai", "protocol": "TCP"}]
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": child_meta(md, name),
        "spec": {
            "type": "ClusterIP",
            "selector": {**selector(md), **(revision or {})},
            "ports": [
                {"name": "http", "port": HTTP_PORT, "targetPort": "http", "protocol": "TCP"},
                {
                    "name": "grpc",
                    "port": GRPC_PORT,
                    "targetPort": "grpc",
                    "protocol": "TCP",
                    "appProtocol": "grpc",
                },
                {"name": "metrics", "port": METRICS_PORT, "targetPort": "metrics", "protocol": "TCP"},
                *(openai if openai_models(md) else []),
            ],
        },
    }


def build_pod_disruption_budget(md: ModelDeployment) -> Object | None:
    """Keep all but one server up through voluntary disruptions (drains); none for a single replica."""
    if md.spec.replicas <= 1:
        return None
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": child_meta(md),
        "spec": {"maxUnavailable": 1, "selector": {"matchLabels": selector(md)}},
    }


def streams(model: ModelSpec) -> bool:
    """Whether a model answers with a stream of responses: decoupled in its config, or vLLM (always is)."""
    return model.format == ModelFormat.VLLM or bool(model.config and model.config.decoupled)


def endpoints(md: ModelDeployment, settings: Settings) -> dict[str, str | list[str]]:
    """The Service's in-cluster URLs; `generate` and `generate_stream` list each streaming model's URLs.

    https://github.com/triton-inference-server/server/blob/main/docs/protocol/extension_generate.md
    """
    host = f"{md.metadata.name}.{md.metadata.namespace}.svc.{settings.cluster_domain}"
    urls: dict[str, str | list[str]] = {
        "http": f"http://{host}:{HTTP_PORT}",
        "grpc": f"{host}:{GRPC_PORT}",
        "metrics": f"http://{host}:{METRICS_PORT}/metrics",
    }
    streaming = [m.name for m in md.spec.models if streams(m)]
    if streaming:
        urls["generate"] = [f"http://{host}:{HTTP_PORT}/v2/models/{name}/generate" for name in streaming]
        urls["generate_stream"] = [
            f"http://{host}:{HTTP_PORT}/v2/models/{name}/generate_stream" for name in streaming
        ]
    if openai_models(md):
        urls["openai"] = f"http://{host}:{OPENAI_PORT}/v1"
    return urls
