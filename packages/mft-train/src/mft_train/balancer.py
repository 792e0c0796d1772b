"""The loop's after-step hook for ``task_weighting: coba | selfpaced``: measures the valid losses the weights are
computed from and hands the loop its next task weights (the maths are the pure functions of :mod:`balance`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from mft_core.errors import ConfigError

from .balance import BalanceState, fixed_valid_rows, update_weights
from .batches import Rows
from .checkpoint import TrainState
from .config import TrainConfig
from .evaluation import ValidSet
from .loss import IGNORE


@dataclass(frozen=True, kw_only=True)
class BalanceSettings:
    scheme: Literal["coba", "selfpaced"]
    update_interval: int  # optimizer steps between weight updates
    sample_valid_num: int  # valid micro-batches in the fixed set every update is measured on
    warmup: int  # updates with equal weights before the first fit
    history_length: int  # updates in the slope window
    tau: float
    selfpaced_scale: float
    seed: int  # picks the fixed valid rows

    @classmethod
    def of(cls, cfg: TrainConfig) -> BalanceSettings:
        return cls(
            scheme=cfg.task_weighting,
            update_interval=cfg.coba_update_interval,
            sample_valid_num=cfg.coba_sample_valid_num,
            warmup=cfg.coba_warmup_steps,
            history_length=cfg.coba_history_length,
            tau=cfg.coba_tau,
            selfpaced_scale=cfg.selfpaced_scale,
            seed=cfg.seed,
        )


def row_tasks(rows: Rows, i: int) -> set[int]:
    """The tasks with supervised targets in row ``i`` (targets are the labels shifted by one)."""
    supervised = rows.get("labels", i)[1:] != IGNORE
    return set(rows.get("task_ids", i)[1:][supervised].tolist())


class Balancer:
    """Every ``update_interval`` steps measures the per-task valid loss on one fixed set of valid rows
    (``sample_valid_num`` micro-batches, chosen once with the seed; the same rows gave ``L(0)``) and sets
    ``parts.task_weights`` for the next steps from the loss slopes. Its state lives in ``TrainState.balance``, so
    checkpoints carry it."""

    def __init__(
        self, *, settings: BalanceSettings, valid: ValidSet | None, model, parts, state: TrainState, log
    ) -> None:
        if valid is None:
            raise ConfigError(
                f"task_weighting {settings.scheme} needs a valid split to watch",
                fix="run `mft-data split DATA_DIR` before tokenizing",
            )
        self.settings, self.valid, self.model, self.parts, self.log = settings, valid, model, parts, log
        self.state = BalanceState(**state.balance) if state.balance else BalanceState()
        if self.state.weights:  # resumed: continue with the weights the checkpoint trained with
            parts.task_weights = torch.tensor(self.state.weights, dtype=torch.float64)
        if self.state.valid_rows is None:
            size = min(valid.micro_batch_size * settings.sample_valid_num, len(valid))  # shared by the ranks
            self.state.valid_rows = fixed_valid_rows(
                len(valid), size, settings.seed, lambda i: row_tasks(valid.rows, i), len(valid.tasks)
            )
        if self.state.initial is None:
            initial = self._losses()
            missing = [t for t, v in zip(valid.tasks, initial) if v != v]
            if missing:
                raise ConfigError(
                    f"tasks without valid records: {', '.join(missing)}",
                    fix="split with a larger --valid-ratio so every task has valid records",
                )
            self.state.initial = initial
        state.balance = vars(self.state)

    def _losses(self) -> list[float]:
        task_loss = self.valid.losses(self.model, self.state.valid_rows)
        return [v if v is not None else float("nan") for v in task_loss.values()]

    def after_step(self, state: TrainState) -> None:
        s = self.settings
        if state.step % s.update_interval:
            return
        # the rows of L(0) again: a ratio L(t) / L(0) moves only when the model does
        self.state.losses.append(self._losses())
        weights = update_weights(self.state, s.scheme, s.history_length, s.warmup, s.tau, s.selfpaced_scale)
        self.parts.task_weights = torch.tensor(weights, dtype=torch.float64)
        state.balance = vars(self.state)
        # every update is logged (not only on log_every steps): the weights are what the next steps train with
        self.log.log(
            {
                "kind": "balance",
                "step": state.step,
                "task_weights": dict(zip(self.valid.tasks, weights)),
                "valid_sample_loss": dict(zip(self.valid.tasks, self.state.losses[-1])),
            }
        )
