"""``config.pbtxt`` for an exported model: the Triton ModelConfig protobuf, in text format.

Tensor names follow the libtorch backend's convention, ``INPUT__<i>`` / ``OUTPUT__<i>`` for the
i-th argument and result of ``forward``
(https://github.com/triton-inference-server/pytorch_backend#configuration);
the Python-backend flavour uses the same names so clients do not care which backend serves the model.
Dims exclude the batch dimension because ``max_batch_size > 0`` makes Triton prepend it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from kubeforge.trainer.config import ExportFormat

# https://github.com/triton-inference-server/common/blob/main/protobuf/model_config.proto (DataType)
TRITON_DTYPES: dict[torch.dtype, str] = {
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


@dataclass(frozen=True)
class TensorSpec:
    """One input or output of the model as Triton sees it."""

    name: str
    data_type: str
    dims: tuple[int, ...]


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
        specs.append(TensorSpec(f"{prefix}__{index}", TRITON_DTYPES[tensor.dtype], tuple(tensor.shape[1:])))
    return specs


def _render_tensors(field: str, specs: Sequence[TensorSpec]) -> list[str]:
    lines = [f"{field} ["]
    for index, spec in enumerate(specs):
        dims = ", ".join(str(d) for d in spec.dims)
        lines += [
            "  {",
            f'    name: "{spec.name}"',
            f"    data_type: {spec.data_type}",
            f"    dims: [ {dims} ]",
            "  }" + ("," if index < len(specs) - 1 else ""),
        ]
    lines.append("]")
    return lines


def render_config_pbtxt(
    name: str,
    export_format: ExportFormat,
    inputs: Sequence[TensorSpec],
    outputs: Sequence[TensorSpec],
    max_batch_size: int,
    max_queue_delay_microseconds: int = 100,
) -> str:
    """The text-format ModelConfig for the libtorch (``pytorch``) or the Python (``python``) backend."""
    lines = [f'name: "{name}"']
    if export_format == "pytorch":
        lines += ['platform: "pytorch_libtorch"', 'backend: "pytorch"']
    else:
        lines.append('backend: "python"')
    lines.append(f"max_batch_size: {max_batch_size}")
    lines += _render_tensors("input", inputs)
    lines += _render_tensors("output", outputs)
    # dynamic batching merges concurrent requests into one forward pass (the Python model concatenates them)
    lines += ["dynamic_batching {", f"  max_queue_delay_microseconds: {max_queue_delay_microseconds}", "}"]
    return "\n".join(lines) + "\n"
