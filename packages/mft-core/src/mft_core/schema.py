"""The unified record schema and a validator that reports every problem with its location.

A record is ``{"id", "task", "chat_rounds": [{"role": "system"|"user"|"assistant", "content": str}, ...], "meta"?}``.
On input MFTCoder's ``human``/``bot`` and ShareGPT's ``gpt`` (and ``human``) are accepted as role aliases.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from typing import Any

ROLES = ("system", "user", "assistant")
ROLE_ALIASES = {
    "system": "system",
    "user": "user",
    "human": "user",
    "assistant": "assistant",
    "bot": "assistant",
    "gpt": "assistant",
    "chatgpt": "assistant",
    "model": "assistant",
}


@dataclass(frozen=True)
class Problem:
    """One thing wrong with one record. ``round_index`` and ``field`` are None when they don't apply."""

    record_index: int
    message: str
    round_index: int | None = None
    field: str | None = None
    kind: str = "schema"

    def location(self) -> str:
        where = f"record {self.record_index}"
        if self.round_index is not None:
            where += f", round {self.round_index}"
        if self.field is not None:
            where += f", field '{self.field}'"
        return where

    def __str__(self) -> str:
        return f"{self.location()}: {self.message}"


@lru_cache(maxsize=1)
def record_schema() -> dict[str, Any]:
    """The JSON Schema of a unified record (shipped as ``record.schema.json``)."""
    return json.loads(resources.files("mft_core").joinpath("record.schema.json").read_text(encoding="utf-8"))


@lru_cache(maxsize=1)
def _validator():
    from jsonschema import Draft202012Validator  # imported lazily: only validation needs it

    return Draft202012Validator(record_schema())


def normalize_role(role: Any) -> Any:
    """Map an accepted alias to its canonical role; anything else is returned unchanged for the validator."""
    if isinstance(role, str):
        return ROLE_ALIASES.get(role.strip().lower(), role)
    return role


def normalize_record(record: dict[str, Any]) -> dict[str, Any]:
    """Return a copy with role aliases mapped to canonical roles (no other change)."""
    rounds = record.get("chat_rounds")
    if not isinstance(rounds, list):
        return dict(record)
    out = dict(record)
    out["chat_rounds"] = [{**r, "role": normalize_role(r.get("role"))} if isinstance(r, dict) else r for r in rounds]
    return out


def _problem_from_error(record_index: int, error) -> Problem:
    path = list(error.absolute_path)
    round_index = path[1] if len(path) >= 2 and path[0] == "chat_rounds" and isinstance(path[1], int) else None
    field = str(path[-1]) if path and not isinstance(path[-1], int) else ("chat_rounds" if path else None)
    message = error.message
    if error.validator == "required":
        missing = re.match(r"'([^']*)'", message)
        field = missing.group(1) if missing else field
        message = f"missing required field '{field}'"
    elif error.validator == "enum" and field == "role":
        message = f"unknown role {error.instance!r}; expected one of {', '.join(ROLES)} (or alias human/bot/gpt)"
    elif error.validator == "additionalProperties":
        message = f"{message}; allowed fields are id, task, chat_rounds, meta (rounds: role, content)"
    return Problem(record_index, message, round_index, field)


def validate_record(record: Any, record_index: int = 0) -> list[Problem]:
    """All schema problems of one (already normalised) record, each with its location."""
    if not isinstance(record, dict):
        return [Problem(record_index, f"expected a JSON object, found {type(record).__name__}")]
    errors = sorted(_validator().iter_errors(record), key=lambda e: list(map(str, e.absolute_path)))
    return [_problem_from_error(record_index, e) for e in errors]


def validate_records(records: Iterable[Any]) -> list[Problem]:
    """Every problem of every record (not just the first), in record order."""
    problems: list[Problem] = []
    for index, record in enumerate(records):
        problems.extend(validate_record(record, index))
    return problems


def conversation_problems(record: dict[str, Any], record_index: int = 0) -> list[Problem]:
    """Problems of conversation shape that a schema cannot express.

    - a system turn only as the first round;
    - user and assistant turns alternate, starting with user (a lone assistant turn is a raw-text record);
    - the record ends with an assistant turn (nothing to train on otherwise);
    - assistant turns are not empty.
    """
    problems: list[Problem] = []
    rounds = record.get("chat_rounds") or []
    non_system = [r for r in rounds if r.get("role") != "system"]
    # A lone assistant turn is a raw-text (completion) record, as `mft-data format --from text` writes.
    expected = "assistant" if len(non_system) == 1 and non_system[0].get("role") == "assistant" else "user"
    for i, rnd in enumerate(rounds):
        role, content = rnd.get("role"), rnd.get("content")
        if role == "system":
            if i != 0:
                problems.append(
                    Problem(
                        record_index,
                        "system turn is only allowed as the first round",
                        i,
                        "role",
                        "misplaced system turn",
                    )
                )
            continue
        if role != expected:
            problems.append(
                Problem(
                    record_index,
                    f"roles out of order: expected {expected}, found {role}",
                    i,
                    "role",
                    "roles out of order",
                )
            )
        if role == "assistant" and isinstance(content, str) and not content.strip():
            problems.append(Problem(record_index, "empty assistant turn", i, "content", "empty assistant turn"))
        expected = "assistant" if role == "user" else "user"
    if rounds and rounds[-1].get("role") != "assistant":
        problems.append(
            Problem(
                record_index,
                "record does not end with an assistant turn",
                len(rounds) - 1,
                "role",
                "no final assistant turn",
            )
        )
    if not any(r.get("role") == "assistant" for r in rounds):
        problems.append(
            Problem(record_index, "record has no assistant turn to train on", None, "chat_rounds", "no assistant turn")
        )
    return problems
