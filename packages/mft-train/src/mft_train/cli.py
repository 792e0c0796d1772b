"""``mft-train``: thin Typer commands over the library, their flags generated from the config dataclasses
(:class:`~mft_train.config.TrainConfig`, :class:`~mft_train.base_init.InitBaseConfig`,
:class:`~mft_train.config.LaunchConfig`); torch is imported only inside commands."""

from __future__ import annotations

from typing import TYPE_CHECKING

import typer
from mft_core.cli_config import config_command
from mft_core.ui import console, make_app

from .base_init import InitBaseConfig
from .config import KIND_DEFAULTS, LaunchConfig, TrainConfig

if TYPE_CHECKING:
    from .api import Kind  # (api imports torch)

app = make_app(
    "Fine-tune code LLMs on several tasks at once with exact per-task loss balancing.\n\n"
    "init-base builds the tiny built-in base; pretrain continues pretraining on raw code; run/sft fine-tune."
)


@config_command(app, InitBaseConfig, name="init-base")
def init_base_cmd(cfg: InitBaseConfig) -> None:
    """Build a randomly initialised model plus a tokenizer trained here on the stdlib source."""
    from .base_init import init_base

    path = init_base(cfg)
    console.print(f"[green]wrote[/] {path} ({cfg.family}, preset {cfg.preset})")


def _train(cfg: TrainConfig, kind: Kind) -> None:
    from .api import train

    result = train(cfg, kind=kind)
    s = result.summary
    if result.up_to_date:
        console.print(f"[green]up to date[/]: {result.out} (same config and inputs)")
        return
    final = s.get("final_eval") or {}
    console.print(
        f"[green]done[/]: {result.out} ({s['steps']} steps, {s['tokens_seen']:,} tokens, "
        f"loss {s['loss']}, task weighting {s['task_weighting']}"
        + (f", mean valid loss {final['mean']:.4f}" if final else "")
        + ")"
    )


@config_command(
    app,
    TrainConfig,
    name="run",
    config_argument="YAML config (keys: model, data, out, peft, lr, ...).",
    only=(),
    base=KIND_DEFAULTS["run"],
)
def run(cfg: TrainConfig) -> None:
    """Multi-task fine-tuning (LoRA, QLoRA or full) with per-task loss balancing; resumable."""
    _train(cfg, "run")


@config_command(
    app, TrainConfig, name="sft", config_argument="YAML config; same keys as `run`.", only=(), base=KIND_DEFAULTS["sft"]
)
def sft(cfg: TrainConfig) -> None:
    """Single-task supervised fine-tuning: `run` with loss defaulting to token."""
    _train(cfg, "sft")


@config_command(
    app, TrainConfig, name="pretrain", only=("data", "model", "out", "text_max_mb"), base=KIND_DEFAULTS["pretrain"]
)
def pretrain(cfg: TrainConfig) -> None:
    """Continue pretraining on raw code: packed, loss on every token, full fine-tuning by default."""
    _train(cfg, "pretrain")


@config_command(app, LaunchConfig, generic=False)
def launch(cfg: LaunchConfig) -> None:
    """Train on several processes, GPUs or nodes through torchrun (DDP, DeepSpeed ZeRO-2/3, FSDP2)."""
    import subprocess

    from .launch import accelerate_equivalent, launch_env, shipped_strategy_files, torchrun_command

    cmd = torchrun_command(cfg)
    env = launch_env(cfg)
    if cfg.dry_run:
        import shlex

        exports = " ".join(f"{k}={env[k]}" for k in ("MFT_STRATEGY", "MFT_EXPECTED_WORLD_SIZE", "MFT_OFFLOAD"))
        typer.echo(f"{exports} {shlex.join(cmd)}")
        typer.echo(f"# GPU-only equivalent: {exports} {accelerate_equivalent(cfg)}")
        name = {"zero2": "zero2.json", "zero3": "zero3.json", "fsdp": "fsdp.yaml"}.get(cfg.strategy)
        if name:
            typer.echo(f"# strategy settings: {shipped_strategy_files()[name]}")
        return
    raise typer.Exit(subprocess.run(cmd, env=env).returncode)


def main() -> None:
    app()
