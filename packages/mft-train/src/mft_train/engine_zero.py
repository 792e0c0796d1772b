"""DeepSpeed ZeRO-2/3 (optionally offloading optimizer state or parameters to CPU) behind :class:`engine.Engine`."""

from __future__ import annotations

import contextlib
import json
from importlib import resources
from pathlib import Path

import torch

from . import dist
from .config import TrainConfig
from .engine import trainable_parameters

DS_TAG = "ds"  # DeepSpeed's own checkpoint folder inside a checkpoint's optimizer/ folder


def deepspeed_config(cfg: TrainConfig) -> dict:
    """The shipped ZeRO config for ``cfg.strategy`` with this run's batch sizes, clipping, precision and offload."""
    name = "zero2.json" if cfg.strategy == "zero2" else "zero3.json"
    ds = json.loads(resources.files("mft_train").joinpath("strategies", name).read_text())
    ds["train_micro_batch_size_per_gpu"] = cfg.micro_batch_size
    ds["gradient_accumulation_steps"] = cfg.grad_accum
    ds["gradient_clipping"] = cfg.max_grad_norm
    ds["bf16"] = {"enabled": bool(cfg.bf16)}
    zero = ds["zero_optimization"]
    if cfg.offload in ("optimizer", "all"):
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": torch.cuda.is_available()}
    if cfg.offload in ("params", "all"):
        zero["offload_param"] = {"device": "cpu", "pin_memory": torch.cuda.is_available()}
    return ds


def zero3_loading(cfg: TrainConfig):
    """Under ZeRO-3, the model is loaded already partitioned (``deepspeed.zero.Init`` through transformers), not
    whole on every rank. Returns the object that switches this on; keep it alive until the engine is built.

    Not for QLoRA: transformers does not partition quantized models (bitsandbytes keeps whole 4-bit weights).
    """
    if cfg.strategy != "zero3" or cfg.peft == "qlora":
        return None
    from transformers.integrations import HfDeepSpeedConfig

    return HfDeepSpeedConfig(deepspeed_config(cfg))


def _gathered(module: torch.nn.Module, names: set[str]) -> dict[str, torch.Tensor] | None:
    """The named parameters, whole, on the main rank: one at a time, so no rank ever holds the whole model on its
    device (a 34B model would not fit)."""
    import deepspeed

    state: dict[str, torch.Tensor] = {}
    for name, param in module.named_parameters():
        if name not in names:
            continue
        with deepspeed.zero.GatheredParameters([param], modifier_rank=None):
            if dist.is_main():
                state[name] = param.detach().cpu().clone()
    return state if dist.is_main() else None


class DeepSpeedEngine:
    def __init__(self, model, optimizer_factory, scheduler_factory, stage: int, ds_config: dict):
        import deepspeed

        self.stage = stage
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = optimizer_factory(params)
        self.model, self.optimizer, _, self.scheduler = deepspeed.initialize(
            model=model, optimizer=optimizer, lr_scheduler=scheduler_factory, config=ds_config, model_parameters=params
        )

    @property
    def unwrapped(self):
        return self.model.module

    def accumulate(self, last: bool):
        self.model.set_gradient_accumulation_boundary(last)
        return contextlib.nullcontext()

    def backward(self, loss: torch.Tensor) -> None:
        # MFT's loss is already normalised over the whole step: no division by the accumulation steps
        self.model.backward(loss, scale_wrt_gas=False)

    def step(self, max_grad_norm: float) -> float:
        self.model.step()  # clips to the config's gradient_clipping
        norm = self.model.get_global_grad_norm()
        return float(norm) if norm is not None else 0.0

    def trainable_shapes(self):
        # a ZeRO-3 parameter is an empty placeholder; ds_shape is its whole shape
        return {n: tuple(getattr(p, "ds_shape", p.shape)) for n, p in trainable_parameters(self.unwrapped).items()}

    def trainable_state(self):
        params = trainable_parameters(self.unwrapped)
        if self.stage >= 3:
            return _gathered(self.unwrapped, set(params))
        if not dist.is_main():
            return None
        return {n: p.detach().cpu().clone() for n, p in params.items()}  # ZeRO-2: parameters are whole on every rank

    def load_trainable(self, path: Path) -> None:
        """Nothing to do here: the fp32 master weights are part of DeepSpeed's optimizer state, and
        :meth:`load_optimizer` restores them together with the model's (``path`` was validated all the same)."""

    def save_optimizer(self, folder: Path) -> None:
        self.model.save_checkpoint(str(folder), tag=DS_TAG, exclude_frozen_parameters=True)

    def load_optimizer(self, folder: Path) -> None:
        # the scheduler is restored by the checkpointer, as for every engine
        self.model.load_checkpoint(str(folder), tag=DS_TAG, load_module_strict=False, load_lr_scheduler_states=False)

    def final_state(self):
        """The trainable (adapter) tensors of a PEFT model, every tensor of a full model, gathered on the main rank."""
        if self.stage < 3:
            return None
        model = self.unwrapped
        adapter_only = hasattr(model, "peft_config")
        keys = set(model.state_dict().keys())
        names = {n for n, p in model.named_parameters() if n in keys and (p.requires_grad or not adapter_only)}
        state = _gathered(model, names)
        if state is not None and not adapter_only:  # persistent buffers are never partitioned
            state.update({n: b.detach().cpu().clone() for n, b in model.named_buffers() if n in keys})
        return state
