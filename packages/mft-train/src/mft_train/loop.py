"""The training loop, top to bottom: plan a step, count its targets, accumulate exact gradients, update, log.

Built from small parts: :mod:`batches` (which rows), :mod:`loss` (the maths), :mod:`objective` (which loss and
task weights), :mod:`engine` (how gradients are synchronised and applied); logging, evaluation, balancing and
checkpoints come in as :class:`Hooks`.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from . import attention, chunked_head, dist
from .batches import MicroBatch, Rows, collate, rank_micro_batches
from .checkpoint import TrainState
from .engine import Engine
from .loss import StepCounts, Targets, count_targets, micro_batch_loss, per_target_loss, target_weights, task_sums
from .objective import Objective
from .order import FixedOrder, step_rows


@dataclass
class StepResult:
    loss: float
    task_loss: dict[str, float | None]
    task_tokens: dict[str, int]
    grad_norm: float
    real_tokens: int
    seconds: float
    # preference runs: per task, the mean reward margin, the share of pairs ranked right, the pairs (preference.py)
    rewards: dict[str, dict[str, float]] | None = None


@dataclass(kw_only=True)
class LoopParts:
    """What one run needs: the engine wraps model and optimizer; the rest is plain data."""

    engine: Engine
    rows: Rows
    tasks: tuple[str, ...]
    objective: Objective
    micro_batch_size: int
    grad_accum: int
    seed: int
    pad_id: int
    bf16: bool
    max_grad_norm: float
    total_steps: int
    # which rows each epoch holds (task sampling draws them per epoch); default: ``rows`` as they are
    order: object = None
    # one optimizer step; default train_step (SFT losses), preference_step.preference_step on pairs
    step_fn: Callable[[LoopParts, int], StepResult] | None = None
    # w_t of the next step: the objective's weights, replaced by the balancer's when they move
    task_weights: torch.Tensor = field(init=False)

    def __post_init__(self):
        self.task_weights = torch.tensor(self.objective.weights, dtype=torch.float64)
        if self.order is None:
            self.order = FixedOrder(self.rows, self.seed)

    @property
    def global_batch(self) -> int:
        return self.micro_batch_size * self.grad_accum * dist.world_size()


def autocast(enabled: bool):
    if not enabled:
        return contextlib.nullcontext()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.autocast(device, dtype=torch.bfloat16)


def forward_logits(model, mb: MicroBatch, bf16: bool, supervised_only: bool = False) -> torch.Tensor:
    """Logits of a micro-batch: ``[B, T, V]``, or ``[n_targets, V]`` for the supervised positions only.

    No attention mask and ``use_cache=False``: the restarted position ids make transformers build a block-diagonal
    mask (or our per-record SDPA runs), so packed records and padding never attend to each other. With
    ``supervised_only`` the LM head runs only where a target exists (``logits_to_keep`` with a boolean mask).
    """
    device = next(model.parameters()).device
    kwargs = {}
    if getattr(_hf_config(model), "_attn_implementation", None) == attention.NAME:
        kwargs[attention.SEGMENTS_KWARG] = attention.plan_segments(mb.position_ids)
    if supervised_only:
        kwargs["logits_to_keep"] = mb.targets.mask.to(device)
    with autocast(bf16):
        out = model(
            input_ids=mb.input_ids.to(device), position_ids=mb.position_ids.to(device), use_cache=False, **kwargs
        )
    return out.logits


def forward_losses(model, mb: MicroBatch, bf16: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-target cross-entropy (fp32, flattened masked order) of a micro-batch, and a tensor to tie an empty
    micro-batch's backward to the graph.

    Through the chunked LM head when the model has one (:mod:`chunked_head`: no ``[n_targets, vocab]`` logits),
    else from the supervised positions' logits.
    """
    if chunked_head.installed(model) is None:
        logits = forward_logits(model, mb, bf16, supervised_only=True)
        return per_target_loss(logits, to_device(mb.targets, logits.device)), logits
    device = next(model.parameters()).device
    kwargs = {}
    if getattr(_hf_config(model), "_attn_implementation", None) == attention.NAME:
        kwargs[attention.SEGMENTS_KWARG] = attention.plan_segments(mb.position_ids)
    mask = mb.targets.mask.to(device)
    labels = mb.targets.labels.to(device)[mask]
    with autocast(bf16):
        losses = model(
            input_ids=mb.input_ids.to(device),
            position_ids=mb.position_ids.to(device),
            mft_targets=(mask, labels),
            **kwargs,
        )
    return losses, losses


def _hf_config(model):
    """The transformers config under any wrapper (DDP, DeepSpeed engine: ``.module``; PEFT forwards ``.config``)."""
    while hasattr(model, "module"):
        model = model.module
    return model.config


def plan_step(parts: LoopParts, step: int) -> list[MicroBatch]:
    rows, chosen = step_rows(parts.order, step, parts.global_batch, parts.seed)
    plan = rank_micro_batches(chosen, dist.rank(), dist.world_size(), parts.micro_batch_size, parts.grad_accum)
    batches = [collate(rows, idx, parts.pad_id) for idx in plan]
    if dist.world_size() == 1:
        batches = [b for b in batches if not b.empty]
    return batches


def step_counts(batches: list[MicroBatch], n_tasks: int) -> StepCounts:
    """Counts over the whole step: summed over this rank's micro-batches, then over ranks (before any backward)."""
    total = StepCounts(torch.zeros(n_tasks, dtype=torch.float64), torch.zeros(n_tasks, dtype=torch.float64))
    for mb in batches:
        total = total + count_targets(mb.targets, n_tasks)
    return StepCounts.from_tensor(dist.all_reduce_sum(total.as_tensor()))


def train_step(parts: LoopParts, step: int) -> StepResult:
    """One optimizer step with exact normalisation over all its micro-batches and ranks."""
    start = time.perf_counter()
    engine = parts.engine
    n_tasks = len(parts.tasks)
    batches = plan_step(parts, step)
    counts = step_counts(batches, n_tasks)
    loss_sum = torch.zeros(1, dtype=torch.float64)
    sums = torch.zeros(n_tasks, dtype=torch.float64)
    real = 0
    for j, mb in enumerate(batches):
        with engine.accumulate(last=j == len(batches) - 1):
            losses, graph = forward_losses(engine.model, mb, parts.bf16)
            targets = to_device(mb.targets, losses.device)
            weights = target_weights(parts.objective.loss, targets, counts, parts.task_weights).to(losses.device)
            loss = micro_batch_loss(losses, weights)
            if mb.empty:
                loss = loss + 0.0 * graph.sum()  # keeps every rank's backward in step
            # the engine averages gradients over ranks; the step loss is a sum over ranks, so scale back up
            engine.backward(loss * dist.world_size())
        loss_sum += loss.detach().double().cpu()
        s, _ = task_sums(losses, targets, n_tasks)
        sums += s.cpu()
        real += mb.real_tokens
    grad_norm = engine.step(parts.max_grad_norm)
    dist.all_reduce_sum(loss_sum)
    dist.all_reduce_sum(sums)
    real_t = dist.all_reduce_sum(torch.tensor([real], dtype=torch.float64))
    task_loss = {
        t: (sums[i] / counts.tokens[i]).item() if counts.tokens[i] > 0 else None for i, t in enumerate(parts.tasks)
    }
    task_tokens = {t: int(counts.tokens[i].item()) for i, t in enumerate(parts.tasks)}
    return StepResult(
        loss_sum.item(), task_loss, task_tokens, grad_norm, int(real_t.item()), time.perf_counter() - start
    )


def to_device(targets: Targets, device) -> Targets:
    if targets.labels.device == device:
        return targets
    return Targets(targets.labels.to(device), targets.task_ids.to(device), targets.sample_ids.to(device))


@dataclass(kw_only=True)
class Hooks:
    """What the loop calls back into: logging, evaluation, checkpointing (kept out of the loop's body)."""

    on_step: Callable[[TrainState, StepResult], None]
    on_eval: Callable[[TrainState], bool]  # returns True to stop early
    on_save: Callable[[TrainState], None]
    eval_due: Callable[[int], bool]  # whether step N evaluates (valid losses, problem sets)
    save_every: int
    after_step: Callable[[TrainState], None] = lambda state: None  # e.g. convergence balancing


def run_loop(parts: LoopParts, state: TrainState, hooks: Hooks) -> TrainState:
    """Steps from ``state.step`` to ``total_steps`` (or an early stop); state is updated in place."""
    parts.engine.model.train()
    step_fn = parts.step_fn or train_step
    while state.step < parts.total_steps and not state.stopped_early:
        result = step_fn(parts, state.step)
        state.step += 1
        state.tokens_seen += result.real_tokens
        hooks.after_step(state)
        hooks.on_step(state, result)
        last = state.step == parts.total_steps
        if hooks.eval_due(state.step) and not last:
            state.stopped_early = hooks.on_eval(state)
        if hooks.save_every and state.step % hooks.save_every == 0 and not last:
            hooks.on_save(state)
    return state
