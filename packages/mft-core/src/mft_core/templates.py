"""MFTCoder's chat format as a Jinja chat template usable by ``tokenizer.apply_chat_template``.

MFTCoder renders ``<s>system\\n{S}\\n<s>human\\n{U}\\n<s>bot\\n{A}{EOS}\\n`` and asks for an answer by ending
with ``<s>bot\\n``. ``<s>`` is plain text for most tokenizers and the BOS token for Llama-style ones; the
template just writes the characters and the tokenizer decides, so both cases render the same text.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class RoleMarkers:
    """The words that open each round; MFTCoder's defaults."""

    prefix: str = "<s>"
    system: str = "system"
    user: str = "human"
    assistant: str = "bot"


def _lit(text: str) -> str:
    """A Jinja string literal for ``text``."""
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'").replace("\n", "\\n") + "'"


def build_chat_template(markers: RoleMarkers = RoleMarkers()) -> str:
    """Return the MFTCoder chat template (Jinja) for the given role markers.

    Only assistant content plus EOS is meant to be trained; the tokenizer side finds those spans by rendering
    prefixes, so the template needs no special ``{% generation %}`` tags.
    """
    p = markers.prefix
    opener = {
        "system": _lit(f"{p}{markers.system}\n"),
        "user": _lit(f"{p}{markers.user}\n"),
        "assistant": _lit(f"{p}{markers.assistant}\n"),
    }
    return (
        "{%- for message in messages -%}"
        "{%- if message['role'] == 'system' -%}"
        "{{- " + opener["system"] + " + message['content'] + '\\n' -}}"
        "{%- elif message['role'] == 'user' -%}"
        "{{- " + opener["user"] + " + message['content'] + '\\n' -}}"
        "{%- elif message['role'] == 'assistant' -%}"
        "{{- " + opener["assistant"] + " + message['content'] + eos_token + '\\n' -}}"
        "{%- else -%}"
        "{{- raise_exception('unknown role ' + message['role']) -}}"
        "{%- endif -%}"
        "{%- endfor -%}"
        "{%- if add_generation_prompt -%}{{- " + opener["assistant"] + " -}}{%- endif -%}"
    )


DEFAULT_CHAT_TEMPLATE = build_chat_template()
