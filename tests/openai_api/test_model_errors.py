"""The errors a model answers with, as OpenAI's: an over-long prompt (the python-llm model's message, and
vLLM 0.15.1's, from vllm/v1/engine/input_processor.py as Triton's vLLM backend wraps it) is a 400
`context_length_exceeded` on the field the prompt came from; an engine failure is the server's 500;
anything else the model refuses is the request's 400."""

from __future__ import annotations

import pytest

from kubeforge.openai.front import model_error

VLLM_TOO_LONG = (
    "Error generating stream: The decoder prompt (length 5000) is longer than the maximum model length of "
    "4096. Make sure that `max_model_len` is no smaller than the number of text tokens."
)


@pytest.mark.parametrize(
    ("message", "param", "status", "code", "kind"),
    [
        (VLLM_TOO_LONG, "messages", 400, "context_length_exceeded", "invalid_request_error"),
        ("the prompt is 4097 tokens, longer than this model's maximum prompt length of 4096 tokens",
         "prompt", 400, "context_length_exceeded", "invalid_request_error"),
        ("Error generating stream: CUDA out of memory", "prompt", 500, None, "server_error"),
        ("max_tokens must be in [1, 4096], got 0", "prompt", 400, None, "invalid_request_error"),
    ],
)  # fmt: skip
def test_a_models_error_is_openais(
    message: str, param: str, status: int, code: str | None, kind: str
) -> None:
    error = model_error(message, param)
    assert (error.status, error.code, error.kind, error.message) == (status, code, kind, message)
    assert error.param == (param if code else None)
