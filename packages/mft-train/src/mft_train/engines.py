"""Distributed engines: DDP, DeepSpeed ZeRO-2/3 and FSDP2 (``fully_shard``), behind the loop's small contract.

Every engine: ``accumulate(last)`` (sync gradients only on the last micro-batch), ``backward(loss)``,
``step(max_grad_norm) -> grad norm``, ``save``/``load`` of exact-resume checkpoints, and
``consolidated_state()`` for the final output (a plain PEFT adapter or HF model, loadable without DeepSpeed).
The loop multiplies each micro-batch loss by the world size because every engine *averages* gradients over
ranks while MFT's step loss is a *sum* over ranks of globally normalised terms.
"""

from __future__ import annotations

import contextlib
import json
import random
from pathlib import Path

import numpy as np
import torch
from mft_core.errors import ConfigError

from . import dist
from .checkpoint import TrainState, config_diff, list_checkpoints, prune_checkpoints, rng_state, set_rng_state
from .engine import LocalEngine


def _trainable_names(model) -> list[str]:
    return [n for n, p in model.named_parameters() if p.requires_grad]


def _write_state(tmp: Path, state: TrainState, config: dict) -> None:
    from dataclasses import asdict

    (tmp / "state.json").write_text(json.dumps({"state": asdict(state), "config": config}, indent=2) + "\n")


def _read_state(path: Path, config: dict) -> TrainState:
    saved = json.loads((path / "state.json").read_text())
    diff = config_diff(saved["config"], config)
    if diff:
        raise ConfigError(
            f"{path} was made with a different config:\n  " + "\n  ".join(diff),
            fix="resume with the same config, or start a new output_dir (resume=none)",
        )
    return TrainState(**saved["state"])


class _ShardedCheckpoints:
    """Checkpoint layout shared by the distributed engines: every rank writes its own RNG state; rank 0 writes
    the rest; the folder is renamed into place only after a barrier, so it is whole or absent."""

    def save(self, output_dir: Path, state: TrainState, config: dict) -> None:
        final = output_dir / f"checkpoint-{state.step}"
        tmp_name = dist.broadcast_object(
            f".checkpoint-{state.step}.tmp-{random.getrandbits(32):08x}" if dist.is_main() else None
        )
        tmp = output_dir / tmp_name
        if dist.is_main():
            tmp.mkdir(parents=True, exist_ok=True)
        dist.barrier()
        self._save_tensors(tmp)
        torch.save(rng_state(), tmp / f"rng-rank{dist.rank()}.pt")
        dist.barrier()
        if dist.is_main():
            _write_state(tmp, state, config)
            import os
            import shutil

            if final.exists():
                shutil.rmtree(final)
            os.replace(tmp, final)
            prune_checkpoints(output_dir, self.save_limit)
        dist.barrier()

    def load(self, path: Path, config: dict) -> TrainState:
        state = _read_state(path, config)
        self._load_tensors(path)
        set_rng_state(torch.load(path / f"rng-rank{dist.rank()}.pt", weights_only=False))
        return state


class DDPEngine(_ShardedCheckpoints, LocalEngine):
    """torch DistributedDataParallel; gradients all-reduced on the last micro-batch only."""

    def __init__(self, model, optimizer_factory, scheduler_factory, save_limit: int):
        from torch.nn.parallel import DistributedDataParallel

        device_ids = [torch.cuda.current_device()] if torch.cuda.is_available() else None
        ddp = DistributedDataParallel(model, device_ids=device_ids)
        optimizer = optimizer_factory(ddp.parameters())
        super().__init__(ddp, optimizer, scheduler_factory(optimizer), save_limit)

    @property
    def unwrapped(self):
        return self.model.module

    def accumulate(self, last: bool):
        return contextlib.nullcontext() if last else self.model.no_sync()

    def _save_tensors(self, tmp: Path) -> None:
        if dist.is_main():
            from safetensors.torch import save_file

            params = dict(self.unwrapped.named_parameters())
            save_file(
                {n: params[n].detach().contiguous() for n in _trainable_names(self.unwrapped)},
                str(tmp / "trainable.safetensors"),
            )
            torch.save(
                {"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict()}, tmp / "optim.pt"
            )

    def _load_tensors(self, path: Path) -> None:
        from safetensors.torch import load_file

        weights = load_file(str(path / "trainable.safetensors"))
        params = dict(self.unwrapped.named_parameters())
        with torch.no_grad():
            for name, tensor in weights.items():
                params[name].copy_(tensor)
        blob = torch.load(path / "optim.pt", weights_only=False)
        self.optimizer.load_state_dict(blob["optimizer"])
        self.scheduler.load_state_dict(blob["scheduler"])

    def consolidated_state(self):
        return None  # every rank holds the full model


class DeepSpeedEngine(_ShardedCheckpoints):
    """DeepSpeed ZeRO stage 2 or 3 (optionally offloading optimizer state or parameters to CPU)."""

    def __init__(self, model, optimizer_factory, scheduler_factory, cfg, stage: int, ds_config: dict):
        import deepspeed

        self.stage = stage
        self.save_limit = cfg.save_limit
        self.grad_accum = cfg.grad_accum
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
        self.model.step()
        norm = self.model.get_global_grad_norm()
        return float(norm) if norm is not None else 0.0

    def _save_tensors(self, tmp: Path) -> None:
        self.model.save_checkpoint(str(tmp), tag="ds", exclude_frozen_parameters=True)

    def _load_tensors(self, path: Path) -> None:
        self.model.load_checkpoint(str(path), tag="ds", load_module_strict=False)

    def consolidated_state(self):
        """The state to save, gathered on rank 0 (None elsewhere): the trainable (adapter) tensors of a PEFT
        model, every tensor of a full model. One parameter is gathered at a time, so no rank ever holds the whole
        model on its device (a 34B model would not fit)."""
        if self.stage < 3:
            return None
        import deepspeed

        model = self.unwrapped
        adapter_only = hasattr(model, "peft_config")
        keys = set(model.state_dict().keys())
        state: dict[str, torch.Tensor] = {}
        for name, param in model.named_parameters():
            if name not in keys or (adapter_only and not param.requires_grad):
                continue
            with deepspeed.zero.GatheredParameters([param], modifier_rank=None):
                if dist.is_main():
                    state[name] = param.detach().cpu().clone()
        if not adapter_only:  # persistent buffers are never partitioned
            state.update({n: b.detach().cpu().clone() for n, b in model.named_buffers() if n in keys})
        return state if dist.is_main() else None


def fsdp_settings() -> dict:
    """The ``fully_shard`` section of the shipped strategies/fsdp.yaml (the one place these settings live)."""
    from importlib import resources

    import yaml

    text = resources.files("mft_train").joinpath("strategies", "fsdp.yaml").read_text()
    return (yaml.safe_load(text) or {}).get("fully_shard") or {}


class FSDPEngine(_ShardedCheckpoints, LocalEngine):
    """torch FSDP2 (``fully_shard``) on each decoder layer (class taken from the model) and on the root."""

    def __init__(self, model, optimizer_factory, scheduler_factory, cfg):
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
            if cfg.bf16
            else MixedPrecisionPolicy()
        )
        reshard = bool(settings.get("reshard_after_forward", True))
        layers = [m for m in model.modules() if type(m).__name__ in layer_classes]
        for layer in layers:
            fully_shard(layer, mp_policy=policy, reshard_after_forward=reshard)
        fully_shard(model, mp_policy=policy, reshard_after_forward=reshard)
        if not getattr(model, "is_loaded_in_4bit", False):
            from .launch import _device

            model.to(_device())  # after sharding: each rank moves only its own shards to its device
        self.layer_classes = sorted(layer_classes)
        optimizer = optimizer_factory(model.parameters())
        LocalEngine.__init__(self, model, optimizer, scheduler_factory(optimizer), cfg.save_limit)

    def accumulate(self, last: bool):
        self.model.set_requires_gradient_sync(last)
        return contextlib.nullcontext()

    def step(self, max_grad_norm: float) -> float:
        params = self.trainable()
        norm = torch.nn.utils.clip_grad_norm_(params, max_grad_norm if max_grad_norm > 0 else float("inf"))
        norm = norm.full_tensor() if hasattr(norm, "full_tensor") else norm
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return float(norm)

    def _options(self, **kw):
        from torch.distributed.checkpoint.state_dict import StateDictOptions

        return StateDictOptions(full_state_dict=True, cpu_offload=True, **kw)

    def _save_tensors(self, tmp: Path) -> None:
        from torch.distributed.checkpoint.state_dict import get_state_dict

        model_state, optim_state = get_state_dict(self.model, self.optimizer, options=self._options())
        if dist.is_main():
            trainable = set(_trainable_names(self.model))
            torch.save(
                {
                    "model": {k: v for k, v in model_state.items() if k in trainable},
                    "optimizer": optim_state,
                    "scheduler": self.scheduler.state_dict(),
                },
                tmp / "fsdp.pt",
            )

    def _load_tensors(self, path: Path) -> None:
        from torch.distributed.checkpoint.state_dict import set_state_dict

        blob = torch.load(path / "fsdp.pt", weights_only=False) if dist.is_main() else {"model": {}, "optimizer": {}}
        set_state_dict(
            self.model,
            self.optimizer,
            model_state_dict=blob["model"],
            optim_state_dict=blob["optimizer"],
            options=self._options(broadcast_from_rank0=True, strict=False),
        )
        sched = dist.broadcast_object(blob.get("scheduler"))
        self.scheduler.load_state_dict(sched)

    def consolidated_state(self):
        from torch.distributed.checkpoint.state_dict import get_model_state_dict

        state = get_model_state_dict(self.model, options=self._options())
        return state if dist.is_main() else None


def _base_model(model):
    """The transformers model inside a PEFT wrapper (for its declared layer classes)."""
    inner = model
    for attr in ("base_model", "model"):
        while hasattr(inner, attr) and getattr(inner, attr) is not inner and not hasattr(inner, "_no_split_modules"):
            inner = getattr(inner, attr)
    return inner


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


__all__ = ["DDPEngine", "DeepSpeedEngine", "FSDPEngine", "list_checkpoints"]
