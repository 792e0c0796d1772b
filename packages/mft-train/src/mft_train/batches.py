"""From tokenized rows to micro-batch tensors, and which rows each step, rank and micro-batch gets.

Row order is a pure function of (seed, epoch), and step ``k`` always consumes global-batch ``k``, so the data
position of a checkpoint is just its step number: resume needs no sampler state.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .loss import IGNORE, Targets, shift_targets


class Rows:
    """Random access to a tokenized split without per-row Python objects (flat Arrow buffers + offsets)."""

    COLUMNS = ("input_ids", "labels", "task_ids", "seq_lens")

    def __init__(self, dataset):
        table = dataset.data.table if hasattr(dataset.data, "table") else dataset.data
        self._values, self._offsets = {}, {}
        for name in self.COLUMNS:
            column = table.column(name).combine_chunks()
            self._values[name] = column.values.to_numpy(zero_copy_only=False)
            self._offsets[name] = column.offsets.to_numpy()
        self.lengths = np.diff(self._offsets["input_ids"])

    def __len__(self) -> int:
        return len(self.lengths)

    def get(self, name: str, i: int) -> np.ndarray:
        off = self._offsets[name]
        return self._values[name][off[i] : off[i + 1]]

    def values(self, name: str) -> np.ndarray:
        """A column's flat buffer (rows are ``values[offsets[i]:offsets[i + 1]]``)."""
        return self._values[name]

    def offsets(self, name: str) -> np.ndarray:
        return self._offsets[name]


@dataclass(frozen=True)
class MicroBatch:
    input_ids: torch.Tensor  # [B, T]
    position_ids: torch.Tensor  # [B, T], restarting at every record (and at the padding)
    targets: Targets  # shifted labels, task and sample ids
    real_tokens: int  # non-padding tokens

    @property
    def empty(self) -> bool:
        return self.real_tokens == 0


def collate(rows: Rows, indices: list[int], pad_id: int, multiple: int = 8) -> MicroBatch:
    """Pad rows to the longest (rounded up to ``multiple``); padding is its own segment with no targets."""
    if not indices:
        return _dummy(pad_id)
    width = int(max(rows.lengths[i] for i in indices))
    width = -(-width // multiple) * multiple
    shape = (len(indices), width)
    ids = np.full(shape, pad_id, dtype=np.int64)
    labels = np.full(shape, IGNORE, dtype=np.int64)
    tasks = np.zeros(shape, dtype=np.int64)
    samples = np.zeros(shape, dtype=np.int64)
    positions = np.zeros(shape, dtype=np.int64)
    next_sample = 0
    for b, i in enumerate(indices):
        n = int(rows.lengths[i])
        ids[b, :n] = rows.get("input_ids", i)
        labels[b, :n] = rows.get("labels", i)
        tasks[b, :n] = rows.get("task_ids", i)
        seq_lens = rows.get("seq_lens", i)
        starts = np.concatenate([[0], np.cumsum(seq_lens)[:-1]])
        positions[b, :n] = np.arange(n) - np.repeat(starts, seq_lens)
        samples[b, :n] = next_sample + np.repeat(np.arange(len(seq_lens)), seq_lens)
        next_sample += len(seq_lens)
        positions[b, n:] = np.arange(width - n)
        samples[b, n:] = next_sample  # the padding tail: a sample with no targets
    t = torch.from_numpy
    return MicroBatch(
        t(ids), t(positions), shift_targets(t(labels), t(tasks), t(samples)), int(rows.lengths[indices].sum())
    )


def _dummy(pad_id: int) -> MicroBatch:
    """A one-row batch with no target: keeps ranks in step when one has no data left in a partial last step."""
    z = torch.zeros((1, 8), dtype=torch.long)
    return MicroBatch(z + pad_id, torch.arange(8).unsqueeze(0), shift_targets(z + IGNORE, z, z), 0)


def epoch_order(n_rows: int, seed: int, epoch: int) -> np.ndarray:
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n_rows, generator=generator).numpy()


def steps_per_epoch(n_rows: int, global_batch: int) -> int:
    return -(-n_rows // global_batch)


def rank_micro_batches(
    rows: np.ndarray, rank: int, world: int, micro_batch_size: int, grad_accum: int
) -> list[list[int]]:
    """This rank's ``grad_accum`` micro-batches of a global batch (some may be empty in a partial last step).

    Rows are dealt round-robin so ranks get equal shares; exactness does not depend on the split because the
    loss coefficients use counts over the whole step.
    """
    mine = rows[rank::world].tolist()
    return [mine[j * micro_batch_size : (j + 1) * micro_batch_size] for j in range(grad_accum)]
