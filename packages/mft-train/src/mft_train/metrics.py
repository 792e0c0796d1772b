"""Where training numbers go: metrics.jsonl, TensorBoard, the terminal, and loss_per_task.png at the end."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


class MetricsLog:
    """Appends one JSON line per logged step or eval; on resume, lines after the checkpoint's step are dropped."""

    def __init__(self, out: Path, tb_dir: Path | None, resume_step: int | None, enabled: bool = True):
        self.path = out / "metrics.jsonl"
        self.enabled = enabled
        self.writer = None
        if not enabled:
            return
        if resume_step is None:
            self.path.write_text("")
        elif self.path.exists():
            kept = [
                line for line in self.path.read_text().splitlines() if line and json.loads(line)["step"] <= resume_step
            ]
            self.path.write_text("".join(line + "\n" for line in kept))
        if tb_dir is not None:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(tb_dir), purge_step=resume_step + 1 if resume_step is not None else None)

    def log(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        with self.path.open("a") as handle:
            handle.write(json.dumps(record) + "\n")
        if self.writer is None:
            return
        step = record["step"]
        for key, value in record.items():
            if key in ("step", "kind"):
                continue
            if isinstance(value, dict):
                for task, v in value.items():
                    if isinstance(v, (int, float)):  # counts like passed: [c, n] stay in metrics.jsonl
                        self.writer.add_scalar(f"{record['kind']}/{key}/{task}", v, step)
            elif isinstance(value, (int, float)) and value is not None:
                self.writer.add_scalar(f"{record['kind']}/{key}", value, step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def read_metrics(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def plot_loss_per_task(metrics_path: Path, out: Path, extra_panel: str | None = None) -> None:
    """Per-task train loss (lines) and valid loss (markers); a second panel for ``extra_panel`` (e.g. weights)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = read_metrics(metrics_path)
    train = [r for r in records if r["kind"] == "train"]
    evals = [r for r in records if r["kind"] == "eval"]
    with_extra = bool(extra_panel) and any(extra_panel in r for r in records)
    passed = [r for r in evals if r.get("pass_at_1")]
    panels = 1 + with_extra + bool(passed)
    fig, axes = plt.subplots(1, panels, figsize=(7 * panels, 4.5), squeeze=False)
    ax = axes[0][0]
    tasks = sorted(
        {t for r in train for t in r.get("task_loss", {})} | {t for r in evals for t in r.get("task_loss", {})}
    )
    for i, task in enumerate(tasks):
        color = f"C{i % 10}"
        pts = [(r["step"], r["task_loss"][task]) for r in train if r.get("task_loss", {}).get(task) is not None]
        if pts:
            ax.plot(*zip(*pts), color=color, alpha=0.8, label=f"{task} train")
        pts = [(r["step"], r["task_loss"][task]) for r in evals if r.get("task_loss", {}).get(task) is not None]
        if pts:
            ax.plot(*zip(*pts), color=color, marker="o", linestyle="--", label=f"{task} valid")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (token mean per task)")
    ax.set_title("loss per task")
    ax.legend(fontsize=8)
    if passed:  # execution metrics while training (eval_problems): pass@1 per problem set
        ax3 = axes[0][panels - 1]
        for i, name in enumerate(sorted({n for r in passed for n in r["pass_at_1"]})):
            pts = [(r["step"], 100 * r["pass_at_1"][name]) for r in passed if r["pass_at_1"].get(name) is not None]
            if pts:
                ax3.plot(*zip(*pts), color=f"C{i % 10}", marker="o", label=name)
        ax3.set_xlabel("step")
        ax3.set_ylabel("pass@1 (%)")
        ax3.set_title("pass@1 per problem set (greedy)")
        ax3.legend(fontsize=8)
    if with_extra and extra_panel:
        ax2 = axes[0][1]
        rows = [r for r in records if extra_panel in r]
        for i, task in enumerate(tasks):
            pts = [(r["step"], r[extra_panel][task]) for r in rows if task in r[extra_panel]]
            if pts:
                ax2.plot(*zip(*pts), color=f"C{i % 10}", label=task)
        ax2.set_xlabel("step")
        ax2.set_title(extra_panel.replace("_", " "))
        ax2.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
