"""``mft-quant``: thin Typer commands over :mod:`mft_quant.api`, their flags generated from :mod:`mft_quant.config`."""

from __future__ import annotations

from pathlib import Path

from mft_core.cli_config import config_command
from mft_core.ui import console, make_app
from rich.table import Table

from .config import GPTQConfig

app = make_app("Quantize a model to 4-bit GPTQ (GPTQModel), calibrated on your own chat data, with a quality gate.")


@app.callback()
def _group() -> None:
    """Keeps `gptq` a named subcommand (room for other methods later)."""


@config_command(app, GPTQConfig)
def gptq(cfg: GPTQConfig) -> None:
    """GPTQ-quantize MODEL; gate on held-out answer tokens (NLL, top-1 agreement), full precision vs quantized."""
    from .api import quantize_gptq

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
    table = Table(
        "task",
        "answer NLL fp",
        "quantized",
        "Δ nats",
        "top-1 agree",
        "ppl fp (all tokens)",
        "quantized",
        "increase",
        title=f"GPTQ {summary['settings']} -> {out}",
    )
    for task, ppl in quality["perplexity"].items():
        row = quality["answer_nll"].get(task, {})
        agree = quality["agreement"].get(task)
        table.add_row(
            task,
            _num(row.get("fp"), ".3f"),
            _num(row.get("quantized"), ".3f"),
            _num(row.get("increase"), "+.3f"),
            _num(agree, ".1%"),
            _num(ppl["fp"], ".3f"),
            _num(ppl["quantized"], ".3f"),
            _num(ppl["increase"], "+.2%"),
        )
    console.print(table)
    gate = quality["gate"]
    console.print(
        f"gate: answer NLL Δ ≤ {gate['max_nll_increase']:g} nats, top-1 agreement ≥ {gate['min_agreement']:.0%}"
        + (f", ppl increase ≤ {gate['max_ppl_increase']:.0%}" if gate.get("max_ppl_increase") is not None else "")
        + (" -> [green]passed[/]" if quality["passed"] else " -> [red]failed[/]: " + "; ".join(quality["failures"]))
    )
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


def _num(x: float | None, spec: str) -> str:
    return "-" if x is None else format(x, spec)


def main() -> None:
    app()
