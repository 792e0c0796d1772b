"""Preference records: one prompt, a ``chosen`` and a ``rejected`` answer. Pure functions, no I/O.

Layout (MFTCoder's ``xxpo`` layout, with MFT's ``id``/``task``/``meta``)::

    {"id": ..., "task": ..., "chosen": [rounds...], "rejected": [rounds...], "meta": {...}}

Both sides are whole conversations in the unified schema's rounds; they share every round but the last, which is
each side's assistant answer. Tokenized, the shared prompt is unsupervised and only each final answer (+ EOS) is
supervised (:func:`sides` gives the two chat records the encoder sees).
"""

from __future__ import annotations

from typing import Any

from mft_core.schema import Problem, conversation_problems, normalize_record, validate_record

SIDES = ("chosen", "rejected")


def is_pair(record: Any) -> bool:
    """A preference record (either side present), as opposed to a chat record."""
    return isinstance(record, dict) and any(side in record for side in SIDES)


def sides(record: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The chosen and the rejected conversation as two unified chat records (same id, task and meta)."""
    base = {k: v for k, v in record.items() if k not in SIDES}
    chosen, rejected = (normalize_record({**base, "chat_rounds": record[side]}) for side in SIDES)
    return chosen, rejected


def pair_problems(record: Any, record_index: int = 0) -> list[Problem]:
    """Every problem of a preference record, each with its location (``field`` names the side)."""
    if not isinstance(record, dict):
        return [Problem(record_index, f"expected a JSON object, found {type(record).__name__}")]
    missing = [side for side in SIDES if not isinstance(record.get(side), list) or not record.get(side)]
    if missing:
        return [
            Problem(
                record_index,
                f"a preference record needs both sides; '{side}' is missing or empty",
                field=side,
                kind="missing side",
            )
            for side in missing
        ]
    extra = sorted(set(record) - {"id", "task", "meta", *SIDES})
    if extra:
        return [Problem(record_index, f"unexpected fields {extra}; a pair has id, task, chosen, rejected, meta")]
    problems: list[Problem] = []
    for side, chat in zip(SIDES, sides(record)):
        for p in validate_record(chat, record_index) + conversation_problems(chat, record_index):
            problems.append(Problem(p.record_index, f"{side}: {p.message}", p.round_index, side, p.kind))
    if problems:
        return problems
    chosen, rejected = (r["chat_rounds"] for r in sides(record))
    if chosen[:-1] != rejected[:-1]:
        problems.append(
            Problem(
                record_index,
                "chosen and rejected must share every round but the last answer",
                kind="pair prompts differ",
            )
        )
    elif chosen[-1]["content"] == rejected[-1]["content"]:
        problems.append(
            Problem(
                record_index, "chosen and rejected answers are identical", field="rejected", kind="identical answers"
            )
        )
    return problems
