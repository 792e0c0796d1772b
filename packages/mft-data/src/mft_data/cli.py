"""``mft-data``: thin Typer commands over :mod:`mft_data.api`; their flags are generated from the config dataclasses
of :mod:`mft_data.config` (no torch import at start-up)."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from mft_core.cli_config import config_command
from mft_core.ui import console, labelled_bars, make_app
from rich.table import Table

from . import config as C

app = make_app(
    "Instruction data -> MFT's unified chat folders -> token datasets.\n\n"
    "Typical flow: format (once per task) -> validate -> decontaminate -> split -> tokenize."
)


@config_command(app, C.FormatConfig, name="format")
def format_cmd(cfg: C.FormatConfig) -> None:
    """Convert files of any common instruction format into DIR/<task>/data.jsonl (unified chat schema)."""
    from .api import format_task

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


@config_command(app, C.ValidateConfig)
def validate(cfg: C.ValidateConfig) -> None:
    """Check roles, empty answers, missing final answers, duplicates and lengths; one row per task."""
    from .api import validate_folder

    with labelled_bars("validate") as on_progress:
        result = validate_folder(cfg, on_progress)
    table = Table("task", "records", "problems", title=f"validate {cfg.folder}")
    for name, t in result.tasks.items():
        detail = ", ".join(f"{k}: {v}" for k, v in t.problems.items()) or "[green]none[/]"
        table.add_row(name, str(t.records), detail)
    console.print(table)
    for t in result.tasks.values():
        for example in t.examples:
            console.print(f"  [dim]{example}[/]")
    if cfg.report:
        Path(cfg.report).write_text(json.dumps(result.to_dict(), indent=2) + "\n", encoding="utf-8")
    if cfg.strict and not result.ok:
        console.print(f"[red]{result.problem_count} problems[/] (--strict)")
        raise typer.Exit(3)


@config_command(app, C.FromEvalConfig, name="from-eval")
def from_eval_cmd(cfg: C.FromEvalConfig) -> None:
    """Turn an mft-eval folder (samples + sandbox verdicts) into a task: passing samples (--mode sft) or
    (pass, fail) preference pairs of the same problem (--mode pairs); the eval folder is the task's recorded input."""
    from .api import from_eval

    result = from_eval(cfg)
    kind = "pairs" if cfg.mode == "pairs" else "records"
    status = ", ".join(f"{k}: {v}" for k, v in result.counts.items())
    console.print(
        f"[green]wrote[/] {result.folder}/{result.task}/data.jsonl: {result.records} {kind} from {result.problems} "
        f"problems (samples {status})"
        + (
            f", [yellow]{result.dropped_contaminated} dropped as HumanEval-contaminated[/]"
            if result.dropped_contaminated
            else ""
        )
    )
    if cfg.allow_benchmark:
        console.print("[bold red]benchmark data[/]: this task holds HumanEval problems; the manifest records it")


@config_command(app, C.DecontamConfig)
def decontaminate(cfg: C.DecontamConfig) -> None:
    """Remove (or flag) records sharing a word n-gram with HumanEval prompts or canonical solutions."""
    from .api import decontaminate as run

    with labelled_bars("decontaminate") as on_progress:
        report = run(cfg, on_progress)
    if report.up_to_date:
        console.print(f"[green]up to date[/]: {cfg.folder} was already decontaminated with these settings")
    for task, hits in report.matched.items():
        shown = ", ".join(list(hits)[:10]) + (" ..." if len(hits) > 10 else "")
        console.print(
            f"{task}: {len(hits)} {'dropped' if cfg.mode == 'drop' else 'flagged'}" + (f" ({shown})" if hits else "")
        )


@config_command(app, C.SplitConfig)
def split(cfg: C.SplitConfig) -> None:
    """Deterministic per-task train/valid split, at least one valid record per task of two or more."""
    from .api import split_folder

    report = split_folder(cfg)
    if report.up_to_date:
        console.print(f"[green]up to date[/]: {cfg.folder} is already split with these settings")
    for task, (train_n, valid_n) in report.counts.items():
        console.print(f"{task}: train {train_n}, valid {valid_n}")


@config_command(app, C.TokenizeConfig)
def tokenize(cfg: C.TokenizeConfig) -> None:
    """Render with the chat template, mask everything but assistant answers + EOS, pack, save."""
    from .api import tokenize_folder

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


@config_command(app, C.StatsConfig)
def stats(cfg: C.StatsConfig) -> None:
    """Per-task record counts and length distribution; --plot for a picture."""
    from .api import stats as run

    result = run(cfg)
    unit = result["unit"]
    table = Table("task", "records", f"mean {unit}", "p50", "p90", "max", f"total {unit}", title=f"stats {cfg.folder}")
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
    console.print(_sampling_table(result["sampling"], unit))
    for task, s in result["tasks"].items():
        console.print(_histogram_table(task, unit, s["histogram"]))


def _sampling_table(sampling: dict, unit: str) -> Table:
    """The train split per task: records, tokens and share of training tokens, as is and under --sample."""
    title = f"training share (train split), sampled by {sampling['by']} with seed {sampling['seed']}"
    table = Table("task", "ratio", "records", unit, "share", "sampled records", f"sampled {unit}", "sampled share",
                  title=title)  # fmt: skip
    for task, s in sampling["tasks"].items():
        table.add_row(
            task,
            f"{sampling['ratios'][task]:g}",
            str(s["records"]),
            str(s["tokens"]),
            f"{100 * s['share']:.1f}%",
            str(s["sampled_records"]),
            str(s["sampled_tokens"]),
            f"{100 * s['sampled_share']:.1f}%",
        )
    return table


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
