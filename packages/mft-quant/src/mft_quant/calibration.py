"""Calibration and evaluation texts: the team's own chat data (rendered with the model's template), or built-ins.

Chat records are drawn evenly across tasks from the train split in an order fixed by ``sha256(seed, id)``, so
the chosen ids are reproducible and go into the manifest. The quality gate measures the valid split of the same
folder, tokenized and masked by mft-data's encoder exactly as for training.
Without data, a built-in code corpus (the Python standard library's source) is used; ``generic-text`` is
English prose found on every Debian machine (license texts), standing in for the C4/wikitext default that
GPTQ examples download.
"""

from __future__ import annotations

import hashlib
import sysconfig
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from mft_core.datafolder import FORMAT_COMMAND, has_split, iter_task_records, task_names
from mft_core.errors import ContractError, InputError
from mft_core.manifest import read_manifest

from .quality import EvalSequence

IGNORE_INDEX = -100  # the label of an unsupervised token (Hugging Face's convention, used by mft-data)


@dataclass(frozen=True)
class Sample:
    id: str
    task: str
    text: str


def _rank(seed: int, rid: str) -> str:
    return hashlib.sha256(f"{seed}\x00{rid}".encode()).hexdigest()


def chat_records(folder: str, split: str, count: int, seed: int) -> list[dict]:
    """Up to ``count`` records of the split (all records when the folder has none), round-robin over tasks."""
    read_manifest(folder, "formatted-data", made_by=FORMAT_COMMAND)
    source_split = split if has_split(folder) else "all"
    per_task = []
    for task in task_names(folder):
        records = sorted(iter_task_records(folder, task, source_split), key=lambda r: _rank(seed, str(r["id"])))
        per_task.append(records)
    if not any(per_task):
        raise InputError(f"{folder}: no records in the {source_split} split")
    picked: list[dict] = []
    i = 0
    while len(picked) < count and any(i < len(r) for r in per_task):
        for records in per_task:
            if i < len(records) and len(picked) < count:
                picked.append(records[i])
        i += 1
    return picked


def chat_samples(folder: str, tokenizer, split: str, count: int, seed: int) -> list[Sample]:
    """Up to ``count`` records rendered with the tokenizer's chat template, round-robin over tasks."""
    return [
        Sample(str(r["id"]), r["task"], tokenizer.apply_chat_template(r["chat_rounds"], tokenize=False))
        for r in chat_records(folder, split, count, seed)
    ]


def chat_sequences(records: list[dict], tokenizer, seq_len: int) -> list[EvalSequence]:
    """Records tokenized and masked exactly as for training (mft-data's encoder): answers = assistant + EOS."""
    from mft_data.api import ChatEncoder  # the public API: the same render, tokenization and loss mask

    out = []
    for record, enc in zip(records, ChatEncoder(tokenizer).encode(records)):
        ids, labels = enc.input_ids[:seq_len], enc.labels[:seq_len]  # what `--overlong truncate` would keep
        if len(ids) >= 2:
            out.append(EvalSequence(str(record["id"]), record["task"], ids, labels != IGNORE_INDEX))
    return out


def text_sequences(samples: list[Sample], tokenizer, seq_len: int) -> list[EvalSequence]:
    """Plain text (the built-in corpora): every token is a target, as in pretraining."""
    out = []
    for s in samples:
        ids = np.asarray(tokenizer(s.text, add_special_tokens=False)["input_ids"][:seq_len], dtype=np.int64)
        if len(ids) >= 2:
            out.append(EvalSequence(s.id, s.task, ids, np.ones(len(ids), dtype=bool)))
    return out


def builtin_code_samples(count: int, offset: int = 0, chars: int = 6000) -> list[Sample]:
    """Chunks of stdlib source files in sorted order (``offset`` skips files, for a disjoint eval set)."""
    root = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(root.glob("*.py")) + sorted(root.glob("*/*.py"))
    out = []
    for path in files[offset:]:
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        if len(text) > 500:
            out.append(Sample(path.name, "code", text[:chars]))
        if len(out) == count:
            break
    return out


def generic_text_samples(count: int, chars: int = 6000) -> list[Sample]:
    roots = [Path("/usr/share/common-licenses"), Path("/usr/share/doc")]
    out = []
    for root in roots:
        if not root.is_dir():
            continue
        for path in sorted(p for p in root.rglob("*") if p.is_file() and p.suffix in ("", ".txt")):
            try:
                text = path.read_text(encoding="utf-8")
            except (UnicodeDecodeError, OSError):
                continue
            if len(text) > 1000:
                out.append(Sample(str(path), "text", text[:chars]))
            if len(out) == count:
                return out
    if not out:
        raise ContractError("no generic English text found on this machine (/usr/share/common-licenses)")
    return out


def tokenize_samples(samples: list[Sample], tokenizer, seq_len: int) -> list[dict]:
    """GPTQModel's calibration format: ``{"input_ids", "attention_mask"}`` lists, at most ``seq_len`` tokens."""
    out = []
    for s in samples:
        ids = tokenizer(s.text, add_special_tokens=False)["input_ids"][:seq_len]
        if len(ids) >= 2:
            out.append({"input_ids": ids, "attention_mask": [1] * len(ids)})
    return out
