"""Layout of a formatted-data folder, shared by every tool that reads one (no heavy dependencies).

```
DIR/manifest.json            kind "formatted-data"; summary.tasks lists each task with its counts
DIR/<task>/data.jsonl        all records of the task, unified schema, one per line
DIR/<task>/train.jsonl       after `mft-data split`
DIR/<task>/valid.jsonl       after `mft-data split`
DIR/<task>/rejects.jsonl     lines skipped by `mft-data format --skip-invalid`, with reasons
```
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

from .errors import ContractError, InputError
from .manifest import read_manifest

Split = Literal["all", "train", "valid"]
SPLIT_FILES: dict[Split, str] = {"all": "data.jsonl", "train": "train.jsonl", "valid": "valid.jsonl"}
FORMAT_COMMAND = "mft-data format INPUT --task NAME --out DIR"


def iter_jsonl(path: str | Path) -> Iterator[dict[str, Any]]:
    """Records of a JSONL file written by MFT (trusted: errors name the line but are not expected)."""
    with open(path, encoding="utf-8") as handle:
        for line_no, line in enumerate(handle, 1):
            if line.strip():
                try:
                    yield json.loads(line)
                except json.JSONDecodeError as exc:
                    raise InputError(f"{path}:{line_no}: not valid JSON ({exc.msg})") from exc


def task_names(folder: str | Path) -> list[str]:
    """Tasks of a formatted folder, in manifest order."""
    manifest = read_manifest(folder, "formatted-data", made_by=FORMAT_COMMAND)
    return list(manifest.summary.get("tasks", {}))


def has_split(folder: str | Path) -> bool:
    return bool(read_manifest(folder, "formatted-data", made_by=FORMAT_COMMAND).summary.get("split"))


def task_file(folder: str | Path, task: str, split: Split = "all") -> Path:
    path = Path(folder) / task / SPLIT_FILES[split]
    if not path.is_file():
        fix = "run `mft-data split DIR`" if split != "all" else FORMAT_COMMAND
        raise ContractError(f"{path} is missing", fix=fix)
    return path


def iter_task_records(folder: str | Path, task: str, split: Split = "all") -> Iterator[dict[str, Any]]:
    yield from iter_jsonl(task_file(folder, task, split))
