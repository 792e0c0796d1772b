"""Isolated packing: whole records into rows of at most ``capacity`` tokens, best-fit decreasing.

Pure functions, no I/O. A record is never split across rows; every row restarts ``position_ids`` at each
record so the model (with ``use_cache=False``) builds a block-diagonal attention mask and records never see
each other.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence


def best_fit_decreasing(lengths: Sequence[int], capacity: int, keys: Sequence[int] | None = None) -> list[list[int]]:
    """Bins of record indices; each bin's total length is at most ``capacity``.

    Records are placed longest first (ties by index, so the result is deterministic) into the open bin with the
    least room that still fits them, else a new bin. With ``keys``, items of equal key never share a bin: a
    record drawn twice in an epoch (task sampling) is packed into two different rows.

    Raises:
        ValueError: a record is longer than ``capacity`` (drop or truncate it first) or not positive.
    """
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    bins: list[list[int]] = []
    room: list[tuple[int, int]] = []  # sorted (remaining capacity, bin index) of bins with room left
    held: list[set[int]] = []  # the keys in each bin (only filled with ``keys``)
    for i in order:
        length = lengths[i]
        if length <= 0 or length > capacity:
            raise ValueError(f"record {i} has length {length}, outside 1..{capacity}")
        pos = bisect.bisect_left(room, (length, -1))
        if keys is not None:  # skip the bins that already hold this key (at most its other copies)
            while pos < len(room) and keys[i] in held[room[pos][1]]:
                pos += 1
        if pos < len(room):
            remaining, b = room.pop(pos)
        else:
            remaining, b = capacity, len(bins)
            bins.append([])
            held.append(set())
        bins[b].append(i)
        if keys is not None:
            held[b].add(keys[i])
        remaining -= length
        if remaining > 0:
            bisect.insort(room, (remaining, b))
    return bins


def fill_rate(bins: Sequence[Sequence[int]], lengths: Sequence[int], capacity: int) -> float:
    """Share of the rows' token slots that hold real tokens."""
    if not bins:
        return 0.0
    return sum(lengths[i] for b in bins for i in b) / (len(bins) * capacity)
