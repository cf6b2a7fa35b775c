"""Chat templates: the model's own Jinja2 template, rendered as transformers renders it."""

from __future__ import annotations

import json

from .errors import EdgeQwenError


def _raise(message):
    raise EdgeQwenError(f"chat template: {message}")


def _tojson(value, indent=None, ensure_ascii=False):
    return json.dumps(value, indent=indent, ensure_ascii=ensure_ascii)


def compile_template(source: str):
    """A compiled Jinja2 template with the globals and filters Hugging Face templates use."""
    import jinja2
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=["jinja2.ext.loopcontrols"])
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise
    try:
        return env.from_string(source)
    except jinja2.TemplateError as e:
        raise EdgeQwenError(f"chat template does not compile: {e}") from None


def render(template_source: str, messages: list[dict], add_generation_prompt: bool = True,
           enable_thinking: bool = True, **extra) -> str:
    """The prompt string for ``messages``, exactly as ``apply_chat_template(tokenize=False)``."""
    import jinja2

    if not template_source:
        raise EdgeQwenError("this model has no chat template; use raw prompts")
    try:
        return compile_template(template_source).render(
            messages=messages, add_generation_prompt=add_generation_prompt,
            enable_thinking=enable_thinking, **extra)
    except EdgeQwenError:
        raise
    except (jinja2.TemplateError, TypeError, ValueError, KeyError, AttributeError, IndexError) as e:
        # the template's own code can fail on odd messages (a None content, say): one line, not a traceback
        raise EdgeQwenError(f"chat template failed: {type(e).__name__}: {e}") from None
