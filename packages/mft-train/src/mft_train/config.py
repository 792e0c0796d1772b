"""The one config of ``mft-train run|sft|pretrain`` (defaults < YAML < ``--set``). Key names are an API.

Fields declared with :func:`_same_result` do not change what is trained (where it is written, how often it logs
or saves, whether it resumes): they are left out of the "up to date" fingerprint and may differ between a
checkpoint and its resume. Every other field is part of the run.
"""

from __future__ import annotations

import dataclasses
from dataclasses import InitVar, dataclass, field
from typing import Any, Literal

from mft_core.config import config_to_dict
from mft_core.errors import ConfigError

Loss = Literal["auto", "token", "sample", "task", "task-sample"]  # auto: task with several tasks, else token
TaskWeighting = Literal["static", "selfpaced", "coba"]
Strategy = Literal["local", "ddp", "zero2", "zero3", "fsdp"]
Offload = Literal["none", "optimizer", "params", "all"]

# The single key `loss` and `task_weighting` replace, and the pair each of its values meant.
LEGACY_LOSS_MODES: dict[str, tuple[str, str]] = {
    "auto": ("auto", "static"),
    "token": ("token", "static"),
    "sample": ("sample", "static"),
    "task": ("task", "static"),
    "task-sample": ("task-sample", "static"),
    "coba": ("task", "coba"),
    "selfpaced": ("task", "selfpaced"),
}
FINGERPRINT = "fingerprint"  # field metadata: False for a setting that does not change the result


def _same_result(default: Any) -> Any:
    return field(default=default, metadata={FINGERPRINT: False})


@dataclass(frozen=True)
class TrainConfig:
    """Everything a training run depends on; stored resolved in the manifest and every checkpoint."""

    model: str = ""
    data: str = ""
    out: str = _same_result("")  # where the run is written does not change it
    # adaptation
    peft: Literal["lora", "qlora", "none"] = "lora"
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    target_modules: tuple[str, ...] = ()  # empty: the family table's default; ("all-linear",) allowed
    use_dora: bool = False
    use_rslora: bool = False
    # optimisation
    optimizer: Literal["adamw", "sgd", "adamw_8bit"] = "adamw"
    weight_decay: float = 0.0
    lr: float = 2e-4
    min_lr: float = 0.0
    warmup_steps: int = 0
    lr_schedule: Literal["cosine", "linear", "constant"] = "cosine"
    max_grad_norm: float = 1.0
    epochs: int = 1
    max_steps: int = 0  # > 0 overrides epochs
    micro_batch_size: int = 4
    grad_accum: int = 1
    seq_len: int = 2048
    # numerics and speed
    bf16: bool = False
    grad_checkpointing: bool = False
    # sdpa: torch SDPA, once per packed record where the family allows (else one masked call); sdpa_masked: always
    # one masked call per row; eager; flash_attention_2 (GPU, when installed)
    attn_implementation: Literal["sdpa", "sdpa_masked", "eager", "flash_attention_2"] = "sdpa"
    compile: bool = False
    seed: int = 42
    # processes: `mft-train launch --strategy` sets these for its workers; local is one process
    strategy: Strategy = "local"
    offload: Offload = "none"  # DeepSpeed state in CPU memory: optimizer (zero2, zero3), params or all (zero3)
    # evaluation, logging, checkpoints
    eval_every: int = 0  # steps; 0: only at the end (when a valid split exists)
    save_every: int = _same_result(0)  # steps; 0: only the final output
    log_every: int = _same_result(10)
    save_limit: int = _same_result(2)
    early_stop_patience: int = 0  # evals without improvement of the mean valid loss; 0: off
    # multi-task loss (loss.py) and how its task weights are set: static (task_weights, default 1.0 each) or moved
    # during training from validation-loss slopes (balance.py)
    loss: Loss = "auto"
    task_weighting: TaskWeighting = "static"
    task_weights: dict[str, float] = field(default_factory=dict)
    coba_update_interval: int = 1  # optimizer steps between weight updates
    coba_sample_valid_num: int = 1  # valid micro-batches in the fixed set L(0) and every update are measured on
    coba_warmup_steps: int = 100  # updates with equal weights before the first fit
    coba_history_length: int = 200  # updates in the slope window
    coba_tau: float = 5.0  # divergence-factor temperature
    selfpaced_scale: float = 50.0  # self-paced softmax scale
    tb_dir: str = _same_result("")  # default: OUT/tb
    resume: str = _same_result("none")  # auto | none | path to a checkpoint-N folder
    text_max_mb: float = 0.0  # pretrain only: read at most this many MB of the raw files (0: all)
    # old spellings, read once into the fields above (not fields: never written back, never fingerprinted)
    loss_mode: InitVar[str | None] = None
    output_dir: InitVar[str | None] = None

    def __post_init__(self, loss_mode: str | None, output_dir: str | None):
        self._read_legacy(loss_mode, output_dir)
        if not self.model:
            raise ConfigError("no base model: set `model:` (a model folder) in the YAML or --set model=DIR")
        if not self.data:
            raise ConfigError("no data: set `data:` (an mft-data tokenize or format folder)")
        if not self.out:
            raise ConfigError("no output: set `out:` (the output folder)")
        if self.lora_r < 1 or self.lora_alpha < 1:
            raise ConfigError("lora_r and lora_alpha must be positive")
        if not 0.0 <= self.lora_dropout < 1.0:
            raise ConfigError("lora_dropout must be in [0, 1)")
        if self.lr <= 0 or self.min_lr < 0 or self.min_lr > self.lr:
            raise ConfigError(f"need 0 <= min_lr <= lr and lr > 0 (lr={self.lr}, min_lr={self.min_lr})")
        if self.micro_batch_size < 1 or self.grad_accum < 1:
            raise ConfigError("micro_batch_size and grad_accum must be at least 1")
        if self.epochs < 1 and self.max_steps < 1:
            raise ConfigError("set epochs >= 1 or max_steps >= 1")
        if self.max_steps < 0 or self.warmup_steps < 0:
            raise ConfigError("max_steps and warmup_steps cannot be negative")
        if self.peft == "none" and (self.use_dora or self.use_rslora):
            raise ConfigError("use_dora/use_rslora need peft: lora or qlora")
        if min(self.coba_update_interval, self.coba_sample_valid_num, self.coba_history_length) < 1:
            raise ConfigError("coba_update_interval, coba_sample_valid_num and coba_history_length must be >= 1")
        problem = strategy_problem(self.strategy, self.offload)
        if problem:
            raise ConfigError(f"strategy {self.strategy}, offload {self.offload}: {problem}")
        self._check_objective()

    def _read_legacy(self, loss_mode: str | None, output_dir: str | None) -> None:
        if output_dir is not None:
            if self.out and self.out != str(output_dir):
                raise ConfigError(f"both out ({self.out}) and its old name output_dir ({output_dir}) are set")
            _deprecated(f"`output_dir` is now `out` (read as out: {output_dir})")
            object.__setattr__(self, "out", str(output_dir))
        if loss_mode is not None:
            if loss_mode not in LEGACY_LOSS_MODES:
                raise ConfigError(f"loss_mode: {loss_mode!r} is not one of {', '.join(LEGACY_LOSS_MODES)}")
            loss, weighting = LEGACY_LOSS_MODES[loss_mode]
            _deprecated(f"`loss_mode: {loss_mode}` is now `loss: {loss}` with `task_weighting: {weighting}`")
            object.__setattr__(self, "loss", loss)
            object.__setattr__(self, "task_weighting", weighting)

    def _check_objective(self) -> None:
        unweighted = self.loss in ("token", "sample")  # these losses have no task weights to set
        if self.task_weighting != "static" and self.task_weights:
            raise ConfigError(f"task_weighting {self.task_weighting} sets the task weights itself; remove task_weights")
        if self.task_weighting != "static" and unweighted:
            raise ConfigError(
                f"task_weighting {self.task_weighting} moves task weights, which loss {self.loss} does not have",
                fix="use loss: task or task-sample (or auto)",
            )
        if self.task_weights and unweighted:
            raise ConfigError(f"task_weights act only in loss task or task-sample, not {self.loss}")
        if any(w < 0 for w in self.task_weights.values()):
            raise ConfigError("task_weights must be >= 0")

    @property
    def lora(self) -> bool:
        return self.peft in ("lora", "qlora")


def strategy_problem(strategy: str, offload: str) -> str | None:
    """Why ``offload`` cannot go with ``strategy`` (None when it can); shared with ``mft-train launch``."""
    if offload in ("params", "all") and strategy != "zero3":
        return "parameter offload (params, all) needs strategy zero3"
    if offload == "optimizer" and strategy not in ("zero2", "zero3"):
        return "optimizer offload needs strategy zero2 or zero3"
    return None


def result_keys() -> frozenset[str]:
    """The settings that change what is trained: fingerprinted, and compared on resume."""
    return frozenset(f.name for f in dataclasses.fields(TrainConfig) if f.metadata.get(FINGERPRINT, True))


def fingerprint_config(cfg: TrainConfig) -> dict[str, Any]:
    """The config a finished run's manifest records and is recognised by ("up to date")."""
    keys = result_keys()
    return {k: v for k, v in config_to_dict(cfg).items() if k in keys}


def _deprecated(message: str) -> None:
    from mft_core.ui import warn

    warn(f"deprecated: {message}")


# What each command changes in TrainConfig's defaults (a YAML file and --set still win); `launch --kind` uses the same.
KIND_DEFAULTS: dict[str, dict] = {
    "run": {},
    "sft": {"loss": "token"},
    "pretrain": {"peft": "none", "loss": "token", "seq_len": 512, "lr": 1e-3},
}
