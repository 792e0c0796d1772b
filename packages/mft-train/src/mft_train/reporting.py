"""The loop's step hook: progress bar, and one metrics line per ``log_every`` steps (main rank writes)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from .checkpoint import TrainState
from .loop import StepResult
from .metrics import MetricsLog


@dataclass(kw_only=True)
class StepLogger:
    log: MetricsLog
    log_every: int
    total_steps: int
    lr: Callable[[], float]  # the learning rate of the step just taken
    bar: object | None = None  # a rich Progress on the main rank, None elsewhere
    bar_task: int | None = None

    def on_step(self, state: TrainState, r: StepResult) -> None:
        # the window lives in the state: a resumed run's first line averages the same steps as an uninterrupted one
        state.log_window.append(
            {
                "loss": r.loss,
                "task_loss": dict(r.task_loss),
                "seconds": r.seconds,
                "real_tokens": r.real_tokens,
                "grad_norm": r.grad_norm,
                **({"rewards": r.rewards} if r.rewards is not None else {}),
            }
        )
        for task, n in r.task_tokens.items():
            state.task_tokens[task] = state.task_tokens.get(task, 0) + n
        if self.bar is not None:
            losses = " ".join(f"{t}={v:.3f}" for t, v in r.task_loss.items() if v is not None)
            self.bar.update(
                self.bar_task,
                completed=state.step,
                info=f"loss {r.loss:.4f} | {losses} | {r.real_tokens / max(r.seconds, 1e-9):,.0f} tok/s",
            )
        if state.step % max(self.log_every, 1) == 0 or state.step == self.total_steps:
            window = state.log_window
            seconds = sum(x["seconds"] for x in window)
            self.log.log(
                {
                    "kind": "train",
                    "step": state.step,
                    "loss": sum(x["loss"] for x in window) / len(window),
                    "task_loss": mean_task_loss(window),
                    "lr": self.lr(),
                    "grad_norm": window[-1]["grad_norm"],
                    "tokens_per_s": sum(x["real_tokens"] for x in window) / max(seconds, 1e-9),
                    "seconds_per_step": seconds / len(window),
                    "tokens_seen": state.tokens_seen,
                    **({"rewards": mean_rewards(window)} if "rewards" in window[-1] else {}),
                }
            )
            state.log_window = []


def mean_task_loss(window: list[dict]) -> dict[str, float | None]:
    out = {}
    for task in window[0]["task_loss"]:
        values = [r["task_loss"][task] for r in window if r["task_loss"][task] is not None]
        out[task] = sum(values) / len(values) if values else None
    return out


def mean_rewards(window: list[dict]) -> dict[str, dict[str, float]]:
    """Per task, margin and accuracy weighted by pairs over the window's steps, and the pairs seen."""
    out: dict[str, dict[str, float]] = {}
    for entry in window:
        for task, r in entry["rewards"].items():
            acc = out.setdefault(task, {"margin": 0.0, "accuracy": 0.0, "pairs": 0})
            acc["margin"] += r["margin"] * r["pairs"]
            acc["accuracy"] += r["accuracy"] * r["pairs"]
            acc["pairs"] += r["pairs"]
    return {t: {"margin": a["margin"] / a["pairs"], "accuracy": a["accuracy"] / a["pairs"], "pairs": a["pairs"]}
            for t, a in out.items()}  # fmt: skip
