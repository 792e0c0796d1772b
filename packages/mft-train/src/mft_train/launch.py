"""Multi-process training: the ``torchrun`` line ``mft-train launch`` builds and the checks that refuse setups
which would silently train on something else. The strategy reaches the workers in their config (``--set
strategy=...``); :mod:`engines` turns it into an engine.

Measured on CPU: ``accelerate launch --cpu --num_processes 2`` quietly starts ONE process, and accelerate's
FSDP plugin is quietly ignored on CPU (plain DDP runs instead). ``torchrun`` with DDP, DeepSpeed ZeRO-2/3
(gloo) and torch's ``fully_shard`` do work, so that is what MFT launches.
"""

from __future__ import annotations

import os
import shlex
import sys
from importlib import resources
from pathlib import Path

import torch
from mft_core.errors import ConfigError

from .config import LaunchConfig  # (torch-free, for the CLI)

WORLD_ENV = "MFT_EXPECTED_WORLD_SIZE"  # lets a worker notice a launcher that started fewer processes
# Shown in `mft-train launch --dry-run`'s line; nothing reads them (the strategy travels in --set strategy=).
INFO_ENV = ("MFT_STRATEGY", "MFT_OFFLOAD")


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
    for s in cfg.worker_sets():
        cmd += ["--set", s]
    return cmd


def accelerate_equivalent(cfg: LaunchConfig) -> str:
    """The accelerate line a user might reach for (GPU only: on CPU accelerate runs one process)."""
    flags = {
        "ddp": "--multi_gpu",
        "zero2": "--use_deepspeed --zero_stage 2",
        "zero3": "--use_deepspeed --zero_stage 3",
        "fsdp": "--use_fsdp --fsdp_version 2",
        "atorch": "--multi_gpu",  # ATorch's auto_accelerate runs inside the workers, under any launcher
    }[cfg.strategy]
    return (
        f"accelerate launch {flags} --num_processes {cfg.nproc * cfg.nnodes} --num_machines {cfg.nnodes} "
        f"--machine_rank {cfg.node_rank} --main_process_ip {cfg.master_addr} --main_process_port {cfg.master_port} "
        f"-m mft_train.worker {shlex.quote(cfg.config)} --kind {cfg.kind}"
        + "".join(f" --set {shlex.quote(s)}" for s in cfg.worker_sets())
    )


def launch_env(cfg: LaunchConfig) -> dict[str, str]:
    env = dict(os.environ)
    env[WORLD_ENV] = str(cfg.nproc * cfg.nnodes)
    env.update(zip(INFO_ENV, (cfg.strategy, cfg.offload)))
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


def shipped_strategy_files() -> dict[str, Path]:
    root = resources.files("mft_train").joinpath("strategies")
    return {p.name: Path(str(p)) for p in root.iterdir() if p.name.endswith((".json", ".yaml"))}
