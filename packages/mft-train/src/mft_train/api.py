"""mft-train's library API: ``train(cfg)`` for run/sft/pretrain.

Sets up (data, model, optimizer, engine), resumes, hands the loop its hooks, and writes the final output
(adapter or model, tokenizer, metrics, plot) with the manifest last.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from mft_core.artifacts import model_fingerprint
from mft_core.config import config_to_dict
from mft_core.errors import ConfigError
from mft_core.manifest import (
    InputRef,
    has_manifest,
    new_manifest,
    read_manifest,
    staged_dir,
    write_manifest,
    write_text_atomic,
)
from mft_core.ui import console, progress

from . import __version__, dist
from .checkpoint import TrainState, find_resume, list_checkpoints
from .config import TrainConfig
from .data import load_data, prepare_data
from .engine import make_optimizer
from .loop import Hooks, LoopParts, evaluate, mean_valid, run_loop, total_steps_for
from .metrics import MetricsLog, plot_loss_per_task
from .modeling import base_model_dir, load_model, load_tokenizer
from .schedule import make_scheduler

Kind = Literal["run", "sft", "pretrain"]


@dataclass
class TrainResult:
    output_dir: Path
    summary: dict
    up_to_date: bool = False


def resolve_loss_mode(cfg: TrainConfig, tasks: tuple[str, ...]) -> str:
    if cfg.loss_mode != "auto":
        return cfg.loss_mode
    return "task" if len(tasks) > 1 else "token"


def loss_of(mode: str) -> str:
    """The loss the step computes: convergence balancing is the `task` loss with weights that move."""
    return "task" if mode in ("coba", "selfpaced") else mode


def task_weight_tensor(cfg: TrainConfig, tasks: tuple[str, ...]) -> torch.Tensor:
    unknown = sorted(set(cfg.task_weights) - set(tasks))
    if unknown:
        raise ConfigError(
            f"task_weights names unknown tasks: {', '.join(unknown)}", fix=f"tasks are: {', '.join(tasks)}"
        )
    return torch.tensor([float(cfg.task_weights.get(t, 1.0)) for t in tasks], dtype=torch.float64)


def _check_output_dir(out: Path, fingerprint: str, cfg: TrainConfig) -> bool:
    """True when ``out`` already holds this exact finished run; errors on a clash."""
    if has_manifest(out):
        manifest = read_manifest(out)
        if manifest.fingerprint == fingerprint:
            return True
        raise ConfigError(
            f"{out} holds a finished run made with another config or inputs",
            fix="choose another output_dir, or delete that folder",
        )
    if cfg.resume == "none" and list_checkpoints(out):
        raise ConfigError(
            f"{out} has checkpoints of an unfinished run",
            fix="--set resume=auto to continue it, or choose another output_dir",
        )
    return False


class _Reporter:
    """Progress bar, metrics and evaluation hooks for the loop (main rank prints and writes)."""

    def __init__(self, cfg, parts, model, valid, tokenizer, out: Path, log: MetricsLog, bar, bar_task):
        self.cfg, self.parts, self.model, self.valid = cfg, parts, model, valid
        self.tokenizer, self.out, self.log, self.bar, self.bar_task = tokenizer, out, log, bar, bar_task
        self.last_eval: dict | None = None

    def on_step(self, state: TrainState, r) -> None:
        state.log_window.append(
            {
                "loss": r.loss,
                "task_loss": dict(r.task_loss),
                "seconds": r.seconds,
                "real_tokens": r.real_tokens,
                "grad_norm": r.grad_norm,
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
        if state.step % max(self.cfg.log_every, 1) == 0 or state.step == self.parts.total_steps:
            window = state.log_window
            seconds = sum(x["seconds"] for x in window)
            self.log.log(
                {
                    "kind": "train",
                    "step": state.step,
                    "loss": sum(x["loss"] for x in window) / len(window),
                    "task_loss": _mean_task_loss(window),
                    "lr": self.parts.engine.scheduler.get_last_lr()[0],
                    "grad_norm": window[-1]["grad_norm"],
                    "tokens_per_s": sum(x["real_tokens"] for x in window) / max(seconds, 1e-9),
                    "tokens_seen": state.tokens_seen,
                }
            )
            state.log_window = []

    def on_eval(self, state: TrainState) -> bool:
        if self.valid is None:
            return False
        task_loss = evaluate(
            self.model, self.valid, self.parts.tasks, self.cfg.micro_batch_size, self.parts.pad_id, self.cfg.bf16
        )
        mean = mean_valid(task_loss)
        self.last_eval = {"step": state.step, "mean": mean, "task_loss": task_loss}
        self.log.log({"kind": "eval", "step": state.step, "loss": mean, "task_loss": task_loss})
        if state.best_valid is None or mean < state.best_valid:
            state.best_valid, state.best_step, state.bad_evals = mean, state.step, 0
            save_weights(self.parts.engine, self.tokenizer, self.out / "best", self.cfg)
        else:
            state.bad_evals += 1
        stop = bool(self.cfg.early_stop_patience) and state.bad_evals >= self.cfg.early_stop_patience
        if stop and dist.is_main():
            console.print(f"early stop at step {state.step}: no better mean valid loss for {state.bad_evals} evals")
        return stop


def _row_tasks(rows, i: int) -> set[int]:
    """The tasks with supervised targets in row ``i`` (targets are the labels shifted by one)."""
    from .loss import IGNORE

    supervised = rows.get("labels", i)[1:] != IGNORE
    return set(rows.get("task_ids", i)[1:][supervised].tolist())


class _Balancer:
    """Convergence balancing (loss_mode coba | selfpaced): every ``coba_update_interval`` steps measures the
    per-task valid loss on one fixed set of valid rows (``coba_sample_valid_num`` micro-batches, chosen once with
    the seed; the same rows gave ``L(0)``) and sets the task weights of the next steps from the loss slopes (see
    :mod:`balance`)."""

    def __init__(self, cfg: TrainConfig, parts: LoopParts, model, valid, state: TrainState, log: MetricsLog):
        from .balance import BalanceState, fixed_valid_rows

        if valid is None:
            raise ConfigError(
                f"loss_mode {cfg.loss_mode} needs a valid split to watch",
                fix="run `mft-data split DATA_DIR` before tokenizing",
            )
        self.cfg, self.parts, self.model, self.valid, self.log = cfg, parts, model, valid, log
        self.state = BalanceState(**state.balance) if state.balance else BalanceState()
        if self.state.weights:
            parts.task_weights = torch.tensor(self.state.weights, dtype=torch.float64)
        if self.state.valid_rows is None:
            size = min(cfg.micro_batch_size * cfg.coba_sample_valid_num, len(valid))  # shared by the ranks
            self.state.valid_rows = fixed_valid_rows(
                len(valid), size, cfg.seed, lambda i: _row_tasks(valid, i), len(parts.tasks)
            )
        if self.state.initial is None:
            initial = self._losses(self.state.valid_rows)
            missing = [t for t, v in zip(parts.tasks, initial) if v != v]
            if missing:
                raise ConfigError(
                    f"tasks without valid records: {', '.join(missing)}",
                    fix="split with a larger --valid-ratio so every task has valid records",
                )
            self.state.initial = initial
        state.balance = vars(self.state)

    def _losses(self, indices) -> list[float]:
        task_loss = evaluate(
            self.model,
            self.valid,
            self.parts.tasks,
            self.cfg.micro_batch_size,
            self.parts.pad_id,
            self.cfg.bf16,
            indices,
        )
        return [v if v is not None else float("nan") for v in task_loss.values()]

    def after_step(self, state: TrainState) -> None:
        from .balance import update_weights

        if state.step % self.cfg.coba_update_interval:
            return
        # the rows of L(0) again: a ratio L(t) / L(0) moves only when the model does
        self.state.losses.append(self._losses(self.state.valid_rows))
        weights = update_weights(
            self.state,
            self.cfg.loss_mode,
            self.cfg.coba_history_length,
            self.cfg.coba_warmup_steps,
            self.cfg.coba_tau,
            self.cfg.selfpaced_scale,
        )
        self.parts.task_weights = torch.tensor(weights, dtype=torch.float64)
        state.balance = vars(self.state)
        # every update is logged (not only on log_every steps): the weights are what the next steps train with
        self.log.log(
            {
                "kind": "balance",
                "step": state.step,
                "task_weights": dict(zip(self.parts.tasks, weights)),
                "valid_sample_loss": dict(zip(self.parts.tasks, self.state.losses[-1])),
            }
        )


def _mean_task_loss(window: list[dict]) -> dict[str, float | None]:
    out = {}
    for task in window[0]["task_loss"]:
        values = [r["task_loss"][task] for r in window if r["task_loss"][task] is not None]
        out[task] = sum(values) / len(values) if values else None
    return out


def save_weights(engine, tokenizer, target: Path, cfg: TrainConfig) -> None:
    """Adapter (PEFT format) or full model (safetensors) plus tokenizer, atomically; never a 4-bit base."""
    state = engine.consolidated_state() if hasattr(engine, "consolidated_state") else None
    if not dist.is_main():
        return
    model = engine.unwrapped
    with staged_dir(target, overwrite=True) as tmp:
        kwargs = {"state_dict": state} if state is not None else {}
        model.save_pretrained(tmp, **kwargs)
        tokenizer.save_pretrained(tmp)


def _setup_engine(cfg: TrainConfig, model, total_steps: int):
    from .launch import make_engine

    optimizer_factory = lambda params: make_optimizer(cfg.optimizer, params, cfg.lr, cfg.weight_decay)  # noqa: E731
    scheduler_factory = lambda opt: make_scheduler(
        opt,
        total_steps,
        cfg.warmup_steps,
        cfg.lr_schedule,  # noqa: E731
        cfg.min_lr / cfg.lr,
    )
    return make_engine(model, optimizer_factory, scheduler_factory, cfg)


def train(cfg: TrainConfig, kind: Kind = "run") -> TrainResult:
    """Train as configured; resumable; returns the output folder and its summary."""
    started = time.time()
    out = Path(cfg.output_dir)
    model_dir = base_model_dir(cfg)
    inputs = [InputRef.of(model_dir)]
    if kind != "pretrain":
        inputs.append(InputRef.of(cfg.data))
    else:  # raw files have no manifest: their listing (names, sizes, times) stands for them
        from mft_data.api import text_files_ref

        inputs.append(text_files_ref(cfg.data.split(","), max_mb=cfg.text_max_mb))
    config = config_to_dict(cfg)
    manifest_kind = "model" if cfg.peft == "none" else "adapter"
    probe = new_manifest(manifest_kind, "mft-train", __version__, {**config, "resume": "none"}, inputs)
    if _check_output_dir(out, probe.fingerprint, cfg):
        return TrainResult(out, read_manifest(out).summary, up_to_date=True)
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out / "config.yaml", _yaml(config))

    tokenizer = load_tokenizer(model_dir)
    if dist.is_main():
        data_path = prepare_data(
            cfg.data, model_dir, cfg.seq_len, out, raw_text=kind == "pretrain", text_max_mb=cfg.text_max_mb
        )
    dist.barrier()
    data_path = dist.broadcast_object(str(data_path) if dist.is_main() else None)
    data = load_data(Path(data_path), model_dir, cfg.seq_len)
    loss_mode = resolve_loss_mode(cfg, data.tasks)
    weights = task_weight_tensor(cfg, data.tasks)

    from transformers import set_seed

    if not torch.cuda.is_available():
        # tiny gradients and Adam moments become denormal floats, which x86 CPUs process many times slower
        torch.set_flush_denormal(True)
    set_seed(cfg.seed)
    from .launch import zero3_loading

    partitioned_loading = zero3_loading(cfg)  # must outlive the model load and the engine's construction
    model = load_model(cfg, model_dir, tokenizer)
    world = dist.world_size()
    if partitioned_loading is not None and dist.is_main() and any(hasattr(p, "ds_id") for p in model.parameters()):
        console.print(f"ZeRO-3: the model was loaded partitioned over {world} ranks (deepspeed.zero.Init)")
    total = total_steps_for(len(data.train), cfg.micro_batch_size * cfg.grad_accum * world, cfg.epochs, cfg.max_steps)
    engine = _setup_engine(cfg, model, total)
    del partitioned_loading
    parts = LoopParts(
        engine,
        data.train,
        data.tasks,
        weights,
        loss_of(loss_mode),
        cfg.micro_batch_size,
        cfg.grad_accum,
        cfg.seed,
        tokenizer.pad_token_id,
        cfg.bf16,
        cfg.max_grad_norm,
        total,
    )
    resolved = {**config, "loss_mode": loss_mode}
    checkpoint = find_resume(out, cfg.resume)
    state = engine.load(checkpoint, resolved) if checkpoint else TrainState()
    if checkpoint and dist.is_main():
        console.print(f"resumed from {checkpoint} (step {state.step} of {total})")

    tb_dir = Path(cfg.tb_dir) if cfg.tb_dir else out / "tb"
    log = MetricsLog(out, tb_dir, state.step if checkpoint else None, enabled=dist.is_main())
    balancing = loss_mode in ("coba", "selfpaced")
    balancer = _Balancer(cfg, parts, engine.model, data.valid, state, log) if balancing else None
    with progress() as bar:
        bar_task = bar.add_task("train", total=total, completed=state.step, info="") if dist.is_main() else None
        reporter = _Reporter(
            cfg, parts, engine.model, data.valid, tokenizer, out, log, bar if dist.is_main() else None, bar_task
        )
        hooks = Hooks(
            reporter.on_step, reporter.on_eval, lambda s: engine.save(out, s, resolved), cfg.eval_every, cfg.save_every
        )
        if balancer is not None:
            hooks.after_step = balancer.after_step
        state = run_loop(parts, state, hooks)
    if data.valid is not None and (reporter.last_eval is None or reporter.last_eval["step"] != state.step):
        reporter.on_eval(state)
    final_dir = "model" if cfg.peft == "none" else "adapter"
    save_weights(engine, tokenizer, out / final_dir, cfg)
    log.close()
    summary = _summary(cfg, data, loss_mode, state, reporter, final_dir, total, time.time() - started)
    if dist.is_main():
        plot_loss_per_task(out / "metrics.jsonl", out / "loss_per_task.png", extra_panel="task_weights")
        summary["tokenized_data"] = {"path": str(data.path.resolve()), "manifest_id": data.manifest_id}
        summary["resolved"] = {
            "loss_mode": loss_mode,
            "tasks": list(data.tasks),
            "base_model": str(model_dir.resolve()),
        }
        # same config and inputs as the probe above, so the same run again is recognised as up to date
        write_manifest(
            out, new_manifest(manifest_kind, "mft-train", __version__, {**config, "resume": "none"}, inputs, summary)
        )
    dist.barrier()
    return TrainResult(out, summary)


def _summary(
    cfg, data, loss_mode, state: TrainState, reporter: _Reporter, final_dir: str, total: int, wall: float
) -> dict:
    from .metrics import read_metrics

    train_rows = [r for r in read_metrics(Path(cfg.output_dir) / "metrics.jsonl") if r["kind"] == "train"]
    paths = {final_dir: final_dir}
    if (Path(cfg.output_dir) / "best").is_dir():
        paths["best"] = "best"
    return {
        "paths": paths,
        "base_model": str(base_model_dir(cfg).resolve()),
        "base_model_sha256": model_fingerprint(base_model_dir(cfg)),
        "peft": cfg.peft,
        "tasks": list(data.tasks),
        "loss_mode": loss_mode,
        "steps": state.step,
        "total_steps": total,
        "stopped_early": state.stopped_early,
        "tokens_seen": state.tokens_seen,
        "supervised_tokens_per_task": state.task_tokens,
        "final_train": train_rows[-1] if train_rows else None,
        "final_eval": reporter.last_eval,
        "best_valid": state.best_valid if state.best_valid is None or math.isfinite(state.best_valid) else None,
        "best_step": state.best_step,
        "wall_seconds": round(wall, 1),
    }


def _yaml(config: dict) -> str:
    import yaml

    return yaml.safe_dump(config, sort_keys=False)
