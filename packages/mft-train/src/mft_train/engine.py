"""How gradients are accumulated, synchronised and applied: one process, or a distributed engine.

The loop only calls ``accumulate``, ``backward`` and ``step``; everything strategy-specific lives here.
"""

from __future__ import annotations

import contextlib

import torch


def make_optimizer(name: str, params, lr: float, weight_decay: float):
    """AdamW (decay on matrices only), SGD, or bitsandbytes' 8-bit AdamW (GPU)."""
    params = [p for p in params if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.ndim >= 2], "weight_decay": weight_decay},
        {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0},
    ]
    groups = [g for g in groups if g["params"]]
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr)
    if name == "adamw_8bit":
        import bitsandbytes as bnb

        return bnb.optim.AdamW8bit(groups, lr=lr)
    return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.999), eps=1e-8)


class LocalEngine:
    """One process: plain backward, clip, step. Also the base of the DDP engine."""

    def __init__(self, model, optimizer, scheduler, save_limit: int = 2):
        self.model = model
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.save_limit = save_limit

    @property
    def unwrapped(self):
        return self.model

    def accumulate(self, last: bool):
        return contextlib.nullcontext()

    def backward(self, loss: torch.Tensor) -> None:
        loss.backward()

    def trainable(self):
        return [p for p in self.model.parameters() if p.requires_grad]

    def step(self, max_grad_norm: float) -> float:
        params = self.trainable()
        if max_grad_norm > 0:
            norm = torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
        else:
            norm = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in params if p.grad is not None]))
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return float(norm)

    def save(self, output_dir, state, config: dict) -> None:
        from . import dist
        from .checkpoint import save_checkpoint

        if dist.is_main():
            save_checkpoint(output_dir, self.unwrapped, self.optimizer, self.scheduler, state, config, self.save_limit)
        dist.barrier()

    def load(self, path, config: dict):
        from .checkpoint import load_checkpoint

        return load_checkpoint(path, self.unwrapped, self.optimizer, self.scheduler, config)
