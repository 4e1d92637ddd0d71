"""Render a Triton `config.pbtxt`: the one renderer of that format in Kubeforge. Pure: no I/O.

Everything Kubeforge writes as config.pbtxt comes from here: the ModelDeployment's
spec.models[].config (through the repository init container) and the trainer's exported models
(`kubeforge.trainer.export`), both described by the API's `TritonModelConfig`.

The text is protobuf text format of Triton's `ModelConfig` message
(https://github.com/triton-inference-server/common/blob/main/protobuf/model_config.proto);
the field names below are that message's. The output is deterministic (same spec, same bytes),
so a re-render never changes the init container's environment and never rolls the pods.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from kubeforge.api.modeldeployment import (
    DynamicBatching,
    InstanceGroup,
    InstanceGroupKind,
    LLMEngine,
    ModelFormat,
    ModelSpec,
    TensorSpec,
    TritonModelConfig,
)

CONFIG_FILENAME = "config.pbtxt"
HEADER = (
    "# Rendered by kubeforge from the ModelDeployment's spec.models[].config; edits here are overwritten.\n"
)
INDENT = "  "

# Formats whose Triton backend does its own scheduling, so Triton's dynamic batcher does not apply:
# an ensemble is scheduled step by step through its composing models, and vLLM batches continuously
# inside its (decoupled) backend.
_NO_DYNAMIC_BATCHER = frozenset({ModelFormat.ENSEMBLE, ModelFormat.VLLM})

# A starting point, not a tuning: Triton's guide recommends leaving preferred_batch_size unset for
# most models (the batcher then forms the largest batch it can) and trading a short queue delay
# for fuller batches. https://github.com/triton-inference-server/server/blob/main/docs/user_guide/batcher.md
RECOMMENDED_MAX_QUEUE_DELAY_MICROSECONDS = 100


def quote(value: str) -> str:
    """A protobuf text-format string literal (double quoted, C-style escapes)."""
    out = []
    for char in value:
        if char in ('"', "\\"):
            out.append("\\" + char)
        elif char == "\n":
            out.append("\\n")
        elif char == "\r":
            out.append("\\r")
        elif char == "\t":
            out.append("\\t")
        elif ord(char) < 0x20 or ord(char) == 0x7F:
            out.append(f"\\{ord(char):03o}")
        else:
            # the text format is UTF-8; other characters stand for themselves
            out.append(char)
    return '"' + "".join(out) + '"'


def _int_list(values: Iterable[int]) -> str:
    return "[ " + ", ".join(str(v) for v in values) + " ]"


def _block(name: str, lines: list[str]) -> list[str]:
    """`name { ... }` with the given lines indented."""
    return [f"{name} {{", *(INDENT + line for line in lines), "}"]


def _list_of_messages(name: str, messages: list[list[str]]) -> list[str]:
    """`name [ { ... }, { ... } ]`: a repeated message field."""
    lines = [f"{name} ["]
    for index, message in enumerate(messages):
        comma = "," if index < len(messages) - 1 else ""
        lines += [INDENT + "{", *(INDENT * 2 + line for line in message), INDENT + "}" + comma]
    return [*lines, "]"]


def _tensor(tensor: TensorSpec) -> list[str]:
    lines = [
        f"name: {quote(tensor.name)}",
        f"data_type: {tensor.data_type}",
        f"dims: {_int_list(tensor.dims)}",
    ]
    if tensor.optional:
        lines.append("optional: true")
    return lines


def _instance_group(group: InstanceGroup) -> list[str]:
    lines = [f"kind: {group.kind.value}", f"count: {group.count}"]
    if group.gpus:
        lines.append(f"gpus: {_int_list(group.gpus)}")
    return lines


def _dynamic_batching(batching: DynamicBatching) -> list[str]:
    lines = []
    if batching.preferred_batch_sizes:
        lines.append(f"preferred_batch_size: {_int_list(batching.preferred_batch_sizes)}")
    lines.append(f"max_queue_delay_microseconds: {batching.max_queue_delay_microseconds}")
    return _block("dynamic_batching", lines)


def _parameters(parameters: dict[str, str]) -> list[str]:
    # a protobuf map is a repeated key/value entry; sorted keys keep the text deterministic
    lines: list[str] = []
    for key in sorted(parameters):
        lines += _block(
            "parameters", [f"key: {quote(key)}", f"value: {{ string_value: {quote(parameters[key])} }}"]
        )
    return lines


def _identity(name: str, model_format: ModelFormat) -> list[str]:
    lines = [f"name: {quote(name)}"]
    if model_format == ModelFormat.ENSEMBLE:
        # an ensemble has no backend: it is a platform of its own
        return [*lines, 'platform: "ensemble"']
    if model_format == ModelFormat.PYTORCH:
        # TorchScript's platform name, which every Triton release reads (the backend name alone
        # needs a release that resolves backends by name)
        lines.append('platform: "pytorch_libtorch"')
    return [*lines, f"backend: {quote(model_format.backend)}"]


def config_lines(name: str, model_format: ModelFormat, config: TritonModelConfig) -> list[str]:
    """The config.pbtxt lines (without a header comment) of a model, its format and its config."""
    lines = [*_identity(name, model_format), f"max_batch_size: {config.max_batch_size}"]
    if config.inputs:
        lines += _list_of_messages("input", [_tensor(t) for t in config.inputs])
    if config.outputs:
        lines += _list_of_messages("output", [_tensor(t) for t in config.outputs])
    if config.instance_groups:
        lines += _list_of_messages("instance_group", [_instance_group(g) for g in config.instance_groups])
    if config.dynamic_batching is not None:
        lines += _dynamic_batching(config.dynamic_batching)
    if config.decoupled is not None:
        # https://github.com/triton-inference-server/server/blob/main/docs/user_guide/decoupled_models.md
        lines += _block("model_transaction_policy", [f"decoupled: {'true' if config.decoupled else 'false'}"])
    if config.parameters:
        lines += _parameters(config.parameters)
    return lines


def render_config(
    name: str, model_format: ModelFormat, config: TritonModelConfig, header: str = HEADER
) -> str:
    """The whole config.pbtxt text: a header comment saying who wrote it, then the ModelConfig."""
    return header + "\n".join(config_lines(name, model_format, config)) + "\n"


def render_model_config(model: ModelSpec) -> str | None:
    """The config.pbtxt text for a model whose spec carries `config` or `llm`; None when it carries neither.

    Without either the model's source must bring its own config.pbtxt (or let Triton
    auto-complete one, which only some backends can do).
    """
    if model.llm is not None:
        return render_config(model.name, model.format, VLLM_MODEL_CONFIG)
    if model.config is None:
        return None
    return render_config(model.name, model.format, model.config)


# ---------------------------------------------------------------------------------------------
# Triton's vLLM backend (https://github.com/triton-inference-server/vllm_backend): config.pbtxt
# names the backend, lets the engine place itself on the GPUs (KIND_MODEL) and streams (decoupled);
# the backend completes the inputs and outputs (text_input, stream, sampling_parameters, ...,
# text_output) itself. Everything about the engine is in `<version>/model.json`.

VLLM_MODEL_JSON = "model.json"
VLLM_VERSION = "1"  # a vLLM model's one version folder, which holds model.json
VLLM_MULTI_LORA_JSON = "multi_lora.json"
# the backend reports vLLM's own metrics (vllm:time_to_first_token_seconds, ...) on Triton's
# metrics port when this parameter is "true"
VLLM_METRICS_PARAMETER = "REPORT_CUSTOM_METRICS"
VLLM_MODEL_CONFIG = TritonModelConfig(
    max_batch_size=0,
    instance_groups=[InstanceGroup(kind=InstanceGroupKind.MODEL, count=1)],
    decoupled=True,
    parameters={VLLM_METRICS_PARAMETER: "true"},
)
# how the leader's engine reaches the GPUs of the other pods of its group
MULTI_NODE_EXECUTOR = "ray"


def vllm_engine_args(llm: LLMEngine, gpus_per_pod: int, nodes: int) -> dict[str, Any]:
    """vLLM engine arguments from `llm`, defaults resolved, without `model` (the fetched weights' path).

    Keys are vLLM's AsyncEngineArgs field names; unset fields are left to vLLM's defaults. The
    escape hatch `engineArgs` comes last but may not repeat a typed field (the API refuses it).
    """
    args: dict[str, Any] = {"tensor_parallel_size": llm.tensor_parallel_size or gpus_per_pod}
    optional = {
        "pipeline_parallel_size": llm.pipeline_parallel_size,
        "max_model_len": llm.max_model_len,
        "gpu_memory_utilization": llm.gpu_memory_utilization,
        "dtype": llm.dtype,
        "quantization": llm.quantization,
        "enable_prefix_caching": llm.enable_prefix_caching,
        "max_num_seqs": llm.max_num_seqs,
    }
    args.update({key: value for key, value in optional.items() if value is not None})
    if nodes > 1:
        args["distributed_executor_backend"] = MULTI_NODE_EXECUTOR
    if llm.lora_adapters:
        args["enable_lora"] = True
    args.update(llm.engine_args or {})
    return args


def vllm_model_json(model: ModelSpec, gpus_per_pod: int, nodes: int, weights: str) -> dict[str, Any]:
    """The whole model.json of a vLLM model whose weights are at the path `weights`."""
    assert model.llm is not None, "vllm_model_json needs a model with llm"
    return {"model": weights, **vllm_engine_args(model.llm, gpus_per_pod, nodes)}


def recommended_dynamic_batching(model_format: ModelFormat, max_batch_size: int) -> DynamicBatching | None:
    """The operator's recommended dynamic batcher for a model, or None where it does not apply.

    None when the model does not batch (max_batch_size 0: Triton refuses a dynamic batcher then)
    or when its backend schedules requests itself (ensemble, vLLM).
    """
    if max_batch_size <= 0 or model_format in _NO_DYNAMIC_BATCHER:
        return None
    return DynamicBatching(max_queue_delay_microseconds=RECOMMENDED_MAX_QUEUE_DELAY_MICROSECONDS)


def with_recommended_batching(model: ModelSpec) -> ModelSpec:
    """A copy of the model whose config gets the recommended dynamic batcher when it sets none.

    A builder's default, never written back into the user's spec. A model without a config,
    or that already chose its batching, is returned unchanged.
    """
    config = model.config
    if config is None or config.dynamic_batching is not None:
        return model
    batching = recommended_dynamic_batching(model.format, config.max_batch_size)
    if batching is None:
        return model
    return model.model_copy(update={"config": config.model_copy(update={"dynamic_batching": batching})})
