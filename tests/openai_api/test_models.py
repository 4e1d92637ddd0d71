"""What the front serves, read from model folders as the init container lays them out (the real
`assemble_repository`, from pvc:// sources on this machine): a vLLM model and its LoRA adapters, its
chat template from the weights or from spec.models[].llm.chatTemplate, its context length; the
python-llm export; and what it refuses."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from kubeforge.api import ModelDeployment
from kubeforge.openai import CHAT_TEMPLATE_FILE, TOKENIZER_CONFIG
from kubeforge.openai.chat import render
from kubeforge.openai.models import load, served_models
from kubeforge.triton.repository import assemble_repository, parse_plan, repository_plan

WEIGHTS_TEMPLATE = "{% for m in messages %}<|{{ m.role }}|>{{ m.content }}{{ eos_token }}{% endfor %}"
SPEC_TEMPLATE = "{{ bos_token }}{% for m in messages %}[{{ m.role }}] {{ m.content }}\n{% endfor %}"


def _weights(root: Path, tokenizer: dict[str, Any], config: dict[str, Any] | None = None) -> None:
    root.mkdir(parents=True)
    (root / "config.json").write_text(
        json.dumps(config or {"model_type": "qwen2", "max_position_embeddings": 32768})
    )
    (root / TOKENIZER_CONFIG).write_text(json.dumps(tokenizer))


def _assemble(tmp_path: Path, llm: dict[str, Any]) -> Path:
    pvc = tmp_path / "pvc"
    _weights(
        pvc / "store" / "qwen",
        {
            "chat_template": WEIGHTS_TEMPLATE,
            "bos_token": "<s>",
            "eos_token": {"content": "</s>", "lstrip": False},
        },
    )
    for adapter in ("sql", "poetry"):
        (pvc / "store" / adapter).mkdir(parents=True)
        (pvc / "store" / adapter / "adapter_config.json").write_text("{}")
    spec = {
        "models": [{"name": "qwen", "source": "pvc://store/qwen", "format": "vllm", "llm": llm}],
        "gpu": {"count": 1},
    }
    md = ModelDeployment.model_validate({"metadata": {"name": "lm", "namespace": "a"}, "spec": spec})
    out = tmp_path / "models"
    assert assemble_repository(parse_plan(repository_plan(md.spec.models)), out, pvc_root=pvc) == []
    return out


def test_a_vllm_model_and_its_adapters_are_model_ids_of_their_own(tmp_path: Path) -> None:
    adapters = [
        {"name": "qwen-sql", "source": "pvc://store/sql"},
        {"name": "qwen-poetry", "source": "pvc://store/poetry"},
    ]
    repository = _assemble(tmp_path, {"loraAdapters": adapters, "maxModelLen": 8192})
    base, poetry, sql = load(repository, "qwen")
    assert (base.name, base.triton_model, base.lora) == ("qwen", "qwen", None)
    assert [(m.name, m.triton_model, m.lora) for m in (poetry, sql)] == [
        ("qwen-poetry", "qwen", "qwen-poetry"),
        ("qwen-sql", "qwen", "qwen-sql"),
    ]
    # the weights' template and special tokens (an AddedToken's content), for the adapters too
    assert base.chat_template == sql.chat_template == WEIGHTS_TEMPLATE
    assert base.special_tokens == {"bos_token": "<s>", "eos_token": "</s>"}
    assert base.context_length == sql.context_length == 8192  # max_model_len wins over config.json
    prompt = render(
        base.chat_template, [{"role": "user", "content": "hi"}], special_tokens=base.special_tokens
    )
    assert prompt == "<|user|>hi</s>"


def test_the_spec_template_wins_over_the_weights(tmp_path: Path) -> None:
    repository = _assemble(tmp_path, {"chatTemplate": SPEC_TEMPLATE})
    assert (repository / "qwen" / CHAT_TEMPLATE_FILE).read_text() == SPEC_TEMPLATE
    (model,) = load(repository, "qwen")
    assert model.chat_template == SPEC_TEMPLATE
    assert model.context_length == 32768  # config.json's max_position_embeddings
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]
    assert (
        render(SPEC_TEMPLATE, messages, special_tokens=model.special_tokens)
        == "<s>[system] be brief\n[user] hi\n"
    )


@pytest.mark.parametrize(
    ("tokenizer", "jinja", "expected"),
    [
        (
            {"chat_template": [{"name": "tool_use", "template": "T"}, {"name": "default", "template": "D"}]},
            None,
            "D",
        ),
        ({}, "J", "J"),  # transformers saves it as chat_template.jinja
        ({"chat_template": "C"}, "J", "J"),
        ({}, None, None),  # a base model with no template: /v1/completions only
    ],
    ids=["named-list", "jinja-file", "jinja-file-wins", "none"],
)
def test_where_the_weights_template_comes_from(
    tmp_path: Path, tokenizer: dict[str, Any], jinja: str | None, expected: str | None
) -> None:
    weights = tmp_path / "weights"
    _weights(weights, tokenizer, {"n_positions": 1024})
    if jinja is not None:
        (weights / CHAT_TEMPLATE_FILE).write_text(jinja)
    (tmp_path / "repo" / "m" / "1").mkdir(parents=True)
    (tmp_path / "repo" / "m" / "1" / "model.json").write_text(json.dumps({"model": str(weights)}))
    (model,) = load(tmp_path / "repo", "m")
    assert model.chat_template == expected
    assert model.context_length == 1024


def test_a_python_llm_export_and_what_is_left_out(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    (tmp_path / "opticks").mkdir()
    (tmp_path / "opticks" / TOKENIZER_CONFIG).write_text(
        json.dumps({"chat_template": "Q", "model_max_length": 4096})
    )
    (tmp_path / "resnet").mkdir()
    served = served_models(tmp_path, ["opticks", "resnet"])
    assert [(m.name, m.chat_template, m.context_length) for m in served] == [("opticks", "Q", None)]
    assert "not served through the OpenAI API: model resnet" in caplog.text


def test_an_adapter_named_like_a_model_is_refused(tmp_path: Path) -> None:
    repository = _assemble(tmp_path, {"loraAdapters": [{"name": "qwen-sql", "source": "pvc://store/sql"}]})
    (repository / "qwen-sql").mkdir()
    (repository / "qwen-sql" / TOKENIZER_CONFIG).write_text("{}")
    with pytest.raises(ValueError, match="two models are named qwen-sql"):
        served_models(repository, ["qwen", "qwen-sql"])
