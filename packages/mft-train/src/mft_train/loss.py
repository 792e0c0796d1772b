"""Multi-task losses as pure functions: per-token weights from counts over the whole optimizer step.

Notation for one optimizer step (all micro-batches, all ranks): ``l_i`` the cross-entropy of supervised target
``i``; ``t(i)`` its task; ``s(i)`` its sample (record); ``n_s`` the supervised targets of sample ``s``;
``N_t`` the supervised targets of task ``t``; ``S_t`` the samples of task ``t`` with at least one; ``N``, ``S``
their totals; ``w_t`` the task weights and ``W = sum of w_t over tasks present in the step``.

- ``token``        L = sum_i l_i / N                                      (MFTCoder case1)
- ``sample``       L = (1/S) sum_s (sum_{i in s} l_i / n_s)              (case2)
- ``task``         L = sum_t w_t (sum_{i in t} l_i / N_t) / W            (case3)
- ``task-sample``  L = sum_t w_t ((1/S_t) sum_{s in t} sum_{i in s} l_i / n_s) / W   (case4)

Every mode is ``L = sum_i c_i l_i`` with a coefficient ``c_i`` that depends only on counts, so each micro-batch
adds ``sum_{i in mb} c_i l_i`` with the *step's* counts and the accumulated gradient equals the gradient of L
over the whole step. MFTCoder instead renormalises inside every micro-batch, which is a different loss.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

IGNORE = -100
MODES = ("token", "sample", "task", "task-sample")


@dataclass(frozen=True)
class Targets:
    """One micro-batch, shifted for next-token prediction (position ``j`` predicts token ``j + 1``).

    Attributes:
        labels: [B, T] target ids, IGNORE where not supervised.
        task_ids: [B, T] task of each target.
        sample_ids: [B, T] index of the record each target belongs to, unique within the micro-batch.
    """

    labels: torch.Tensor
    task_ids: torch.Tensor
    sample_ids: torch.Tensor

    @property
    def mask(self) -> torch.Tensor:
        return self.labels != IGNORE


def shift_targets(labels: torch.Tensor, task_ids: torch.Tensor, sample_ids: torch.Tensor) -> Targets:
    """Align targets with the logits that predict them (drop position 0, pad the end with IGNORE)."""
    pad = torch.full_like(labels[:, :1], IGNORE)
    return Targets(
        torch.cat([labels[:, 1:], pad], dim=1),
        torch.cat([task_ids[:, 1:], task_ids[:, -1:]], dim=1),
        torch.cat([sample_ids[:, 1:], sample_ids[:, -1:]], dim=1),
    )


@dataclass(frozen=True)
class StepCounts:
    """Counts over a whole optimizer step (summed over micro-batches, all-reduced over ranks)."""

    tokens: torch.Tensor  # [n_tasks] supervised targets per task (N_t)
    samples: torch.Tensor  # [n_tasks] samples with >= 1 supervised target per task (S_t)

    def __add__(self, other: StepCounts) -> StepCounts:
        return StepCounts(self.tokens + other.tokens, self.samples + other.samples)

    def as_tensor(self) -> torch.Tensor:
        return torch.stack([self.tokens, self.samples])

    @staticmethod
    def from_tensor(t: torch.Tensor) -> StepCounts:
        return StepCounts(t[0], t[1])


def _sample_token_counts(targets: Targets) -> tuple[torch.Tensor, torch.Tensor]:
    """(n per flattened target's sample, task of each sample) within the micro-batch."""
    mask = targets.mask.reshape(-1)
    sid = targets.sample_ids.reshape(-1)
    n_samples = int(sid.max().item()) + 1 if sid.numel() else 0
    per_sample = torch.zeros(n_samples, dtype=torch.float64).index_add_(
        0, sid[mask], torch.ones_like(sid[mask], dtype=torch.float64)
    )
    sample_task = torch.full((n_samples,), -1, dtype=torch.long).scatter_(
        0, sid[mask], targets.task_ids.reshape(-1)[mask].long()
    )
    return per_sample, sample_task


def count_targets(targets: Targets, n_tasks: int) -> StepCounts:
    """Local counts of one micro-batch; sum them over the step (and ranks) before computing weights."""
    mask = targets.mask.reshape(-1)
    tasks = targets.task_ids.reshape(-1)[mask].long()
    tokens = torch.bincount(tasks, minlength=n_tasks).to(torch.float64)
    per_sample, sample_task = _sample_token_counts(targets)
    present = per_sample > 0
    samples = torch.bincount(sample_task[present], minlength=n_tasks).to(torch.float64)
    return StepCounts(tokens, samples)


def target_weights(mode: str, targets: Targets, counts: StepCounts, task_weights: torch.Tensor) -> torch.Tensor:
    """Coefficient ``c_i`` of every supervised target of the micro-batch (flattened, masked order).

    Args:
        mode: one of :data:`MODES`.
        targets: the micro-batch's shifted targets.
        counts: counts over the whole step (see :class:`StepCounts`).
        task_weights: [n_tasks] ``w_t`` (ignored by ``token`` and ``sample``).
    """
    mask = targets.mask.reshape(-1)
    tasks = targets.task_ids.reshape(-1)[mask].long()
    if mode == "token":
        return torch.full(tasks.shape, 1.0 / counts.tokens.sum().item(), dtype=torch.float64)
    per_sample, _ = _sample_token_counts(targets)
    n_s = per_sample[targets.sample_ids.reshape(-1)[mask]]
    if mode == "sample":
        return 1.0 / (n_s * counts.samples.sum())
    present = counts.tokens > 0
    w = task_weights.to(torch.float64)
    total_w = (w * present).sum()
    if mode == "task":
        return w[tasks] / (total_w * counts.tokens[tasks])
    if mode == "task-sample":
        return w[tasks] / (total_w * counts.samples[tasks] * n_s)
    raise ValueError(f"unknown loss mode {mode!r}; expected one of {MODES}")


def per_target_loss(logits: torch.Tensor, targets: Targets) -> torch.Tensor:
    """Cross-entropy (fp32) of each supervised target, in flattened masked order.

    ``logits`` is ``[B, T, V]``, or already ``[n_targets, V]`` (only the supervised positions, in that order).
    """
    mask = targets.mask.reshape(-1)
    flat = logits if logits.dim() == 2 else logits.reshape(-1, logits.shape[-1])[mask]
    return torch.nn.functional.cross_entropy(flat.float(), targets.labels.reshape(-1)[mask], reduction="none")


def micro_batch_loss(losses: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """This micro-batch's share of the step loss: ``sum_i c_i l_i``."""
    return (losses * weights.to(losses.dtype)).sum()


def task_sums(losses: torch.Tensor, targets: Targets, n_tasks: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum of loss, count) per task, for logging per-task token-mean losses."""
    tasks = targets.task_ids.reshape(-1)[targets.mask.reshape(-1)].long()
    sums = torch.zeros(n_tasks, dtype=torch.float64).index_add_(0, tasks, losses.detach().double())
    return sums, torch.bincount(tasks, minlength=n_tasks).double()
