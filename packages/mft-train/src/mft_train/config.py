"""The one config of ``mft-train run|sft|pretrain`` (defaults < YAML < ``--set``). Key names are an API."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from mft_core.errors import ConfigError

LossMode = Literal["auto", "token", "sample", "task", "task-sample", "coba", "selfpaced"]
# keys that may change between a checkpoint and its resume without changing the result
RESUME_SAFE_KEYS = frozenset({"resume", "log_every", "save_every", "save_limit", "tb_dir", "output_dir"})


@dataclass(frozen=True)
class TrainConfig:
    """Everything a training run depends on; stored resolved in the manifest and every checkpoint."""

    model: str = ""
    data: str = ""
    output_dir: str = ""
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
    # evaluation, logging, checkpoints
    eval_every: int = 0  # steps; 0: only at the end (when a valid split exists)
    save_every: int = 0  # steps; 0: only the final output
    log_every: int = 10
    save_limit: int = 2
    early_stop_patience: int = 0  # evals without improvement of the mean valid loss; 0: off
    # multi-task loss
    loss_mode: LossMode = "auto"
    task_weights: dict[str, float] = field(default_factory=dict)
    # convergence balancing (loss_mode coba | selfpaced): task weights from validation-loss slopes
    coba_update_interval: int = 1  # optimizer steps between weight updates
    coba_sample_valid_num: int = 1  # valid micro-batches in the fixed set L(0) and every update are measured on
    coba_warmup_steps: int = 100  # updates with equal weights before the first fit
    coba_history_length: int = 200  # updates in the slope window
    coba_tau: float = 5.0  # divergence-factor temperature
    selfpaced_scale: float = 50.0  # self-paced softmax scale
    tb_dir: str = ""  # default: OUTPUT_DIR/tb
    resume: str = "none"  # auto | none | path to a checkpoint-N folder
    text_max_mb: float = 0.0  # pretrain only: read at most this many MB of the raw files (0: all)

    def __post_init__(self):
        if not self.model:
            raise ConfigError("no base model: set `model:` (a model folder) in the YAML or --set model=DIR")
        if not self.data:
            raise ConfigError("no data: set `data:` (an mft-data tokenize or format folder)")
        if not self.output_dir:
            raise ConfigError("no output: set `output_dir:`")
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
        if self.loss_mode in ("coba", "selfpaced") and self.task_weights:
            raise ConfigError(f"loss_mode {self.loss_mode} sets the task weights itself; remove task_weights")
        if any(w < 0 for w in self.task_weights.values()):
            raise ConfigError("task_weights must be >= 0")

    @property
    def lora(self) -> bool:
        return self.peft in ("lora", "qlora")


# What each command changes in TrainConfig's defaults (a YAML file and --set still win); `launch --kind` uses the same.
KIND_DEFAULTS: dict[str, dict] = {
    "run": {},
    "sft": {"loss_mode": "token"},
    "pretrain": {"peft": "none", "loss_mode": "token", "seq_len": 512, "lr": 1e-3},
}
