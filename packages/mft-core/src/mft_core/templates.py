"""MFTCoder's chat format as Jinja chat templates usable by ``tokenizer.apply_chat_template``, by name.

Two forms, both opening rounds with ``<s>system\\n``, ``<s>human\\n``, ``<s>bot\\n`` and asking for an answer by
ending with ``<s>bot\\n``:

- ``mftcoder`` (the default, :data:`DEFAULT_TEMPLATE`): byte-identical to MFTCoder v0.5's code
  (``mftcoder_accelerate/src/data/preprocess_data.py``, whose ``content_format`` appends ``\\n`` to every content,
  and its ``tokenizer/chat_template.py``)::

      <s>system\\n{S}\\n<s>human\\n{U}\\n<s>bot\\n{A}\\n{EOS}\\n<s>human\\n...

  ``{A}\\n{EOS}`` is trained; the ``\\n`` after EOS is not. A single-turn prompt/answer record (MFTCoder's
  ``prompt``/``answer``-style inputs) has no ``\\n`` after its EOS; pass ``single_turn=True`` when rendering
  (mft-data does, for records formatted from such pairs). CodeFuse models were fine-tuned with this form, so
  it is the default.
- ``mftcoder-readme``: the layout MFTCoder's README shows, ``...<s>bot\\n{A}{EOS}\\n<s>human\\n...`` (no newline
  before EOS); ``{A}{EOS}`` is trained. It was this toolkit's earlier default.

``<s>`` is plain text for most tokenizers and the BOS token for Llama-style ones; the template just writes the
characters and the tokenizer decides, so both cases render the same text.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from .errors import ConfigError

TemplateName = Literal["mftcoder", "mftcoder-readme"]
TEMPLATE_NAMES: tuple[str, ...] = ("mftcoder", "mftcoder-readme")
DEFAULT_TEMPLATE: TemplateName = "mftcoder"
"""The one place the default is chosen: MFTCoder's code form, what CodeFuse models were trained with."""


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


def build_chat_template(markers: RoleMarkers = RoleMarkers(), name: str = DEFAULT_TEMPLATE) -> str:
    """Return the chat template (Jinja) of form ``name`` (see the module doc) for the given role markers.

    Only assistant content plus EOS (with the newline before it in the ``mftcoder`` form) is meant to be
    trained; the tokenizer side finds those spans by rendering prefixes, so no ``{% generation %}`` tags.
    """
    if name not in TEMPLATE_NAMES:
        raise ConfigError(f"unknown chat template {name!r}", fix=f"use one of {', '.join(TEMPLATE_NAMES)}")
    p = markers.prefix
    opener = {
        "system": _lit(f"{p}{markers.system}\n"),
        "user": _lit(f"{p}{markers.user}\n"),
        "assistant": _lit(f"{p}{markers.assistant}\n"),
    }
    if name == "mftcoder":
        # content_format(A) + EOS, then "\n" except after the last EOS of a single-turn pair
        answer = (
            "{{- " + opener["assistant"] + " + message['content'] + '\\n' + eos_token -}}"
            "{%- if not (loop.last and single_turn is defined and single_turn) -%}{{- '\\n' -}}{%- endif -%}"
        )
    else:
        answer = "{{- " + opener["assistant"] + " + message['content'] + eos_token + '\\n' -}}"
    return (
        "{%- for message in messages -%}"
        "{%- if message['role'] == 'system' -%}"
        "{{- " + opener["system"] + " + message['content'] + '\\n' -}}"
        "{%- elif message['role'] == 'user' -%}"
        "{{- " + opener["user"] + " + message['content'] + '\\n' -}}"
        "{%- elif message['role'] == 'assistant' -%}" + answer + "{%- else -%}"
        "{{- raise_exception('unknown role ' + message['role']) -}}"
        "{%- endif -%}"
        "{%- endfor -%}"
        "{%- if add_generation_prompt -%}{{- " + opener["assistant"] + " -}}{%- endif -%}"
    )


CHAT_TEMPLATES: dict[str, str] = {name: build_chat_template(name=name) for name in TEMPLATE_NAMES}


def chat_template(name: str) -> str:
    """The built-in template called ``name`` (``mftcoder`` or ``mftcoder-readme``)."""
    if name not in CHAT_TEMPLATES:
        raise ConfigError(f"unknown chat template {name!r}", fix=f"use one of {', '.join(TEMPLATE_NAMES)}")
    return CHAT_TEMPLATES[name]


DEFAULT_CHAT_TEMPLATE = CHAT_TEMPLATES[DEFAULT_TEMPLATE]
