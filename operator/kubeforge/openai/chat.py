"""Chat messages into a prompt with the model's own chat template, rendered as Hugging Face does.

The template is Jinja2 run in an immutable sandbox (a template cannot reach Python objects beyond the
values given to it), with Hugging Face's settings and helpers: `trim_blocks`, `lstrip_blocks`, the
`loopcontrols` extension, `tojson`, `raise_exception` and `strftime_now`. Where a model's template
comes from: `kubeforge.openai.models`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import datetime
from functools import lru_cache
from typing import Any, NoReturn

from jinja2 import TemplateError, TemplateSyntaxError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from kubeforge.openai.protocol import OpenAIError


class ChatTemplateError(Exception):
    """The template refused the conversation (its `raise_exception`) or could not be rendered."""


def _raise(message: str) -> NoReturn:
    raise ChatTemplateError(message)


def _tojson(value: Any, ensure_ascii: bool = False, indent: int | None = None, separators: Any = None,
            sort_keys: bool = False) -> str:  # fmt: skip
    return json.dumps(
        value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
    )


def _strftime_now(format: str) -> str:
    return datetime.now().strftime(format)


@lru_cache(maxsize=32)
def _compiled(template: str) -> Any:
    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"]
    )
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise
    env.globals["strftime_now"] = _strftime_now
    return env.from_string(template)


def template_error(template: str) -> str | None:
    """Why `template` is not a Jinja2 template (its line and the parser's message), or None."""
    try:
        _compiled(template)
    except TemplateSyntaxError as error:
        return f"line {error.lineno}: {error.message}"
    return None


def render(
    template: str,
    messages: Sequence[Mapping[str, Any]],
    *,
    add_generation_prompt: bool = True,
    special_tokens: Mapping[str, str] | None = None,
) -> str:
    """The prompt for `messages` ([{"role", "content"}, ...]); a refusal is a 400 naming `messages`."""
    try:
        return str(
            _compiled(template).render(
                messages=list(messages),
                add_generation_prompt=add_generation_prompt,
                **dict(special_tokens or {}),
            )
        )
    except ChatTemplateError as error:
        raise OpenAIError(400, f"messages: {error}", param="messages") from None
    except TemplateError as error:
        raise OpenAIError(500, f"the model's chat template failed: {error}", kind="server_error") from None
