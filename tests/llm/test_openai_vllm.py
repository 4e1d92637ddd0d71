"""The OpenAI front's configuration for vLLM models, checked by vLLM itself (vLLM 0.15.1, the version of
Triton's vLLM image; tests/llm/vllm-env.sh).

Model folders are laid out by the init container's own code (`assemble_repository`, pvc:// sources on
this machine) from Hugging Face weights that the vLLM environment's transformers wrote; then, for the
same folders:

- the prompt the front renders for a conversation equals, character for character, the one vLLM's
  OpenAI server would render (vLLM's chat-template loading and resolution, applied by transformers),
  whether the template comes from the weights (chat_template.jinja, tokenizer_config.json, a named
  list) or from spec.models[].llm.chatTemplate; a template that refuses a conversation is refused by
  both;
- every `sampling_parameters` the front sends becomes vLLM's SamplingParams the way Triton's vLLM
  backend builds it, holding the request's values; an adapter's `lora_name` is one the backend
  finds in multi_lora.json, and the adapters are exactly the front's model ids besides the model.

What needs a GPU is not here: the engine generating through the front.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from kubeforge.api import ModelDeployment
from kubeforge.openai import chat
from kubeforge.openai.front import DEFAULT_COMPLETION_TOKENS, sampling_parameters
from kubeforge.openai.models import ServedModel, served_models
from kubeforge.openai.protocol import ChatCompletionRequest, CompletionRequest, OpenAIError, parse
from kubeforge.triton.repository import assemble_repository, parse_plan, repository_plan
from tests.llm.conftest import CHECK_TIMEOUT_S, INSTALL_TIMEOUT_S, run_in_vllm

CHECKER = Path(__file__).resolve().parent / "vllm_openai_check.py"
STYLES = ("jinja", "tokenizer_config", "named")
SPEC_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and message['role'] == 'system' %}"
    "### {{ message['content'] }}\n\n{% else %}{{ message['role'] | upper }}: {{ message['content'] }}\n"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)
CONVERSATIONS: dict[str, list[dict[str, str]]] = {
    "one-turn": [{"role": "user", "content": "hello"}],
    "system": [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "Of light?"}],
    "multi-turn": [
        {"role": "user", "content": "  What is white light?\n"},
        {"role": "assistant", "content": "A mixture of colours."},
        {"role": "user", "content": "Über Farben, 光?"},
    ],
}

pytestmark = pytest.mark.timeout(INSTALL_TIMEOUT_S + CHECK_TIMEOUT_S)


def vllm(python: Path, command: str, request: Any) -> Any:
    result = run_in_vllm(python, CHECKER, [command], json.dumps(request))
    assert result.returncode == 0, result.stderr[-3000:]
    answer = json.loads(result.stdout.strip().splitlines()[-1])
    assert answer["vllm"] == "0.15.1"
    return answer["answer"]


@pytest.fixture(scope="module")
def repository(vllm_python: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One Triton model per way of storing a template, one with llm.chatTemplate and adapters."""
    root = tmp_path_factory.mktemp("openai-vllm")
    pvc = root / "pvc"
    for style in (*STYLES, "none"):
        (pvc / "store" / style).mkdir(parents=True)
        vllm(vllm_python, "weights", {"folder": str(pvc / "store" / style), "style": style})
    for adapter in ("sql", "verse"):
        (pvc / "adapters" / adapter).mkdir(parents=True)
        (pvc / "adapters" / adapter / "adapter_config.json").write_text(
            json.dumps({"r": 8, "peft_type": "LORA"})
        )
    models: list[dict[str, Any]] = [
        {"name": f"lm-{style}", "source": f"pvc://store/{style}", "format": "vllm", "llm": {}}
        for style in STYLES
    ]
    models.append(
        {
            "name": "lm-spec",
            "source": "pvc://store/none",
            "format": "vllm",
            "llm": {
                "chatTemplate": SPEC_TEMPLATE,
                "loraAdapters": [
                    {"name": "lm-sql", "source": "pvc://adapters/sql"},
                    {"name": "lm-verse", "source": "pvc://adapters/verse"},
                ],
            },
        }
    )
    md = ModelDeployment.model_validate(
        {"metadata": {"name": "lm", "namespace": "a"}, "spec": {"models": models, "gpu": {"count": 1}}}
    )
    out = root / "models"
    assert assemble_repository(parse_plan(repository_plan(md.spec.models)), out, pvc_root=pvc) == []
    return out


@pytest.fixture(scope="module")
def served(repository: Path) -> dict[str, ServedModel]:
    names = [f"lm-{style}" for style in STYLES] + ["lm-spec"]
    return {m.name: m for m in served_models(repository, names)}


def test_the_front_renders_every_conversation_as_vllm_does(
    vllm_python: Path, repository: Path, served: dict[str, ServedModel]
) -> None:
    cases, ours = [], {}
    for model in ("lm-jinja", "lm-tokenizer_config", "lm-named", "lm-spec"):
        for name, messages in CONVERSATIONS.items():
            label = f"{model}/{name}"
            cases.append({"label": label, "folder": str(repository / model), "messages": messages})
            template = served[model].chat_template
            assert template is not None, model
            ours[label] = chat.render(template, messages, special_tokens=served[model].special_tokens)
    theirs = vllm(vllm_python, "render", cases)
    assert {label: answer.get("prompt", answer.get("error")) for label, answer in theirs.items()} == ours
    # what the template gives: the weights' (with <s> and </s>), and the spec's where it is set
    assert (
        ours["lm-jinja/one-turn"] == "<s><|system|>\nYou are helpful.</s>\n<|user|>\nhello</s><|assistant|>\n"
    )
    assert ours["lm-spec/system"] == "### Answer briefly.\n\nUSER: Of light?\nASSISTANT:"
    assert ours["lm-named/system"] == ours["lm-jinja/system"] == ours["lm-tokenizer_config/system"]


def test_a_conversation_the_template_refuses_is_refused_by_both(
    vllm_python: Path, repository: Path, served: dict[str, ServedModel]
) -> None:
    messages = [{"role": "tool", "content": "42"}]
    (answer,) = vllm(
        vllm_python,
        "render",
        [{"label": "tool", "folder": str(repository / "lm-jinja"), "messages": messages}],
    ).values()
    assert "unknown role: tool" in answer["error"]
    model = served["lm-jinja"]
    assert model.chat_template is not None
    with pytest.raises(OpenAIError) as refused:
        chat.render(model.chat_template, messages, special_tokens=model.special_tokens)
    assert (refused.value.status, refused.value.param) == (400, "messages")
    assert "unknown role: tool" in refused.value.message


def test_the_sampling_parameters_are_vllms_and_the_adapters_the_backends(
    vllm_python: Path, repository: Path, served: dict[str, ServedModel]
) -> None:
    requests: dict[str, tuple[str, Any, int]] = {
        "defaults": ("lm-jinja", parse(CompletionRequest, {"model": "lm-jinja", "prompt": "x"}), DEFAULT_COMPLETION_TOKENS),
        "all": (
            "lm-spec",
            parse(
                ChatCompletionRequest,
                {"model": "lm-spec", "messages": [{"role": "user", "content": "x"}], "max_completion_tokens": 64,
                 "temperature": 0.7, "top_p": 0.9, "seed": 3, "stop": ["\n\n", "USER:"]},
            ),
            64,
        ),
        "one-stop": ("lm-sql", parse(CompletionRequest, {"model": "lm-sql", "prompt": "x", "stop": "###"}), 16),
        "adapter": ("lm-verse", parse(CompletionRequest, {"model": "lm-verse", "prompt": "x", "temperature": 0}), 16),
        # a chat without max_tokens asks for the context length (config.json's 2048)
        "context": ("lm-named", parse(ChatCompletionRequest, {"model": "lm-named", "messages": [{"role": "user", "content": "x"}]}), 2048),
    }  # fmt: skip
    assert served["lm-named"].context_length == 2048
    cases = [
        {
            "label": label,
            "sampling_parameters": sampling_parameters(served[model], max_tokens, body),
            "folder": str(repository / served[model].triton_model),
        }
        for label, (model, body, max_tokens) in requests.items()
    ]
    answers = vllm(vllm_python, "sampling", cases)
    for label, (model, body, max_tokens) in requests.items():
        answer = answers[label]
        assert "error" not in answer, (label, answer)
        assert answer["max_tokens"] == max_tokens, label
        assert answer["stop"] == body.stops(), label
        for field, default in (("temperature", 1.0), ("top_p", 1.0), ("seed", None)):
            expected = getattr(body, field)
            assert answer[field] == (default if expected is None else expected), (label, field)
        lora = served[model].lora
        assert (answer["lora"] or {}).get("name") == lora, label
    assert answers["adapter"]["lora"]["path"].endswith("/lm-spec/lora/lm-verse")
    # the front's model ids: the model, then exactly the adapters of its multi_lora.json
    adapters = json.loads((repository / "lm-spec" / "1" / "multi_lora.json").read_text())
    assert [m for m in served if served[m].triton_model == "lm-spec"] == ["lm-spec", *sorted(adapters)]
