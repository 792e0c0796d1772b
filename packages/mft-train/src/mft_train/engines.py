"""The one place an engine is chosen: from ``cfg.strategy`` (which ``mft-train launch`` sets for its workers)."""

from __future__ import annotations

from collections.abc import Callable

from mft_core.errors import ConfigError

from . import dist
from .config import TrainConfig
from .engine import Engine, LocalEngine, ddp_engine
from .engine_fsdp import FSDPEngine
from .engine_zero import DeepSpeedEngine, deepspeed_config

SHARDED = ("zero2", "zero3", "fsdp")


def make_engine(
    cfg: TrainConfig, model, optimizer_factory: Callable, scheduler_factory: Callable[[object], object]
) -> Engine:
    """The engine for this process; ``optimizer_factory(params)`` and ``scheduler_factory(optimizer)`` are
    called once the strategy has wrapped or sharded the model."""
    strategy, world = cfg.strategy, dist.world_size()
    if strategy == "local" and world > 1:
        raise ConfigError(
            f"strategy local trains in one process, but this is one of {world}",
            fix="start the processes with `mft-train launch --strategy ddp|zero2|zero3|fsdp|atorch` (it sets strategy)",
        )
    if strategy in SHARDED and not dist.initialized():
        raise ConfigError(
            f"strategy {strategy} shards over a process group, and this process is in none",
            fix=f"mft-train launch --strategy {strategy} CONFIG (--nproc 1 for a single GPU)",
        )
    if strategy in ("local", "ddp", "atorch") and not getattr(model, "is_loaded_in_4bit", False):
        # DeepSpeed places the model itself, FSDP moves only its shards, a 4-bit model was loaded onto its device
        model.to(dist.device())
    if strategy == "local" or (strategy == "ddp" and world == 1):  # DDP over one process is the local engine
        optimizer = optimizer_factory(model.parameters())
        return LocalEngine(model, optimizer, scheduler_factory(optimizer))
    if strategy == "ddp":
        return ddp_engine(model, optimizer_factory, scheduler_factory)
    if strategy == "atorch":
        from .engine_atorch import atorch_engine  # an optional extra: imported only when asked for

        return atorch_engine(model, optimizer_factory, scheduler_factory)
    if strategy == "fsdp":
        return FSDPEngine(model, optimizer_factory, scheduler_factory, bf16=cfg.bf16)
    return DeepSpeedEngine(model, optimizer_factory, scheduler_factory, int(strategy[-1]), deepspeed_config(cfg))
