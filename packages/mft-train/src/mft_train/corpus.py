"""The code corpus every machine has: the Python standard library's own source.

Used to train the tiny default tokenizer and to give the tiny default base some Python before fine-tuning.
Files are taken in sorted order and test suites are skipped, so the corpus is the same on every machine
with the same Python version.
"""

from __future__ import annotations

import sysconfig
from collections.abc import Iterator
from pathlib import Path

_SKIP_PARTS = {"test", "tests", "idlelib", "site-packages", "lib2to3", "__pycache__", "turtledemo", "ensurepip"}


def stdlib_dir() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def stdlib_files(root: Path | None = None) -> list[Path]:
    root = root or stdlib_dir()
    return [p for p in sorted(root.rglob("*.py")) if not (_SKIP_PARTS & set(p.relative_to(root).parts))]


def iter_texts(files: list[Path], max_bytes: int | None = None) -> Iterator[str]:
    """File contents (UTF-8, unreadable files skipped) until ``max_bytes`` have been yielded."""
    total = 0
    for path in files:
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        total += len(text)
        yield text
        if max_bytes is not None and total >= max_bytes:
            return
