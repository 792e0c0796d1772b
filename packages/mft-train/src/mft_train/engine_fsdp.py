"""torch FSDP2 (``fully_shard``) behind :class:`engine.Engine`: each decoder layer (class taken from the model)
and the root are sharded; checkpoints and the final output use full state dicts gathered on the main rank."""

from __future__ import annotations

from pathlib import Path

import torch
from mft_core.errors import ConfigError

from . import dist
from .engine import OPTIMIZER_FILE, trainable_parameters


def fsdp_settings() -> dict:
    """The ``fully_shard`` section of the shipped strategies/fsdp.yaml (the one place these settings live)."""
    from importlib import resources

    import yaml

    text = resources.files("mft_train").joinpath("strategies", "fsdp.yaml").read_text()
    return (yaml.safe_load(text) or {}).get("fully_shard") or {}


def _base_model(model):
    """The transformers model inside a PEFT wrapper (for its declared layer classes)."""
    inner = model
    for attr in ("base_model", "model"):
        while hasattr(inner, attr) and getattr(inner, attr) is not inner and not hasattr(inner, "_no_split_modules"):
            inner = getattr(inner, attr)
    return inner


def _full(**kw):
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, cpu_offload=True, **kw)


class FSDPEngine:
    def __init__(self, model, optimizer_factory, scheduler_factory, bf16: bool):
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        layer_classes = set(getattr(_base_model(model), "_no_split_modules", None) or [])
        if not layer_classes:
            raise ConfigError(
                f"{type(model).__name__} declares no decoder layer class (_no_split_modules)",
                fix="use --strategy zero3 for this model",
            )
        settings = fsdp_settings()
        precision = settings.get("mixed_precision") or {}
        policy = (
            MixedPrecisionPolicy(
                param_dtype=getattr(torch, precision.get("param_dtype", "bfloat16")),
                reduce_dtype=getattr(torch, precision.get("reduce_dtype", "float32")),
            )
            if bf16
            else MixedPrecisionPolicy()
        )
        reshard = bool(settings.get("reshard_after_forward", True))
        for layer in [m for m in model.modules() if type(m).__name__ in layer_classes]:
            fully_shard(layer, mp_policy=policy, reshard_after_forward=reshard)
        fully_shard(model, mp_policy=policy, reshard_after_forward=reshard)
        if not getattr(model, "is_loaded_in_4bit", False):
            model.to(dist.device())  # after sharding: each rank moves only its own shards to its device
        self.layer_classes = sorted(layer_classes)
        self.model = model
        self.optimizer = optimizer_factory(model.parameters())
        self.scheduler = scheduler_factory(self.optimizer)

    @property
    def unwrapped(self):
        return self.model  # fully_shard changes the module in place, names included

    def accumulate(self, last: bool):
        import contextlib

        self.model.set_requires_gradient_sync(last)
        return contextlib.nullcontext()

    def backward(self, loss: torch.Tensor) -> None:
        loss.backward()

    def step(self, max_grad_norm: float) -> float:
        params = list(trainable_parameters(self.model).values())
        norm = torch.nn.utils.clip_grad_norm_(params, max_grad_norm if max_grad_norm > 0 else float("inf"))
        norm = norm.full_tensor() if hasattr(norm, "full_tensor") else norm
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return float(norm)

    def trainable_shapes(self):
        return {n: tuple(p.shape) for n, p in trainable_parameters(self.model).items()}  # a DTensor's whole shape

    def trainable_state(self):
        from torch.distributed.checkpoint.state_dict import get_model_state_dict

        state = get_model_state_dict(self.model, options=_full())
        if not dist.is_main():
            return None
        trainable = set(trainable_parameters(self.model))
        return {k: v for k, v in state.items() if k in trainable}

    def load_trainable(self, path: Path) -> None:
        from safetensors.torch import load_file
        from torch.distributed.checkpoint.state_dict import set_model_state_dict

        state = load_file(str(path)) if dist.is_main() else {}
        set_model_state_dict(self.model, state, options=_full(broadcast_from_rank0=True, strict=False))

    def save_optimizer(self, folder: Path) -> None:
        from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

        state = get_optimizer_state_dict(self.model, self.optimizer, options=_full())
        if dist.is_main():
            torch.save(state, folder / OPTIMIZER_FILE)

    def load_optimizer(self, folder: Path) -> None:
        from torch.distributed.checkpoint.state_dict import set_optimizer_state_dict

        state = torch.load(folder / OPTIMIZER_FILE, weights_only=False) if dist.is_main() else {}
        set_optimizer_state_dict(self.model, self.optimizer, state, options=_full(broadcast_from_rank0=True))

    def final_state(self):
        from torch.distributed.checkpoint.state_dict import get_model_state_dict

        state = get_model_state_dict(self.model, options=_full())
        return state if dist.is_main() else None
