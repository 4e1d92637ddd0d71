"""Export a trained model as a Triton model repository entry.

Layout written under the repository (``--output-uri``)::

    <repository>/<model_name>/config.pbtxt
    <repository>/<model_name>/1/model.pt      TorchScript (traced on CPU from an example batch)
    <repository>/<model_name>/1/model.py      python flavour only: ``triton_model.TritonPythonModel``

``pytorch`` targets Triton's libtorch backend; ``python`` (the default) wraps the same TorchScript file
in a Python-backend model, for Triton builds without libtorch (such as the CPU server in tests).
Each file is replaced atomically and ``config.pbtxt`` is written last, so a Triton server polling the
repository never loads a config whose model file is still being written. ``config.pbtxt`` comes
from Kubeforge's one renderer of that format (``kubeforge.triton.config``).

Tensor names follow the libtorch backend's convention, ``INPUT__<i>`` / ``OUTPUT__<i>`` for the
i-th argument and result of ``forward``
(https://github.com/triton-inference-server/pytorch_backend#configuration);
the Python-backend flavour uses the same names so clients do not care which backend serves the model.
Dims exclude the batch dimension because ``max_batch_size > 0`` makes Triton prepend it.
(Language models have their own export: ``llm_export``.)
"""

from __future__ import annotations

import copy
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import torch
from torch import nn

from kubeforge.api.modeldeployment import (
    DynamicBatching,
    ModelFormat,
    TensorSpec,
    TritonDataType,
    TritonModelConfig,
)
from kubeforge.trainer import triton_model
from kubeforge.trainer.atomic import atomic_write, atomic_write_bytes
from kubeforge.triton.config import RECOMMENDED_MAX_QUEUE_DELAY_MICROSECONDS, render_config

# Triton model names as the ModelDeployment API accepts them (api.modeldeployment.MODEL_NAME_PATTERN)
MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
CONFIG_FILE = "config.pbtxt"
PYTHON_MODEL_FILE = "model.py"
EXPORT_HEADER = (
    "# Exported by kubeforge's trainer (python -m kubeforge.trainer) with the model it describes.\n"
)
TensorExportFormat = Literal["python", "pytorch"]

# https://github.com/triton-inference-server/common/blob/main/protobuf/model_config.proto (DataType)
TRITON_DTYPES: dict[torch.dtype, TritonDataType] = {
    torch.bool: "TYPE_BOOL",
    torch.uint8: "TYPE_UINT8",
    torch.int8: "TYPE_INT8",
    torch.int16: "TYPE_INT16",
    torch.int32: "TYPE_INT32",
    torch.int64: "TYPE_INT64",
    torch.float16: "TYPE_FP16",
    torch.bfloat16: "TYPE_BF16",
    torch.float32: "TYPE_FP32",
    torch.float64: "TYPE_FP64",
}


def tensor_specs(prefix: str, batched: Sequence[torch.Tensor]) -> list[TensorSpec]:
    """Specs named ``<prefix>__<i>`` from example tensors that carry a leading batch dimension."""
    specs = []
    for index, tensor in enumerate(batched):
        if tensor.dtype not in TRITON_DTYPES:
            raise ValueError(f"{prefix}__{index}: dtype {tensor.dtype} has no Triton equivalent")
        if tensor.dim() < 2:
            raise ValueError(
                f"{prefix}__{index}: need a batch dimension and at least one more, got {tuple(tensor.shape)}"
            )
        specs.append(
            TensorSpec(
                name=f"{prefix}__{index}", data_type=TRITON_DTYPES[tensor.dtype], dims=list(tensor.shape[1:])
            )
        )
    return specs


def trace_model(model: nn.Module, example: torch.Tensor) -> torch.jit.ScriptModule:
    """TorchScript of a CPU copy of ``model`` in eval mode, traced with ``example`` (a batch)."""
    module = copy.deepcopy(model).to("cpu").eval()
    with torch.no_grad():
        traced: torch.jit.ScriptModule = torch.jit.trace(  # type: ignore[no-untyped-call]
            module, (example.to("cpu"),)
        )
    return traced


def export_triton_model(
    model: nn.Module,
    example: torch.Tensor,
    repository: Path,
    model_name: str,
    export_format: TensorExportFormat,
    max_batch_size: int,
    version: int = 1,
) -> Path:
    """Write ``model`` into ``repository`` as ``model_name`` (version ``version``); returns its directory."""
    if not MODEL_NAME.match(model_name):
        raise ValueError(f"model name {model_name!r} must match {MODEL_NAME.pattern}")
    if example.shape[0] > max_batch_size:
        raise ValueError(f"example batch of {example.shape[0]} exceeds max_batch_size {max_batch_size}")
    traced = trace_model(model, example)
    with torch.no_grad():
        outputs = traced(example.to("cpu"))
    output_list = [outputs] if isinstance(outputs, torch.Tensor) else list(outputs)
    config = render_config(
        model_name,
        ModelFormat(export_format),
        TritonModelConfig(
            max_batch_size=max_batch_size,
            inputs=tensor_specs("INPUT", [example]),
            outputs=tensor_specs("OUTPUT", output_list),
            # dynamic batching merges concurrent requests into one forward pass (model.py concatenates them)
            dynamic_batching=DynamicBatching(
                max_queue_delay_microseconds=RECOMMENDED_MAX_QUEUE_DELAY_MICROSECONDS
            ),
        ),
        header=EXPORT_HEADER,
    )

    model_dir = repository / model_name
    version_dir = model_dir / str(version)
    version_dir.mkdir(parents=True, exist_ok=True)
    atomic_write(
        version_dir / triton_model.TORCHSCRIPT_FILE,
        lambda handle: torch.jit.save(traced, handle),  # type: ignore[no-untyped-call]
    )
    python_model = version_dir / PYTHON_MODEL_FILE
    if export_format == "python":
        atomic_write_bytes(python_model, Path(triton_model.__file__).read_bytes())
    else:
        python_model.unlink(missing_ok=True)  # left by an earlier python-flavour export
    atomic_write_bytes(model_dir / CONFIG_FILE, config.encode())
    return model_dir
