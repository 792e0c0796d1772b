"""Preference losses (DPO, ORPO, RPO) as pure functions of per-token cross-entropies, task-balanced and exact.

A preference micro-batch holds whole pairs: the supervised sequences of a row are chosen, rejected, chosen, ...
(``mft-data tokenize`` writes pairs side by side, never split across rows or micro-batches). With ``l_i`` the
cross-entropy of supervised target ``i`` (policy) and ``l'_i`` the same under the reference, a sequence's
log-probability is ``logp(y) = -sum_{i in y} l_i``. For pair ``p`` = (chosen ``c``, rejected ``r``):

- ``dpo``   ℓ_p = -log σ(β ((logp(c) - logp'(c)) - (logp(r) - logp'(r))))                   (Rafailov et al. 2023)
- ``orpo``  ℓ_p = -β log σ(log odds(c) - log odds(r)),  odds(y) = e^ā / (1 - e^ā),  ā = logp(y) / |y|   (Hong et al.
  2024), plus the chosen answers' NLL
- ``rpo``   ℓ_p of dpo, plus ``rpo_alpha`` times the chosen answers' NLL                        (Pang et al. 2024)

The step loss is ``L = sum_p a_p ℓ_p + nll_weight * sum_{i in chosen} c_i l_i``. Pair coefficients follow the run's
``loss`` mode with pairs in the role of samples, counted over the whole optimizer step (all micro-batches, all
ranks), so accumulation and ranks change nothing (as for the SFT losses of :mod:`loss`):

- ``token`` / ``sample``:       a_p = 1 / P                     (P: pairs in the step; TRL's batch mean)
- ``task`` / ``task-sample``:   a_p = w_t / (W P_t)             (P_t: pairs of task t; W: sum of w_t present)

and ``c_i`` are :func:`loss.target_weights` of the chosen targets only (``token``: the step's chosen-token mean, as
TRL's ``sft`` term). With one task and equal weights every mode gives TRL's loss.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .loss import IGNORE, StepCounts, Targets

PREFERENCE_LOSSES = ("dpo", "orpo", "rpo")
NEEDS_REFERENCE = ("dpo", "rpo")


@dataclass(frozen=True)
class Pairs:
    """Where each supervised target of a micro-batch belongs (flattened masked order, as per-target losses)."""

    sequence: torch.Tensor  # [n_targets] index of its sequence: 2p chosen, 2p + 1 rejected of pair p
    task: torch.Tensor  # [n_pairs] task of each pair
    n_pairs: int

    @property
    def chosen(self) -> torch.Tensor:
        """[n_targets] True for the targets of chosen answers."""
        return self.sequence % 2 == 0

    def to(self, device) -> Pairs:
        return Pairs(self.sequence.to(device), self.task.to(device), self.n_pairs)


def find_pairs(targets: Targets) -> Pairs:
    """Pairs of a micro-batch from its sample ids: the supervised sequences in order are c0, r0, c1, r1, ...

    Raises:
        ValueError: an odd number of supervised sequences (not a preference batch: a side without targets).
    """
    mask = targets.mask.reshape(-1)
    sid = targets.sample_ids.reshape(-1)[mask]
    _, sequence = torch.unique(sid, sorted=True, return_inverse=True)
    n_seq = int(sequence.max().item()) + 1 if sequence.numel() else 0
    if n_seq % 2:
        raise ValueError(f"{n_seq} supervised sequences in a preference micro-batch: pairs come in twos")
    tasks = targets.task_ids.reshape(-1)[mask].long()
    pair_task = torch.zeros(n_seq // 2, dtype=torch.long, device=tasks.device).scatter_(0, sequence // 2, tasks)
    return Pairs(sequence, pair_task, n_seq // 2)


def chosen_only(targets: Targets, pairs: Pairs) -> Targets:
    """The targets with every rejected answer's labels set to IGNORE (for the NLL term and its counts)."""
    flat = targets.labels.reshape(-1).clone()
    positions = targets.mask.reshape(-1).nonzero().squeeze(1)
    flat[positions[~pairs.chosen]] = IGNORE
    return Targets(flat.reshape(targets.labels.shape), targets.task_ids, targets.sample_ids)


def sequence_logps(losses: torch.Tensor, pairs: Pairs, average: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """(chosen, rejected) log-probabilities ``[n_pairs]`` from per-target cross-entropies: sums, or per-token means."""
    n = 2 * pairs.n_pairs
    total = torch.zeros(n, dtype=losses.dtype, device=losses.device).index_add(0, pairs.sequence, -losses)
    if average:
        count = torch.zeros(n, dtype=losses.dtype, device=losses.device).index_add(
            0, pairs.sequence, torch.ones_like(losses)
        )
        total = total / count
    return total[0::2], total[1::2]


def dpo_losses(
    chosen: torch.Tensor, rejected: torch.Tensor, ref_chosen: torch.Tensor, ref_rejected: torch.Tensor, beta: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-pair DPO loss and the implicit rewards ``β (logp - logp')`` of both sides."""
    chosen_reward = beta * (chosen - ref_chosen)
    rejected_reward = beta * (rejected - ref_rejected)
    return -F.logsigmoid(chosen_reward - rejected_reward), chosen_reward, rejected_reward


def orpo_losses(
    chosen_avg: torch.Tensor, rejected_avg: torch.Tensor, beta: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-pair ORPO odds-ratio loss (``-β log σ(log odds ratio)``) and the rewards ``β ā`` (TRL's ORPO logs)."""
    log_odds = (chosen_avg - rejected_avg) - (log1mexp(chosen_avg) - log1mexp(rejected_avg))
    return -beta * F.logsigmoid(log_odds), beta * chosen_avg, beta * rejected_avg


def log1mexp(x: torch.Tensor) -> torch.Tensor:
    """``log(1 - e^x)`` for ``x < 0``, stable at both ends (Mächler 2012): ``log(-expm1(x))`` near 0, else
    ``log1p(-e^x)``."""
    return torch.where(x > -0.6931471805599453, torch.log(-torch.expm1(x)), torch.log1p(-torch.exp(x)))


def pair_weights(mode: str, pair_task: torch.Tensor, counts: StepCounts, task_weights: torch.Tensor) -> torch.Tensor:
    """Coefficient ``a_p`` of each pair; ``counts`` are the step's counts of chosen targets (samples = pairs)."""
    if mode in ("token", "sample"):
        return torch.full(pair_task.shape, 1.0 / counts.samples.sum().item(), dtype=torch.float64)
    if mode in ("task", "task-sample"):
        w = task_weights.to(torch.float64)
        total_w = (w * (counts.samples > 0)).sum()
        return w[pair_task.cpu()] / (total_w * counts.samples[pair_task.cpu()])
    raise ValueError(f"unknown loss mode {mode!r}")


def nll_weight(loss: str, rpo_alpha: float) -> float:
    """Weight of the chosen answers' NLL in the step loss."""
    return {"dpo": 0.0, "orpo": 1.0, "rpo": rpo_alpha}[loss]


@dataclass(frozen=True)
class PairStats:
    """Per-pair quantities to log (detached)."""

    task: torch.Tensor  # [n_pairs]
    loss: torch.Tensor  # ℓ_p
    margin: torch.Tensor  # chosen reward - rejected reward
    chosen_reward: torch.Tensor
    rejected_reward: torch.Tensor


def pair_losses(
    loss: str,
    losses: torch.Tensor,
    ref_losses: torch.Tensor | None,
    pairs: Pairs,
    beta: float,
) -> tuple[torch.Tensor, PairStats]:
    """Per-pair preference losses ``[n_pairs]`` from policy (and, for dpo/rpo, reference) per-target losses."""
    if loss == "orpo":
        c, r = sequence_logps(losses, pairs, average=True)
        per_pair, cr, rr = orpo_losses(c, r, beta)
    else:
        if ref_losses is None:
            raise ValueError(f"{loss} needs the reference model's per-target losses")
        c, r = sequence_logps(losses, pairs)
        rc, rr_ = sequence_logps(ref_losses.to(losses.dtype), pairs)
        per_pair, cr, rr = dpo_losses(c, r, rc, rr_, beta)
    stats = PairStats(pairs.task, per_pair.detach(), (cr - rr).detach(), cr.detach(), rr.detach())
    return per_pair, stats
