"""Instruction formats -> ``chat_rounds``. One small converter per format; detection by the fields present.

Formats (``--from``):
- ``mftcoder``: ``chat_rounds: [{role, content}]`` with system/human/bot or system/user/assistant.
- ``openai``: ``messages: [{role, content}]``.
- ``sharegpt``: ``conversations: [{from, value}]`` (human/gpt/system).
- ``alpaca``: ``instruction`` [+ ``input``] -> ``output`` (also Evol-Instruct ``instruction``/``output``).
- ``prompt-answer``: one of the single-turn pairs MFTCoder accepts (see :data:`PAIR_FIELDS`).
- ``text``: raw ``text`` (or ``content``) trained as a single assistant turn (completion-style).
- ``pairs``: preference pairs, ``chosen``/``rejected`` lists of ``{role, content}`` (MFTCoder's xxpo layout): the
  record keeps both sides (:mod:`mft_data.pairs`) instead of ``chat_rounds``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from mft_core.schema import ROLE_ALIASES

FormatName = Literal["auto", "mftcoder", "openai", "sharegpt", "alpaca", "prompt-answer", "text", "pairs"]
FORMATS: tuple[str, ...] = ("mftcoder", "openai", "sharegpt", "alpaca", "prompt-answer", "text", "pairs")
PAIR_FIELDS: tuple[tuple[str, str], ...] = (
    ("prompt", "answer"),
    ("prompt", "response"),
    ("question", "answer"),
    ("input", "output"),
    ("instruction", "response"),
    ("query", "response"),
)

# Formats whose rows are single-turn pairs: MFTCoder's code renders these (its prompt/answer path) without the
# newline after the final EOS that its chat_rounds path writes (see mft_core.templates).
SINGLE_TURN_FORMATS: tuple[str, ...] = ("alpaca", "prompt-answer")


class RowError(ValueError):
    """A row that cannot be converted; ``field`` names the offending field."""

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field
        self.message = message


def _str(row: Mapping[str, Any], key: str, *, optional: bool = False) -> str:
    value = row.get(key)
    if value is None:
        if optional:
            return ""
        raise RowError(key, f"missing field '{key}'")
    if not isinstance(value, str):
        raise RowError(key, f"field '{key}' must be a string, found {type(value).__name__}")
    return value


def _round_list(row: Mapping[str, Any], key: str, role_key: str, content_key: str) -> list[dict[str, str]]:
    value = row.get(key)
    if not isinstance(value, list):
        raise RowError(key, f"field '{key}' must be a list of turns, found {type(value).__name__}")
    if not value:
        raise RowError(key, f"field '{key}' is empty")
    rounds = []
    for i, turn in enumerate(value):
        where = f"{key}[{i}]"
        if not isinstance(turn, Mapping):
            raise RowError(where, f"{where} must be an object with '{role_key}' and '{content_key}'")
        role = turn.get(role_key)
        if not isinstance(role, str) or role.strip().lower() not in ROLE_ALIASES:
            raise RowError(
                f"{where}.{role_key}",
                f"unknown role {role!r}; expected system, user/human, assistant/bot/gpt",
            )
        content = turn.get(content_key)
        if not isinstance(content, str):
            found = "missing" if content is None else type(content).__name__
            raise RowError(f"{where}.{content_key}", f"{where}.{content_key} must be a string, found {found}")
        rounds.append({"role": ROLE_ALIASES[role.strip().lower()], "content": content})
    return rounds


def _system(row: Mapping[str, Any]) -> list[dict[str, str]]:
    system = row.get("system")
    return [{"role": "system", "content": system}] if isinstance(system, str) and system.strip() else []


def convert_mftcoder(row):
    return _round_list(row, "chat_rounds", "role", "content")


def convert_openai(row):
    return _round_list(row, "messages", "role", "content")


def convert_sharegpt(row):
    return _system(row) + _round_list(row, "conversations", "from", "value")


def convert_alpaca(row):
    instruction = _str(row, "instruction")
    extra = _str(row, "input", optional=True)
    prompt = f"{instruction}\n\n{extra}" if extra.strip() else instruction
    return _system(row) + [
        {"role": "user", "content": prompt},
        {"role": "assistant", "content": _str(row, "output")},
    ]


def convert_pair(row):
    for prompt_key, answer_key in PAIR_FIELDS:
        if prompt_key in row and answer_key in row:
            return _system(row) + [
                {"role": "user", "content": _str(row, prompt_key)},
                {"role": "assistant", "content": _str(row, answer_key)},
            ]
    pairs = ", ".join(f"{a}/{b}" for a, b in PAIR_FIELDS)
    raise RowError("(fields)", f"no prompt/answer pair found; expected one of {pairs}")


def convert_text(row):
    key = "text" if "text" in row else "content"
    return [{"role": "assistant", "content": _str(row, key)}]


def convert_pairs(row) -> dict[str, list[dict[str, str]]]:
    """Both sides' rounds (roles normalised); whether they form a valid pair is checked on the record."""
    out = {}
    for side in ("chosen", "rejected"):
        if not isinstance(row.get(side), list) or not row.get(side):
            raise RowError(side, f"a preference pair needs both sides; '{side}' is missing or empty")
        out[side] = _round_list(row, side, "role", "content")
    return out


CONVERTERS: dict[str, Callable[[Mapping[str, Any]], Any]] = {
    "mftcoder": convert_mftcoder,
    "openai": convert_openai,
    "sharegpt": convert_sharegpt,
    "alpaca": convert_alpaca,
    "prompt-answer": convert_pair,
    "text": convert_text,
    "pairs": convert_pairs,
}


def detect_format(keys: set[str]) -> str | None:
    """The format a row's field names point to, or None."""
    if "chosen" in keys or "rejected" in keys:
        return "pairs"
    if "chat_rounds" in keys:
        return "mftcoder"
    if "messages" in keys:
        return "openai"
    if "conversations" in keys:
        return "sharegpt"
    if "instruction" in keys and "output" in keys:
        return "alpaca"
    if any(a in keys and b in keys for a, b in PAIR_FIELDS):
        return "prompt-answer"
    if "text" in keys or "content" in keys:
        return "text"
    return None


@dataclass(frozen=True)
class Remap:
    """``--map SRC=DST`` field renames applied before detection (e.g. ``solution=answer``).

    Renaming onto a field the row already has is an error unless ``--map-overwrite``: see :meth:`collision`.
    """

    pairs: tuple[tuple[str, str], ...] = ()

    @staticmethod
    def parse(items: list[str] | tuple[str, ...]) -> Remap:
        pairs = []
        for item in items:
            if "=" not in item:
                raise ValueError(f"--map {item!r}: expected SOURCE_FIELD=MFT_FIELD, e.g. solution=answer")
            src, dst = item.split("=", 1)
            pairs.append((src.strip(), dst.strip()))
        return Remap(tuple(pairs))

    def collision(self, row: Mapping[str, Any]) -> tuple[str, str] | None:
        """The first ``(SRC, DST)`` whose DST the row already holds when it is applied (it would be replaced)."""
        keys = set(row)
        for src, dst in self.pairs:
            if src in keys:
                if dst != src and dst in keys:
                    return src, dst
                keys.discard(src)
                keys.add(dst)
        return None

    def apply(self, row: Mapping[str, Any]) -> dict[str, Any]:
        """The row with each SRC renamed to DST, in order (an existing DST is replaced: see :meth:`collision`)."""
        if not self.pairs:
            return dict(row)
        out = dict(row)
        for src, dst in self.pairs:
            if src in out:
                out[dst] = out.pop(src)
        return out
