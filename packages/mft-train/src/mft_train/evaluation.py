"""Validation: per-task losses on the valid split (or on fixed rows of it), and the loop's eval hook."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from mft_core.ui import console

from . import dist
from .batches import Rows, collate
from .checkpoint import TrainState
from .loop import forward_losses, to_device
from .loss import task_sums
from .metrics import MetricsLog


@torch.no_grad()
def evaluate(
    model,
    rows: Rows,
    tasks: tuple[str, ...],
    micro_batch_size: int,
    pad_id: int,
    bf16: bool,
    indices: list[int] | None = None,
) -> dict[str, float | None]:
    """Token-mean loss per task over the valid split, or over ``indices`` of it (rows sharded over ranks, sums
    all-reduced, so every rank gets the same numbers)."""
    was_training = model.training
    model.eval()
    n = len(tasks)
    sums = torch.zeros(n, dtype=torch.float64)
    counts = torch.zeros(n, dtype=torch.float64)
    chosen = list(range(len(rows))) if indices is None else indices
    mine = chosen[dist.rank() :: dist.world_size()]
    per_rank = -(-len(chosen) // dist.world_size())  # the most any rank holds: every rank runs as many forwards
    for start in range(0, max(per_rank, 1), micro_batch_size):  # (sharded engines gather weights in each one)
        mb = collate(rows, mine[start : start + micro_batch_size], pad_id)
        losses, _ = forward_losses(model, mb, bf16)
        targets = to_device(mb.targets, losses.device)
        s, c = task_sums(losses, targets, n)
        sums += s.cpu()
        counts += c.cpu()
    dist.all_reduce_sum(sums)
    dist.all_reduce_sum(counts)
    model.train(was_training)
    return {t: (sums[i] / counts[i]).item() if counts[i] > 0 else None for i, t in enumerate(tasks)}


def mean_valid(task_loss: dict[str, float | None]) -> float:
    values = [v for v in task_loss.values() if v is not None]
    return sum(values) / len(values) if values else math.inf


@dataclass(frozen=True, kw_only=True)
class ValidSet:
    """The valid split and how to batch it: what the eval hook and the balancer measure on."""

    rows: Rows
    tasks: tuple[str, ...]
    micro_batch_size: int
    pad_id: int
    bf16: bool

    def __len__(self) -> int:
        return len(self.rows)

    def losses(self, model, indices: list[int] | None = None) -> dict[str, float | None]:
        return evaluate(model, self.rows, self.tasks, self.micro_batch_size, self.pad_id, self.bf16, indices)


@dataclass(kw_only=True)
class Evaluator:
    """The loop's eval hook: logs the valid losses, keeps the best weights, stops early after ``patience`` evals
    without a better mean (0: never)."""

    valid: ValidSet
    model: torch.nn.Module
    log: MetricsLog
    save_best: Callable[[], None]
    patience: int
    last: dict | None = None  # the latest eval: step, mean, task_loss

    def on_eval(self, state: TrainState) -> bool:
        task_loss = self.valid.losses(self.model)
        mean = mean_valid(task_loss)
        self.last = {"step": state.step, "mean": mean, "task_loss": task_loss}
        self.log.log({"kind": "eval", "step": state.step, "loss": mean, "task_loss": task_loss})
        if state.best_valid is None or mean < state.best_valid:
            state.best_valid, state.best_step, state.bad_evals = mean, state.step, 0
            self.save_best()
        else:
            state.bad_evals += 1
        stop = bool(self.patience) and state.bad_evals >= self.patience
        if stop and dist.is_main():
            console.print(f"early stop at step {state.step}: no better mean valid loss for {state.bad_evals} evals")
        return stop
