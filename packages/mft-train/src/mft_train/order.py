"""Which rows an epoch holds and in what order: the tokenized rows as they are, or re-drawn per task.

``FixedOrder`` is the tokenized folder's rows, permuted per epoch (``batches.epoch_order``). ``SampledOrder``
draws each epoch's records with mft-data's task sampling (``task_sampling``, a pure function of (seed, epoch)),
packs them into rows with copies of a record in different rows, then permutes those rows. Either way the rows of
step ``k`` are a function of ``(seed, k)`` alone, so resume needs no sampler state and every rank sees the same
global batch.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from .batches import Rows, epoch_order, steps_per_epoch


class FixedOrder:
    """The tokenized rows, every epoch the same set."""

    def __init__(self, rows: Rows, seed: int):
        self.rows, self.seed = rows, seed

    def epoch_rows(self, epoch: int) -> Rows:
        return self.rows

    def epoch_size(self, epoch: int) -> int:
        return len(self.rows)


class RecordRows:
    """Rows made of records of a tokenized split (``Rows``' interface: ``lengths``, ``get``, ``len``)."""

    def __init__(self, records: RecordTable, bins: list[np.ndarray]):
        self.records, self.bins = records, bins
        self.lengths = np.array([int(records.lengths[b].sum()) for b in bins], dtype=np.int64)

    def __len__(self) -> int:
        return len(self.bins)

    def get(self, name: str, i: int) -> np.ndarray:
        ids = self.bins[i]
        if name == "seq_lens":
            return self.records.lengths[ids]
        return np.concatenate([self.records.tokens(name, i) for i in ids])

    def record_ids(self, i: int) -> np.ndarray:
        return self.bins[i]


@dataclass(frozen=True)
class RecordTable:
    """Every record of a tokenized split: its row, where it starts inside the row, its length and task."""

    source: Rows
    row: np.ndarray
    inner: np.ndarray
    lengths: np.ndarray
    tasks: np.ndarray

    @staticmethod
    def of(rows: Rows) -> RecordTable:
        seq_off = rows.offsets("seq_lens")
        lengths = rows.values("seq_lens")[seq_off[0] : seq_off[-1]].astype(np.int64)
        per_row = np.diff(seq_off)
        row = np.repeat(np.arange(len(per_row)), per_row)
        before = np.concatenate([[0], np.cumsum(lengths)[:-1]])  # tokens of all earlier records
        inner = before - before[(seq_off[:-1] - seq_off[0])[row]]  # minus those of earlier rows
        tasks = rows.values("task_ids")[rows.offsets("task_ids")[row] + inner]
        return RecordTable(rows, row, inner, lengths, tasks.astype(np.int64))

    def tokens(self, name: str, i: int) -> np.ndarray:
        start = self.source.offsets(name)[self.row[i]] + self.inner[i]
        return self.source.values(name)[start : start + self.lengths[i]]


@dataclass
class SampledOrder:
    """Each epoch's records drawn by task ratios, then packed (or one record per row, for unpacked data)."""

    rows: Rows
    tasks: tuple[str, ...]
    sampling: Mapping[str, float]
    by: str
    seed: int
    capacity: int  # tokens per packed row
    packed: bool
    _records: RecordTable = field(init=False)
    _ratios: np.ndarray = field(init=False)
    _cache: dict[int, RecordRows] = field(init=False, default_factory=dict)
    # rows per epoch, kept for every epoch seen: locating a step walks all earlier epochs, which must not re-pack
    _sizes: dict[int, int] = field(init=False, default_factory=dict)

    def __post_init__(self):
        from mft_data.api import task_ratios

        self._records = RecordTable.of(self.rows)
        self._ratios = task_ratios(self.tasks, self.sampling)

    def chosen(self, epoch: int) -> np.ndarray:
        from mft_data.api import sample_epoch

        r = self._records
        return sample_epoch(r.tasks, r.lengths, self._ratios, self.by, self.seed, epoch)  # type: ignore[arg-type]

    def epoch_rows(self, epoch: int) -> RecordRows:
        if epoch not in self._cache:
            from mft_data.api import best_fit_decreasing

            ids = self.chosen(epoch)
            if self.packed:
                bins = best_fit_decreasing(self._records.lengths[ids].tolist(), self.capacity, keys=ids.tolist())
                rows = RecordRows(self._records, [ids[np.asarray(b)] for b in bins])
            else:
                rows = RecordRows(self._records, [ids[i : i + 1] for i in range(len(ids))])
            self._cache = {epoch: rows}  # one epoch at a time: an epoch's steps are consecutive
            self._sizes[epoch] = len(rows)
        return self._cache[epoch]

    def epoch_size(self, epoch: int) -> int:
        if epoch not in self._sizes:
            self.epoch_rows(epoch)
        return self._sizes[epoch]

    def realised(self, epoch: int) -> dict[str, dict[str, int]]:
        from mft_data.api import realised

        r = self._records
        return realised(self.chosen(epoch), r.tasks, r.lengths, self.tasks)


def locate(order, step: int, global_batch: int) -> tuple[int, int]:
    """``(epoch, k)``: global step ``step`` is the ``k``-th global batch of ``epoch``."""
    epoch = 0
    while True:
        n = steps_per_epoch(order.epoch_size(epoch), global_batch)
        if step < n:
            return epoch, step
        step -= n
        epoch += 1


def step_rows(order, step: int, global_batch: int, seed: int):
    """The rows (a ``Rows``-like view) and row indices of global step ``step``."""
    epoch, k = locate(order, step, global_batch)
    rows = order.epoch_rows(epoch)
    return rows, epoch_order(len(rows), seed, epoch)[k * global_batch : (k + 1) * global_batch]


def total_steps(order, global_batch: int, epochs: int, max_steps: int) -> int:
    if max_steps > 0:
        return max_steps
    return sum(steps_per_epoch(order.epoch_size(e), global_batch) for e in range(epochs))


def sampling_record(order, steps: int, global_batch: int) -> dict | None:
    """What the manifest records of task sampling: ratios and the realised records/tokens per task of every epoch
    the run's ``steps`` reached (None without sampling)."""
    if not isinstance(order, SampledOrder):
        return None
    last_epoch = locate(order, max(steps - 1, 0), global_batch)[0]
    return {
        "by": order.by,
        "ratios": dict(zip(order.tasks, order._ratios.tolist())),
        "rows_per_epoch": [order.epoch_size(e) for e in range(last_epoch + 1)],
        "per_epoch": [order.realised(e) for e in range(last_epoch + 1)],
    }
