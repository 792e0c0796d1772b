"""``mft-train``: thin Typer commands over the library (torch is imported only inside commands)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from mft_core.config import build_config
from mft_core.ui import cli_errors, console, make_app

app = make_app(
    "Fine-tune code LLMs on several tasks at once with exact per-task loss balancing.\n\n"
    "init-base builds the tiny built-in base; pretrain continues pretraining on raw code; run/sft fine-tune."
)
ConfigOpt = Annotated[Optional[Path], typer.Option("--config", help="YAML file with this command's settings; flags win.")]


@app.command("init-base")
@cli_errors
def init_base_cmd(
    out: Annotated[str, typer.Option(help="Output model folder.")],
    family: Annotated[Optional[str], typer.Option(help="Model family (HF model_type) from MFT's family table.")] = None,
    preset: Annotated[Optional[str], typer.Option(help="Size preset: tiny|small|base.")] = None,
    seed: Annotated[Optional[int], typer.Option(help="Seed of the random initialisation.")] = None,
    vocab_size: Annotated[Optional[int], typer.Option(help="Tokenizer vocabulary (default from the preset).")] = None,
    overwrite: Annotated[Optional[bool], typer.Option("--overwrite", help="Replace --out if it exists.")] = None,
    config: ConfigOpt = None,
):
    """Build a randomly initialised model plus a tokenizer trained here on the stdlib source."""
    from .base_init import InitBaseConfig, init_base

    cfg = build_config(InitBaseConfig, config, dict(out=out, family=family, preset=preset, seed=seed,
                                                    vocab_size=vocab_size, overwrite=overwrite))
    path = init_base(cfg)
    console.print(f"[green]wrote[/] {path} ({cfg.family}, preset {cfg.preset})")


def main() -> None:
    app()
