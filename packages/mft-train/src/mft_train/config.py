"""The one config of ``mft-train run|sft|pretrain`` (defaults < YAML < ``--set``). Key names are an API.

Every field is declared with :func:`mft_core.config.opt` (help text, flag, fingerprint); those declared with
:func:`_same_result` do not change what is trained (where it is written, how often it logs
or saves, whether it resumes): they are left out of the "up to date" fingerprint and may differ between a
checkpoint and its resume. Every other field is part of the run.
"""

from __future__ import annotations

from dataclasses import InitVar, dataclass
from typing import Any, Literal

from mft_core.config import fingerprint_config as _fingerprint_config
from mft_core.config import opt, same_run_keys
from mft_core.errors import ConfigError

Loss = Literal["auto", "token", "sample", "task", "task-sample"]  # auto: task with several tasks, else token
TaskWeighting = Literal["static", "selfpaced", "coba"]
Strategy = Literal["local", "ddp", "zero2", "zero3", "fsdp", "atorch"]
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


def _yaml(default: Any, help: str) -> Any:
    """A key of the YAML file (and ``--set``), with no flag of its own."""
    return opt(default, help=help, cli=False)


def _same_result(default: Any, help: str, cli: bool = False) -> Any:
    """A setting that does not change what is trained: not fingerprinted, and may change on resume."""
    return opt(default, help=help, fingerprint=False, same_run=False, cli=cli)


@dataclass(frozen=True)
class TrainConfig:
    """Everything a training run depends on; stored resolved in the manifest and every checkpoint."""

    model: str = opt("", help="Base model folder (an mft-train init-base or Hugging Face model) to train from.")
    data: str = opt(
        "", help="Training data: an mft-data tokenize or format folder (pretrain: raw text/code files or folders)."
    )
    out: str = _same_result("", "Output folder of the run (the model lands in OUT/model).", cli=True)
    # adaptation
    peft: Literal["lora", "qlora", "none"] = _yaml("lora", "lora | qlora | none (full fine-tuning).")
    lora_r: int = _yaml(16, "LoRA rank.")
    lora_alpha: int = _yaml(32, "LoRA alpha (scale alpha/r, or alpha/sqrt(r) with use_rslora).")
    lora_dropout: float = _yaml(0.05, "Dropout on the LoRA branch, in [0, 1).")
    target_modules: tuple[str, ...] = _yaml(
        (), "Modules LoRA adapts (empty: the family table's default; all-linear allowed)."
    )
    use_dora: bool = _yaml(False, "Weight-decomposed LoRA (DoRA).")
    use_rslora: bool = _yaml(False, "Rank-stabilised LoRA scaling (alpha/sqrt(r)).")
    # optimisation
    optimizer: Literal["adamw", "sgd", "adamw_8bit"] = _yaml("adamw", "adamw | sgd | adamw_8bit.")
    weight_decay: float = _yaml(0.0, "Optimizer weight decay.")
    lr: float = _yaml(2e-4, "Peak learning rate.")
    min_lr: float = _yaml(0.0, "Learning rate the schedule decays to (<= lr).")
    warmup_steps: int = _yaml(0, "Optimizer steps of linear warmup.")
    lr_schedule: Literal["cosine", "linear", "constant"] = _yaml("cosine", "cosine | linear | constant (after warmup).")
    max_grad_norm: float = _yaml(1.0, "Gradient clipping norm.")
    epochs: int = _yaml(1, "Passes over the training split.")
    max_steps: int = _yaml(0, "Optimizer steps to run; > 0 overrides epochs.")
    micro_batch_size: int = _yaml(4, "Rows per forward/backward pass.")
    grad_accum: int = _yaml(1, "Micro-batches per optimizer step.")
    seq_len: int = _yaml(2048, "Tokens per row (packed records or padded samples).")
    # numerics and speed
    bf16: bool = _yaml(False, "Train in bfloat16 autocast.")
    # none | full | every_n:K (every K-th decoder layer); true/false are read as full/none
    grad_checkpointing: bool | str = _yaml(
        "none", "Recompute activations in backward: none | full | every_n:K (every K-th decoder layer)."
    )
    # LM head + cross-entropy in chunks of supervised tokens (head_loss.py): auto sizes chunks from a memory budget,
    # 0 materialises the logits of the supervised positions, N is tokens per chunk
    lm_head_chunk: int | Literal["auto"] = _yaml(
        "auto", "LM head + loss in chunks: auto | 0 (off: logits materialised) | N tokens per chunk."
    )
    # sdpa: torch SDPA, once per packed record where the family allows (else one masked call); sdpa_masked: always
    # one masked call per row; eager; flash_attention_2 (GPU, when installed)
    attn_implementation: Literal["sdpa", "sdpa_masked", "eager", "flash_attention_2"] = _yaml(
        "sdpa", "Attention kernel: sdpa | sdpa_masked | eager | flash_attention_2."
    )
    compile: bool = _yaml(False, "torch.compile the model.")
    seed: int = _yaml(42, "Seed of data order, dropout and LoRA initialisation.")
    # processes: `mft-train launch --strategy` sets these for its workers; local is one process
    strategy: Strategy = _yaml("local", "local | ddp | zero2 | zero3 | fsdp | atorch (set by mft-train launch).")
    offload: Offload = _yaml(
        "none", "DeepSpeed state in CPU memory: none | optimizer (zero2, zero3) | params | all (zero3)."
    )
    # evaluation, logging, checkpoints
    eval_every: int = _yaml(0, "Steps between validation passes; 0: only at the end (when a valid split exists).")
    save_every: int = _same_result(0, "Steps between checkpoints; 0: only the final output.")
    log_every: int = _same_result(10, "Steps between log lines.")
    save_limit: int = _same_result(2, "Checkpoints kept (older ones are deleted; 0: all).")
    early_stop_patience: int = _yaml(0, "Evaluations without a better select_by metric before stopping; 0: off.")
    # execution metrics while training (problem_eval.py, through mft-eval's public API: mft-train[eval]): greedy
    # completions of each named problem set with the current weights, run in mft-eval's sandbox, pass@1 per set
    eval_problems: dict[str, str] = opt(
        help="HumanEval-format problem files to run while training, by name: {codegen: dev.jsonl}.",
        cli=False,
        default_factory=dict,
    )
    eval_problems_every: int = _yaml(0, "Steps between problem evaluations; 0: with every validation pass.")
    eval_problems_limit: int = _yaml(0, "Only the first N problems of each set; 0: all.")
    eval_problems_max_new_tokens: int = _yaml(256, "Tokens generated per problem at most.")
    eval_problems_prompt: Literal["chat", "completion"] = _yaml(
        "chat", "chat (the chat template, as mft-eval's default) | completion (raw prompt, stop sequences)."
    )
    eval_problems_batch_size: int = _same_result(8, "Problems generated at once (mft-eval --batch-size).")
    eval_problems_timeout: float = _yaml(3.0, "CPU seconds per program at least (mft-eval --timeout).")
    eval_problems_isolation: Literal["strong", "partial", "guard-only"] = _yaml(
        "strong", "Least sandbox isolation to accept (mft-eval --isolation)."
    )
    eval_problems_workers: int = _same_result(0, "Programs run at once; 0: mft-eval's default.")
    # which measurement picks best/ and drives early stopping
    select_by: str = _yaml("valid_loss", "valid_loss | pass@1 (mean over eval_problems) | pass@1:NAME (one set).")
    # multi-task loss (loss.py) and how its task weights are set: static (task_weights, default 1.0 each) or moved
    # during training from validation-loss slopes (balance.py)
    loss: Loss = _yaml("auto", "auto | token | sample | task | task-sample (auto: task if several tasks, else token).")
    task_weighting: TaskWeighting = _yaml("static", "static (task_weights) | selfpaced | coba.")
    task_weights: dict[str, float] = opt(
        help="Static weight per task name (default 1.0 each).", cli=False, default_factory=dict
    )
    # how often each task's records are drawn per epoch relative to its size (mft_data.sampling), distinct from the
    # loss's task_weights: 2.0 repeats each record twice (in different packed rows), 0.5 draws half of them afresh
    # each epoch; an epoch is the sampled multiset
    task_sampling: dict[str, float] = opt(
        help="Draws per epoch relative to each task's size: {codegen: 2.0, explain: 0.5} (default 1.0 each).",
        cli=False,
        default_factory=dict,
    )
    task_sampling_by: Literal["records", "tokens"] = _yaml(
        "records", "What task_sampling ratios count: records | tokens (r x the task's tokens, to within one record)."
    )
    # preference training on a tokenized preference folder (mft-data from-eval --mode pairs; preference.py):
    # dpo and rpo take the reference from the same base with the LoRA adapter disabled (no second copy)
    preference: Literal["none", "dpo", "orpo", "rpo"] = _yaml(
        "none", "none | dpo | orpo | rpo: the loss on preference pairs (data must be a preference folder)."
    )
    beta: float = _yaml(0.1, "Preference: DPO/RPO's beta (KL strength), ORPO's lambda (odds-ratio weight).")
    rpo_alpha: float = _yaml(1.0, "Preference: RPO's weight of the chosen answers' NLL.")
    coba_update_interval: int = _yaml(1, "CoBa: optimizer steps between weight updates.")
    coba_sample_valid_num: int = _yaml(1, "CoBa: valid micro-batches the fixed set and every update are measured on.")
    coba_warmup_steps: int = _yaml(100, "CoBa: updates with equal weights before the first fit.")
    coba_history_length: int = _yaml(200, "CoBa: updates in the slope window.")
    coba_tau: float = _yaml(5.0, "CoBa: divergence-factor temperature.")
    selfpaced_scale: float = _yaml(50.0, "Self-paced softmax scale.")
    tb_dir: str = _same_result("", "TensorBoard folder (default: OUT/tb).")
    resume: str = _same_result("none", "auto | none | path to a checkpoint-N folder.")
    text_max_mb: float = opt(
        0.0, help="Pretrain: read at most this many MB of the raw files, in sorted order (0: all).", flag="--max-mb"
    )
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
        object.__setattr__(self, "grad_checkpointing", checkpointing_setting(self.grad_checkpointing))
        if self.lm_head_chunk != "auto" and self.lm_head_chunk < 0:
            raise ConfigError(
                f"lm_head_chunk: {self.lm_head_chunk} is negative", fix="auto, 0 (off) or tokens per chunk"
            )
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
        self._check_preference()
        if any(not float(r) >= 0 for r in self.task_sampling.values()):
            raise ConfigError("task_sampling ratios must be >= 0", fix="task_sampling: {codegen: 2.0, explain: 0.5}")
        self._check_problems()
        if self.task_sampling_by not in ("records", "tokens"):
            raise ConfigError(f"task_sampling_by: {self.task_sampling_by!r} is not records or tokens")

    def _check_problems(self) -> None:
        from pathlib import Path

        for name, path in self.eval_problems.items():
            if not Path(path).is_file():
                raise ConfigError(f"eval_problems: {name}: {path} is not a file", fix="a HumanEval-format .jsonl")
        if min(self.eval_problems_every, self.eval_problems_limit, self.eval_problems_workers) < 0:
            raise ConfigError("eval_problems_every, eval_problems_limit and eval_problems_workers must be >= 0")
        if self.eval_problems_max_new_tokens < 1 or self.eval_problems_batch_size < 1:
            raise ConfigError("eval_problems_max_new_tokens and eval_problems_batch_size must be >= 1")
        by = self.select_by
        if by == "valid_loss":
            return
        if by == "pass@1" or by.startswith("pass@1:"):
            name = by.removeprefix("pass@1").removeprefix(":")
            if not self.eval_problems:
                raise ConfigError(f"select_by: {by} needs eval_problems", fix="eval_problems: {codegen: dev.jsonl}")
            if name and name not in self.eval_problems:
                raise ConfigError(
                    f"select_by: {by}: no problem set {name!r}", fix=f"one of: {', '.join(self.eval_problems)}"
                )
            return
        raise ConfigError(f"select_by: {by!r} is not valid_loss, pass@1 or pass@1:NAME")

    def _check_preference(self) -> None:
        if self.preference not in ("none", "dpo", "orpo", "rpo"):
            raise ConfigError(f"preference: {self.preference!r} is not none, dpo, orpo or rpo")
        if self.preference == "none":
            return
        if self.preference in ("dpo", "rpo") and self.peft == "none":
            raise ConfigError(
                f"preference: {self.preference} needs a reference model; MFT takes it from the base with the LoRA "
                "adapter disabled, so it needs peft: lora or qlora",
                fix="peft: lora (or preference: orpo, which needs no reference)",
            )
        if not self.beta > 0 or self.rpo_alpha < 0:
            raise ConfigError(f"beta must be > 0 and rpo_alpha >= 0 (beta={self.beta}, rpo_alpha={self.rpo_alpha})")
        if self.task_weighting != "static":
            raise ConfigError(
                f"task_weighting {self.task_weighting} fits the slopes of SFT losses, not preference losses",
                fix="task_weighting: static, with task_weights for a fixed balance",
            )

    @property
    def lora(self) -> bool:
        return self.peft in ("lora", "qlora")


def checkpointing_setting(value: bool | str) -> str:
    """``grad_checkpointing`` normalised to ``none`` | ``full`` | ``every_n:K`` (``every_n:1`` is ``full``)."""
    if isinstance(value, bool):
        return "full" if value else "none"
    text = str(value).strip().lower()
    if text in ("none", "full"):
        return text
    if text in ("true", "false"):
        return "full" if text == "true" else "none"
    k = text.removeprefix("every_n:")
    if text.startswith("every_n:") and k.isdigit() and int(k) >= 1:
        return "full" if int(k) == 1 else f"every_n:{int(k)}"
    raise ConfigError(
        f"grad_checkpointing: {value!r} is not none, full or every_n:K",
        fix="grad_checkpointing: every_n:2 recomputes every second decoder layer",
    )


def checkpoint_every(setting: str) -> int:
    """Decoder layers per checkpointed layer (0: none)."""
    fixed = {"none": 0, "full": 1}
    return fixed[setting] if setting in fixed else int(setting.split(":")[1])


def strategy_problem(strategy: str, offload: str) -> str | None:
    """Why ``offload`` cannot go with ``strategy`` (None when it can); shared with ``mft-train launch``."""
    if offload in ("params", "all") and strategy != "zero3":
        return "parameter offload (params, all) needs strategy zero3"
    if offload == "optimizer" and strategy not in ("zero2", "zero3"):
        return "optimizer offload needs strategy zero2 or zero3"
    return None


def result_keys() -> frozenset[str]:
    """The settings that change what is trained: compared on resume (and fingerprinted, see below)."""
    return frozenset(same_run_keys(TrainConfig))


def fingerprint_config(cfg: TrainConfig) -> dict[str, Any]:
    """The config a finished run's manifest records and is recognised by ("up to date")."""
    return _fingerprint_config(cfg)


# what `mft-train launch --strategy` starts (local: no launcher)
STRATEGIES = ("ddp", "zero2", "zero3", "fsdp", "atorch")


@dataclass(frozen=True)
class LaunchConfig:
    """``mft-train launch``: the torchrun line (see :mod:`mft_train.launch`, which imports torch)."""

    config: str = opt(help="YAML config, as for `run`.", positional=True)
    nproc: int = opt(1, help="Processes per node (one per GPU; on CPU, a few).")
    strategy: str = opt(
        "ddp", help="ddp | zero2 | zero3 | fsdp (FSDP2 fully_shard) | atorch (ATorch data parallel: mft-train[atorch])."
    )
    nnodes: int = opt(1, help="Number of nodes.")
    node_rank: int = opt(0, help="This node's rank (0 .. nnodes-1).")
    master_addr: str = opt("127.0.0.1", help="Address of node 0.")
    master_port: int = opt(29500, help="Port on node 0.")
    offload: str = opt("none", help="DeepSpeed offload to CPU: none | optimizer | params | all (zero3).")
    kind: str = opt("run", help="run | sft | pretrain: which command's defaults (pretrain: data= raw files).")
    sets: tuple[str, ...] = opt(
        (), help="Override a config key of the workers: --set lr=1e-4 (repeatable).", flag="--set", repeat=True
    )
    dry_run: bool = opt(False, help="Print the torchrun (and accelerate) line, run nothing.")

    def __post_init__(self):
        if self.strategy not in STRATEGIES:
            raise ConfigError(f"--strategy {self.strategy!r}: use one of {', '.join(STRATEGIES)}")
        if self.nproc < 1 or self.nnodes < 1 or not 0 <= self.node_rank < self.nnodes:
            raise ConfigError("need --nproc >= 1, --nnodes >= 1 and 0 <= --node-rank < --nnodes")
        if self.offload not in ("none", "optimizer", "params", "all"):
            raise ConfigError("--offload: none|optimizer|params|all")
        problem = strategy_problem(self.strategy, self.offload)
        if problem:
            raise ConfigError(f"--offload {self.offload} with --strategy {self.strategy}: {problem}")
        if self.kind not in ("run", "sft", "pretrain"):
            raise ConfigError(f"--kind {self.kind!r}: use run, sft or pretrain")

    def worker_sets(self) -> list[str]:
        """The user's ``--set`` pairs, then the strategy (last, so the launcher's flags win over the YAML's)."""
        return [*self.sets, f"strategy={self.strategy}", f"offload={self.offload}"]


def _deprecated(message: str) -> None:
    from mft_core.ui import warn

    warn(f"deprecated: {message}")


# What each command changes in TrainConfig's defaults (a YAML file and --set still win); `launch --kind` uses the same.
KIND_DEFAULTS: dict[str, dict] = {
    "run": {},
    "sft": {"loss": "token"},
    "pretrain": {"peft": "none", "loss": "token", "seq_len": 512, "lr": 1e-3},
}
