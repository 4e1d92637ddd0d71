"""What vLLM itself makes of a vLLM model folder that the OpenAI front serves (no GPU needed).

Runs in the vllm tool environment (tests/llm/vllm-env.sh prints its python); the standard library,
vllm and what vllm brings (transformers, tokenizers). Three commands, each reading JSON on stdin and
writing JSON on stdout:

- `weights`: {"folder", "style"} writes a Hugging Face model folder as `save_pretrained` does: a
  tiny Llama config.json and a real tokenizer (transformers' PreTrainedTokenizerFast over a
  `tokenizers` word-level model, with <s> and </s>), its chat template stored in one of the ways
  models on the Hub store theirs: `jinja` (chat_template.jinja, what transformers 4.57 writes),
  `tokenizer_config` (the chat_template string in tokenizer_config.json), `named` (a list of named
  templates there) or `none`.
- `render`: [{"label", "folder", "messages"}] renders each conversation as vLLM's OpenAI server
  would for that Triton model folder: the template is vLLM's `load_chat_template` of the folder's
  chat_template.jinja (the operator's llm.chatTemplate; the server's --chat-template) when there is
  one, the weights are the `model` of its 1/model.json, and `safe_apply_chat_template` with vLLM's
  ModelConfig and tokenizer resolves and applies it (add_generation_prompt). Answers {label:
  {"prompt"} or {"error"}}.
- `sampling`: [{"label", "sampling_parameters", "folder"}] builds what Triton's vLLM backend builds
  from the `sampling_parameters` input (src/utils/vllm_backend_utils.py, TritonSamplingParams.from_dict:
  JSON, the scalar types of SamplingParams' annotations, then the constructor) and, for a
  `lora_name`, its LoRARequest from the folder's 1/multi_lora.json (src/utils/request.py). Answers
  {label: {"max_tokens", "temperature", "top_p", "seed", "stop", "lora"} or {"error"}}.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any, Optional

os.environ.pop("HF_HUB_OFFLINE", None)
os.environ.setdefault("VLLM_NO_USAGE_STATS", "1")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR")

# vLLM's CPU platform: CUDA's cannot be imported without the driver (see vllm_check.py)
import vllm.platforms
from vllm.platforms.cpu import CpuPlatform

vllm.platforms.current_platform = CpuPlatform()

from tokenizers import Tokenizer, models, pre_tokenizers  # noqa: E402
from transformers import PreTrainedTokenizerFast  # noqa: E402
from vllm.config import ModelConfig  # noqa: E402
from vllm.entrypoints.chat_utils import load_chat_template  # noqa: E402
from vllm.lora.request import LoRARequest  # noqa: E402
from vllm.renderers.hf import safe_apply_chat_template  # noqa: E402
from vllm.sampling_params import SamplingParams  # noqa: E402
from vllm.tokenizers.registry import get_tokenizer  # noqa: E402

# A template in the manner of the Hub's instruct models: a default system prompt, roles checked with
# raise_exception, the special tokens, whitespace control, a generation prompt.
TEMPLATE = (
    "{{ bos_token }}"
    "{%- if messages[0]['role'] != 'system' %}<|system|>\nYou are helpful.{{ eos_token }}\n{% endif %}"
    "{%- for message in messages %}"
    "{%- if message['role'] not in ['system', 'user', 'assistant'] %}"
    "{{ raise_exception('unknown role: ' + message['role']) }}"
    "{%- endif %}"
    "<|{{ message['role'] }}|>\n{{ message['content'] | trim }}{{ eos_token }}\n"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}<|assistant|>\n{% endif %}"
)
LLAMA = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_attention_heads": 4,
    "num_hidden_layers": 1,
    "num_key_value_heads": 4,
    "vocab_size": 5,
    "max_position_embeddings": 2048,
    "torch_dtype": "float32",
}
MODEL_JSON = Path("1") / "model.json"
MULTI_LORA_JSON = Path("1") / "multi_lora.json"


def weights(request: dict[str, Any]) -> dict[str, Any]:
    folder, style = Path(request["folder"]), request["style"]
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, "hello": 3, "light": 4}
    model = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    model.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=model, bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    )
    if style != "none":
        tokenizer.chat_template = TEMPLATE
    tokenizer.save_pretrained(str(folder))
    (folder / "config.json").write_text(json.dumps(LLAMA))
    jinja = folder / "chat_template.jinja"
    if style in ("tokenizer_config", "named"):
        config_path = folder / "tokenizer_config.json"
        config = json.loads(config_path.read_text())
        template = jinja.read_text()
        jinja.unlink()
        config["chat_template"] = (
            template
            if style == "tokenizer_config"
            else [
                {"name": "tool_use", "template": "{{ 'tools' }}"},
                {"name": "default", "template": template},
            ]
        )
        config_path.write_text(json.dumps(config))
    return {"files": sorted(p.name for p in folder.iterdir())}


def render(cases: list[dict[str, Any]]) -> dict[str, Any]:
    answers: dict[str, Any] = {}
    for case in cases:
        folder = Path(case["folder"])
        weights_dir = json.loads((folder / MODEL_JSON).read_text())["model"]
        spec_template = folder / "chat_template.jinja"
        template = load_chat_template(spec_template) if spec_template.is_file() else None
        try:
            model_config = ModelConfig(model=weights_dir)
            prompt = safe_apply_chat_template(
                model_config,
                get_tokenizer(weights_dir),
                case["messages"],
                chat_template=template,
                tokenize=False,
                add_generation_prompt=True,
            )
            answers[case["label"]] = {"prompt": prompt}
        except Exception as error:  # noqa: BLE001 - vLLM's verdict, whatever its type
            answers[case["label"]] = {"error": f"{type(error).__name__}: {error}"}
    return answers


def sampling(cases: list[dict[str, Any]]) -> dict[str, Any]:
    types = {int: int, float: float, bool: bool, str: str, Optional[int]: int}  # noqa: UP045 - the backend's table
    annotations = SamplingParams.__annotations__
    answers: dict[str, Any] = {}
    for case in cases:
        try:
            params = json.loads(case["sampling_parameters"])
            lora_name = params.pop("lora_name", None)
            for key, value in params.items():
                if annotations.get(key) in types:
                    params[key] = types[annotations[key]](value)
            sampled = SamplingParams(**params)
            lora = None
            if lora_name is not None:
                adapters = json.loads((Path(case["folder"]) / MULTI_LORA_JSON).read_text())
                names = list(adapters)
                if lora_name not in names:
                    raise ValueError(f"LoRA {lora_name} is not supported, we currently support {names}")
                index = names.index(lora_name) + 1
                request = LoRARequest(str(index), index, adapters[lora_name])
                lora = {"name": lora_name, "path": request.lora_path}
            answers[case["label"]] = {
                "max_tokens": sampled.max_tokens,
                "temperature": sampled.temperature,
                "top_p": sampled.top_p,
                "seed": sampled.seed,
                "stop": list(sampled.stop or []),
                "lora": lora,
            }
        except Exception as error:  # noqa: BLE001 - vLLM's verdict, whatever its type
            answers[case["label"]] = {"error": f"{type(error).__name__}: {error}"}
    return answers


def main(argv: list[str]) -> int:
    commands = {"weights": weights, "render": render, "sampling": sampling}
    if len(argv) != 1 or argv[0] not in commands:
        print(f"usage: vllm_openai_check.py {{{','.join(commands)}}} < request.json", file=sys.stderr)
        return 2
    answer = commands[argv[0]](json.load(sys.stdin))
    print(json.dumps({"vllm": vllm.__version__, "answer": answer}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
