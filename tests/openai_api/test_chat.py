"""Chat templates rendered as Hugging Face renders them, in Jinja2's sandbox."""

from __future__ import annotations

import pytest

from kubeforge.openai.chat import render
from kubeforge.openai.protocol import OpenAIError
from kubeforge.trainer.llm_export import CHAT_TEMPLATE, tokenizer_config

MESSAGES = [
    {"role": "user", "content": "Hi"},
    {"role": "assistant", "content": "Hello"},
    {"role": "user", "content": "Why?"},
]

# the shape of a real model's template (ChatML, with a system default, loop controls and tojson)
CHATML = (
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}<|im_start|>system\nYou are helpful.<|im_end|>\n{% endif %}"
    "{% if message['role'] == 'tool' %}{% continue %}{% endif %}"
    "<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def test_a_chatml_template_renders_as_in_transformers() -> None:
    assert render(CHATML, MESSAGES) == (
        "<|im_start|>system\nYou are helpful.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
        "<|im_start|>assistant\nHello<|im_end|>\n<|im_start|>user\nWhy?<|im_end|>\n<|im_start|>assistant\n"
    )
    assert render(CHATML, MESSAGES, add_generation_prompt=False).endswith("Why?<|im_end|>\n")
    assert (
        render("{{ messages | tojson }}", [{"role": "user", "content": "é"}])
        == '[{"role": "user", "content": "é"}]'
    )
    assert (
        render("{{ bos_token }}{{ messages[0].content }}", MESSAGES, special_tokens={"bos_token": "<s>"})
        == "<s>Hi"
    )


def test_the_exported_models_template() -> None:
    assert render(CHAT_TEMPLATE, MESSAGES) == "Q: Hi\nA: Hello\nQ: Why?\nA:"
    assert tokenizer_config()["chat_template"] == CHAT_TEMPLATE


def test_a_template_that_refuses_the_conversation_is_a_400_naming_messages() -> None:
    strict = "{% if messages[0]['role'] != 'system' %}{{ raise_exception('the first message must be the system prompt') }}{% endif %}"
    with pytest.raises(OpenAIError) as refused:
        render(strict, MESSAGES)
    assert (refused.value.status, refused.value.param) == (400, "messages")
    assert "the first message must be the system prompt" in refused.value.message


@pytest.mark.parametrize(
    "template",
    [
        "{{ ''.__class__.__mro__[1].__subclasses__() }}",
        "{{ messages.append({'role': 'x'}) }}",  # the sandbox is immutable
        "{{ cycler.__init__.__globals__ }}",
    ],
)
def test_the_sandbox_keeps_a_template_from_python(template: str) -> None:
    with pytest.raises(OpenAIError) as refused:
        render(template, MESSAGES)
    assert refused.value.status == 500 and "chat template failed" in refused.value.message
