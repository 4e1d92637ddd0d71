"""The OpenAI-compatible API of language-model ModelDeployments (`kubeforge openai-front`).

What a model directory tells the front, in its `tokenizer_config.json` (Hugging Face's file, which
the python-llm export writes too): `chat_template`, `model_max_length` (the longest prompt, in
tokens) and, for Kubeforge's byte-level models, `kubeforge_tokenizer: utf-8-bytes`.
"""

TOKENIZER_CONFIG = "tokenizer_config.json"
TOKENIZER_KEY = "kubeforge_tokenizer"
BYTE_TOKENIZER = "utf-8-bytes"
