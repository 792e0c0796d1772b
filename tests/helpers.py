"""Small helpers shared by tests (importable as `helpers`, tests/ is on pythonpath)."""

import json
from pathlib import Path

MULTI_TURN = [
    {"role": "system", "content": "You write Python."},
    {"role": "user", "content": "Write add."},
    {"role": "assistant", "content": "def add(a, b):\n    return a + b"},
    {"role": "user", "content": "Now with three args, please"},
    {"role": "assistant", "content": " def add3(a, b, c):\n\treturn a + b + c\n\n"},
]


def write_jsonl(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def format_folder(out: Path, tasks: dict[str, list[dict]], split: float | None = None) -> Path:
    """A formatted folder made through the real `format` (and `split`) code path."""
    from mft_data.api import FormatConfig, SplitConfig, format_task, split_folder

    out.parent.mkdir(parents=True, exist_ok=True)
    for task, rows in tasks.items():
        f = write_jsonl(out.parent / f"{out.name}-{task}.jsonl", rows)
        format_task(FormatConfig(inputs=(str(f),), task=task, out=str(out)))
    if split is not None:
        split_folder(SplitConfig(folder=str(out), valid_ratio=split, seed=0))
    return out
