"""What the loop and the checkpointer ask of a training engine, and the two engines that keep the whole model on
every process: :class:`LocalEngine` (one process, or DDP through :func:`ddp_engine`).

The sharded engines live in :mod:`engine_zero` (DeepSpeed ZeRO-2/3) and :mod:`engine_fsdp` (FSDP2);
:func:`mft_train.engines.make_engine` picks one from ``cfg.strategy``. Every engine *averages* gradients over
ranks, while MFT's step loss is a *sum* over ranks of globally normalised terms: the loop scales each
micro-batch loss by the world size.
"""

from __future__ import annotations

import contextlib
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any, Protocol

import torch

from . import dist

OPTIMIZER_FILE = "optimizer.pt"  # inside a checkpoint's optimizer/ folder, for engines with a whole optimizer


class Engine(Protocol):
    model: torch.nn.Module  # what the forward runs on (wrapped by the strategy)
    optimizer: Any
    scheduler: Any

    @property
    def unwrapped(self) -> torch.nn.Module:
        """The PEFT or transformers model inside the strategy's wrapper."""
        ...

    def accumulate(self, last: bool) -> AbstractContextManager:
        """Around one micro-batch's forward and backward: gradients are synchronised only when ``last``."""
        ...

    def backward(self, loss: torch.Tensor) -> None: ...

    def step(self, max_grad_norm: float) -> float:
        """Clip (when > 0), update, zero the gradients; returns the gradient norm before clipping."""
        ...

    # Checkpoints and the final output. Collective: every rank calls each of these.
    def trainable_shapes(self) -> dict[str, tuple[int, ...]]:
        """Full (unsharded) shape of every trainable parameter, by name: what a checkpoint is validated against."""
        ...

    def trainable_state(self) -> dict[str, torch.Tensor] | None:
        """Every trainable tensor, whole and on the CPU, on the main rank (None elsewhere)."""
        ...

    def load_trainable(self, path: Path) -> None:
        """Put the tensors of a ``trainable_state`` safetensors file into the model."""
        ...

    def save_optimizer(self, folder: Path) -> None: ...

    def load_optimizer(self, folder: Path) -> None: ...

    def final_state(self) -> dict[str, torch.Tensor] | None:
        """The state ``save_pretrained`` writes, gathered on the main rank; None: the model's own is whole."""
        ...


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


def clip_and_step(params: list, optimizer, scheduler, max_grad_norm: float) -> float:
    if max_grad_norm > 0:
        norm = torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
    else:
        norm = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in params if p.grad is not None]))
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return float(norm)


def trainable_parameters(module: torch.nn.Module) -> dict[str, torch.nn.Parameter]:
    return {n: p for n, p in module.named_parameters() if p.requires_grad}


class WholeModel:
    """Checkpoint pieces of a model every rank holds whole (one process, DDP): the main rank writes them and
    every rank reads them back (the output folder is shared by the ranks)."""

    def __init__(self, module: torch.nn.Module, optimizer):
        self.module, self.optimizer = module, optimizer

    def shapes(self) -> dict[str, tuple[int, ...]]:
        return {n: tuple(p.shape) for n, p in trainable_parameters(self.module).items()}

    def state(self) -> dict[str, torch.Tensor] | None:
        if not dist.is_main():
            return None
        return {n: p.detach().cpu().clone() for n, p in trainable_parameters(self.module).items()}

    def load(self, path: Path) -> None:
        from safetensors.torch import load_file

        params = trainable_parameters(self.module)
        with torch.no_grad():
            for name, tensor in load_file(str(path)).items():
                params[name].copy_(tensor)

    def save_optimizer(self, folder: Path) -> None:
        if dist.is_main():
            torch.save(self.optimizer.state_dict(), folder / OPTIMIZER_FILE)

    def load_optimizer(self, folder: Path) -> None:
        # on the CPU first: load_state_dict moves each state to its parameter's device
        self.optimizer.load_state_dict(torch.load(folder / OPTIMIZER_FILE, map_location="cpu", weights_only=False))


class LocalEngine:
    """The whole model on every process: one process (plain backward, clip, step) or, with ``ddp`` (a
    DistributedDataParallel wrapper of ``model``), gradients all-reduced on the last micro-batch only."""

    def __init__(self, model, optimizer, scheduler, ddp=None):
        self.model = ddp if ddp is not None else model  # what the forward runs on
        self.optimizer, self.scheduler = optimizer, scheduler
        self._module, self._ddp = model, ddp
        self._whole = WholeModel(model, optimizer)

    @property
    def unwrapped(self):
        return self._module

    def accumulate(self, last: bool):
        return contextlib.nullcontext() if last or self._ddp is None else self._ddp.no_sync()

    def backward(self, loss: torch.Tensor) -> None:
        loss.backward()

    def step(self, max_grad_norm: float) -> float:
        params = list(trainable_parameters(self._module).values())
        return clip_and_step(params, self.optimizer, self.scheduler, max_grad_norm)

    def trainable_shapes(self):
        return self._whole.shapes()

    def trainable_state(self):
        return self._whole.state()

    def load_trainable(self, path: Path) -> None:
        self._whole.load(path)

    def save_optimizer(self, folder: Path) -> None:
        self._whole.save_optimizer(folder)

    def load_optimizer(self, folder: Path) -> None:
        self._whole.load_optimizer(folder)

    def final_state(self):
        return None


def ddp_engine(model, optimizer_factory, scheduler_factory) -> LocalEngine:
    """torch DistributedDataParallel: every rank holds the whole model (a :class:`LocalEngine` around DDP)."""
    from torch.nn.parallel import DistributedDataParallel

    device_ids = [torch.cuda.current_device()] if torch.cuda.is_available() else None
    wrapped = DistributedDataParallel(model, device_ids=device_ids)
    optimizer = optimizer_factory(wrapped.parameters())
    return LocalEngine(model, optimizer, scheduler_factory(optimizer), ddp=wrapped)
