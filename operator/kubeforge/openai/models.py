"""What the front serves: the language models of the pod's model repository, and their LoRA adapters.

The init container lays each model out (`kubeforge.triton.repository`); the front reads, for a model
directory `<repository>/<name>`:

- a vLLM model (`1/model.json`): the Hugging Face weights it names (`model`), whose
  `chat_template.jinja` or `tokenizer_config.json` gives the chat template and special tokens, and
  whose `config.json` gives the context length unless model.json sets `max_model_len`;
  `1/multi_lora.json` names its LoRA adapters, each served as a model id of its own;
- a python-llm export: its own `tokenizer_config.json`;
- in either, `chat_template.jinja` (`spec.models[].llm.chatTemplate`) wins over the weights' template,
  as vLLM's `--chat-template` does.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from kubeforge.openai import CHAT_TEMPLATE_FILE, TOKENIZER_CONFIG
from kubeforge.triton.config import VLLM_MODEL_JSON, VLLM_MULTI_LORA_JSON, VLLM_VERSION

log = logging.getLogger(__name__)

HF_CONFIG = "config.json"
# what Hugging Face passes to a chat template besides the messages (the tokenizer's special tokens)
SPECIAL_TOKENS = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")
# config.json keys that give a Hugging Face model's context length, in the order vLLM reads them
CONTEXT_KEYS = ("max_position_embeddings", "n_positions", "max_seq_len", "seq_length", "max_sequence_length")


@dataclass(frozen=True)
class ServedModel:
    """A model id of /v1/models: a Triton model, or one of its LoRA adapters."""

    name: str
    triton_model: str  # the Triton model that generates
    chat_template: str | None
    created: int
    lora: str | None = None  # the adapter: sampling_parameters.lora_name
    context_length: int | None = None  # the longest prompt + completion; None: the Triton config's limit
    special_tokens: Mapping[str, str] = field(default_factory=dict)


def _json(path: Path) -> dict[str, Any]:
    try:
        document = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except ValueError as error:
        raise ValueError(f"{path} is not JSON: {error}") from None
    if not isinstance(document, dict):
        raise ValueError(f"{path} is not a JSON object")
    return document


def _template_of(tokenizer_config: Mapping[str, Any]) -> str | None:
    """`chat_template`: a string, or Hugging Face's list of named templates (the one named default)."""
    template = tokenizer_config.get("chat_template")
    if isinstance(template, list):
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
        template = named.get("default")
    return template if isinstance(template, str) else None


def _special_tokens(tokenizer_config: Mapping[str, Any]) -> dict[str, str]:
    tokens = {}
    for key in SPECIAL_TOKENS:
        value = tokenizer_config.get(key)
        if isinstance(value, dict):  # an AddedToken as Hugging Face saves it
            value = value.get("content")
        if isinstance(value, str):
            tokens[key] = value
    return tokens


def _chat(folders: Sequence[Path]) -> tuple[str | None, dict[str, str]]:
    """The chat template and special tokens from the first folder that has them."""
    template: str | None = None
    tokens: dict[str, str] = {}
    for folder in folders:
        config = _json(folder / TOKENIZER_CONFIG)
        tokens = tokens or _special_tokens(config)
        if template is None:
            jinja = folder / CHAT_TEMPLATE_FILE
            template = jinja.read_text() if jinja.is_file() else _template_of(config)
    return template, tokens


def _context_length(engine: Mapping[str, Any], weights: Path | None) -> int | None:
    if engine.get("max_model_len"):
        return int(engine["max_model_len"])
    if weights is not None:
        config = _json(weights / HF_CONFIG)
        for key in CONTEXT_KEYS:
            if isinstance(config.get(key), int):
                return int(config[key])
    return None


def load(repository: Path, name: str) -> list[ServedModel]:
    """The model ids `<repository>/<name>` serves (the model, then its adapters); ValueError when it
    is not a language model."""
    folder = repository / name
    model_json = folder / VLLM_VERSION / VLLM_MODEL_JSON
    engine = _json(model_json)
    if engine:
        weights = Path(str(engine.get("model", "")))
        weights_dir = weights if weights.is_absolute() and weights.is_dir() else None
        template, tokens = _chat([folder, *([weights_dir] if weights_dir else [])])
        created = int(model_json.stat().st_mtime)
        base = ServedModel(name, name, template, created, None, _context_length(engine, weights_dir), tokens)
        adapters = _json(folder / VLLM_VERSION / VLLM_MULTI_LORA_JSON)
        return [base] + [replace(base, name=adapter, lora=adapter) for adapter in sorted(adapters)]
    config = folder / TOKENIZER_CONFIG
    if not config.is_file():
        raise ValueError(
            f"model {name}: neither {VLLM_VERSION}/{VLLM_MODEL_JSON} nor {TOKENIZER_CONFIG} in {folder}"
        )
    template, tokens = _chat([folder])
    return [ServedModel(name, name, template, int(config.stat().st_mtime), special_tokens=tokens)]


def served_models(repository: Path, names: Sequence[str]) -> list[ServedModel]:
    """Every model id of `names`; a model that is not a language model is left out with a log line
    (Triton still serves it), and an adapter named like a model is an error."""
    served: dict[str, ServedModel] = {}
    for name in names:
        try:
            models = load(repository, name)
        except ValueError as error:
            log.warning("not served through the OpenAI API: %s", error)
            continue
        for model in models:
            if model.name in served:
                raise ValueError(f"two models are named {model.name}: model ids must be unique")
            served[model.name] = model
    return list(served.values())
