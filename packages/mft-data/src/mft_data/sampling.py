"""Task sampling ratios: which records an epoch holds when tasks are drawn more or less often than their size.

Pure functions of ``(ratios, seed, epoch)``, no I/O; mft-train calls them once per epoch and packs the result
with :func:`mft_data.pack.best_fit_decreasing` (copies of a record never share a row); ``mft-data stats`` calls
them to show the share of training tokens a mix gives.

A ratio ``r`` for a task of ``n`` records and ``T`` tokens means (``floor(r)`` whole copies, then a fraction):

- ``by="records"``: every record ``floor(r)`` times, plus ``round(frac(r) * n)`` distinct records drawn at random;
  the epoch holds ``round(r * n)`` of the task's records;
- ``by="tokens"``: every record ``floor(r)`` times, plus a random prefix of the records whose length sum is
  closest to ``frac(r) * T``; the epoch holds ``r * T`` of the task's tokens to within one record.

Below 1 subsamples (a new draw each epoch), above 1 oversamples; 1 (the default) keeps each record once.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Literal

import numpy as np

SampleBy = Literal["records", "tokens"]


def task_ratios(tasks: Sequence[str], sampling: Mapping[str, float]) -> np.ndarray:
    """Ratios in task-id order (1.0 for a task ``sampling`` does not name).

    Raises:
        ValueError: an unknown task name, a negative ratio, or every ratio 0.
    """
    unknown = sorted(set(sampling) - set(tasks))
    if unknown:
        raise ValueError(f"task_sampling names unknown tasks: {', '.join(unknown)} (tasks are: {', '.join(tasks)})")
    ratios = np.array([float(sampling.get(t, 1.0)) for t in tasks], dtype=np.float64)
    if (ratios < 0).any() or not np.isfinite(ratios).all():
        raise ValueError("task_sampling ratios must be finite and >= 0")
    if len(ratios) and not ratios.any():
        raise ValueError("task_sampling: every ratio is 0, so an epoch would be empty")
    return ratios


def _fraction(rng: np.random.Generator, lengths: np.ndarray, fraction: float, by: SampleBy) -> np.ndarray:
    """Positions (into ``lengths``) of the distinct records making up ``fraction`` of the task."""
    order = rng.permutation(len(lengths))
    if by == "records":
        return order[: int(round(fraction * len(lengths)))]
    target = fraction * float(lengths.sum())
    sums = np.concatenate([[0], np.cumsum(lengths[order])])
    take = int(np.argmin(np.abs(sums - target)))  # the prefix closest to the target (within one record)
    return order[:take]


def sample_epoch(
    record_tasks: np.ndarray, record_lengths: np.ndarray, ratios: np.ndarray, by: SampleBy, seed: int, epoch: int
) -> np.ndarray:
    """Record indices of one epoch (a multiset, sorted): each task drawn ``ratios[task]`` times its size.

    ``record_tasks[i]`` is record ``i``'s task id, ``record_lengths[i]`` its tokens. Deterministic from
    ``(seed, epoch)``; each task draws from its own stream, so changing one task's ratio leaves the others' draws.
    """
    if by not in ("records", "tokens"):
        raise ValueError(f"by: {by!r} is not records or tokens")
    record_tasks = np.asarray(record_tasks)
    record_lengths = np.asarray(record_lengths, dtype=np.int64)
    picked = []
    for task, ratio in enumerate(ratios):
        members = np.flatnonzero(record_tasks == task)
        if not len(members) or ratio == 0:
            continue
        whole, fraction = divmod(float(ratio), 1.0)
        picked.extend([members] * int(whole))
        if fraction > 0:
            rng = np.random.default_rng([seed, epoch, task])
            picked.append(members[_fraction(rng, record_lengths[members], fraction, by)])
    return np.sort(np.concatenate(picked)) if picked else np.zeros(0, dtype=np.int64)


def realised(
    chosen: np.ndarray, record_tasks: np.ndarray, record_lengths: np.ndarray, tasks: Sequence[str]
) -> dict[str, dict[str, int]]:
    """Records and tokens per task in an epoch's multiset (what the manifest and ``stats`` report)."""
    out = {}
    for task_id, task in enumerate(tasks):
        mine = chosen[np.asarray(record_tasks)[chosen] == task_id]
        out[task] = {"records": int(len(mine)), "tokens": int(np.asarray(record_lengths)[mine].sum())}
    return out
