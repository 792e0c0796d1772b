"""``mft-quant``: thin Typer commands over :mod:`mft_quant.api`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from mft_core.config import build_config
from mft_core.ui import cli_errors, console, make_app
from rich.table import Table

app = make_app("Quantize a model to 4-bit GPTQ (GPTQModel), calibrated on your own chat data, with a quality gate.")


@app.callback()
def _group() -> None:
    """Keeps `gptq` a named subcommand (room for other methods later)."""


@app.command()
@cli_errors
def gptq(
    model: Annotated[str, typer.Argument(help="A model folder (e.g. the output of mft-merge).")],
    out: Annotated[str | None, typer.Option(help="Output GPTQ folder.")] = None,
    bits: Annotated[int | None, typer.Option(help="Bits per weight.")] = None,
    group_size: Annotated[int | None, typer.Option(help="Weights sharing one scale (-1: per channel).")] = None,
    desc_act: Annotated[
        bool | None, typer.Option("--desc-act/--no-desc-act", help="Quantize columns by decreasing activation.")
    ] = None,
    sym: Annotated[bool | None, typer.Option("--sym/--asym", help="Symmetric quantization.")] = None,
    damp: Annotated[float | None, typer.Option(help="Hessian dampening (share of the mean diagonal).")] = None,
    calib: Annotated[str | None, typer.Option(help="Formatted data folder (mft-data format) to calibrate on.")] = None,
    calib_samples: Annotated[int | None, typer.Option(help="Calibration records, drawn evenly across tasks.")] = None,
    calib_seq_len: Annotated[int | None, typer.Option(help="Longest calibration sample in tokens.")] = None,
    device: Annotated[str | None, typer.Option(help="auto|cpu|cuda")] = None,
    max_ppl_increase: Annotated[
        float | None, typer.Option(help="Exit 1 if held-out perplexity rises more than this (relative).")
    ] = None,
    eval_humaneval: Annotated[
        bool | None, typer.Option("--eval-humaneval", help="Also run mft-eval on both models and report Δpass@1.")
    ] = None,
    overwrite: Annotated[bool | None, typer.Option("--overwrite", help="Replace --out if it exists.")] = None,
    config: Annotated[Path | None, typer.Option("--config", help="YAML with these settings; flags win.")] = None,
):
    """GPTQ-quantize MODEL; report per-task perplexity, full precision vs quantized."""
    from .api import quantize_gptq
    from .config import GPTQConfig

    cfg = build_config(
        GPTQConfig,
        config,
        dict(
            model=model,
            out=out,
            bits=bits,
            group_size=group_size,
            desc_act=desc_act,
            sym=sym,
            damp=damp,
            calib=calib,
            calib_samples=calib_samples,
            calib_seq_len=calib_seq_len,
            device=device,
            max_ppl_increase=max_ppl_increase,
            eval_humaneval=eval_humaneval,
            overwrite=overwrite,
        ),
    )
    try:
        result = quantize_gptq(cfg)
    except Exception as exc:
        from mft_core.errors import QualityGateError

        if isinstance(exc, QualityGateError):
            _report(cfg.out)
        raise
    _report(result.out, up_to_date=result.up_to_date)


def _report(out: str | Path, up_to_date: bool = False) -> None:
    from mft_core.manifest import read_manifest

    summary = read_manifest(out, "quantized-model").summary
    quality = summary["quality"]
    table = Table("task", "ppl fp", "ppl 4-bit", "increase", title=f"GPTQ {summary['settings']} -> {out}")
    for task, row in quality["perplexity"].items():
        table.add_row(task, f"{row['fp']:.3f}", f"{row['quantized']:.3f}", f"{row['increase']:+.2%}")
    console.print(table)
    if "humaneval" in quality:
        h = quality["humaneval"]
        console.print(
            f"HumanEval pass@1: fp {h['fp']:.2f}, quantized {h['quantized']:.2f} (Δ {h['delta_pass@1']:+.2f})"
        )
    cal = summary["calibration"]
    console.print(
        f"calibration: {cal['samples']} samples from {cal['source']}"
        + (f" ({', '.join(f'{k}: {v}' for k, v in cal['tasks'].items())})" if cal["tasks"] else "")
    )
    if up_to_date:
        console.print(f"[green]up to date[/]: {out}")


def main() -> None:
    app()
