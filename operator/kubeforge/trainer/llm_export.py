"""Export a trained language model as a streaming (decoupled) Triton Python-backend model: ``python-llm``.

Layout written under the repository (``--output-uri``)::

    <repository>/<model_name>/config.pbtxt          decoupled, text in, text out (rendered by kubeforge.triton.config)
    <repository>/<model_name>/tokenizer_config.json  Hugging Face's file: the chat template and the prompt
                                                     limit (for the OpenAI front)
    <repository>/<model_name>/1/model.pt            TorchScript with forward and forward_cached (KV cache)
    <repository>/<model_name>/1/model.py            triton_llm_model: requests -> engine -> one response per byte
    <repository>/<model_name>/1/generation.py       the engine: sampling, stop sequences, continuous batching

The model is scripted, not traced: generation calls ``forward_cached`` with batch sizes and lengths
that change every step, which a trace would freeze. As for the other formats, every file is replaced
atomically and ``config.pbtxt`` comes last.

Concurrency: one model instance (``instance_group`` count 1) whose engine batches up to
``max_concurrent_streams`` requests into each forward pass. More instances would each hold a copy
of the model and a process of their own, and could not share a forward pass.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import torch
from torch import nn

from kubeforge.api.modeldeployment import (
    InstanceGroup,
    InstanceGroupKind,
    ModelFormat,
    TensorSpec,
    TritonModelConfig,
)
from kubeforge.openai import TOKENIZER_CONFIG
from kubeforge.trainer import generation, triton_llm_model
from kubeforge.trainer.atomic import atomic_write, atomic_write_bytes
from kubeforge.trainer.export import CONFIG_FILE, EXPORT_HEADER, MODEL_NAME, PYTHON_MODEL_FILE
from kubeforge.triton.config import render_config


def _optional(name: str, data_type: str, dims: list[int]) -> TensorSpec:
    return TensorSpec.model_validate({"name": name, "dataType": data_type, "dims": dims, "optional": True})


# Triton's LLM interface (the vLLM backend's names, and TensorRT-LLM's for the sampling inputs): the
# generate endpoints map a request's JSON fields onto inputs of these names, and its outputs back
# onto JSON fields.
GENERATE_INPUTS = (
    TensorSpec(name=triton_llm_model.PROMPT_INPUT, data_type="TYPE_STRING", dims=[1]),
    _optional(triton_llm_model.SAMPLING_INPUT, "TYPE_STRING", [1]),
    *(_optional(flag, "TYPE_BOOL", [1]) for flag in triton_llm_model.FLAG_INPUTS),
    _optional("max_tokens", "TYPE_INT32", [1]),
    _optional("temperature", "TYPE_FP32", [1]),
    _optional("top_k", "TYPE_INT32", [1]),
    _optional("top_p", "TYPE_FP32", [1]),
    _optional("seed", "TYPE_INT64", [1]),
    _optional(triton_llm_model.STOP_INPUT, "TYPE_STRING", [-1]),
    _optional("stream", "TYPE_BOOL", [1]),
)
GENERATE_OUTPUTS = (
    TensorSpec(name=triton_llm_model.TEXT_OUTPUT, data_type="TYPE_STRING", dims=[1]),
    TensorSpec(name=triton_llm_model.FINISH_OUTPUT, data_type="TYPE_STRING", dims=[1]),
    TensorSpec(name=triton_llm_model.INPUT_TOKENS_OUTPUT, data_type="TYPE_UINT32", dims=[1]),
    TensorSpec(name=triton_llm_model.OUTPUT_TOKENS_OUTPUT, data_type="TYPE_UINT32", dims=[1]),
)


# The model's own chat template (a byte-level model trained on prose has none of its own: a plain
# question-and-answer layout), rendered by the OpenAI front as Hugging Face renders chat templates.
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if message['role'] in ('system', 'developer') -%}{{ message['content'] + '\\n\\n' }}"
    "{%- elif message['role'] == 'user' -%}{{ 'Q: ' + message['content'] + '\\n' }}"
    "{%- else -%}{{ 'A: ' + message['content'] + '\\n' }}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ 'A:' }}{%- endif -%}"
)


def tokenizer_config() -> dict[str, object]:
    return {
        "chat_template": CHAT_TEMPLATE,
        "model_max_length": triton_llm_model.DEFAULT_MAX_PROMPT_TOKENS,
    }


def language_model_config(
    max_concurrent_streams: int = triton_llm_model.DEFAULT_MAX_STREAMS,
    max_tokens_limit: int = triton_llm_model.DEFAULT_MAX_TOKENS_LIMIT,
) -> TritonModelConfig:
    """The exported model's ModelConfig: decoupled, unbatched by Triton (the engine batches), one instance."""
    return TritonModelConfig(
        max_batch_size=0,
        inputs=list(GENERATE_INPUTS),
        outputs=list(GENERATE_OUTPUTS),
        # KIND_AUTO: the GPU when the pod has one (model.py then moves the model there), else the CPU
        instance_groups=[InstanceGroup(kind=InstanceGroupKind.AUTO, count=1)],
        decoupled=True,
        parameters={
            triton_llm_model.MAX_STREAMS_PARAMETER: str(max_concurrent_streams),
            triton_llm_model.MAX_TOKENS_LIMIT_PARAMETER: str(max_tokens_limit),
            triton_llm_model.MAX_PROMPT_TOKENS_PARAMETER: str(triton_llm_model.DEFAULT_MAX_PROMPT_TOKENS),
        },
    )


def export_language_model(
    model: nn.Module,
    repository: Path,
    model_name: str,
    max_concurrent_streams: int = triton_llm_model.DEFAULT_MAX_STREAMS,
    version: int = 1,
) -> Path:
    """Write ``model`` into ``repository`` as the streaming model ``model_name``; returns its directory."""
    if not MODEL_NAME.match(model_name):
        raise ValueError(f"model name {model_name!r} must match {MODEL_NAME.pattern}")
    scripted = torch.jit.script(_cpu_copy(model))
    config = render_config(
        model_name, ModelFormat.PYTHON, language_model_config(max_concurrent_streams), header=EXPORT_HEADER
    )
    model_dir = repository / model_name
    version_dir = model_dir / str(version)
    version_dir.mkdir(parents=True, exist_ok=True)
    atomic_write(
        version_dir / triton_llm_model.TORCHSCRIPT_FILE,
        lambda handle: torch.jit.save(scripted, handle),  # type: ignore[no-untyped-call]
    )
    atomic_write_bytes(version_dir / triton_llm_model.GENERATION_FILE, Path(generation.__file__).read_bytes())
    atomic_write_bytes(version_dir / PYTHON_MODEL_FILE, Path(triton_llm_model.__file__).read_bytes())
    atomic_write_bytes(
        model_dir / TOKENIZER_CONFIG, (json.dumps(tokenizer_config(), indent=2) + "\n").encode()
    )
    atomic_write_bytes(model_dir / CONFIG_FILE, config.encode())
    return model_dir


def _cpu_copy(model: nn.Module) -> nn.Module:
    """An eval-mode copy on the CPU (model.py moves it to the instance's device)."""
    return copy.deepcopy(model).to("cpu").eval()
