"""mft-data's library API: one function per command, typed configs in, typed results out.

``mft-train`` may import ``tokenize_folder``/``load_tokenized``/``ChatEncoder`` from here; nothing else
outside this package should reach further in.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mft_core.artifacts import load_tokenizer
from mft_core.config import fingerprint_config
from mft_core.datafolder import FORMAT_COMMAND, SPLIT_FILES, Split, has_split, iter_task_records, task_names
from mft_core.errors import ConfigError
from mft_core.manifest import read_manifest

from .config import (
    DecontamConfig,
    FormatConfig,
    FromEvalConfig,
    SplitConfig,
    StatsConfig,
    TokenizeConfig,
    ValidateConfig,
)
from .decontam import Matcher, humaneval_texts, record_text
from .encode import ChatEncoder, Encoded, chat_template_of
from .folder import Progress, begin_edit, load_summary, update_folder_manifest, write_jsonl_atomic
from .formatting import FormatResult, format_task
from .from_eval import FromEvalResult, from_eval
from .pack import best_fit_decreasing
from .pairs import is_pair, pair_problems, sides
from .sampling import SampleBy, realised, sample_epoch, task_ratios
from .splitting import split_ids
from .text_data import TextTokenizeConfig, text_files_ref, tokenize_text_files
from .tokenized import TokenizedData, TokenizeResult, decode_supervised, load_tokenized, tokenize_folder
from .validation import ValidationReport, validate_folder

__all__ = [
    "ChatEncoder",
    "Encoded",
    "chat_template_of",
    "FormatConfig",
    "FormatResult",
    "format_task",
    "ValidateConfig",
    "ValidationReport",
    "validate_folder",
    "DecontamConfig",
    "DecontamReport",
    "decontaminate",
    "SplitConfig",
    "SplitReport",
    "split_folder",
    "TokenizeConfig",
    "TokenizeResult",
    "tokenize_folder",
    "TokenizedData",
    "load_tokenized",
    "decode_supervised",
    "StatsConfig",
    "stats",
    "read_formatted_records",
    "TextTokenizeConfig",
    "tokenize_text_files",
    "text_files_ref",
    "best_fit_decreasing",
    "SampleBy",
    "sample_epoch",
    "task_ratios",
    "realised",
    "FromEvalConfig",
    "FromEvalResult",
    "from_eval",
    "is_pair",
    "pair_problems",
    "sides",
]


def read_formatted_records(folder: str | Path, split: Split = "all") -> dict[str, list[dict[str, Any]]]:
    """All records of a formatted folder, per task."""
    return {task: list(iter_task_records(folder, task, split)) for task in task_names(folder)}


# ---- decontaminate ----------------------------------------------------------------------------------------------
@dataclass
class DecontamReport:
    ngram: int
    mode: str
    matched: dict[str, dict[str, list[str]]] = field(default_factory=dict)  # task -> record id -> problem ids
    up_to_date: bool = False

    @property
    def total(self) -> int:
        return sum(len(v) for v in self.matched.values())


def decontaminate(cfg: DecontamConfig, progress: Progress | None = None) -> DecontamReport:
    """Drop (or flag in ``meta.contamination``) records sharing a word n-gram with HumanEval."""
    folder = Path(cfg.folder)
    summary, _, resuming = load_summary(folder, "decontaminate", required=True)
    done = summary.get("decontamination") or {}
    settings = fingerprint_config(cfg)  # against, ngram, mode (see mft_data.config)
    if (
        not resuming
        and done
        and set(done) == set(summary["tasks"])
        and all({k: d.get(k) for k in settings} == settings for d in done.values())
    ):
        return DecontamReport(
            cfg.ngram, cfg.mode, {t: dict.fromkeys(d["ids"], []) for t, d in done.items()}, up_to_date=True
        )
    matcher = Matcher(humaneval_texts(cfg.problems), cfg.ngram)
    report = DecontamReport(cfg.ngram, cfg.mode)
    begin_edit(folder, "decontaminate")
    for task in summary["tasks"]:
        hits: dict[str, list[str]] = {}
        for split, name in SPLIT_FILES.items():
            path = folder / task / name
            if not path.is_file():
                continue
            kept = []
            for record in iter_task_records(folder, task, split):
                if progress:
                    progress(f"{task}/{name}", 1, None)
                problems = matcher.matches(record_text(record))
                if problems:
                    hits[record["id"]] = problems
                    if cfg.mode == "drop":
                        continue
                    record.setdefault("meta", {})["contamination"] = {
                        "against": cfg.against,
                        "ngram": cfg.ngram,
                        "problems": problems,
                    }
                kept.append(record)
            write_jsonl_atomic(path, kept)
        report.matched[task] = hits

    def mutate(summary: dict) -> None:
        for task, hits in report.matched.items():
            if cfg.mode == "drop":
                summary["tasks"][task]["records"] -= len(hits)
            summary.setdefault("decontamination", {})[task] = {
                "against": cfg.against,
                "ngram": cfg.ngram,
                "mode": cfg.mode,
                "matched": len(hits),
                "ids": sorted(hits),
            }
        if cfg.mode == "drop" and summary.get("split"):
            summary["split"]["valid_counts"] = {t: _count(folder / t / "valid.jsonl") for t in report.matched}
            summary["split"]["counts"] = {
                t: [_count(folder / t / "train.jsonl"), _count(folder / t / "valid.jsonl")] for t in report.matched
            }

    update_folder_manifest(folder, "decontaminate", mutate)
    return report


def _count(path: Path) -> int:
    return sum(1 for line in path.open(encoding="utf-8") if line.strip()) if path.is_file() else 0


# ---- split ------------------------------------------------------------------------------------------------------
@dataclass
class SplitReport:
    counts: dict[str, tuple[int, int]]  # task -> (train, valid)
    up_to_date: bool = False


def split_folder(cfg: SplitConfig) -> SplitReport:
    """Write ``train.jsonl``/``valid.jsonl`` per task (data.jsonl is kept), then the manifest."""
    folder = Path(cfg.folder)
    summary, _, resuming = load_summary(folder, "split", required=True)
    done = summary.get("split") or {}
    settings = fingerprint_config(cfg)  # valid_ratio, seed (see mft_data.config)
    same = {k: done.get(k) for k in settings} == settings and "counts" in done
    if same and not resuming:
        return SplitReport({t: tuple(c) for t, c in done["counts"].items()}, up_to_date=True)
    counts = {}
    begin_edit(folder, "split")
    for task in summary["tasks"]:
        records = list(iter_task_records(folder, task))
        valid = split_ids([str(r["id"]) for r in records], cfg.valid_ratio, cfg.seed)
        train_n = write_jsonl_atomic(folder / task / "train.jsonl", (r for r in records if str(r["id"]) not in valid))
        valid_n = write_jsonl_atomic(folder / task / "valid.jsonl", (r for r in records if str(r["id"]) in valid))
        counts[task] = (train_n, valid_n)

    def mutate(summary: dict) -> None:
        summary["split"] = {
            "valid_ratio": cfg.valid_ratio,
            "seed": cfg.seed,
            "valid_counts": {t: c[1] for t, c in counts.items()},
            "counts": {t: list(c) for t, c in counts.items()},
        }

    update_folder_manifest(folder, "split", mutate)
    return SplitReport(counts)


# ---- stats ------------------------------------------------------------------------------------------------------
def stats(cfg: StatsConfig) -> dict[str, Any]:
    """Per-task counts and length distributions (tokens with ``--tokenizer``, else characters)."""
    import numpy as np

    folder = Path(cfg.folder)
    manifest = read_manifest(folder, ("formatted-data", "tokenized-data"), made_by=FORMAT_COMMAND)
    lengths: dict[str, list[int]] = {}
    train: dict[str, list[int]] = {}  # the train split's lengths (all records before a split): the sampled share
    unit = "tokens"
    if manifest.kind == "tokenized-data":
        data = load_tokenized(folder)
        for name, split_ds in data.splits.items():
            for task_ids, seq_lens in zip(split_ds["task_ids"], split_ds["seq_lens"]):
                start = 0
                for n in seq_lens:
                    task = data.tasks[task_ids[start]]
                    lengths.setdefault(task, []).append(n)
                    if name == "train":
                        train.setdefault(task, []).append(n)
                    start += n
    else:
        encoder = ChatEncoder(load_tokenizer(cfg.tokenizer)) if cfg.tokenizer else None
        unit = "tokens" if encoder else "chars"

        def measure(records: list[dict]) -> list[int]:
            """Length of each record; a preference pair counts as one record of both sides (one row holds both)."""
            pairs = [r for r in records if is_pair(r)]
            if encoder is not None:
                return [len(e.input_ids) for e in (encoder.encode_pairs(pairs) if pairs else encoder.encode(records))]
            return [len(record_text(r)) for r in records]

        lengths = {task: measure(records) for task, records in read_formatted_records(folder).items()}
        split_done = has_split(folder)
        train = {t: measure(r) for t, r in read_formatted_records(folder, "train").items()} if split_done else lengths
    if not lengths:
        raise ConfigError(f"{folder}: no records")
    out: dict[str, Any] = {"unit": unit, "tasks": {}}
    for task, values in lengths.items():
        arr = np.asarray(values)
        hist, edges = np.histogram(arr, bins=cfg.bins)
        out["tasks"][task] = {
            "records": int(arr.size),
            "mean": float(arr.mean()),
            "p50": float(np.percentile(arr, 50)),
            "p90": float(np.percentile(arr, 90)),
            "max": int(arr.max()),
            "total": int(arr.sum()),
            "histogram": {"counts": hist.tolist(), "edges": [float(e) for e in edges]},
        }
    out["sampling"] = _sampled_shares(train, cfg)
    if cfg.plot:
        _plot(lengths, unit, cfg.plot, cfg.bins)
    return out


def _sampled_shares(train: dict[str, list[int]], cfg: StatsConfig) -> dict[str, Any]:
    """Per task: records and tokens of the train split, and its share of the training tokens as it is and under
    ``--sample`` ratios (one epoch's draw, as mft-train makes it with the same seed)."""
    import numpy as np

    tasks = tuple(train)
    try:
        ratios = task_ratios(tasks, cfg.sampling())
    except ValueError as exc:
        raise ConfigError(str(exc), fix="name tasks of this folder in --sample") from exc
    record_tasks = np.concatenate([np.full(len(train[t]), i) for i, t in enumerate(tasks)] + [np.zeros(0, np.int64)])
    record_lengths = np.concatenate([np.asarray(train[t], dtype=np.int64) for t in tasks] + [np.zeros(0, np.int64)])
    every = np.arange(len(record_lengths))
    chosen = sample_epoch(record_tasks, record_lengths, ratios, cfg.sample_by, cfg.seed, 0)
    before = realised(every, record_tasks, record_lengths, tasks)
    after = realised(chosen, record_tasks, record_lengths, tasks)
    total_before = sum(v["tokens"] for v in before.values()) or 1
    total_after = sum(v["tokens"] for v in after.values()) or 1
    return {
        "ratios": dict(zip(tasks, ratios.tolist())),
        "by": cfg.sample_by,
        "seed": cfg.seed,
        "tasks": {
            t: {
                "records": before[t]["records"],
                "tokens": before[t]["tokens"],
                "share": before[t]["tokens"] / total_before,
                "sampled_records": after[t]["records"],
                "sampled_tokens": after[t]["tokens"],
                "sampled_share": after[t]["tokens"] / total_after,
            }
            for t in tasks
        },
    }


def _plot(lengths: dict[str, list[int]], unit: str, path: str, bins: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5))
    for task, values in lengths.items():
        ax.hist(values, bins=bins, alpha=0.5, label=f"{task} (n={len(values)})")
    ax.set_xlabel(f"record length ({unit})")
    ax.set_ylabel("records")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
