"""``mft-merge``: a thin Typer command over :func:`mft_merge.api.merge`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from mft_core.config import build_config
from mft_core.ui import cli_errors, console, make_app

from .config import MergeConfig

app = make_app("Merge a LoRA adapter into its base: a standalone Hugging Face model, streamed and verified.")


@app.command()
@cli_errors
def main_cmd(
    adapter: Annotated[str, typer.Argument(help="An mft-train output folder, or a PEFT adapter folder.")],
    out: Annotated[str | None, typer.Option(help="Output model folder (written atomically).")] = None,
    base: Annotated[str | None, typer.Option(help="Base model folder; default: the one the adapter names.")] = None,
    dtype: Annotated[str | None, typer.Option(help="auto|bf16|fp16|fp32 (auto: the base's dtype).")] = None,
    max_shard_size: Annotated[str | None, typer.Option(help="Largest output shard, e.g. 5GB, 500MB.")] = None,
    verify: Annotated[
        str | None, typer.Option(help="auto|logits|layers|none (auto: logits if two copies fit in memory).")
    ] = None,
    no_verify: Annotated[bool, typer.Option("--no-verify", help="Skip verification (same as --verify none).")] = False,
    simulate_nf4: Annotated[
        bool | None,
        typer.Option("--simulate-nf4", help="Round base weights through nf4 first, as a QLoRA adapter saw them."),
    ] = None,
    overwrite: Annotated[bool | None, typer.Option("--overwrite", help="Replace --out if it exists.")] = None,
    config: Annotated[Path | None, typer.Option("--config", help="YAML with these settings; flags win.")] = None,
):
    """Merge ADAPTER into its base model and check the result against base + adapter."""
    from .api import merge

    cfg = build_config(
        MergeConfig,
        config,
        dict(
            adapter=adapter,
            out=out,
            base=base,
            dtype=dtype,
            max_shard_size=max_shard_size,
            verify="none" if no_verify else verify,
            simulate_nf4=simulate_nf4,
            overwrite=overwrite,
        ),
    )
    result = merge(cfg)
    if result.up_to_date:
        console.print(f"[green]up to date[/]: {result.out} (same adapter, base and settings)")
        return
    v = result.summary["verification"]
    check = (
        "not verified"
        if v["check"] == "none"
        else (
            f"verified by {v['check']}: max diff {v['max_abs_diff']:.2e} (tolerance {v['tolerance']:g})"
            + (f", greedy agreement {v['token_agreement']:.0%}" if v.get("token_agreement") is not None else "")
        )
    )
    console.print(
        f"[green]wrote[/] {result.out}: {result.summary['merged_tensors']} tensors merged, "
        f"{result.summary['shards']} shard(s), {result.summary['dtype']}; {check}"
    )


def main() -> None:
    app()
