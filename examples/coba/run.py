"""CoBa vs the static `task` loss on three synthetic tasks of different size and difficulty.

Tasks (from the pipeline's demo generator): `explain` (many short answers: large and easy), `codegen` (medium),
`bugfix` (few records, long answers: small and hard). The same tiny model, data, seed and steps are trained twice,
`loss: task` with `task_weighting: static` and with `task_weighting: coba`; per-task valid losses are recorded at
every eval. Writes `examples/coba/coba_vs_task.png` and `examples/coba/results.json`, and prints the README table.

    python examples/coba/run.py [--steps 300] [--work runs/coba]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
HERE = Path(__file__).resolve().parent
DEV_SETS = ("numbers", "strings", "lists")
sys.path.insert(0, str(HERE.parent / "pipeline"))


def prepare(work: Path) -> Path:
    from demo_data import generate
    from mft_data.api import FormatConfig, SplitConfig, TokenizeConfig, format_task, split_folder, tokenize_folder
    from mft_train.base_init import InitBaseConfig, init_base

    base = init_base(InitBaseConfig(family="llama", preset="tiny", out=str(work / "base")))
    raw = work / "raw"
    if not (raw / "dev_lists.jsonl").exists():
        generate(raw, seed=3, n_codegen=600, n_explain=2400, n_bugfix=150, n_heldout=1, n_dev=10)
    for task, name in (
        ("explain", "explain.sharegpt.jsonl"),
        ("codegen", "codegen.alpaca.jsonl"),
        ("bugfix", "bugfix.openai.jsonl"),
    ):
        format_task(FormatConfig(inputs=(str(raw / name),), task=task, out=str(work / "data")))
    split_folder(SplitConfig(folder=str(work / "data"), valid_ratio=0.1, seed=0))
    tokenize_folder(TokenizeConfig(folder=str(work / "data"), tokenizer=str(base), out=str(work / "tok"), seq_len=256))
    return base


def train(work: Path, base: Path, mode: str, steps: int) -> Path:
    from mft_train.api import train as run
    from mft_train.config import TrainConfig

    out = work / mode
    run(
        TrainConfig(
            model=str(base),
            data=str(work / "tok"),
            out=str(out),
            loss="task",
            task_weighting="static" if mode == "task" else mode,
            lr=2e-3,
            peft="none",
            max_steps=steps,
            micro_batch_size=8,
            grad_accum=1,
            seq_len=256,
            eval_every=max(steps // 15, 1),
            log_every=5,
            warmup_steps=10,
            seed=0,
            coba_update_interval=5,
            coba_warmup_steps=10,
            coba_history_length=30,
            coba_sample_valid_num=4,
            # pass@1 on the codegen dev sets (one per family group) at every eval, next to the valid losses
            eval_problems={f"codegen-{g}": str(work / "raw" / f"dev_{g}.jsonl") for g in DEV_SETS},
            eval_problems_max_new_tokens=64,
        )
    )
    return out


def curves(out: Path) -> tuple[list[dict], list[dict]]:
    rows = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if r["kind"] == "eval"], [r for r in rows if r["kind"] == "balance"]


def mean_pass(record: dict) -> float:
    values = [v for v in record["pass_at_1"].values() if v is not None]
    return sum(values) / len(values)


def plot(runs: dict[str, tuple[list, list]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 4, figsize=(22, 4.6))
    tasks = sorted(runs["task"][0][-1]["task_loss"])
    for ax, mode in zip(axes[:2], ("task", "coba")):
        for i, task in enumerate(tasks):
            evals = runs[mode][0]
            ax.plot(
                [r["step"] for r in evals], [r["task_loss"][task] for r in evals], marker="o", color=f"C{i}", label=task
            )
        ax.set_title(f"valid loss per task: loss_mode={mode}")
        ax.set_xlabel("step")
        ax.legend()
    share = min(a.get_ylim()[0] for a in axes[:2]), max(a.get_ylim()[1] for a in axes[:2])
    for ax in axes[:2]:
        ax.set_ylim(*share)
    weights = runs["coba"][1]
    for i, task in enumerate(tasks):
        axes[2].plot(
            [r["step"] for r in weights], [r["task_weights"][task] for r in weights], color=f"C{i}", label=task
        )
    axes[2].set_title("CoBa task weights")
    axes[2].set_xlabel("step")
    axes[2].legend()
    for mode, style in (("task", "--"), ("coba", "-")):
        evals = [r for r in runs[mode][0] if r.get("pass_at_1")]
        axes[3].plot([r["step"] for r in evals], [100 * mean_pass(r) for r in evals], style, marker="o", label=mode)
    axes[3].set_title("codegen dev pass@1 (mean of 3 sets, greedy)")
    axes[3].set_xlabel("step")
    axes[3].set_ylabel("%")
    axes[3].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--work", type=Path, default=HERE.parents[1] / "runs" / "coba")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    base = prepare(args.work)
    runs = {mode: curves(train(args.work, base, mode, args.steps)) for mode in ("task", "coba")}
    plot(runs, HERE / "coba_vs_task.png")
    results = {}
    for mode, (evals, _) in runs.items():
        final = evals[-1]["task_loss"]
        values = list(final.values())
        passed = [r for r in evals if r.get("pass_at_1")]
        results[mode] = {
            "final_valid": final,
            "mean": sum(values) / len(values),
            "worst": max(values),
            "gap": max(values) - min(values),
            "final_pass_at_1": passed[-1]["pass_at_1"],
            "final_pass_at_1_mean": mean_pass(passed[-1]),
            "best_pass_at_1_mean": max(mean_pass(r) for r in passed),
            "pass_at_1_curve": [[r["step"], round(mean_pass(r), 4)] for r in passed],
            "seconds_per_problem_eval": sum(r["problems_seconds"] for r in passed) / len(passed),
        }
    results["settings"] = {"steps": args.steps, "preset": "tiny", "seq_len": 256, "micro_batch_size": 8, "seed": 0}
    (HERE / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    tasks = sorted(results["task"]["final_valid"])
    sets = [f"codegen-{g}" for g in DEV_SETS]
    print("| loss_mode | " + " | ".join(tasks) + " | mean | worst | gap (worst - best) | "
          + " | ".join(f"pass@1 {n}" for n in sets) + " | pass@1 mean (best) |")  # fmt: skip
    print("|---|" + "---|" * (len(tasks) + 4 + len(sets)))
    for mode in ("task", "coba"):
        r = results[mode]
        print(
            f"| {mode} | "
            + " | ".join(f"{r['final_valid'][t]:.4f}" for t in tasks)
            + f" | {r['mean']:.4f} | {r['worst']:.4f} | {r['gap']:.4f} | "
            + " | ".join(f"{100 * r['final_pass_at_1'][n]:.0f} %" for n in sets)
            + f" | {100 * r['final_pass_at_1_mean']:.1f} % ({100 * r['best_pass_at_1_mean']:.1f} %) |"
        )


if __name__ == "__main__":
    main()
