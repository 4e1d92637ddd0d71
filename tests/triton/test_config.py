"""config.pbtxt rendering: the text parses into Triton's ModelConfig with the fields of the spec."""

from __future__ import annotations

from typing import Any

import pytest
from google.protobuf import json_format, text_format
from tritonclient.grpc import model_config_pb2

from kubeforge.api.modeldeployment import ModelFormat, ModelSpec
from kubeforge.triton.config import (
    quote,
    recommended_dynamic_batching,
    render_model_config,
    with_recommended_batching,
)


def spec(fmt: str = "python", config: dict[str, Any] | None = None, name: str = "m") -> ModelSpec:
    body: dict[str, Any] = {"name": name, "source": "pvc://models/m", "format": fmt}
    if config is not None:
        body["config"] = config
    return ModelSpec.model_validate(body)


def parsed(model: ModelSpec) -> dict[str, Any]:
    """The rendered config as Triton's protobuf sees it, in proto field names (defaults omitted)."""
    text = render_model_config(model)
    assert text is not None
    message = text_format.Parse(text, model_config_pb2.ModelConfig())
    return json_format.MessageToDict(message, preserving_proto_field_name=True)


FP32_4 = {"name": "INPUT0", "dataType": "TYPE_FP32", "dims": [4]}

CASES: list[tuple[str, ModelSpec, dict[str, Any]]] = [
    (
        "python, no batching",
        spec("python", {}),
        {"name": "m", "backend": "python"},
    ),
    (
        "pytorch with batching and tensors",
        spec(
            "pytorch",
            {
                "maxBatchSize": 16,
                "dynamicBatching": {"preferredBatchSizes": [4, 16], "maxQueueDelayMicroseconds": 500},
                "inputs": [FP32_4, {"name": "MASK", "dataType": "TYPE_BOOL", "dims": [-1, 3]}],
                "outputs": [{"name": "OUTPUT0", "dataType": "TYPE_INT64", "dims": [1]}],
            },
        ),
        {
            "name": "m",
            "platform": "pytorch_libtorch",
            "backend": "pytorch",
            "max_batch_size": 16,
            "dynamic_batching": {"preferred_batch_size": [4, 16], "max_queue_delay_microseconds": "500"},
            "input": [
                {"name": "INPUT0", "data_type": "TYPE_FP32", "dims": ["4"]},
                {"name": "MASK", "data_type": "TYPE_BOOL", "dims": ["-1", "3"]},
            ],
            "output": [{"name": "OUTPUT0", "data_type": "TYPE_INT64", "dims": ["1"]}],
        },
    ),
    (
        "onnx maps to the onnxruntime backend; default batcher delay",
        spec("onnx", {"maxBatchSize": 2, "dynamicBatching": {}}),
        {
            "name": "m",
            "backend": "onnxruntime",
            "max_batch_size": 2,
            "dynamic_batching": {"max_queue_delay_microseconds": "100"},
        },
    ),
    (
        "instance groups: GPUs listed only when set",
        spec(
            "tensorrt",
            {"instanceGroups": [{"kind": "KIND_GPU", "count": 2, "gpus": [0, 1]}, {"kind": "KIND_CPU"}]},
        ),
        {
            "name": "m",
            "backend": "tensorrt",
            "instance_group": [
                {"kind": "KIND_GPU", "count": 2, "gpus": [0, 1]},
                {"kind": "KIND_CPU", "count": 1},
            ],
        },
    ),
    (
        "ensemble is a platform, not a backend",
        spec("ensemble", {"maxBatchSize": 4}),
        {"name": "m", "platform": "ensemble", "max_batch_size": 4},
    ),
    (
        "a decoupled model with optional inputs",
        spec(
            "python",
            {
                "decoupled": True,
                "inputs": [
                    {"name": "text_input", "dataType": "TYPE_STRING", "dims": [1]},
                    {"name": "stop", "dataType": "TYPE_STRING", "dims": [-1], "optional": True},
                ],
            },
        ),
        {
            "name": "m",
            "backend": "python",
            "input": [
                {"name": "text_input", "data_type": "TYPE_STRING", "dims": ["1"]},
                {"name": "stop", "data_type": "TYPE_STRING", "dims": ["-1"], "optional": True},
            ],
            "model_transaction_policy": {"decoupled": True},
        },
    ),
    (
        "parameters become string_value entries",
        spec("vllm", {"parameters": {"model": "facebook/opt-125m", "tensor_parallel_size": "1"}}),
        {
            "name": "m",
            "backend": "vllm",
            "parameters": {
                "model": {"string_value": "facebook/opt-125m"},
                "tensor_parallel_size": {"string_value": "1"},
            },
        },
    ),
]


@pytest.mark.parametrize(("model", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_rendered_config_parses_into_model_config(model: ModelSpec, expected: dict[str, Any]) -> None:
    assert parsed(model) == expected


def test_no_config_renders_nothing() -> None:
    assert render_model_config(spec("python", None)) is None


def test_rendering_is_deterministic_and_sorts_parameters() -> None:
    a = spec("python", {"parameters": {"b": "2", "a": "1", "c": "3"}})
    b = spec("python", {"parameters": {"c": "3", "a": "1", "b": "2"}})
    text = render_model_config(a)
    assert text == render_model_config(b)
    assert text is not None
    assert text.index('key: "a"') < text.index('key: "b"') < text.index('key: "c"')


@pytest.mark.parametrize(
    "value",
    ['say "hi"', "back\\slash", "line\nbreak\ttab\r", "\x01control\x7f", "ünïcödé ✓", "", "# not a comment"],
)
def test_strings_survive_the_text_format(value: str) -> None:
    text = render_model_config(spec("python", {"parameters": {'key with "quotes"': value}}))
    assert text is not None
    message = text_format.Parse(text, model_config_pb2.ModelConfig())
    assert dict(message.parameters).keys() == {'key with "quotes"'}
    assert message.parameters['key with "quotes"'].string_value == value


def test_quote() -> None:
    assert quote('a"b\\c\n') == '"a\\"b\\\\c\\n"'


def test_model_name_with_dots_and_dashes() -> None:
    assert parsed(spec("python", {}, name="resnet-50.v2_final"))["name"] == "resnet-50.v2_final"


@pytest.mark.parametrize(
    ("fmt", "max_batch_size", "expected_delay"),
    [
        (ModelFormat.PYTORCH, 8, 100),
        (ModelFormat.PYTHON, 1, 100),
        (ModelFormat.PYTORCH, 0, None),  # a model that does not batch gets no batcher (Triton refuses one)
        (ModelFormat.ENSEMBLE, 8, None),  # scheduled through its steps
        (ModelFormat.VLLM, 8, None),  # batches inside its backend
    ],
)
def test_recommended_dynamic_batching(
    fmt: ModelFormat, max_batch_size: int, expected_delay: int | None
) -> None:
    batching = recommended_dynamic_batching(fmt, max_batch_size)
    if expected_delay is None:
        assert batching is None
    else:
        assert batching is not None
        assert batching.max_queue_delay_microseconds == expected_delay
        assert batching.preferred_batch_sizes is None  # Triton's advice for most models


def test_with_recommended_batching_fills_only_what_is_unset() -> None:
    plain = spec("pytorch", {"maxBatchSize": 8})
    assert parsed(with_recommended_batching(plain))["dynamic_batching"] == {
        "max_queue_delay_microseconds": "100"
    }
    assert plain.config is not None and plain.config.dynamic_batching is None  # the spec is not touched

    chosen = spec("pytorch", {"maxBatchSize": 8, "dynamicBatching": {"maxQueueDelayMicroseconds": 7}})
    assert with_recommended_batching(chosen) is chosen
    unbatched = spec("pytorch", {})
    assert with_recommended_batching(unbatched) is unbatched
    no_config = spec("pytorch", None)
    assert with_recommended_batching(no_config) is no_config
