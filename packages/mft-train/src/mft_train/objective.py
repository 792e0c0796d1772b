"""What a run minimises, resolved once from ``loss``, ``task_weighting`` and ``task_weights`` for its tasks.

The loop, the balancer, the checkpoints and the summary all read this one object; nothing re-derives it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from mft_core.errors import ConfigError

from .config import TrainConfig


@dataclass(frozen=True)
class Objective:
    loss: Literal["token", "sample", "task", "task-sample"]  # the formulas of loss.py
    weighting: Literal["static", "selfpaced", "coba"]  # static: `weights` throughout; else moved by balance.py
    weights: tuple[float, ...]  # w_t in task order: task_weights, 1.0 for a task it does not name
    preference: Literal["none", "dpo", "orpo", "rpo"] = "none"  # on pairs: `loss` then balances pairs (preference.py)
    beta: float = 0.1
    rpo_alpha: float = 1.0

    @property
    def on_pairs(self) -> bool:
        return self.preference != "none"

    @property
    def balancing(self) -> bool:
        return self.weighting != "static"

    @property
    def legacy_loss_mode(self) -> str:
        """The single word the old ``loss_mode`` key used for this objective (for readers of older summaries)."""
        return self.weighting if self.balancing else self.loss


def resolve_objective(cfg: TrainConfig, tasks: tuple[str, ...]) -> Objective:
    unknown = sorted(set(cfg.task_weights) - set(tasks))
    if unknown:
        raise ConfigError(
            f"task_weights names unknown tasks: {', '.join(unknown)}", fix=f"tasks are: {', '.join(tasks)}"
        )
    loss = cfg.loss
    if loss == "auto":  # task weights, fixed or moving, exist only in the task losses
        loss = "task" if len(tasks) > 1 or cfg.task_weighting != "static" or cfg.task_weights else "token"
    weights = tuple(float(cfg.task_weights.get(t, 1.0)) for t in tasks)
    return Objective(loss, cfg.task_weighting, weights, cfg.preference, cfg.beta, cfg.rpo_alpha)
