"""One optimizer step of preference training: reference forward (adapter off), policy forward, exact pair weights.

The same plan as an SFT step (:func:`loop.plan_step`: rows, ranks, micro-batches), the maths of
:mod:`preference`; counts of pairs and chosen targets are taken over the whole step and all ranks before any
backward, so 1 x 8 and 4 x 2 micro-batches, and 1 or 2 ranks, give the same gradient.
"""

from __future__ import annotations

import contextlib
import time

import torch
from mft_core.errors import ConfigError

from . import dist
from .loop import LoopParts, StepResult, forward_losses, plan_step, to_device
from .loss import StepCounts, count_targets, micro_batch_loss, target_weights
from .preference import NEEDS_REFERENCE, PairStats, chosen_only, find_pairs, nll_weight, pair_losses, pair_weights


@contextlib.contextmanager
def adapter_disabled(model):
    """The model under any wrapper (DDP, DeepSpeed: ``.module``) with its LoRA adapter off: the base, i.e. the
    reference policy of DPO, with no second copy of the weights."""
    inner = model
    while hasattr(inner, "module"):
        inner = inner.module
    if not hasattr(inner, "disable_adapter"):
        raise ConfigError("the reference model is the base with the adapter disabled: this model has no adapter")
    with inner.disable_adapter():
        yield inner


def reference_losses(model, mb, bf16: bool) -> torch.Tensor:
    """Per-target cross-entropy of the reference (no graph)."""
    with torch.no_grad(), adapter_disabled(model) as base:
        losses, _ = forward_losses(base, mb, bf16)
    return losses.detach()


class PairTally:
    """Per-task sums over a step for logging: preference loss, reward margin, accuracy (margin > 0), pairs."""

    def __init__(self, n_tasks: int):
        self.sums = torch.zeros(4, n_tasks, dtype=torch.float64)

    def add(self, stats: PairStats) -> None:
        task = stats.task.cpu()
        for row, values in enumerate(
            (stats.loss, stats.margin, (stats.margin > 0).double(), torch.ones_like(stats.margin))
        ):
            self.sums[row].index_add_(0, task, values.cpu().double())

    def per_task(self, tasks: tuple[str, ...]) -> tuple[dict[str, float | None], dict[str, dict[str, float]]]:
        dist.all_reduce_sum(self.sums)
        loss, margin, correct, n = self.sums
        means = {t: (loss[i] / n[i]).item() if n[i] > 0 else None for i, t in enumerate(tasks)}
        rewards = {
            t: {"margin": (margin[i] / n[i]).item(), "accuracy": (correct[i] / n[i]).item(), "pairs": int(n[i])}
            for i, t in enumerate(tasks)
            if n[i] > 0
        }
        return means, rewards


def preference_step(parts: LoopParts, step: int) -> StepResult:
    start = time.perf_counter()
    engine, objective = parts.engine, parts.objective
    n_tasks = len(parts.tasks)
    batches = plan_step(parts, step)
    located = [find_pairs(mb.targets) for mb in batches]
    chosen = [chosen_only(mb.targets, pairs) for mb, pairs in zip(batches, located)]
    counts = StepCounts(torch.zeros(n_tasks, dtype=torch.float64), torch.zeros(n_tasks, dtype=torch.float64))
    for targets in chosen:  # pairs (chosen samples) and chosen tokens per task, over the step and all ranks
        counts = counts + count_targets(targets, n_tasks)
    counts = StepCounts.from_tensor(dist.all_reduce_sum(counts.as_tensor()))
    nll = nll_weight(objective.preference, objective.rpo_alpha)
    loss_sum = torch.zeros(1, dtype=torch.float64)
    tally = PairTally(n_tasks)
    real = 0
    for j, (mb, pairs_cpu, chosen_targets) in enumerate(zip(batches, located, chosen)):
        # the reference first: its activations are gone before the policy's graph is built
        ref = reference_losses(engine.model, mb, parts.bf16) if objective.preference in NEEDS_REFERENCE else None
        with engine.accumulate(last=j == len(batches) - 1):
            losses, graph = forward_losses(engine.model, mb, parts.bf16)
            device = losses.device
            pairs = pairs_cpu.to(device)
            per_pair, stats = pair_losses(objective.preference, losses, ref, pairs, objective.beta)
            a = pair_weights(objective.loss, pairs_cpu.task, counts, parts.task_weights).to(device)
            loss = (per_pair * a.to(per_pair.dtype)).sum()
            if nll:
                c = target_weights(objective.loss, to_device(chosen_targets, device), counts, parts.task_weights)
                loss = loss + nll * micro_batch_loss(losses[pairs.chosen], c.to(device))
            if mb.empty:
                loss = loss + 0.0 * graph.sum()  # keeps every rank's backward in step
            engine.backward(loss * dist.world_size())  # the engine averages over ranks; the loss is a sum
        loss_sum += loss.detach().double().cpu()
        tally.add(stats)
        real += mb.real_tokens
    grad_norm = engine.step(parts.max_grad_norm)
    dist.all_reduce_sum(loss_sum)
    real_t = dist.all_reduce_sum(torch.tensor([real], dtype=torch.float64))
    task_loss, rewards = tally.per_task(parts.tasks)
    task_tokens = {t: int(counts.tokens[i].item()) for i, t in enumerate(parts.tasks)}
    return StepResult(
        loss_sum.item(), task_loss, task_tokens, grad_norm, int(real_t.item()), time.perf_counter() - start, rewards
    )


@torch.no_grad()
def evaluate_pairs(model, valid, objective) -> tuple[dict[str, float | None], dict[str, dict[str, float]]]:
    """Mean preference loss per task over the valid pairs, and their reward margins and accuracies (rows sharded
    over ranks, sums all-reduced)."""
    from .batches import collate

    was_training = model.training
    model.eval()
    tally = PairTally(len(valid.tasks))
    mine = list(range(len(valid.rows)))[dist.rank() :: dist.world_size()]
    per_rank = -(-len(valid.rows) // dist.world_size())
    for start in range(0, max(per_rank, 1), valid.micro_batch_size):
        mb = collate(valid.rows, mine[start : start + valid.micro_batch_size], valid.pad_id)
        pairs = find_pairs(mb.targets)
        ref = reference_losses(model, mb, valid.bf16) if objective.preference in NEEDS_REFERENCE else None
        losses, _ = forward_losses(model, mb, valid.bf16)
        _, stats = pair_losses(objective.preference, losses, ref, pairs.to(losses.device), objective.beta)
        tally.add(stats)
    model.train(was_training)
    return tally.per_task(valid.tasks)
