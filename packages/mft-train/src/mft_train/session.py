"""The setup phase of a run: data, objective, model, engine, checkpointer and the state to start from, built once
and handed to the loop as one typed :class:`Session`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from mft_core.config import config_to_dict
from mft_core.errors import ConfigError
from mft_core.manifest import write_text_atomic
from mft_core.ui import console

from . import dist
from .checkpoint import Checkpointer, TrainState
from .config import TrainConfig
from .data import TrainData, load_data, prepare_data
from .engine import Engine, make_optimizer
from .engine_zero import zero3_loading
from .engines import make_engine
from .loop import LoopParts
from .modeling import load_model, load_tokenizer
from .objective import Objective, resolve_objective
from .order import FixedOrder, SampledOrder, total_steps
from .output import OutputPlan
from .preference_step import preference_step
from .schedule import make_scheduler


@dataclass(frozen=True, kw_only=True)
class Session:
    cfg: TrainConfig
    plan: OutputPlan
    tokenizer: object
    data: TrainData
    objective: Objective
    engine: Engine
    parts: LoopParts
    checkpointer: Checkpointer
    state: TrainState  # where the loop starts: fresh, or the checkpoint's
    resumed_from: Path | None


def setup(cfg: TrainConfig, kind: str, plan: OutputPlan) -> Session:
    out = plan.out
    out.mkdir(parents=True, exist_ok=True)
    config = config_to_dict(cfg)
    write_text_atomic(out / "config.yaml", _yaml(config))
    tokenizer = load_tokenizer(plan.model_dir)
    data = _data(cfg, kind, plan.model_dir, out)
    objective = resolve_objective(cfg, data.tasks)
    _check_data_fits_objective(cfg, data, objective)
    order = data_order(cfg, data)
    engine, total = _engine(cfg, plan.model_dir, tokenizer, order)
    parts = LoopParts(
        engine=engine,
        rows=data.train,
        tasks=data.tasks,
        objective=objective,
        micro_batch_size=cfg.micro_batch_size,
        grad_accum=cfg.grad_accum,
        seed=cfg.seed,
        pad_id=tokenizer.pad_token_id,
        bf16=cfg.bf16,
        max_grad_norm=cfg.max_grad_norm,
        total_steps=total,
        order=order,
        step_fn=preference_step if objective.on_pairs else None,
    )
    resolved = {**config, "loss": objective.loss, "task_weighting": objective.weighting}
    checkpointer = Checkpointer(out=out, save_limit=cfg.save_limit, config=resolved)
    resumed_from = checkpointer.find_resume(cfg.resume)
    state = checkpointer.load(engine, resumed_from) if resumed_from else TrainState()
    if resumed_from and dist.is_main():
        console.print(f"resumed from {resumed_from} (step {state.step} of {total})")
    return Session(
        cfg=cfg,
        plan=plan,
        tokenizer=tokenizer,
        data=data,
        objective=objective,
        engine=engine,
        parts=parts,
        checkpointer=checkpointer,
        state=state,
        resumed_from=resumed_from,
    )


def _data(cfg: TrainConfig, kind: str, model_dir: Path, out: Path) -> TrainData:
    """Tokenized once, by the main rank (into OUT/tokenized when the input is not tokenized yet)."""
    if dist.is_main():
        path = prepare_data(
            cfg.data, model_dir, cfg.seq_len, out, raw_text=kind == "pretrain", text_max_mb=cfg.text_max_mb
        )
    dist.barrier()
    path = dist.broadcast_object(str(path) if dist.is_main() else None)
    return load_data(Path(path), model_dir, cfg.seq_len)


def _check_data_fits_objective(cfg: TrainConfig, data: TrainData, objective: Objective) -> None:
    """Preference losses need pair rows and pair rows need a preference loss (an SFT loss on pairs would train
    the rejected answers too)."""
    if data.preference and not objective.on_pairs:
        raise ConfigError(
            f"data {data.path} holds preference pairs (chosen, rejected) but preference is none",
            fix="set preference: dpo | orpo | rpo, or train SFT on `mft-data from-eval --mode sft` data",
        )
    if objective.on_pairs and not data.preference:
        raise ConfigError(
            f"preference: {objective.preference} needs a preference folder; {data.path} holds chat records",
            fix="make one with `mft-data from-eval EVALDIR --mode pairs`, then mft-data tokenize",
        )
    if objective.on_pairs and cfg.task_sampling:
        raise ConfigError("task_sampling is not supported with preference training", fix="use task_weights")


def data_order(cfg: TrainConfig, data: TrainData) -> FixedOrder | SampledOrder:
    """The rows of each epoch: the tokenized ones, or drawn per task with ``task_sampling``."""
    if not cfg.task_sampling:
        return FixedOrder(data.train, cfg.seed)
    try:
        return SampledOrder(
            rows=data.train,
            tasks=data.tasks,
            sampling=cfg.task_sampling,
            by=cfg.task_sampling_by,
            seed=cfg.seed,
            capacity=data.row_tokens or cfg.seq_len,
            packed=data.packed,
        )
    except ValueError as exc:
        raise ConfigError(str(exc), fix="task_sampling: {TASK: RATIO, ...} with this data's tasks") from exc


def _engine(cfg: TrainConfig, model_dir: Path, tokenizer, order) -> tuple[Engine, int]:
    """The model, loaded and wrapped by the strategy's engine, and the run's number of optimizer steps."""
    from transformers import set_seed

    if not torch.cuda.is_available():
        # tiny gradients and Adam moments become denormal floats, which x86 CPUs process many times slower
        torch.set_flush_denormal(True)
    set_seed(cfg.seed)
    partitioned_loading = zero3_loading(cfg)  # must outlive the model load and the engine's construction
    model = load_model(cfg, model_dir, tokenizer)
    world = dist.world_size()
    if partitioned_loading is not None and dist.is_main() and any(hasattr(p, "ds_id") for p in model.parameters()):
        console.print(f"ZeRO-3: the model was loaded partitioned over {world} ranks (deepspeed.zero.Init)")
    total = total_steps(order, cfg.micro_batch_size * cfg.grad_accum * world, cfg.epochs, cfg.max_steps)
    engine = make_engine(
        cfg,
        model,
        lambda params: make_optimizer(cfg.optimizer, params, cfg.lr, cfg.weight_decay),
        lambda opt: make_scheduler(opt, total, cfg.warmup_steps, cfg.lr_schedule, cfg.min_lr / cfg.lr),
    )
    del partitioned_loading
    return engine, total


def _yaml(config: dict) -> str:
    import yaml

    return yaml.safe_dump(config, sort_keys=False)
