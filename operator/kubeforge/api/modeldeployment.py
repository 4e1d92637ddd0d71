"""ModelDeployment: models served by NVIDIA Triton Inference Server behind a Service, with autoscaling."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Annotated, ClassVar, Literal

from pydantic import Field

from kubeforge.api.base import ApiModel, Quantity, Rule, StringMap, object_name_rules
from kubeforge.api.common import (
    GPU,
    ConditionList,
    EnvVar,
    ObjectMeta,
    Placement,
    PodMetadata,
    Resources,
)

KIND = "ModelDeployment"
PLURAL = "modeldeployments"
# Children are named after the ModelDeployment and the Service name must be a DNS-1035 label.
MAX_NAME_LENGTH = 63
MODEL_URI_PATTERN = r"^(s3://[a-z0-9][a-z0-9.-]{1,62}(/[^\s]*)?|gs://[a-z0-9][a-z0-9._-]{1,221}(/[^\s]*)?|https?://[^\s/]+(/[^\s]*)?|pvc://[a-z0-9]([-a-z0-9.]*[a-z0-9])?(/[^\s]*)?)$"
MODEL_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$"


class ModelFormat(StrEnum):
    """The Triton backend that serves a model."""

    PYTHON = "python"
    PYTORCH = "pytorch"
    ONNX = "onnx"
    TENSORRT = "tensorrt"
    TENSORFLOW = "tensorflow"
    OPENVINO = "openvino"
    VLLM = "vllm"
    ENSEMBLE = "ensemble"

    @property
    def backend(self) -> str:
        return {
            "python": "python",
            "pytorch": "pytorch",
            "onnx": "onnxruntime",
            "tensorrt": "tensorrt",
            "tensorflow": "tensorflow",
            "openvino": "openvino",
            "vllm": "vllm",
            "ensemble": "",
        }[self.value]


TRITON_DTYPES = (
    "TYPE_BOOL", "TYPE_UINT8", "TYPE_UINT16", "TYPE_UINT32", "TYPE_UINT64", "TYPE_INT8", "TYPE_INT16",
    "TYPE_INT32", "TYPE_INT64", "TYPE_FP16", "TYPE_FP32", "TYPE_FP64", "TYPE_STRING", "TYPE_BF16",
)  # fmt: skip
TritonDataType = Literal[
    "TYPE_BOOL", "TYPE_UINT8", "TYPE_UINT16", "TYPE_UINT32", "TYPE_UINT64", "TYPE_INT8", "TYPE_INT16",
    "TYPE_INT32", "TYPE_INT64", "TYPE_FP16", "TYPE_FP32", "TYPE_FP64", "TYPE_STRING", "TYPE_BF16",
]  # fmt: skip


class TensorSpec(ApiModel):
    """A model input or output as Triton's model configuration declares it."""

    name: str = Field(min_length=1, description="Tensor name as the model defines it.")
    data_type: TritonDataType = Field(description="Triton data type, e.g. TYPE_FP32.")
    dims: list[Annotated[int, Field(ge=-1)]] = Field(
        min_length=1, description="Shape without the batch dimension; -1 for a variable size."
    )
    optional: bool | None = Field(
        default=None, description="An input a request may leave out (Triton's `optional: true`)."
    )


class DynamicBatching(ApiModel):
    """Triton dynamic batching: requests are combined server-side into larger batches."""

    preferred_batch_sizes: list[Annotated[int, Field(ge=1)]] | None = Field(
        default=None, max_length=16, description="Batch sizes the batcher tries to form."
    )
    max_queue_delay_microseconds: int = Field(
        default=100, ge=0, description="How long a request may wait for a batch to fill."
    )


class InstanceGroupKind(StrEnum):
    GPU = "KIND_GPU"
    CPU = "KIND_CPU"
    AUTO = "KIND_AUTO"


class InstanceGroup(ApiModel):
    """How many copies of the model run, and where."""

    kind: InstanceGroupKind = Field(
        default=InstanceGroupKind.AUTO, description="KIND_GPU, KIND_CPU or KIND_AUTO."
    )
    count: int = Field(default=1, ge=1, le=64, description="Model instances (per GPU for KIND_GPU).")
    gpus: list[Annotated[int, Field(ge=0)]] | None = Field(
        default=None, description="GPU indices for KIND_GPU; all visible GPUs when unset."
    )


class TritonModelConfig(ApiModel):
    """The parts of Triton's config.pbtxt a team sets; rendered into the served repository."""

    max_batch_size: int = Field(
        default=0, ge=0, description="Largest batch the model accepts; 0 means the model does not batch."
    )
    dynamic_batching: DynamicBatching | None = Field(
        default=None, description="Enable Triton's dynamic batcher (needs maxBatchSize > 0)."
    )
    instance_groups: list[InstanceGroup] | None = Field(
        default=None, description="Model instances and placement."
    )
    inputs: list[TensorSpec] | None = Field(
        default=None, description="Model inputs (required by some backends)."
    )
    outputs: list[TensorSpec] | None = Field(default=None, description="Model outputs.")
    parameters: StringMap | None = Field(
        default=None, description="Backend parameters (config.pbtxt `parameters`)."
    )
    decoupled: bool | None = Field(
        default=None,
        description="The model may send any number of responses per request, e.g. one per generated token "
        "(Triton's decoupled model_transaction_policy); its streaming endpoints are then listed in "
        "status.endpoints.generateStream.",
    )

    rules = (
        Rule(
            cel="!has(self.dynamicBatching) || self.maxBatchSize > 0",
            message="config.dynamicBatching needs config.maxBatchSize > 0",
            check=lambda c: c.dynamic_batching is None or c.max_batch_size > 0,
        ),
        Rule(
            cel="!has(self.dynamicBatching) || !has(self.dynamicBatching.preferredBatchSizes) || "
            "self.dynamicBatching.preferredBatchSizes.all(b, b <= self.maxBatchSize)",
            message="config.dynamicBatching.preferredBatchSizes must not exceed config.maxBatchSize",
            check=lambda c: (
                c.dynamic_batching is None
                or not c.dynamic_batching.preferred_batch_sizes
                or all(b <= c.max_batch_size for b in c.dynamic_batching.preferred_batch_sizes)
            ),
        ),
    )


class ModelSpec(ApiModel):
    """One model served by the Triton server."""

    name: str = Field(
        pattern=MODEL_NAME_PATTERN, description="Model name in Triton (the URL path /v2/models/<name>)."
    )
    source: str = Field(
        pattern=MODEL_URI_PATTERN,
        max_length=1024,
        description=(
            "Where the model directory is (Triton layout: <version>/model files, optional config.pbtxt): "
            "s3://bucket/path, gs://bucket/path, https://host/model.tar.gz (a .tar.gz, .tgz or .zip archive), "
            "or pvc://<claim>/<path>."
        ),
    )
    format: ModelFormat = Field(description="Model format, which picks the Triton backend.")
    config: TritonModelConfig | None = Field(
        default=None,
        description="Triton model configuration. When set, it is rendered into config.pbtxt for the served model.",
    )


# a list keyed by name: the API server refuses duplicate names itself (no CEL cost)
ModelList = Annotated[
    list[ModelSpec],
    Field(json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]}),
]


class ModelControlMode(StrEnum):
    NONE = "none"
    POLL = "poll"
    EXPLICIT = "explicit"


class Runtime(ApiModel):
    """The Triton Inference Server container."""

    image: str | None = Field(
        default=None, min_length=1, description="Triton image; the operator's default when unset."
    )
    model_control_mode: ModelControlMode = Field(
        default=ModelControlMode.NONE, description="Triton --model-control-mode: none, poll or explicit."
    )
    args: list[str] | None = Field(default=None, description="Extra tritonserver arguments.")
    env: list[EnvVar] | None = Field(default=None, description="Extra environment variables.")
    startup_timeout_seconds: int = Field(
        default=1800,
        ge=30,
        le=86400,
        description="How long a pod may take to load its models before it is restarted.",
    )


class StorageCredentials(ApiModel):
    """Credentials for s3:// and gs:// sources."""

    secret_name: str = Field(
        pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$",
        max_length=253,
        description=(
            "Secret in the same namespace. For s3:// its keys AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY "
            "(and optionally AWS_SESSION_TOKEN, AWS_DEFAULT_REGION, AWS_ENDPOINT_URL) are given to the "
            "model-repository init container; for gs:// the same two keys hold a GCS HMAC key (XML API)."
        ),
    )


class AutoscalingEngine(StrEnum):
    HPA = "hpa"
    KEDA = "keda"


class AutoscalingTargets(ApiModel):
    """What the autoscaler aims for, per replica, in the user's terms."""

    queue_time_microseconds: int | None = Field(
        default=None, ge=1, description="Average time a request waits in Triton's queue (µs) per replica."
    )
    inferences_per_second: int | None = Field(
        default=None, ge=1, description="Successful inference requests per second per replica."
    )
    gpu_utilization: int | None = Field(
        default=None, ge=1, le=100, description="Average GPU utilisation in percent (DCGM_FI_DEV_GPU_UTIL)."
    )
    cpu_utilization: int | None = Field(
        default=None, ge=1, le=100, description="Average CPU utilisation in percent of the CPU request."
    )
    active_streams: int | None = Field(
        default=None,
        ge=1,
        description="Streams in flight (generating or waiting for a slot) per replica, as a streaming "
        "model reports them (kubeforge_active_streams; python-llm exports do).",
    )
    time_to_first_token_milliseconds: int | None = Field(
        default=None,
        ge=1,
        description="Average time to first token (ms) per replica, as a streaming model reports it "
        "(kubeforge_time_to_first_token_seconds; python-llm exports do).",
    )

    rules = (
        Rule(
            cel="has(self.queueTimeMicroseconds) || has(self.inferencesPerSecond) || has(self.gpuUtilization) "
            "|| has(self.cpuUtilization) || has(self.activeStreams) || has(self.timeToFirstTokenMilliseconds)",
            message="autoscaling.targets needs at least one target",
            check=lambda t: any(
                v is not None
                for v in (
                    t.queue_time_microseconds,
                    t.inferences_per_second,
                    t.gpu_utilization,
                    t.cpu_utilization,
                    t.active_streams,
                    t.time_to_first_token_milliseconds,
                )
            ),
        ),
    )


class ScalingBehavior(ApiModel):
    """How fast the autoscaler reacts."""

    scale_up_stabilization_seconds: int = Field(
        default=0, ge=0, le=3600, description="Look-back window before scaling up (HPA default 0)."
    )
    scale_down_stabilization_seconds: int = Field(
        default=300,
        ge=0,
        le=3600,
        description="Look-back window before scaling down (HPA default 300); with KEDA also the cooldown before the last replica goes.",
    )


class ActivationSource(StrEnum):
    INGRESS_NGINX = "ingress-nginx"


class Activation(ApiModel):
    """What wakes a ModelDeployment scaled to zero: demand that is visible while no replica exists.

    With no pod there is no Triton to report a queue, so the signal must come from in front of the
    pods. Nothing here buffers requests: until the first replica is ready, the front answers them
    (ingress-nginx: 503) and clients retry; status.coldStart says how long that took.
    """

    source: ActivationSource | None = Field(
        default=None,
        description="ingress-nginx: the rate of requests ingress-nginx counts for this ModelDeployment's "
        "Service (nginx_ingress_controller_requests, labels exported_namespace/exported_service as "
        "kube-prometheus-stack scrapes them); they are counted even while no endpoint exists.",
    )
    query: str | None = Field(
        default=None,
        min_length=1,
        max_length=2000,
        description="Or any PromQL returning the demand for this ModelDeployment (a value > 0 wakes it), "
        "e.g. your gateway's request rate for its Service.",
    )

    rules = (
        Rule(
            cel="has(self.source) != has(self.query)",
            message="autoscaling.activation needs exactly one of source and query",
            check=lambda a: (a.source is None) != (a.query is None),
        ),
    )


class Autoscaling(ApiModel):
    """Autoscaling rules: a HorizontalPodAutoscaler, or a KEDA ScaledObject (which can scale to zero)."""

    engine: AutoscalingEngine = Field(default=AutoscalingEngine.HPA, description="hpa or keda.")
    min_replicas: int = Field(default=1, ge=0, le=1000, description="Fewest replicas; 0 needs engine keda.")
    max_replicas: int = Field(ge=1, le=1000, description="Most replicas.")
    targets: AutoscalingTargets = Field(
        default_factory=lambda: AutoscalingTargets(queue_time_microseconds=50000),
        description="Per-replica targets; the autoscaler scales on the one that asks for most replicas.",
    )
    behavior: ScalingBehavior | None = Field(default=None, description="Stabilisation windows.")
    activation: Activation | None = Field(
        default=None, description="The demand signal that wakes it from zero (required with minReplicas 0)."
    )

    rules = (
        Rule(
            cel="self.minReplicas <= self.maxReplicas",
            message="autoscaling.minReplicas must be <= autoscaling.maxReplicas",
            check=lambda a: a.min_replicas <= a.max_replicas,
        ),
        Rule(
            cel="self.minReplicas > 0 || self.engine == 'keda'",
            message="autoscaling.minReplicas: 0 (scale to zero) needs autoscaling.engine: keda",
            check=lambda a: a.min_replicas > 0 or a.engine == AutoscalingEngine.KEDA,
        ),
        Rule(
            cel="self.minReplicas > 0 || has(self.activation)",
            message="autoscaling.minReplicas: 0 needs autoscaling.activation: with no replica there is no "
            "Triton to report demand, so something in front of the pods must (e.g. source: ingress-nginx)",
            check=lambda a: a.min_replicas > 0 or a.activation is not None,
        ),
    )


class Monitoring(ApiModel):
    """Prometheus scraping of Triton's metrics port."""

    service_monitor: bool = Field(
        default=True,
        description="Create a ServiceMonitor when the Prometheus operator is installed "
        "(prometheus.io/* annotations are always set).",
    )


class Rollout(ApiModel):
    """Rolling update limits. With GPUs the default is maxSurge 0 so a rollout never waits for a spare GPU."""

    max_surge: Quantity | None = Field(
        default=None, description="Extra pods during a rollout (default 0 with GPUs, 25% without)."
    )
    max_unavailable: Quantity | None = Field(
        default=None, description="Pods that may be down during a rollout (default 1 with GPUs, 25% without)."
    )


class ModelDeploymentSpec(ApiModel):
    """The desired state of a ModelDeployment."""

    models: ModelList = Field(
        min_length=1, max_length=32, description="Models served together by one Triton server."
    )
    replicas: int = Field(
        default=1,
        ge=0,
        le=1000,
        description="Server pods (the /scale subresource). With autoscaling on, the autoscaler sets it.",
    )
    runtime: Runtime | None = Field(default=None, description="The Triton server container.")
    storage: StorageCredentials | None = Field(
        default=None, description="Credentials for s3:// and gs:// sources."
    )
    gpu: GPU | None = Field(default=None, description="GPUs per pod; unset means CPU only.")
    resources: Resources | None = Field(default=None, description="CPU and memory per pod.")
    shm_size: Quantity = Field(
        default="1Gi", description="Size of the in-memory /dev/shm volume (the Python backend needs it)."
    )
    autoscaling: Autoscaling | None = Field(
        default=None, description="Autoscaling rules; unset means fixed replicas."
    )
    monitoring: Monitoring | None = Field(default=None, description="Prometheus scraping.")
    rollout: Rollout | None = Field(default=None, description="Rolling update limits.")
    placement: Placement | None = Field(
        default=None, description="Node selection, tolerations, affinity, priority."
    )
    pod_metadata: PodMetadata | None = Field(
        default=None, description="Extra labels and annotations on the pods."
    )
    service_account_name: str | None = Field(default=None, description="ServiceAccount of the server pods.")
    image_pull_secrets: list[str] | None = Field(
        default=None, description="Names of Secrets to pull images with."
    )

    rules = (
        Rule(
            cel="",  # the schema's list-map keyed by name refuses duplicates itself
            message="models: Duplicate value: models[].name must be unique",
            check=lambda s: len({m.name for m in s.models}) == len(s.models),
        ),
        Rule(
            cel="!has(self.autoscaling) || self.replicas <= self.autoscaling.maxReplicas",
            message="replicas must not exceed autoscaling.maxReplicas",
            check=lambda s: s.autoscaling is None or s.replicas <= s.autoscaling.max_replicas,
        ),
        Rule(
            cel="!has(self.models) || has(self.storage) "
            "|| !self.models.exists(m, m.source.startsWith('s3://') || m.source.startsWith('gs://'))",
            message="storage.secretName is required when a model source is s3:// or gs://",
            check=lambda s: (
                s.storage is not None or not any(m.source.startswith(("s3://", "gs://")) for m in s.models)
            ),
        ),
    )


class ModelState(ApiModel):
    """A model's state as read from Triton's repository index."""

    name: str = Field(description="Model name.")
    state: str = Field(description="READY, UNAVAILABLE, LOADING or Unknown.")
    version: str | None = Field(default=None, description="Served version.")
    reason: str | None = Field(default=None, description="Why the model is not ready, as Triton reports it.")


class Endpoints(ApiModel):
    """In-cluster URLs of the inference service."""

    http: str | None = Field(default=None, description="KServe v2 HTTP/REST endpoint.")
    grpc: str | None = Field(default=None, description="KServe v2 gRPC endpoint (host:port).")
    metrics: str | None = Field(default=None, description="Prometheus metrics endpoint.")
    generate_stream: list[str] | None = Field(
        default=None,
        description="Server-sent-events URLs (Triton's generate_stream) of the models that stream their "
        "responses (decoupled, or vLLM); gRPC clients stream through the grpc endpoint.",
    )


class Phase(StrEnum):
    PENDING = "Pending"
    PROGRESSING = "Progressing"
    READY = "Ready"
    SCALED_TO_ZERO = "ScaledToZero"
    DEGRADED = "Degraded"
    FAILED = "Failed"


class ColdStart(ApiModel):
    """The last scale-up from zero replicas: from the autoscaler's activation to a ready server.

    While it lasts, requests find no ready endpoint (the Service has none): clients must retry,
    as nothing buffers them in front of Triton.
    """

    activated_at: datetime = Field(description="When the replicas went from 0 to at least 1.")
    ready_at: datetime | None = Field(default=None, description="When the first server was ready again.")
    seconds: float | None = Field(default=None, description="readyAt - activatedAt: the cold start's length.")


class ModelDeploymentStatus(ApiModel):
    """The observed state of a ModelDeployment; written only by the operator."""

    model_config = ApiModel.model_config | {"extra": "ignore"}

    observed_generation: int | None = Field(default=None, description="The generation the status describes.")
    phase: Phase | None = Field(
        default=None, description="Pending, Progressing, Ready, ScaledToZero, Degraded or Failed."
    )
    replicas: int | None = Field(
        default=None, description="Server pods that exist (the /scale subresource's replicas)."
    )
    desired_replicas: int | None = Field(
        default=None, description="Replicas the spec or the autoscaler asks for."
    )
    ready_replicas: int | None = Field(
        default=None, description="Server pods that are ready (all models loaded)."
    )
    ready: str | None = Field(
        default=None, description="Ready/desired replicas, e.g. 2/3 (a printer column)."
    )
    selector: str | None = Field(
        default=None, description="Label selector of the server pods (for /scale and HPA)."
    )
    model: str | None = Field(
        default=None, description="The served model names, comma separated (a printer column)."
    )
    gpu: str | None = Field(
        default=None, description="GPUs per pod, e.g. 1x NVIDIA-A100-SXM4-80GB (a printer column)."
    )
    endpoints: Endpoints | None = Field(default=None, description="Where to send inference requests.")
    models: list[ModelState] | None = Field(default=None, description="Per-model state read from Triton.")
    cold_start: ColdStart | None = Field(
        default=None, description="The last scale-up from zero (autoscaling with minReplicas 0)."
    )
    conditions: ConditionList | None = Field(
        default=None,
        description="Ready, Available, Progressing, Degraded, ModelsReady, AutoscalingReady, "
        "Reconciling, Stalled.",
    )


class ModelDeployment(ApiModel):
    """A ModelDeployment object as stored by the API server."""

    model_config = ApiModel.model_config | {"extra": "ignore"}
    api_version: Literal["kubeforge.io/v1alpha1"] = Field(
        default="kubeforge.io/v1alpha1", description="API version."
    )
    kind: Literal["ModelDeployment"] = Field(default="ModelDeployment", description="Kind.")
    metadata: ObjectMeta = Field(description="Standard object metadata.")
    spec: ModelDeploymentSpec = Field(description="Desired state.")
    status: ModelDeploymentStatus | None = Field(default=None, description="Observed state.")

    rules: ClassVar[tuple[Rule, ...]] = object_name_rules(
        MAX_NAME_LENGTH, "it names the Service, which must be a DNS-1035 label"
    )
