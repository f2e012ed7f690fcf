"""Chat templates: the tokenizer's own, a named built-in, or a Jinja file (``data.chat_template``).

The chosen template is set on the tokenizer before tokenisation, so training, the probe, the
held-out loss, generation and the tokenizer saved in the run folder all use the same one.

The built-ins wrap each assistant answer in ``{% generation %}``, so transformers returns the
assistant-token mask itself (``return_assistant_tokens_mask``); other templates are masked by
rendering the conversation prefix by prefix (``data.tokenize_example``). ``alpaca`` means no chat
template: the Alpaca prompt (``### Instruction: ... ### Response:``), as for a tokenizer without one.
"""

from __future__ import annotations

from pathlib import Path

from .errors import AletheiaError
from .registry import Registry

CHAT_TEMPLATES: Registry[str | None] = Registry("chat template")

# One line each, no text outside the tags: transformers renders with trim_blocks/lstrip_blocks, and
# a stray newline would become a token of every example.
CHAT_TEMPLATES.register("chatml", (
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'assistant' -%}"
    "{{- '<|im_start|>assistant\\n' -}}"
    "{%- generation -%}{{- message['content'] + '<|im_end|>\\n' -}}{%- endgeneration -%}"
    "{%- else -%}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}"
))
CHAT_TEMPLATES.register("llama3", (
    "{{- bos_token -}}"
    "{%- for message in messages -%}"
    "{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' -}}"
    "{%- if message['role'] == 'assistant' -%}"
    "{%- generation -%}{{- message['content'] + '<|eot_id|>' -}}{%- endgeneration -%}"
    "{%- else -%}{{- message['content'] + '<|eot_id|>' -}}{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}"
    "{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' -}}"
    "{%- endif -%}"
))
CHAT_TEMPLATES.register("alpaca", None)  # no chat template: the Alpaca prompt


def resolve_chat_template(choice: str) -> str | None:
    """The Jinja text ``choice`` names (None for ``alpaca``), or one line saying what is wrong."""
    if choice in CHAT_TEMPLATES:
        return CHAT_TEMPLATES[choice]
    if "{{" in choice or "{%" in choice:  # the template itself, inline in the YAML
        return choice
    path = Path(choice).expanduser()
    if path.is_file():
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise AletheiaError(f"data.chat_template: cannot read {path} ({exc})") from None
        if not text.strip():
            raise AletheiaError(f"data.chat_template: {path} is empty; it must hold a Jinja chat template")
        return text
    raise AletheiaError(f"data.chat_template {choice!r} is neither a built-in ({', '.join(CHAT_TEMPLATES)}) "
                        "nor an existing Jinja file; leave it out to use the tokenizer's own")


def use_chat_template(tokenizer, choice: str | None):
    """Set the chosen template on ``tokenizer`` (None: keep its own) and return the tokenizer."""
    if choice is not None:
        tokenizer.chat_template = resolve_chat_template(choice)
    return tokenizer
