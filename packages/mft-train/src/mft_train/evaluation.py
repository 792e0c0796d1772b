"""Validation: per-task losses on the valid split (or on fixed rows of it), and the loop's eval hook."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

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
    objective: Any = None  # objective.Objective; on pairs the valid loss is the preference loss (preference_step)

    def __len__(self) -> int:
        return len(self.rows)

    def losses(self, model, indices: list[int] | None = None) -> dict[str, float | None]:
        return evaluate(model, self.rows, self.tasks, self.micro_batch_size, self.pad_id, self.bf16, indices)

    def measure(self, model) -> dict[str, Any]:
        """``task_loss`` per task (cross-entropy; on pairs the mean preference loss) and, on pairs, ``rewards``."""
        if self.objective is not None and self.objective.on_pairs:
            from .preference_step import evaluate_pairs

            task_loss, rewards = evaluate_pairs(model, self, self.objective)
            return {"task_loss": task_loss, "rewards": rewards}
        return {"task_loss": self.losses(model)}


def selection_score(select_by: str, record: dict) -> float | None:
    """The number ``select_by`` ranks an eval record by, lower is better (None: not measured in this record)."""
    if select_by == "valid_loss":
        return record.get("loss")
    passed = record.get("pass_at_1")
    if passed is None:
        return None
    name = select_by.removeprefix("pass@1").removeprefix(":")
    values = [passed[name]] if name else [v for v in passed.values() if v is not None]
    values = [v for v in values if v is not None]
    return -sum(values) / len(values) if values else None


@dataclass(kw_only=True)
class Evaluator:
    """The loop's eval hook: valid losses every ``valid_every`` steps, pass@1 of the problem sets every
    ``problems_every`` (both at the end); keeps the best weights by ``select_by`` and stops early after
    ``patience`` measurements of it without improvement (0: never)."""

    valid: ValidSet | None
    problems: Any  # problem_eval.ProblemSets, or None
    model: torch.nn.Module
    log: MetricsLog
    save_best: Callable[[], None]
    patience: int
    select_by: str = "valid_loss"
    valid_every: int = 0
    problems_every: int = 0
    last: dict | None = None  # the latest eval: step, mean, task_loss (and pass_at_1)

    def due(self, step: int) -> bool:
        return any(every and step % every == 0 for every in self._every())

    def _every(self) -> tuple[int, int]:
        return (self.valid_every if self.valid is not None else 0, self.problems_every if self.problems else 0)

    def on_eval(self, state: TrainState, final: bool = False) -> bool:
        valid_every, problems_every = self._every()
        record: dict = {"kind": "eval", "step": state.step}
        if self.valid is not None and (final or (valid_every and state.step % valid_every == 0)):
            measured = self.valid.measure(self.model)
            record.update(loss=mean_valid(measured["task_loss"]), **measured)
        if self.problems is not None and (final or (problems_every and state.step % problems_every == 0)):
            measured = self.problems.measure(self.model, state.step)
            record.update(pass_at_1=measured["pass_at_1"], passed=measured["passed"],
                          problems_seconds=measured["seconds"])  # fmt: skip
        self.last = {"step": state.step, "mean": record.get("loss"), "task_loss": record.get("task_loss"),
                     "pass_at_1": record.get("pass_at_1")}  # fmt: skip
        self.log.log(record)
        if "loss" in record and (state.best_valid is None or record["loss"] < state.best_valid):
            state.best_valid = record["loss"]
        score = selection_score(self.select_by, record)
        if score is None:
            return False
        if state.best_score is None or score < state.best_score:
            state.best_score, state.best_step, state.bad_evals = score, state.step, 0
            self.save_best()
        else:
            state.bad_evals += 1
        stop = bool(self.patience) and state.bad_evals >= self.patience
        if stop and dist.is_main():
            console.print(f"early stop at step {state.step}: no better {self.select_by} for {state.bad_evals} evals")
        return stop
