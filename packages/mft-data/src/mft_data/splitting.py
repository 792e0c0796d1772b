"""Deterministic per-task train/valid split: the same on every machine, process and rank.

Each record's place is decided by ``sha256(seed, id)``, not by a random generator's state, so the split does
not depend on record order, Python's hash seed or the number of workers.
"""

from __future__ import annotations

import hashlib
import math


def split_key(seed: int, record_id: str) -> str:
    return hashlib.sha256(f"{seed}\x00{record_id}".encode()).hexdigest()


def valid_count(n: int, ratio: float) -> int:
    """``ceil(n * ratio)``, at least one when the task has two or more records, never all of them."""
    if n < 2 or ratio <= 0:
        return 0
    return min(n - 1, max(1, math.ceil(n * ratio)))


def split_ids(record_ids: list[str], ratio: float, seed: int) -> set[str]:
    """The ids that go to the valid split."""
    ranked = sorted(record_ids, key=lambda rid: split_key(seed, rid))
    return set(ranked[: valid_count(len(record_ids), ratio)])
