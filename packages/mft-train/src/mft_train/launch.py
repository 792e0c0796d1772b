"""Multi-process training: the ``torchrun`` line ``mft-train launch`` builds, the worker it starts, the engine
each worker uses, and the checks that refuse setups which would silently train on something else.

Measured on CPU: ``accelerate launch --cpu --num_processes 2`` quietly starts ONE process, and accelerate's
FSDP plugin is quietly ignored on CPU (plain DDP runs instead). ``torchrun`` with DDP, DeepSpeed ZeRO-2/3
(gloo) and torch's ``fully_shard`` do work, so that is what MFT launches.
"""

from __future__ import annotations

import json
import os
import shlex
import sys
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import torch
from mft_core.errors import ConfigError

from . import dist
from .engine import LocalEngine

STRATEGIES = ("ddp", "zero2", "zero3", "fsdp")
STRATEGY_ENV = "MFT_STRATEGY"
WORLD_ENV = "MFT_EXPECTED_WORLD_SIZE"
OFFLOAD_ENV = "MFT_OFFLOAD"


@dataclass(frozen=True)
class LaunchConfig:
    config: str
    strategy: str = "ddp"
    nproc: int = 1
    nnodes: int = 1
    node_rank: int = 0
    master_addr: str = "127.0.0.1"
    master_port: int = 29500
    offload: str = "none"  # zero2: optimizer; zero3: optimizer|params|all
    kind: str = "run"  # run | sft | pretrain (each command's defaults, see config.KIND_DEFAULTS)
    sets: tuple[str, ...] = ()

    def __post_init__(self):
        if self.strategy not in STRATEGIES:
            raise ConfigError(f"--strategy {self.strategy!r}: use one of {', '.join(STRATEGIES)}")
        if self.nproc < 1 or self.nnodes < 1 or not 0 <= self.node_rank < self.nnodes:
            raise ConfigError("need --nproc >= 1, --nnodes >= 1 and 0 <= --node-rank < --nnodes")
        if self.offload not in ("none", "optimizer", "params", "all"):
            raise ConfigError("--offload: none|optimizer|params|all")
        if self.offload in ("params", "all") and self.strategy != "zero3":
            raise ConfigError("parameter offload needs --strategy zero3")
        if self.kind not in ("run", "sft", "pretrain"):
            raise ConfigError(f"--kind {self.kind!r}: use run, sft or pretrain")


def torchrun_command(cfg: LaunchConfig) -> list[str]:
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        f"--nproc_per_node={cfg.nproc}",
        f"--nnodes={cfg.nnodes}",
        f"--node_rank={cfg.node_rank}",
        f"--master_addr={cfg.master_addr}",
        f"--master_port={cfg.master_port}",
        "-m",
        "mft_train.worker",
        cfg.config,
        "--kind",
        cfg.kind,
    ]
    for s in cfg.sets:
        cmd += ["--set", s]
    return cmd


def accelerate_equivalent(cfg: LaunchConfig) -> str:
    """The accelerate line a user might reach for (GPU only: on CPU accelerate runs one process)."""
    flags = {
        "ddp": "--multi_gpu",
        "zero2": "--use_deepspeed --zero_stage 2",
        "zero3": "--use_deepspeed --zero_stage 3",
        "fsdp": "--use_fsdp --fsdp_version 2",
    }[cfg.strategy]
    return (
        f"accelerate launch {flags} --num_processes {cfg.nproc * cfg.nnodes} --num_machines {cfg.nnodes} "
        f"--machine_rank {cfg.node_rank} --main_process_ip {cfg.master_addr} --main_process_port {cfg.master_port} "
        f"-m mft_train.worker {shlex.quote(cfg.config)} --kind {cfg.kind}"
        + "".join(f" --set {shlex.quote(s)}" for s in cfg.sets)
    )


def launch_env(cfg: LaunchConfig) -> dict[str, str]:
    env = dict(os.environ)
    env[STRATEGY_ENV] = cfg.strategy
    env[WORLD_ENV] = str(cfg.nproc * cfg.nnodes)
    env[OFFLOAD_ENV] = cfg.offload
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // cfg.nproc)))
    return env


def check_launch_environment(env: dict[str, str] | None = None, cuda: bool | None = None) -> None:
    """Refuse the setups that silently train differently from what was asked."""
    env = dict(os.environ if env is None else env)
    cuda = torch.cuda.is_available() if cuda is None else cuda
    if env.get("ACCELERATE_USE_FSDP", "").lower() == "true" and not cuda:
        raise ConfigError(
            "accelerate's FSDP plugin is ignored on CPU: this would quietly train plain DDP",
            fix="use `mft-train launch --strategy fsdp` (torch fully_shard works on CPU)",
        )
    if env.get("ACCELERATE_USE_CPU", "").lower() == "true" and env.get("MASTER_ADDR") and not env.get("WORLD_SIZE"):
        raise ConfigError(
            "accelerate was asked for several CPU processes but started one (it does so silently)",
            fix="use `mft-train launch --nproc N --strategy ddp CONFIG` (torchrun)",
        )
    expected = env.get(WORLD_ENV)
    actual = int(env.get("WORLD_SIZE", "1"))
    if expected and int(expected) != actual:
        raise ConfigError(
            f"expected {expected} processes but this one runs in a world of {actual}",
            fix="launch with `mft-train launch` (torchrun), not another launcher",
        )


def init_distributed() -> None:
    """Join the process group torchrun describes (gloo on CPU, nccl on GPU); also for one process, so a sharded
    strategy (FSDP, ZeRO) can run on a single GPU."""
    if "RANK" not in os.environ or dist.initialized():
        return
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    torch.distributed.init_process_group(backend=backend)


def deepspeed_config(strategy: str, cfg, offload: str) -> dict:
    """The shipped ZeRO config for ``strategy`` with this run's batch sizes, clipping, precision and offload."""
    name = "zero2.json" if strategy == "zero2" else "zero3.json"
    ds = json.loads(resources.files("mft_train").joinpath("strategies", name).read_text())
    ds["train_micro_batch_size_per_gpu"] = cfg.micro_batch_size
    ds["gradient_accumulation_steps"] = cfg.grad_accum
    ds["gradient_clipping"] = cfg.max_grad_norm
    ds["bf16"] = {"enabled": bool(cfg.bf16)}
    zero = ds["zero_optimization"]
    if offload in ("optimizer", "all"):
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": torch.cuda.is_available()}
    if offload in ("params", "all"):
        zero["offload_param"] = {"device": "cpu", "pin_memory": torch.cuda.is_available()}
    return ds


def make_engine(model, optimizer_factory, scheduler_factory, cfg):
    """The engine for this process: plain when alone, else the strategy ``mft-train launch`` asked for."""
    strategy = os.environ.get(STRATEGY_ENV, "ddp")
    check_launch_environment()
    if strategy not in ("zero2", "zero3", "fsdp") and not getattr(model, "is_loaded_in_4bit", False):
        # DeepSpeed places the model itself, FSDP moves only its shards (after fully_shard), and a 4-bit model
        # was loaded onto its device
        model.to(_device())
    if dist.world_size() == 1 and strategy not in ("zero2", "zero3", "fsdp"):
        optimizer = optimizer_factory(model.parameters())
        return LocalEngine(model, optimizer, scheduler_factory(optimizer), cfg.save_limit)
    from .engines import DDPEngine, DeepSpeedEngine, FSDPEngine

    if strategy == "ddp":
        return DDPEngine(model, optimizer_factory, scheduler_factory, cfg.save_limit)
    if strategy == "fsdp":
        return FSDPEngine(model, optimizer_factory, scheduler_factory, cfg)
    ds = deepspeed_config(strategy, cfg, os.environ.get(OFFLOAD_ENV, "none"))
    return DeepSpeedEngine(model, optimizer_factory, scheduler_factory, cfg, int(strategy[-1]), ds)


def _device() -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")


def zero3_loading(cfg):
    """Under ZeRO-3, the model is loaded already partitioned (``deepspeed.zero.Init`` through transformers), not
    whole on every rank. Returns the object that switches this on; keep it alive until the engine is built.

    Not for QLoRA: transformers does not partition quantized models (bitsandbytes keeps whole 4-bit weights).
    """
    if os.environ.get(STRATEGY_ENV) != "zero3" or cfg.peft == "qlora":
        return None
    from transformers.integrations import HfDeepSpeedConfig

    return HfDeepSpeedConfig(deepspeed_config("zero3", cfg, os.environ.get(OFFLOAD_ENV, "none")))


def shipped_strategy_files() -> dict[str, Path]:
    root = resources.files("mft_train").joinpath("strategies")
    return {p.name: Path(str(p)) for p in root.iterdir() if p.name.endswith((".json", ".yaml"))}
