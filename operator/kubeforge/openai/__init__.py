"""The OpenAI-compatible API of language-model ModelDeployments (`kubeforge openai-front`).

The files a model directory gives the front (`kubeforge.openai.models` reads them): Hugging Face's
`tokenizer_config.json` (the `chat_template` and special tokens; the python-llm export writes one
too) and `chat_template.jinja` (a template of its own, as Hugging Face saves it and as the operator
writes `spec.models[].llm.chatTemplate`).
"""

TOKENIZER_CONFIG = "tokenizer_config.json"
CHAT_TEMPLATE_FILE = "chat_template.jinja"
