"""``mft-data validate``: every problem of a formatted folder, counted per task, with examples."""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from mft_core.artifacts import load_tokenizer
from mft_core.datafolder import iter_task_records, task_names
from mft_core.manifest import read_manifest
from mft_core.schema import conversation_problems, validate_record

from .config import ValidateConfig
from .encode import ChatEncoder, is_single_turn
from .folder import Progress
from .pairs import is_pair, pair_problems, sides

_WS = re.compile(r"\s+")
MAX_EXAMPLES = 5


@dataclass
class TaskReport:
    task: str
    records: int = 0
    problems: Counter = field(default_factory=Counter)
    examples: list[str] = field(default_factory=list)

    def add(self, kind: str, where: str) -> None:
        self.problems[kind] += 1
        if len(self.examples) < MAX_EXAMPLES:
            self.examples.append(f"{where}: {kind}")


@dataclass
class ValidationReport:
    folder: str
    tasks: dict[str, TaskReport]

    @property
    def problem_count(self) -> int:
        return sum(sum(t.problems.values()) for t in self.tasks.values())

    @property
    def ok(self) -> bool:
        return self.problem_count == 0

    def to_dict(self) -> dict:
        return {
            "folder": self.folder,
            "ok": self.ok,
            "tasks": {
                name: {"records": t.records, "problems": dict(t.problems), "examples": t.examples}
                for name, t in self.tasks.items()
            },
        }


def record_problems(record, index: int) -> list:
    """Schema and conversation problems of a chat record, or of both sides of a preference record."""
    if is_pair(record):
        return pair_problems(record, index)
    shaped = isinstance(record, dict) and isinstance(record.get("chat_rounds"), list)
    return validate_record(record, index) + (conversation_problems(record, index) if shaped else [])


def all_rounds(record) -> list:
    """The rounds whose text counts for duplicates and lengths (a pair: the chosen side plus the rejected answer)."""
    if is_pair(record) and not pair_problems(record):
        chosen, rejected = (r["chat_rounds"] for r in sides(record))
        return [*chosen, rejected[-1]]
    return (record.get("chat_rounds") or []) if isinstance(record, dict) else []


def normalised_text(text: str) -> str:
    """Text as the whitespace-normalised duplicate check compares it: runs of whitespace as one space, lower case."""
    return _WS.sub(" ", text).strip().lower()


def _digest(text: str) -> str:
    return hashlib.sha1(text.encode()).hexdigest()


def validate_folder(cfg: ValidateConfig, progress: Progress | None = None) -> ValidationReport:
    """Check every record of every task; never stops at the first problem."""
    encoder, max_tokens = None, cfg.max_tokens
    if cfg.tokenizer:
        tokenizer = load_tokenizer(cfg.tokenizer)
        # the text as training renders it (the tokenizer's template, else the built-in default)
        encoder = ChatEncoder(tokenizer)
        if max_tokens is None and 0 < (tokenizer.model_max_length or 0) < 10**7:
            max_tokens = tokenizer.model_max_length  # without --max-tokens, the tokenizer's own limit
    report = ValidationReport(cfg.folder, {})
    counts = {t: s["records"] for t, s in read_manifest(cfg.folder).summary["tasks"].items()}  # bar totals
    for task in task_names(cfg.folder):
        tr = report.tasks.setdefault(task, TaskReport(task))
        exact: dict[str, str] = {}
        normal: dict[str, str] = {}
        path = Path(cfg.folder) / task / "data.jsonl"
        for index, record in enumerate(iter_task_records(cfg.folder, task)):
            tr.records += 1
            if progress:
                progress(task, 1, counts[task])
            rid = record.get("id", f"#{index}")
            where = f"{path}:{index + 1} (id {rid})"
            for problem in record_problems(record, index):
                tr.add(problem.kind, f"{where} {problem.location()}: {problem.message}")
            rounds = all_rounds(record)
            text = json.dumps(rounds, ensure_ascii=False, sort_keys=True)
            key = _digest(text)
            norm = _digest(normalised_text(" ".join(str(r.get("content", "")) for r in rounds)))
            if key in exact:
                tr.add("exact duplicate", f"{where} duplicates id {exact[key]}")
            elif norm in normal:
                tr.add("whitespace-normalised duplicate", f"{where} duplicates id {normal[norm]}")
            exact.setdefault(key, rid)
            normal.setdefault(norm, rid)
            chars = sum(len(str(r.get("content", ""))) for r in rounds)
            if chars > cfg.max_chars:
                tr.add(f"over {cfg.max_chars} chars", f"{where} has {chars} chars")
            if encoder is not None and max_tokens:
                convs = [r["chat_rounds"] for r in sides(record)] if is_pair(record) else [rounds]
                texts = encoder.render(convs, single_turn=[is_single_turn(record)] * len(convs))
                n = sum(len(encoder.tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts)
                if n > max_tokens:  # a pair's two sides are trained in one row: their sum must fit
                    tr.add(f"over {max_tokens} tokens", f"{where} has {n} tokens")
    return report
