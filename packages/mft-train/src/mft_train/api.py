"""mft-train's library API: ``train(cfg)`` for run/sft/pretrain, in three phases (torchtune's recipe shape):

- setup (:func:`session.setup`): data, objective, model, engine, checkpointer, the state to start from;
- loop (:func:`_loop`): the training loop with its hooks (step log, evaluation, balancing, checkpoints);
- finish (:func:`_finish`): the final weights, metrics plot, summary, and the manifest last.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from mft_core.artifacts import model_fingerprint
from mft_core.manifest import write_manifest
from mft_core.ui import progress

from . import dist
from .balancer import Balancer, BalanceSettings
from .checkpoint import TrainState
from .config import TrainConfig
from .evaluation import Evaluator, ValidSet
from .launch import check_launch_environment
from .loop import Hooks, run_loop
from .metrics import MetricsLog, plot_loss_per_task, read_metrics
from .order import sampling_record
from .output import plan_output, save_weights
from .problem_eval import ProblemSets
from .reporting import StepLogger
from .session import Session, setup

Kind = Literal["run", "sft", "pretrain"]


@dataclass
class TrainResult:
    out: Path
    summary: dict
    up_to_date: bool = False

    @property
    def output_dir(self) -> Path:  # the old name, for callers written before `out`
        return self.out


@dataclass(kw_only=True)
class LoopOutcome:
    state: TrainState
    evaluator: Evaluator | None
    log: MetricsLog


def train(cfg: TrainConfig, kind: Kind = "run") -> TrainResult:
    """Train as configured; resumable; returns the output folder and its summary."""
    started = time.time()
    check_launch_environment()
    plan = plan_output(cfg, kind)
    finished = plan.finished(cfg.resume)
    if finished is not None:
        return TrainResult(plan.out, finished.summary, up_to_date=True)
    session = setup(cfg, kind, plan)
    outcome = _loop(session)
    return _finish(session, outcome, time.time() - started)


def _loop(s: Session) -> LoopOutcome:
    cfg, engine, parts = s.cfg, s.engine, s.parts
    out = s.plan.out
    tb_dir = Path(cfg.tb_dir) if cfg.tb_dir else out / "tb"
    log = MetricsLog(out, tb_dir, s.state.step if s.resumed_from else None, enabled=dist.is_main())
    valid = evaluator = None
    if s.data.valid is not None:
        valid = ValidSet(
            rows=s.data.valid,
            tasks=s.data.tasks,
            micro_batch_size=cfg.micro_batch_size,
            pad_id=parts.pad_id,
            bf16=cfg.bf16,
            objective=s.objective,
        )
    problems = ProblemSets.load(cfg, s.plan.model_dir, s.tokenizer, out)
    if valid is not None or problems is not None:
        evaluator = Evaluator(
            valid=valid,
            problems=problems,
            model=engine.model,
            log=log,
            save_best=lambda: save_weights(engine, s.tokenizer, out / "best"),
            patience=cfg.early_stop_patience,
            select_by=cfg.select_by,
            valid_every=cfg.eval_every,
            problems_every=cfg.eval_problems_every or cfg.eval_every,
        )
    balancer = None
    if s.objective.balancing:
        balancer = Balancer(
            settings=BalanceSettings.of(cfg), valid=valid, model=engine.model, parts=parts, state=s.state, log=log
        )
    with progress() as bar:
        main = dist.is_main()
        steps = StepLogger(
            log=log,
            log_every=cfg.log_every,
            total_steps=parts.total_steps,
            lr=lambda: engine.scheduler.get_last_lr()[0],
            bar=bar if main else None,
            bar_task=bar.add_task("train", total=parts.total_steps, completed=s.state.step, info="") if main else None,
        )
        hooks = Hooks(
            on_step=steps.on_step,
            on_eval=evaluator.on_eval if evaluator is not None else lambda state: False,
            on_save=lambda state: s.checkpointer.save(engine, state),
            eval_due=evaluator.due if evaluator is not None else lambda step: False,
            save_every=cfg.save_every,
            after_step=balancer.after_step if balancer is not None else lambda state: None,
        )
        state = run_loop(parts, s.state, hooks)
    if evaluator is not None and (evaluator.last is None or evaluator.last["step"] != state.step):
        evaluator.on_eval(state, final=True)  # the final weights are always evaluated
    return LoopOutcome(state=state, evaluator=evaluator, log=log)


def _finish(s: Session, outcome: LoopOutcome, wall: float) -> TrainResult:
    out = s.plan.out
    save_weights(s.engine, s.tokenizer, out / s.plan.final_dir)
    outcome.log.close()
    summary = _summary(s, outcome, wall)
    if dist.is_main():
        plot_loss_per_task(out / "metrics.jsonl", out / "loss_per_task.png", extra_panel="task_weights")
        write_manifest(out, s.plan.manifest(summary))  # same recorded settings and inputs as the up-to-date check
    dist.barrier()
    return TrainResult(out, summary)


def _shown_score(select_by: str, score: float | None) -> float | None:
    """best_score as the user reads it (pass@1 is stored negated so that lower is better)."""
    if score is None or not math.isfinite(score):
        return None
    return -score if select_by.startswith("pass@1") else score


def _problems_cost(out: Path) -> dict:
    """What in-training evaluation cost: seconds per problem evaluation against seconds per training step."""
    records = read_metrics(out / "metrics.jsonl")
    evals = [r["problems_seconds"] for r in records if r["kind"] == "eval" and "problems_seconds" in r]
    steps = [r["seconds_per_step"] for r in records if r["kind"] == "train" and "seconds_per_step" in r]
    seconds_per_step = sum(steps) / len(steps) if steps else None
    mean_eval = sum(evals) / len(evals) if evals else None
    return {
        "evaluations": len(evals),
        "seconds_per_evaluation": round(mean_eval, 3) if mean_eval is not None else None,
        "seconds_per_step": round(seconds_per_step, 4) if seconds_per_step else None,
        "evaluation_in_steps": round(mean_eval / seconds_per_step, 1) if mean_eval and seconds_per_step else None,
    }


def _summary(s: Session, outcome: LoopOutcome, wall: float) -> dict:
    out, state, objective = s.plan.out, outcome.state, s.objective
    train_rows = [r for r in read_metrics(out / "metrics.jsonl") if r["kind"] == "train"]
    paths = {s.plan.final_dir: s.plan.final_dir}
    if (out / "best").is_dir():
        paths["best"] = "best"
    base = str(s.plan.model_dir.resolve())
    return {
        "paths": paths,
        "base_model": base,
        "base_model_sha256": model_fingerprint(s.plan.model_dir),
        "peft": s.cfg.peft,
        "tasks": list(s.data.tasks),
        "loss": objective.loss,
        "task_weighting": objective.weighting,
        "loss_mode": objective.legacy_loss_mode,  # the old single word, for readers of older summaries
        "steps": state.step,
        "total_steps": s.parts.total_steps,
        "stopped_early": state.stopped_early,
        "tokens_seen": state.tokens_seen,
        "supervised_tokens_per_task": state.task_tokens,
        "task_sampling": sampling_record(s.parts.order, state.step, s.parts.global_batch),
        "final_train": train_rows[-1] if train_rows else None,
        "final_eval": outcome.evaluator.last if outcome.evaluator is not None else None,
        "best_valid": state.best_valid if state.best_valid is None or math.isfinite(state.best_valid) else None,
        "best_step": state.best_step,
        "select_by": s.cfg.select_by,
        "best_score": _shown_score(s.cfg.select_by, state.best_score),
        "problems_eval": _problems_cost(out) if s.cfg.eval_problems else None,
        "wall_seconds": round(wall, 1),
        "tokenized_data": {"path": str(s.data.path.resolve()), "manifest_id": s.data.manifest_id},
        "resolved": {
            "loss": objective.loss,
            "task_weighting": objective.weighting,
            "task_weights": dict(zip(s.data.tasks, objective.weights)),
            "tasks": list(s.data.tasks),
            "base_model": base,
        },
    }
