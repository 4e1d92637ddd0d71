"""ModelDeployment: models served by NVIDIA Triton Inference Server behind a Service, with autoscaling."""

from __future__ import annotations

import re
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any, ClassVar, Literal

from pydantic import Field, WithJsonSchema, field_validator

from kubeforge.api.base import (
    ApiModel,
    Quantity,
    Rule,
    StringMap,
    no_credential_rule,
    object_name_rules,
)
from kubeforge.api.common import (
    DNS_LABEL_PATTERN,
    GPU,
    ConditionList,
    EnvVar,
    ObjectMeta,
    Placement,
    PodMetadata,
    Resources,
)
from kubeforge.openai.chat import template_error

KIND = "ModelDeployment"
PLURAL = "modeldeployments"
# Children are named after the ModelDeployment and the Service name must be a DNS-1035 label.
MAX_NAME_LENGTH = 63
# with rollout.canary.gateway it also names the Services `<name>-stable` and `<name>-canary`
MAX_GATEWAY_NAME_LENGTH = MAX_NAME_LENGTH - len("-stable")
# the Gateway API's names of objects and listeners, and its hostnames (a leading wildcard label allowed)
DNS_SUBDOMAIN_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
HOSTNAME_PATTERN = r"^(\*\.)?[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
# a chat template rides in the init container's plan (an env var): the largest published ones are ~20 KB
MAX_CHAT_TEMPLATE = 65536
MODEL_URI_PATTERN = r"^(s3://[a-z0-9][a-z0-9.-]{1,62}(/[^\s]*)?|gs://[a-z0-9][a-z0-9._-]{1,221}(/[^\s]*)?|https?://[^\s/]+(/[^\s]*)?|pvc://[a-z0-9]([-a-z0-9.]*[a-z0-9])?(/[^\s]*)?)$"
MODEL_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$"
# Hugging Face Hub repositories: hf://<org>/<model>[@<revision>] (a branch, tag or commit)
HF_URI_PATTERN = r"hf://[A-Za-z0-9][A-Za-z0-9_.-]{0,95}/[A-Za-z0-9][A-Za-z0-9_.-]{0,95}(@[A-Za-z0-9][A-Za-z0-9_./-]{0,127})?"
# where a served model comes from: the URIs a TrainingJob can also write, and the Hugging Face Hub
MODEL_SOURCE_PATTERN = MODEL_URI_PATTERN.removesuffix(")$") + "|" + HF_URI_PATTERN + ")$"
# where the credential of a source goes instead of its URL
SOURCE_CREDENTIALS = (
    "for https give the Authorization header by a Secret (storage.secretName, key HTTP_AUTHORIZATION); "
    "for a presigned URL use its s3:// or gs:// form with storage.secretName"
)
# the engine arguments the typed fields of `llm` own; engineArgs may not set them again
TYPED_ENGINE_ARGS = (
    "model", "tensor_parallel_size", "pipeline_parallel_size", "max_model_len", "gpu_memory_utilization",
    "dtype", "quantization", "enable_prefix_caching", "max_num_seqs", "enable_lora",
    "distributed_executor_backend",
)  # fmt: skip


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
    MODEL = "KIND_MODEL"  # the backend places the model on devices itself (vLLM's engine does)


class InstanceGroup(ApiModel):
    """How many copies of the model run, and where."""

    kind: InstanceGroupKind = Field(
        default=InstanceGroupKind.AUTO,
        description="KIND_GPU, KIND_CPU, KIND_AUTO, or KIND_MODEL (the backend places the model itself).",
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


class LoraAdapter(ApiModel):
    """A LoRA adapter served on top of a vLLM model; requests pick it by name."""

    name: str = Field(
        pattern=MODEL_NAME_PATTERN,
        description="The adapter's name: requests select it with the `lora_name` parameter.",
    )
    source: str = Field(
        pattern=MODEL_SOURCE_PATTERN,
        max_length=1024,
        description="Where the adapter's files are (PEFT layout: adapter_config.json and weights); "
        "the same URI forms as the model's source.",
    )

    rules = (no_credential_rule("source", SOURCE_CREDENTIALS),)


# any JSON value: some engine arguments are objects (speculative_config, hf_overrides, ...)
EngineArgs = Annotated[
    dict[str, Any],
    WithJsonSchema({"type": "object", "x-kubernetes-preserve-unknown-fields": True}),
]


class LLMEngine(ApiModel):
    """vLLM engine settings for a `format: vllm` model, rendered into its model.json.

    Triton's vLLM backend builds vLLM's AsyncEngineArgs from model.json
    (https://github.com/triton-inference-server/vllm_backend); each field here is the engine
    argument of the same name in snake_case.
    """

    tensor_parallel_size: int | None = Field(
        default=None,
        ge=1,
        le=256,
        description="GPUs each layer is split across. Default: the GPUs of one pod (gpu.count).",
    )
    pipeline_parallel_size: int | None = Field(
        default=None,
        ge=1,
        le=64,
        description="Pipeline stages, one per node: more than 1 spreads a replica over several nodes "
        "(a LeaderWorkerSet group). Default 1.",
    )
    max_model_len: int | None = Field(
        default=None, ge=16, le=16777216, description="Longest context (prompt + output tokens)."
    )
    gpu_memory_utilization: float | None = Field(
        default=None,
        gt=0,
        le=1,
        description="Fraction of each GPU's memory vLLM may use for weights and KV cache (vLLM default 0.9).",
    )
    dtype: Literal["auto", "half", "float16", "bfloat16", "float", "float32"] | None = Field(
        default=None,
        description="Weights and activations type: auto, half, float16, bfloat16, float, float32.",
    )
    quantization: str | None = Field(
        default=None,
        pattern=r"^[a-z0-9][a-z0-9_-]{0,63}$",
        description="vLLM quantization method, e.g. awq, gptq, fp8 (the weights must be quantized that way).",
    )
    enable_prefix_caching: bool | None = Field(
        default=None, description="Reuse the KV cache of shared prompt prefixes across requests."
    )
    max_num_seqs: int | None = Field(
        default=None, ge=1, le=65536, description="Most sequences batched together in one step."
    )
    lora_adapters: (
        Annotated[
            list[LoraAdapter],
            Field(
                max_length=64,
                json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]},
            ),
        ]
        | None
    ) = Field(
        default=None,
        max_length=64,
        description="LoRA adapters (name -> source), fetched with the model; enables vLLM's LoRA support.",
    )
    engine_args: EngineArgs | None = Field(
        default=None,
        description="Other vLLM engine arguments by their snake_case name, e.g. {enforce_eager: true, "
        "max_lora_rank: 64}. Fields typed above are refused here.",
    )
    chat_template: str | None = Field(
        default=None,
        min_length=1,
        max_length=MAX_CHAT_TEMPLATE,
        description="The Jinja2 chat template the OpenAI API (spec.openai) renders chat messages with, in "
        "Hugging Face's form (messages, add_generation_prompt, bos_token, eos_token). Default: the model's "
        "own, from chat_template.jinja or the chat_template of tokenizer_config.json in its files.",
    )

    @field_validator("chat_template")
    @classmethod
    def _jinja(cls, template: str | None) -> str | None:
        if template is not None:
            error = template_error(template)
            if error:
                raise ValueError(f"not a Jinja2 template: {error}")
        return template

    # Checked by the operator only (status Stalled, reason InvalidSpec): CEL cannot range over an
    # object whose fields are unknown to the schema.
    rules = (
        Rule(
            cel="",
            message="llm.engineArgs may not set model, distributed_executor_backend, enable_lora or an "
            "argument that llm has a field for (use that field, e.g. llm.tensorParallelSize)",
            check=lambda e: not e.engine_args or not set(e.engine_args) & set(TYPED_ENGINE_ARGS),
        ),
        Rule(
            cel="",
            message="llm.engineArgs keys are vLLM engine argument names in snake_case, e.g. enforce_eager",
            check=lambda e: all(re.match(r"^[a-z][a-z0-9_]{0,63}$", k) for k in e.engine_args or {}),
        ),
    )

    def parallel_gpus(self, gpus_per_pod: int) -> int:
        """GPUs one engine spans: tensorParallelSize x pipelineParallelSize (defaults resolved)."""
        return (self.tensor_parallel_size or gpus_per_pod) * (self.pipeline_parallel_size or 1)


class ModelSpec(ApiModel):
    """One model served by the Triton server."""

    name: str = Field(
        pattern=MODEL_NAME_PATTERN, description="Model name in Triton (the URL path /v2/models/<name>)."
    )
    source: str = Field(
        pattern=MODEL_SOURCE_PATTERN,
        max_length=1024,
        description=(
            "Where the model directory is (Triton layout: <version>/model files, optional config.pbtxt; "
            "for format vllm with llm: the Hugging Face model files): s3://bucket/path, gs://bucket/path, "
            "https://host/model.tar.gz (a .tar.gz, .tgz or .zip archive), pvc://<claim>/<path>, or "
            "hf://<org>/<model>[@<revision>] (the Hugging Face Hub)."
        ),
    )
    format: ModelFormat = Field(description="Model format, which picks the Triton backend.")
    config: TritonModelConfig | None = Field(
        default=None,
        description="Triton model configuration. When set, it is rendered into config.pbtxt for the served model.",
    )
    llm: LLMEngine | None = Field(
        default=None,
        description="vLLM engine settings (format vllm): the operator renders Triton's vLLM model "
        "repository (model.json, config.pbtxt) from them and the fetched weights.",
    )

    rules = (
        Rule(
            cel="!has(self.llm) || self.format == 'vllm'",
            message="models[].llm needs format: vllm",
            check=lambda m: m.llm is None or m.format == ModelFormat.VLLM,
        ),
        Rule(
            cel="!has(self.llm) || !has(self.config)",
            message="models[].llm and models[].config are mutually exclusive: the operator renders a vLLM "
            "model's config.pbtxt from llm",
            check=lambda m: m.llm is None or m.config is None,
        ),
        no_credential_rule("source", SOURCE_CREDENTIALS),
    )

    def adapters(self) -> list[LoraAdapter]:
        """Its LoRA adapters (none without llm)."""
        return list(self.llm.lora_adapters or []) if self.llm else []


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
    """Credentials for the sources, from a Secret: they never appear in a spec, a status or a log."""

    secret_name: str = Field(
        pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$",
        max_length=253,
        description=(
            "Secret in the same namespace, given to the container that fetches the models (by reference, "
            "envFrom). For s3:// its keys AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY (and optionally "
            "AWS_SESSION_TOKEN, AWS_DEFAULT_REGION, AWS_ENDPOINT_URL); for gs:// the same two keys hold a GCS "
            "HMAC key (XML API); for hf:// the optional key HF_TOKEN holds a Hugging Face access token (and "
            "HF_ENDPOINT, optional, a Hub mirror's URL); for https:// the optional key HTTP_AUTHORIZATION is "
            "sent as the Authorization header (e.g. `Bearer <token>`) and HTTP_HEADERS, a JSON object, as more "
            "headers, to the source's URL only (never along a redirect). The Secret must exist: until it does, "
            "the fetching pod does not start (CreateContainerConfigError) and the status names it."
        ),
    )


class IPBlock(ApiModel):
    """Addresses outside the cluster (a NetworkPolicy ipBlock)."""

    cidr: str = Field(max_length=64, description="A CIDR, e.g. 10.0.0.0/8 or 2001:db8::/32.")
    except_: list[Annotated[str, Field(max_length=64)]] | None = Field(
        default=None, alias="except", max_length=16, description="CIDRs inside cidr that are left out."
    )


class LabelSelectorRequirement(ApiModel):
    key: str = Field(max_length=317, description="A label key.")
    operator: Literal["In", "NotIn", "Exists", "DoesNotExist"] = Field(description="How the key is matched.")
    values: list[Annotated[str, Field(max_length=63)]] | None = Field(
        default=None, max_length=64, description="The values for In and NotIn."
    )


class LabelSelector(ApiModel):
    """A Kubernetes label selector; {} selects everything."""

    match_labels: StringMap | None = Field(default=None, description="Labels that must all be present.")
    match_expressions: list[LabelSelectorRequirement] | None = Field(
        default=None, max_length=16, description="Requirements that must all hold."
    )


class NetworkPeer(ApiModel):
    """Who may connect: pods (of namespaces) by labels, or addresses (a NetworkPolicyPeer)."""

    pod_selector: LabelSelector | None = Field(
        default=None, description="A label selector of pods (in this namespace, unless namespaceSelector)."
    )
    namespace_selector: LabelSelector | None = Field(
        default=None, description="A label selector of namespaces ({} selects every namespace)."
    )
    ip_block: IPBlock | None = Field(default=None, description="Addresses, instead of pods.")

    rules = (
        Rule(
            cel="has(self.podSelector) || has(self.namespaceSelector) || has(self.ipBlock)",
            message="network.allowFrom[]: set podSelector, namespaceSelector or ipBlock",
            check=lambda p: (
                p.pod_selector is not None or p.namespace_selector is not None or p.ip_block is not None
            ),
        ),
        Rule(
            cel="!has(self.ipBlock) || (!has(self.podSelector) && !has(self.namespaceSelector))",
            message="network.allowFrom[]: ipBlock cannot be combined with podSelector or namespaceSelector",
            check=lambda p: p.ip_block is None or (p.pod_selector is None and p.namespace_selector is None),
        ),
    )


class NetworkAccess(ApiModel):
    """Who may reach the servers (with the operator's NetworkPolicies on, the chart's default)."""

    allow_from: list[NetworkPeer] | None = Field(
        default=None,
        max_length=16,
        description="Who may connect to Triton's HTTP and gRPC ports (8000, 8001) and the OpenAI front's "
        "(9000), besides the operator "
        "and the ModelDeployment's own pods; [] admits nobody else. Absent: the operator's default "
        "(chart value networkPolicy.inferenceFrom; empty there means anyone).",
    )


class OpenAIAPI(ApiModel):
    """The OpenAI-compatible API (/v1/models, /v1/completions, /v1/chat/completions) of the language models."""

    enabled: bool | None = Field(
        default=None,
        description="Serve the OpenAI API on the Service's `openai` port (9000, path /v1) from a front "
        "container in each server pod, for the language models: vLLM models (each LoRA adapter is a model "
        "id of its own) and the streaming Python models the trainer exports (python-llm). Default: on "
        "when there is one; false removes the container and the port.",
    )


class ModelCache(ApiModel):
    """A volume the models are fetched into once, by a Job, and served from by every pod.

    New replicas and scale-up from zero then load from the volume and download nothing. The pods
    mount it read-only and start only after the fill has completed; a change of source fills a new
    copy while the pods keep serving the previous one. A fill that failed is retried after a minute,
    then after two, four, ... up to an hour (status.cache.retryAt): fix the source or its credentials
    meanwhile, or delete the fill Job (status.cache.job) to retry at once.
    """

    claim_name: str | None = Field(
        default=None,
        pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$",
        max_length=253,
        description="A PersistentVolumeClaim of yours to use (it must allow many pods to mount it, "
        "e.g. ReadWriteMany); unset means the operator creates one of `size`.",
    )
    size: Quantity | None = Field(
        default=None, description="Size of the claim the operator creates, e.g. 200Gi."
    )
    storage_class_name: str | None = Field(
        default=None,
        max_length=253,
        description="StorageClass of the claim the operator creates; the cluster default when unset.",
    )
    access_mode: Literal["ReadWriteMany", "ReadWriteOnce"] = Field(
        default="ReadWriteMany",
        description="Access mode of the claim the operator creates: ReadWriteMany (a shared file system; "
        "pods on any node) or ReadWriteOnce (one node: every replica is placed on the node of the "
        "others, the fill on the serving pods' kind of node, and a replica may not span nodes).",
    )

    rules = (
        Rule(
            cel="has(self.claimName) != has(self.size)",
            message="cache needs exactly one of claimName (your claim) and size (a claim the operator creates)",
            check=lambda c: (c.claim_name is None) != (c.size is None),
        ),
        Rule(
            cel="!has(self.claimName) || !has(self.storageClassName)",
            message="cache.storageClassName applies only to a claim the operator creates (cache.size)",
            check=lambda c: c.claim_name is None or c.storage_class_name is None,
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
        description="Requests in flight per replica: a python-llm export's streams (generating or waiting "
        "for a slot, kubeforge_active_streams), or for vLLM the mean concurrency of its requests "
        "(rate of vllm:e2e_request_latency_seconds_sum).",
    )
    time_to_first_token_milliseconds: int | None = Field(
        default=None,
        ge=1,
        description="Average time to first token (ms) per replica: kubeforge_time_to_first_token_seconds "
        "(python-llm exports) or vllm:time_to_first_token_seconds (vLLM).",
    )
    pending_requests: int | None = Field(
        default=None,
        ge=1,
        description="Requests waiting in Triton's queue per replica (nv_inference_pending_request_count): "
        "queue depth. A vLLM model takes requests into its own scheduler at once, so for vLLM use "
        "activeStreams or timeToFirstTokenMilliseconds.",
    )

    rules = (
        Rule(
            cel="has(self.queueTimeMicroseconds) || has(self.inferencesPerSecond) || has(self.gpuUtilization) "
            "|| has(self.cpuUtilization) || has(self.activeStreams) || has(self.timeToFirstTokenMilliseconds) "
            "|| has(self.pendingRequests)",
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
                    t.pending_requests,
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


class CanaryStep(ApiModel):
    """One step of a canary rollout: the canary's share of the replicas, and how long it holds."""

    weight: int = Field(
        ge=1,
        le=99,
        description="Percent of the replicas the canary revision runs in this step (and so of the requests "
        "the Service balances to it): ceil(weight x replicas / 100), at least 1; the stable revision keeps "
        "the rest, at least 1.",
    )
    pause_seconds: int | None = Field(
        default=None,
        ge=0,
        le=86400,
        description="How long the step holds once the canary's pods are ready, before the next step (with "
        "analysis: and a passed analysis). Unset: until promoted by hand (annotation "
        "kubeforge.io/rollout-action=promote).",
    )


class CanaryAnalysis(ApiModel):
    """Live comparison of the canary with the stable revision, on Triton's metrics in Prometheus
    (the operator's KUBEFORGE_PROMETHEUS_ADDRESS, the chart's prometheusAddress), over the same window."""

    interval_seconds: int = Field(
        default=60, ge=10, le=3600, description="The window each analysis reads, and how often it runs."
    )
    min_requests: int = Field(
        default=20,
        ge=1,
        le=1_000_000,
        description="Requests each revision must have served in the window; fewer makes the analysis "
        "inconclusive, and the step holds.",
    )
    max_error_ratio_increase: float = Field(
        default=0.01,
        ge=0,
        le=1,
        description="How much the canary's failed/all request ratio may exceed the stable's.",
    )
    latency_quantile: Literal["0.5", "0.9", "0.95", "0.99"] = Field(
        default="0.9",
        description="The request latency quantile compared (from Triton's nv_inference_request_summary_us).",
    )
    max_latency_ratio: float = Field(
        default=1.5,
        ge=1,
        le=100,
        description="How many times the stable's latency quantile the canary's may be.",
    )
    max_time_to_first_token_ratio: float = Field(
        default=1.5,
        ge=1,
        le=100,
        description="With a streaming (language) model: how many times the stable's mean time to first "
        "token the canary's may be.",
    )


class CanaryGateway(ApiModel):
    """The Gateway (Gateway API, standard channel v1.4 or later) whose traffic the canary's weights split."""

    name: str = Field(
        pattern=DNS_SUBDOMAIN_PATTERN, max_length=253, description="The Gateway's name (its parentRef)."
    )
    namespace: str | None = Field(
        default=None,
        pattern=DNS_LABEL_PATTERN,
        max_length=63,
        description="The Gateway's namespace; default: this ModelDeployment's. Its listener must allow "
        "routes from this namespace (allowedRoutes).",
    )
    section_name: str | None = Field(
        default=None,
        pattern=DNS_SUBDOMAIN_PATTERN,
        max_length=253,
        description="The Gateway's listener to attach to; default: every listener that allows the route.",
    )
    hostnames: list[Annotated[str, Field(max_length=253, pattern=HOSTNAME_PATTERN)]] | None = Field(
        default=None,
        max_length=16,
        description="The HTTPRoute's hostnames; default: every hostname of the listener.",
    )
    drain_seconds: int = Field(
        default=30,
        ge=0,
        le=600,
        description="When a canary ends (promoted, rolled back, cancelled), how long its pods keep running "
        "after the route stops sending them requests, before they go: a gateway applies a route change "
        "some seconds later (Argo Rollouts' scaleDownDelaySeconds).",
    )


class Canary(ApiModel):
    """Roll a new pod template (models, sources, runtime, image: any edit that changes the pods) out as a
    canary Deployment `<name>-canary` beside the stable one, step by step, and promote it or roll it back."""

    gateway: CanaryGateway | None = Field(
        default=None,
        description="Split the traffic by an HTTPRoute `<name>` on this Gateway, to the Services "
        "`<name>-stable` and `<name>-canary`, with exactly each step's weight (unset: by the ratio of ready "
        "replicas behind the one Service). Without a canary running, the route sends everything to the "
        "Service `<name>`. It routes Triton's HTTP API (`/`, port 8000) and, for a language model, the OpenAI "
        "API (`/v1`, port 9000); not gRPC.",
    )

    steps: list[CanaryStep] = Field(
        min_length=1,
        max_length=20,
        description="The canary's weights, in order; the last step passed promotes.",
    )
    analysis: CanaryAnalysis | None = Field(
        default=None,
        description="Analysis between steps; unset: the steps advance on their pauses alone.",
    )


class ProposalGate(ApiModel):
    """What a trained model's recorded evaluation (the TrainingJob's status.validation) must show."""

    max_validation_loss: float | None = Field(
        default=None, ge=0, description="Its validation loss must be at most this."
    )
    better_than_serving: bool = Field(
        default=False,
        description="Its validation loss must be lower than the one recorded for the model this "
        "ModelDeployment serves (status.trainedModel); nothing recorded refuses it.",
    )

    rules = (
        Rule(
            cel="has(self.maxValidationLoss) || (has(self.betterThanServing) && self.betterThanServing)",
            message="rollout.proposals.gate needs maxValidationLoss, betterThanServing: true, or both",
            check=lambda g: g.max_validation_loss is not None or g.better_than_serving,
        ),
    )


class Proposals(ApiModel):
    """TrainingJobs that may propose their trained model to this ModelDeployment (their
    spec.output.proposeTo): a proposal that passes the gate replaces the model's source, and so
    rolls out like any edit (a canary with rollout.canary)."""

    job_labels: dict[str, str] = Field(
        min_length=1, description="A TrainingJob may propose when its labels include all of these."
    )
    model: str = Field(
        pattern=MODEL_NAME_PATTERN,
        max_length=128,  # bounds the CEL cost of comparing it with every model's name
        description="The model of spec.models whose source a proposal replaces.",
    )
    gate: ProposalGate = Field(description="What the job's recorded evaluation must show.")


class Rollout(ApiModel):
    """Rolling update limits. With GPUs the default is maxSurge 0 so a rollout never waits for a spare GPU."""

    max_surge: Quantity | None = Field(
        default=None, description="Extra pods during a rollout (default 0 with GPUs, 25% without)."
    )
    max_unavailable: Quantity | None = Field(
        default=None, description="Pods that may be down during a rollout (default 1 with GPUs, 25% without)."
    )
    canary: Canary | None = Field(
        default=None,
        description="Roll a changed pod template out as a canary, in steps with live analysis, instead of "
        "a rolling update of every replica. Not with replicas spanning nodes.",
    )
    proposals: Proposals | None = Field(
        default=None, description="Accept newly trained models from TrainingJobs, through a gate."
    )


# CEL for a model `m`: GPUs of a pod, and the GPUs its vLLM engine spans (defaults resolved)
def _cel_gpus(spec: str = "self") -> str:
    return f"(has({spec}.gpu.mig) ? 1 : (has({spec}.gpu.count) ? {spec}.gpu.count : 1))"


def _cel_parallel(spec: str = "self") -> str:
    return (
        "((has(m.llm.tensorParallelSize) ? m.llm.tensorParallelSize : " + _cel_gpus(spec) + ") * "
        "(has(m.llm.pipelineParallelSize) ? m.llm.pipelineParallelSize : 1))"
    )


_CEL_GPUS = _cel_gpus()
_CEL_PARALLEL = _cel_parallel()
# A replica spanning nodes is a LeaderWorkerSet `<name>-lws`, whose pods are named
# `<lws>-<group>-<worker>` with a 10-character revision label beside them: LWS gives a longer name's
# group a leader and never its workers (kubeforge.builders.leaderworkerset)
MAX_MULTI_NODE_NAME_LENGTH = 45


def _unique_model_ids(models: list[ModelSpec]) -> bool:
    ids = [m.name for m in models] + [a.name for m in models for a in m.adapters()]
    return len(set(ids)) == len(ids)


def _needs_credentials(model: ModelSpec) -> bool:
    """A model or one of its LoRA adapters is fetched from s3:// or gs://."""
    return any(
        uri.startswith(("s3://", "gs://")) for uri in (model.source, *(a.source for a in model.adapters()))
    )


def _parallel(spec: ModelDeploymentSpec, model: ModelSpec) -> int:
    """The GPUs a model's vLLM engine spans; 0 for a model without llm."""
    if model.llm is None:
        return 0
    return model.llm.parallel_gpus(spec.gpu.resource_count if spec.gpu else 1)


# a ModelDeployment's proposals replace the source of one of its models (a TrainingJob's template
# has no such rule: the trained model joins its models at the hand-off)
PROPOSED_MODEL_RULE = Rule(
    cel="!has(self.rollout) || !has(self.rollout.proposals) || "
    "self.models.exists(m, m.name == self.rollout.proposals.model)",
    message="rollout.proposals.model must name a model of spec.models",
    check=lambda s: (
        s.rollout is None
        or s.rollout.proposals is None
        or any(m.name == s.rollout.proposals.model for m in s.models)
    ),
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
        default=None, description="Credentials for s3://, gs://, hf:// and https:// sources."
    )
    network: NetworkAccess | None = Field(
        default=None,
        description="Who may reach the servers, through the NetworkPolicy the operator creates for them.",
    )
    openai: OpenAIAPI | None = Field(
        default=None,
        description="The OpenAI-compatible API of the language models (status.endpoints.openai).",
    )
    cache: ModelCache | None = Field(
        default=None,
        description="Fetch the models once into a shared volume and serve every pod from it; unset means "
        "each pod fetches its models when it starts.",
    )
    gpu: GPU | None = Field(
        default=None, description="GPUs per pod (per node when a replica spans nodes); unset means CPU only."
    )
    nodes_per_replica: int | None = Field(
        default=None,
        ge=1,
        le=64,
        description="Nodes (pods) one replica spans, run as one LeaderWorkerSet group: the leader serves, "
        "the workers add their GPUs to its vLLM engine. Default: what the vLLM model's tensorParallelSize x "
        "pipelineParallelSize needs at gpu.count GPUs per node, else 1.",
    )
    resources: Resources | None = Field(default=None, description="CPU and memory per pod.")
    shm_size: Quantity = Field(
        default="1Gi", description="Size of the in-memory /dev/shm volume (the Python backend needs it)."
    )
    autoscaling: Autoscaling | None = Field(
        default=None, description="Autoscaling rules; unset means fixed replicas."
    )
    monitoring: Monitoring | None = Field(default=None, description="Prometheus scraping.")
    rollout: Rollout | None = Field(
        default=None, description="Rolling update limits, or a canary rollout (rollout.canary)."
    )
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

    rules: ClassVar[tuple[Rule, ...]] = (
        Rule(
            cel="",  # the schema's list-map keyed by name refuses duplicates itself
            message="models: Duplicate value: models[].name must be unique",
            check=lambda s: len({m.name for m in s.models}) == len(s.models),
        ),
        Rule(
            cel="",  # checked by the operator: a walk over every adapter of every model costs too much in CEL
            message="models[].llm.loraAdapters[].name must differ from every model's name and every other "
            "adapter's: the OpenAI API selects a model or an adapter by that name",
            check=lambda s: _unique_model_ids(s.models),
        ),
        Rule(
            cel="!has(self.autoscaling) || self.replicas <= self.autoscaling.maxReplicas",
            message="replicas must not exceed autoscaling.maxReplicas",
            check=lambda s: s.autoscaling is None or s.replicas <= s.autoscaling.max_replicas,
        ),
        Rule(
            cel="!has(self.models) || has(self.storage) "
            "|| !self.models.exists(m, m.source.startsWith('s3://') || m.source.startsWith('gs://') "
            "|| (has(m.llm) && has(m.llm.loraAdapters) "
            "&& m.llm.loraAdapters.exists(a, a.source.startsWith('s3://') || a.source.startsWith('gs://'))))",
            message="storage.secretName is required when a model or LoRA adapter source is s3:// or gs://",
            check=lambda s: s.storage is not None or not any(_needs_credentials(m) for m in s.models),
        ),
        Rule(
            cel="has(self.gpu) || !has(self.models) || !self.models.exists(m, has(m.llm))",
            message="gpu is required for a model with llm: Triton's vLLM backend runs on GPUs",
            check=lambda s: s.gpu is not None or not any(m.llm for m in s.models),
        ),
        Rule(
            cel="!has(self.gpu) || !has(self.gpu.mig) || !has(self.models) || self.models.all(m, !has(m.llm) "
            "|| ((!has(m.llm.tensorParallelSize) || m.llm.tensorParallelSize == 1) "
            "&& (!has(m.llm.pipelineParallelSize) || m.llm.pipelineParallelSize == 1)))",
            message="models[].llm: tensor or pipeline parallel needs whole GPUs: a MIG slice (gpu.mig) is one "
            "device, so tensorParallelSize and pipelineParallelSize must be 1",
            check=lambda s: (
                s.gpu is None
                or s.gpu.mig is None
                or all(m.llm is None or m.llm.parallel_gpus(1) == 1 for m in s.models)
            ),
        ),
        Rule(
            cel="!has(self.gpu) || !has(self.models) || self.models.all(m, !has(m.llm) || "
            + _CEL_PARALLEL
            + " % "
            + _CEL_GPUS
            + " == 0)",
            message="models[].llm: tensorParallelSize x pipelineParallelSize must be a multiple of the GPUs "
            "of a pod (gpu.count): a replica is whole pods",
            check=lambda s: (
                s.gpu is None or all(_parallel(s, m) % s.gpu.resource_count == 0 for m in s.models)
            ),
        ),
        Rule(
            cel="!has(self.gpu) || !has(self.nodesPerReplica) || !has(self.models) || self.models.all(m, "
            "!has(m.llm) || " + _CEL_PARALLEL + " == " + _CEL_GPUS + " * self.nodesPerReplica)",
            message="models[].llm: tensorParallelSize x pipelineParallelSize must equal the GPUs of a replica "
            "(gpu.count x nodesPerReplica)",
            check=lambda s: (
                s.gpu is None
                or s.nodes_per_replica is None
                or all(
                    m.llm is None or _parallel(s, m) == s.gpu.resource_count * s.nodes_per_replica
                    for m in s.models
                )
            ),
        ),
        Rule(
            cel="!has(self.gpu) || !has(self.models) || self.models.all(m, !has(m.llm) "
            "|| !has(m.llm.pipelineParallelSize) || m.llm.pipelineParallelSize == 1 || "
            + _CEL_PARALLEL
            + " > "
            + _CEL_GPUS
            + ")",
            message="models[].llm.pipelineParallelSize > 1 needs a replica spanning several nodes "
            "(tensorParallelSize x pipelineParallelSize > gpu.count); within one node use tensorParallelSize",
            check=lambda s: (
                s.gpu is None
                or all(
                    m.llm is None
                    or (m.llm.pipeline_parallel_size or 1) == 1
                    or _parallel(s, m) > s.gpu.resource_count
                    for m in s.models
                )
            ),
        ),
        Rule(
            cel="!has(self.models) || size(self.models) == 1 || ((!has(self.nodesPerReplica) || "
            "self.nodesPerReplica == 1) && (!has(self.gpu) || self.models.all(m, !has(m.llm) || "
            + _CEL_PARALLEL
            + " <= "
            + _CEL_GPUS
            + ")))",
            message="a replica spanning several nodes (nodesPerReplica, or an llm larger than a pod) serves "
            "exactly one model: models must hold one entry",
            check=lambda s: len(s.models) == 1 or s.replica_nodes == 1,
        ),
        Rule(
            cel="!has(self.cache) || !has(self.cache.size) || !has(self.cache.accessMode) || "
            "self.cache.accessMode != 'ReadWriteOnce' || ((!has(self.nodesPerReplica) || "
            "self.nodesPerReplica == 1) && (!has(self.gpu) || !has(self.models) || self.models.all(m, "
            "!has(m.llm) || " + _CEL_PARALLEL + " <= " + _CEL_GPUS + ")))",
            message="cache.accessMode ReadWriteOnce mounts on one node, and a replica spanning several nodes "
            "(nodesPerReplica, or an llm larger than a pod) needs the cache on all of them: use ReadWriteMany",
            check=lambda s: (
                s.cache is None
                or s.cache.size is None
                or s.cache.access_mode != "ReadWriteOnce"
                or s.replica_nodes == 1
            ),
        ),
        PROPOSED_MODEL_RULE,
        Rule(
            cel="!has(self.rollout) || !has(self.rollout.canary) || ((!has(self.nodesPerReplica) || "
            "self.nodesPerReplica == 1) && (!has(self.gpu) || !has(self.models) || self.models.all(m, "
            "!has(m.llm) || " + _CEL_PARALLEL + " <= " + _CEL_GPUS + ")))",
            message="rollout.canary needs replicas on one node each: a replica spanning several nodes "
            "(nodesPerReplica, or an llm larger than a pod) runs as a LeaderWorkerSet, which rolls its groups "
            "itself",
            check=lambda s: s.rollout is None or s.rollout.canary is None or s.replica_nodes == 1,
        ),
        Rule(
            cel="!has(self.nodesPerReplica) || self.nodesPerReplica == 1 || "
            "(has(self.gpu) && self.models.all(m, has(m.llm)))",
            message="nodesPerReplica > 1 needs gpu and a model of format vllm with llm: the nodes of a "
            "replica form one vLLM engine",
            check=lambda s: (
                (s.nodes_per_replica or 1) == 1 or (s.gpu is not None and all(m.llm for m in s.models))
            ),
        ),
    )

    @property
    def replica_nodes(self) -> int:
        """Nodes one replica spans: nodesPerReplica, else what the vLLM model needs at gpu.count per node."""
        if self.nodes_per_replica is not None:
            return self.nodes_per_replica
        if self.gpu is None:
            return 1
        return max([1] + [_parallel(self, m) // self.gpu.resource_count for m in self.models if m.llm])


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
    generate: list[str] | None = Field(
        default=None,
        description="Triton's generate URLs (one JSON response) of the models that stream their responses "
        "(decoupled, or vLLM).",
    )
    generate_stream: list[str] | None = Field(
        default=None,
        description="Server-sent-events URLs (Triton's generate_stream) of the models that stream their "
        "responses (decoupled, or vLLM); gRPC clients stream through the grpc endpoint.",
    )
    openai: str | None = Field(
        default=None,
        description="Base URL of the OpenAI-compatible API (spec.openai): /v1/models, /v1/completions, "
        "/v1/chat/completions.",
    )


class RolloutPhase(StrEnum):
    PROGRESSING = "Progressing"
    PAUSED = "Paused"
    ROLLED_BACK = "RolledBack"
    COMPLETE = "Complete"


class AnalysisVerdict(StrEnum):
    PASSED = "Passed"
    FAILED = "Failed"
    INCONCLUSIVE = "Inconclusive"


class MetricResult(ApiModel):
    """One metric of an analysis: both revisions' values over the window, and the PromQL that gave them."""

    name: str = Field(description="requests, errorRatio or latencyP<quantile> (microseconds).")
    canary: float | None = Field(
        default=None, description="The canary's value; unset when Prometheus had none."
    )
    stable: float | None = Field(
        default=None, description="The stable's value; unset when Prometheus had none."
    )
    limit: str = Field(description="What the canary's value must be, in words.")
    verdict: AnalysisVerdict = Field(description="Passed, Failed, or Inconclusive (too little data).")
    canary_query: str = Field(description="The PromQL of the canary's value, to paste into Prometheus.")
    stable_query: str = Field(description="The PromQL of the stable's value.")


class AnalysisResult(ApiModel):
    """One analysis of a canary step."""

    step: int = Field(description="The step (from 1) the analysis ran in.")
    revision: str = Field(description="The canary revision analysed.")
    at: datetime = Field(description="When it ran (the end of its window).")
    window_seconds: int = Field(description="The window it read.")
    verdict: AnalysisVerdict = Field(
        description="Failed if any metric failed, else Inconclusive if any was, else Passed."
    )
    message: str = Field(description="The verdict in words, with the numbers.")
    metrics: list[MetricResult] = Field(default_factory=list, description="Each metric's values.")


class TrainedModel(ApiModel):
    """A trained model proposed by a TrainingJob, with the evaluation it recorded."""

    job: str = Field(description="The TrainingJob that trained it.")
    uri: str = Field(description="Its source.")
    validation_loss: float | None = Field(default=None, description="Its recorded validation loss.")


class RolloutStatus(ApiModel):
    """The canary rollout (spec.rollout.canary): revisions, the step, and the analyses."""

    phase: RolloutPhase = Field(
        description="Progressing, Paused, RolledBack, or Complete (one revision serves the spec)."
    )
    summary: str = Field(description="The step and weight in short, e.g. 'step 1/2 25%' (a printer column).")
    message: str = Field(description="What the rollout does now, or why it stopped.")
    stable_revision: str | None = Field(
        default=None, description="The pod template hash the stable revision runs."
    )
    canary_revision: str | None = Field(default=None, description="The pod template hash the canary runs.")
    step: int | None = Field(default=None, description="The current step, from 1.")
    steps: int | None = Field(default=None, description="How many steps the canary has.")
    weight: int | None = Field(default=None, description="The current step's weight (percent).")
    canary_replicas: int | None = Field(default=None, description="Replicas the canary runs in this step.")
    routed_weight: int | None = Field(
        default=None,
        description="With rollout.canary.gateway: percent of the Gateway's requests the HTTPRoute sends to "
        "the canary now (the step's weight once its pods are ready; until then the previous step's; 0 "
        "while an ended canary drains).",
    )
    stable_replicas: int | None = Field(default=None, description="Replicas the stable revision keeps.")
    step_started_at: datetime | None = Field(
        default=None, description="When this step's canary pods were all ready: its pause counts from here."
    )
    canary_drain_until: datetime | None = Field(
        default=None,
        description="With rollout.canary.gateway, after a canary ended: its pods keep running until then, "
        "with no request routed to them (rollout.canary.gateway.drainSeconds).",
    )
    route: str | None = Field(
        default=None,
        description="With rollout.canary.gateway: the HTTPRoute's backends, and whether its Gateway "
        "accepted it (as the Gateway's controller reports in the route's status).",
    )
    analyses: list[AnalysisResult] | None = Field(
        default=None, description="This canary's analyses, the latest last (at most 10)."
    )
    proposal: TrainedModel | None = Field(
        default=None, description="The trained model the canary serves, when a TrainingJob proposed it."
    )
    rolled_back_revision: str | None = Field(
        default=None,
        description="A revision rolled back: not tried again until the spec changes, or until "
        "kubeforge.io/rollout-action=retry.",
    )

    @property
    def running(self) -> bool:
        """Whether a canary runs (progressing or paused) beside the stable revision."""
        return self.phase in (RolloutPhase.PROGRESSING, RolloutPhase.PAUSED)


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


class CacheState(StrEnum):
    PENDING = "Pending"
    FILLING = "Filling"
    READY = "Ready"
    FAILED = "Failed"


class CacheStatus(ApiModel):
    """The model cache: its claim, and the fill that the serving pods wait for."""

    state: CacheState = Field(description="Pending, Filling, Ready or Failed.")
    claim_name: str | None = Field(default=None, description="The PersistentVolumeClaim holding the cache.")
    key: str | None = Field(
        default=None,
        description="Which fill it is: a hash of the model sources; a change of source fills a new copy.",
    )
    job: str | None = Field(default=None, description="The Job filling the cache.")
    bytes: int | None = Field(default=None, description="Bytes fetched into the cache.")
    digest: str | None = Field(
        default=None, description="sha256 over the paths and contents of every fetched file."
    )
    message: str | None = Field(default=None, description="Why the fill failed, or what it waits for.")
    completed_at: datetime | None = Field(default=None, description="When the fill completed.")
    retries: int | None = Field(
        default=None, description="Fills of this key started again after a failure (unset before the first)."
    )
    retry_at: datetime | None = Field(
        default=None,
        description="When a failed fill is retried (a minute after it failed, doubling per retry up to an hour).",
    )


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
    cache: CacheStatus | None = Field(default=None, description="The model cache (spec.cache).")
    rollout: RolloutStatus | None = Field(
        default=None, description="The canary rollout (spec.rollout.canary)."
    )
    trained_model: TrainedModel | None = Field(
        default=None,
        description="The trained model the stable revision serves, with its recorded evaluation (what "
        "rollout.proposals.gate.betterThanServing compares with).",
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

    rules: ClassVar[tuple[Rule, ...]] = (
        *object_name_rules(MAX_NAME_LENGTH, "it names the Service, which must be a DNS-1035 label"),
        Rule(
            cel=f"size(self.metadata.name) <= {MAX_GATEWAY_NAME_LENGTH} || !has(self.spec.rollout) || "
            "!has(self.spec.rollout.canary) || !has(self.spec.rollout.canary.gateway)",
            message=f"metadata.name must be at most {MAX_GATEWAY_NAME_LENGTH} characters with "
            "rollout.canary.gateway (it names the Services <name>-stable and <name>-canary, DNS-1035 labels)",
            check=lambda md: len(md.metadata.name) <= MAX_GATEWAY_NAME_LENGTH or gateway_of(md) is None,
        ),
        Rule(
            cel=f"size(self.metadata.name) <= {MAX_MULTI_NODE_NAME_LENGTH} || "
            "((!has(self.spec.nodesPerReplica) || self.spec.nodesPerReplica == 1) && (!has(self.spec.gpu) || "
            f"self.spec.models.all(m, !has(m.llm) || {_cel_parallel('self.spec')} <= {_cel_gpus('self.spec')})))",
            message=f"metadata.name must be at most {MAX_MULTI_NODE_NAME_LENGTH} characters when a replica "
            "spans several nodes (it names the LeaderWorkerSet, whose pod names and labels carry it)",
            check=lambda md: (
                len(md.metadata.name) <= MAX_MULTI_NODE_NAME_LENGTH or md.spec.replica_nodes == 1
            ),
        ),
    )


def gateway_of(md: ModelDeployment) -> CanaryGateway | None:
    """The Gateway whose HTTPRoute splits the canary's traffic (spec.rollout.canary.gateway), if any."""
    canary = md.spec.rollout.canary if md.spec.rollout is not None else None
    return canary.gateway if canary is not None else None
