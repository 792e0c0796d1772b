"""One frozen config per command (defaults < ``--config`` YAML < flags); checks name the flags."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from mft_core.errors import ConfigError

from .formats import FormatName


@dataclass(frozen=True)
class FormatConfig:
    inputs: tuple[str, ...] = ()
    task: str = ""
    out: str = ""
    source_format: FormatName = "auto"
    field_map: tuple[str, ...] = ()
    skip_invalid: bool = False
    overwrite: bool = False
    allow_extra_cells: bool = False  # CSV rows with more cells than the header: drop the extras instead of failing
    map_overwrite: bool = False  # --map SRC=DST where the row already has DST: replace it instead of failing

    def __post_init__(self):
        if not self.inputs:
            raise ConfigError("no input files given", fix="mft-data format FILE... --task NAME --out DIR")
        if not self.task:
            raise ConfigError("--task is required (the task name, also its folder name)")
        if not self.out:
            raise ConfigError("--out is required (the multi-task data folder)")
        import re

        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", self.task):
            raise ConfigError(f"--task {self.task!r}: use letters, digits, '_', '.', '-' (it becomes a folder name)")


@dataclass(frozen=True)
class ValidateConfig:
    folder: str = ""
    tokenizer: str | None = None
    max_chars: int = 200_000
    max_tokens: int | None = None
    strict: bool = False

    def __post_init__(self):
        if self.max_tokens is not None and self.tokenizer is None:
            raise ConfigError("--max-tokens needs --tokenizer (a model or tokenizer folder)")


@dataclass(frozen=True)
class DecontamConfig:
    folder: str = ""
    against: Literal["humaneval"] = "humaneval"
    ngram: int = 10
    mode: Literal["drop", "flag"] = "drop"
    problems: str | None = None

    def __post_init__(self):
        if self.ngram < 3:
            raise ConfigError(f"--ngram {self.ngram}: too short to mean copying; use 8 to 13 (default 10)")


@dataclass(frozen=True)
class SplitConfig:
    folder: str = ""
    valid_ratio: float = 0.02
    seed: int = 42

    def __post_init__(self):
        if not 0.0 <= self.valid_ratio < 1.0:
            raise ConfigError(f"--valid-ratio {self.valid_ratio}: must be in [0, 1)")


@dataclass(frozen=True)
class TokenizeConfig:
    folder: str = ""
    tokenizer: str = ""
    out: str = ""
    seq_len: int = 2048
    mode: Literal["pack", "pad"] = "pack"
    overlong: Literal["drop", "truncate", "error"] = "drop"
    num_proc: int = 1
    batch_size: int = 1000
    overwrite: bool = False
    chat_template: str = ""  # "": the tokenizer's own (the built-in default if it has none); else a built-in name

    def __post_init__(self):
        if self.chat_template:
            from mft_core.templates import chat_template

            chat_template(self.chat_template)  # ConfigError naming the known ones
        if self.seq_len < 16:
            raise ConfigError(f"--seq-len {self.seq_len}: must be at least 16")
        if self.num_proc < 1:
            raise ConfigError("--num-proc must be at least 1")
        if not self.tokenizer:
            raise ConfigError("--tokenizer is required (a model folder or tokenizer folder)")
        if not self.out:
            raise ConfigError("--out is required (the tokenized folder to write)")


@dataclass(frozen=True)
class StatsConfig:
    folder: str = ""
    tokenizer: str | None = None
    plot: str | None = None
    bins: int = 20
