"""``mft-train``: thin Typer commands over the library (torch is imported only inside commands)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from mft_core.config import build_config
from mft_core.ui import cli_errors, console, make_app

from .config import KIND_DEFAULTS

app = make_app(
    "Fine-tune code LLMs on several tasks at once with exact per-task loss balancing.\n\n"
    "init-base builds the tiny built-in base; pretrain continues pretraining on raw code; run/sft fine-tune."
)
ConfigOpt = Annotated[Path | None, typer.Option("--config", help="YAML file with this command's settings; flags win.")]


@app.command("init-base")
@cli_errors
def init_base_cmd(
    out: Annotated[str, typer.Option(help="Output model folder.")],
    family: Annotated[str | None, typer.Option(help="Model family (HF model_type) from MFT's family table.")] = None,
    preset: Annotated[str | None, typer.Option(help="Size preset: tiny|small|base.")] = None,
    seed: Annotated[int | None, typer.Option(help="Seed of the random initialisation.")] = None,
    vocab_size: Annotated[int | None, typer.Option(help="Tokenizer vocabulary (default from the preset).")] = None,
    overwrite: Annotated[bool | None, typer.Option("--overwrite", help="Replace --out if it exists.")] = None,
    config: ConfigOpt = None,
):
    """Build a randomly initialised model plus a tokenizer trained here on the stdlib source."""
    from .base_init import InitBaseConfig, init_base

    cfg = build_config(
        InitBaseConfig,
        config,
        dict(out=out, family=family, preset=preset, seed=seed, vocab_size=vocab_size, overwrite=overwrite),
    )
    path = init_base(cfg)
    console.print(f"[green]wrote[/] {path} ({cfg.family}, preset {cfg.preset})")


SetOpt = Annotated[list[str] | None, typer.Option("--set", help="Override a config key: --set lr=1e-4 (repeatable).")]


def _train(kind: str, config_file: Path | None, sets: list[str] | None, base: dict) -> None:
    from .api import train
    from .config import TrainConfig

    cfg = build_config(TrainConfig, config_file, sets=sets or (), base=base)
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


@app.command()
@cli_errors
def run(
    config: Annotated[Path, typer.Argument(help="YAML config (keys: model, data, out, peft, lr, ...).")],
    sets: SetOpt = None,
):
    """Multi-task fine-tuning (LoRA, QLoRA or full) with per-task loss balancing; resumable."""
    _train("run", config, sets, KIND_DEFAULTS["run"])


@app.command()
@cli_errors
def sft(
    config: Annotated[Path, typer.Argument(help="YAML config; same keys as `run`.")],
    sets: SetOpt = None,
):
    """Single-task supervised fine-tuning: `run` with loss defaulting to token."""
    _train("sft", config, sets, KIND_DEFAULTS["sft"])


@app.command()
@cli_errors
def pretrain(
    data: Annotated[str, typer.Option(help="Raw text/code files or folders (comma-separated).")],
    model: Annotated[str, typer.Option(help="Model folder to continue from.")],
    out: Annotated[str, typer.Option(help="Output folder (the model lands in OUT/model).")],
    max_mb: Annotated[float | None, typer.Option(help="Read at most this many MB of the files (sorted order).")] = None,
    config: Annotated[Path | None, typer.Option("--config", help="YAML with more keys (same as run).")] = None,
    sets: SetOpt = None,
):
    """Continue pretraining on raw code: packed, loss on every token, full fine-tuning by default."""
    extra = [f"text_max_mb={max_mb}"] if max_mb is not None else []
    _train(
        "pretrain",
        config,
        (sets or []) + extra + [f"data={data}", f"model={model}", f"out={out}"],
        KIND_DEFAULTS["pretrain"],
    )


@app.command()
@cli_errors
def launch(
    config: Annotated[str, typer.Argument(help="YAML config, as for `run`.")],
    nproc: Annotated[int, typer.Option(help="Processes per node (one per GPU; on CPU, a few).")] = 1,
    strategy: Annotated[str, typer.Option(help="ddp | zero2 | zero3 | fsdp (FSDP2 fully_shard).")] = "ddp",
    nnodes: Annotated[int, typer.Option(help="Number of nodes.")] = 1,
    node_rank: Annotated[int, typer.Option(help="This node's rank (0 .. nnodes-1).")] = 0,
    master_addr: Annotated[str, typer.Option(help="Address of node 0.")] = "127.0.0.1",
    master_port: Annotated[int, typer.Option(help="Port on node 0.")] = 29500,
    offload: Annotated[
        str, typer.Option(help="DeepSpeed offload to CPU: none | optimizer | params | all (zero3).")
    ] = "none",
    kind: Annotated[
        str, typer.Option(help="run | sft | pretrain: which command's defaults (pretrain: data= raw files).")
    ] = "run",
    sets: SetOpt = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Print the torchrun (and accelerate) line, run nothing.")
    ] = False,
):
    """Train on several processes, GPUs or nodes through torchrun (DDP, DeepSpeed ZeRO-2/3, FSDP2)."""
    import subprocess

    from .launch import LaunchConfig, accelerate_equivalent, launch_env, torchrun_command

    cfg = LaunchConfig(
        config=config,
        strategy=strategy,
        nproc=nproc,
        nnodes=nnodes,
        node_rank=node_rank,
        master_addr=master_addr,
        master_port=master_port,
        offload=offload,
        kind=kind,
        sets=tuple(sets or ()),
    )
    cmd = torchrun_command(cfg)
    env = launch_env(cfg)
    if dry_run:
        import shlex

        exports = " ".join(f"{k}={env[k]}" for k in ("MFT_STRATEGY", "MFT_EXPECTED_WORLD_SIZE", "MFT_OFFLOAD"))
        typer.echo(f"{exports} {shlex.join(cmd)}")
        typer.echo(f"# GPU-only equivalent: {exports} {accelerate_equivalent(cfg)}")
        from .launch import shipped_strategy_files

        name = {"zero2": "zero2.json", "zero3": "zero3.json", "fsdp": "fsdp.yaml"}.get(cfg.strategy)
        if name:
            typer.echo(f"# strategy settings: {shipped_strategy_files()[name]}")
        return
    raise typer.Exit(subprocess.run(cmd, env=env).returncode)


def main() -> None:
    app()
