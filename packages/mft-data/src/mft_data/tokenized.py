"""``mft-data tokenize``: a formatted folder -> Arrow datasets of rows ready for training.

Output folder::

    TOKDIR/train/, TOKDIR/valid/   datasets.save_to_disk; columns input_ids, labels, position_ids, task_ids,
                                   seq_lens (one row = one record in pad mode, several whole records in pack mode;
                                   preference folders: whole pairs, chosen then rejected, seq_lens c1, r1, c2, ...)
    TOKDIR/tasks.json              task names in task-id order
    TOKDIR/chat_template.jinja     the template the text was rendered with
    TOKDIR/manifest.json           per-task records, supervised tokens, truncated/dropped counts and ids, fill
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mft_core.artifacts import load_tokenizer
from mft_core.config import fingerprint_config
from mft_core.datafolder import FORMAT_COMMAND, Split, has_split, task_file, task_names
from mft_core.errors import InputError
from mft_core.manifest import InputRef, atomic_output_dir, is_up_to_date, new_manifest, read_manifest
from mft_core.templates import chat_template

from . import __version__
from .config import TokenizeConfig
from .encode import IGNORE, ChatEncoder, Encoded
from .pack import best_fit_decreasing, fill_rate
from .pairs import is_pair

TOOL = "mft-data"
TOKENIZE_COMMAND = "mft-data tokenize DIR --tokenizer MODEL_DIR --out TOKDIR"
COLUMNS = ("input_ids", "labels", "position_ids", "task_ids", "seq_lens")


@dataclass
class TaskTally:
    records: int = 0
    tokens: int = 0
    supervised: int = 0
    truncated: int = 0
    dropped_ids: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        dropped = self.dropped_ids
        return {
            "records": self.records,
            "tokens": self.tokens,
            "supervised_tokens": self.supervised,
            "truncated": self.truncated,
            "dropped": len(dropped),
            "dropped_ids": dropped,
        }


# ---- encoding in worker processes (the tokenizer is loaded once per worker, never pickled) -------------------
_WORKER: dict[str, Any] = {}


def _init_worker(tokenizer_path: str, chat_template: str | None = None) -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    _WORKER["encoder"] = ChatEncoder(load_tokenizer(tokenizer_path), chat_template)


def _encode_chunk(lines: list[str]) -> list[tuple[str, Encoded]]:
    """Parse and encode JSONL lines in the worker (parsing there keeps the parent free and pickles less)."""
    records = [json.loads(line) for line in lines]
    encoder: ChatEncoder = _WORKER["encoder"]
    pairs = [i for i, r in enumerate(records) if is_pair(r)]
    encoded: dict[int, Encoded] = {}  # every record is a pair or a chat: both loops fill every index
    if pairs:
        for i, e in zip(pairs, encoder.encode_pairs([records[i] for i in pairs])):
            encoded[i] = e
    chats = [i for i, r in enumerate(records) if not is_pair(r)]
    for i, e in zip(chats, encoder.encode([records[i] for i in chats]) if chats else []):
        encoded[i] = e
    return [(str(r["id"]), encoded[i]) for i, r in enumerate(records)]


def _chunks(items: Sequence, size: int) -> Iterator[list]:
    for start in range(0, len(items), size):
        yield list(items[start : start + size])


def encode_lines(
    lines: Sequence[str],
    tokenizer_path: str,
    num_proc: int,
    batch_size: int,
    on_progress: Callable[[int], None] | None = None,
    chat_template: str | None = None,
) -> list[tuple[str, Encoded]]:
    """Encode unified-schema JSONL lines in order; with ``num_proc > 1`` chunks go to forked workers.

    ``chat_template`` (Jinja text) replaces the tokenizer's own template; None keeps it.
    """
    out: list[tuple[str, Encoded]] = []
    if num_proc <= 1:
        _init_worker(tokenizer_path, chat_template)
        results: Iterator = map(_encode_chunk, _chunks(lines, batch_size))
        for encoded in results:
            out.extend(encoded)
            on_progress and on_progress(len(encoded))
        return out
    import multiprocessing as mp

    with ProcessPoolExecutor(
        num_proc, mp_context=mp.get_context("fork"), initializer=_init_worker, initargs=(tokenizer_path, chat_template)
    ) as pool:
        for encoded in pool.map(_encode_chunk, _chunks(lines, batch_size)):
            out.extend(encoded)
            on_progress and on_progress(len(encoded))
    return out


# ---- rows -------------------------------------------------------------------------------------------------------
def fit_to_length(enc: Encoded, seq_len: int, policy: str, rid: str, task: str, tally: TaskTally) -> Encoded | None:
    """Apply the overlong policy; returns None (and records the id) when the record is dropped.

    A preference pair is never truncated (cutting would remove the rejected answer or both answers' ends, and a
    pair compares whole answers): ``truncate`` drops an overlong pair, ``error`` stops as for any record.
    """
    if enc.parts is not None:
        if len(enc) <= seq_len and min(enc.part_supervised()) > 0:
            return enc
        if len(enc) > seq_len and policy == "error":
            raise InputError(
                f"task {task!r}, pair {rid!r}: chosen + rejected are {len(enc)} tokens, longer than --seq-len "
                f"{seq_len} (both sides of a pair go in one row)",
                fix="raise --seq-len, or pass --overlong drop",
            )
        tally.dropped_ids.append(rid)
        return None
    if len(enc) <= seq_len and enc.supervised > 0:
        return enc
    if enc.supervised == 0:
        tally.dropped_ids.append(rid)  # nothing to learn from (e.g. only a system turn)
        return None
    if policy == "error":
        raise InputError(
            f"task {task!r}, record {rid!r}: {len(enc)} tokens, longer than --seq-len {seq_len}",
            fix="raise --seq-len, or pass --overlong drop|truncate",
        )
    if policy == "drop":
        tally.dropped_ids.append(rid)
        return None
    cut = Encoded(enc.input_ids[:seq_len], enc.labels[:seq_len])
    if cut.supervised == 0:
        tally.dropped_ids.append(rid)
        return None
    tally.truncated += 1
    return cut


def build_rows(items: Sequence[Encoded], task_ids: Sequence[int], seq_len: int, mode: str):
    """A pyarrow table of rows (columns :data:`COLUMNS`) plus the fill rate (real tokens / ``seq_len`` slots).

    Everything is done on flat numpy arrays with list offsets: rows are views of one concatenation, so packing
    50k records costs well under a second, not a Python loop per token.
    """
    import numpy as np
    import pyarrow as pa

    lengths = np.fromiter((len(it) for it in items), dtype=np.int64, count=len(items))
    bins = best_fit_decreasing(lengths.tolist(), seq_len) if mode == "pack" else [[i] for i in range(len(items))]
    order = np.fromiter((i for b in bins for i in b), dtype=np.int64, count=len(items))
    ordered_len = lengths[order]
    ordered = [items[i] for i in order.tolist()]
    # an item is one record, or a pair of two (chosen, rejected): seq_lens lists every part, positions restart at each
    part_len = np.fromiter((n for it in ordered for n in it.lengths), dtype=np.int64)
    part_starts = np.concatenate([[0], np.cumsum(part_len)[:-1]]).astype(np.int64)
    ids = np.concatenate([it.input_ids for it in ordered]).astype(np.int32, copy=False)
    labels = np.concatenate([it.labels for it in ordered]).astype(np.int32, copy=False)
    positions = (np.arange(ids.size, dtype=np.int64) - np.repeat(part_starts, part_len)).astype(np.int32)
    tasks = np.repeat(np.asarray(task_ids, dtype=np.int16)[order], ordered_len)
    items_per_row = np.fromiter((len(b) for b in bins), dtype=np.int64, count=len(bins))
    item_offsets = np.concatenate([[0], np.cumsum(items_per_row)]).astype(np.int64)
    token_offsets = np.concatenate([[0], np.cumsum(ordered_len)])[item_offsets].astype(np.int32)
    parts_per_item = np.concatenate([[0], np.cumsum([len(it.lengths) for it in ordered])]).astype(np.int64)
    record_offsets = parts_per_item[item_offsets].astype(np.int32)

    def as_list(values, offsets, arrow_type):
        return pa.ListArray.from_arrays(pa.array(offsets, pa.int32()), pa.array(values, arrow_type))

    table = pa.table(
        {
            "input_ids": as_list(ids, token_offsets, pa.int32()),
            "labels": as_list(labels, token_offsets, pa.int32()),
            "position_ids": as_list(positions, token_offsets, pa.int32()),
            "task_ids": as_list(tasks, token_offsets, pa.int16()),
            "seq_lens": as_list(part_len.astype(np.int32), record_offsets, pa.int32()),
        }
    )
    return table, fill_rate(bins, lengths.tolist(), seq_len)


def _features():
    from datasets import Features, Value
    from datasets import Sequence as Seq

    return Features(
        {
            "input_ids": Seq(Value("int32")),
            "labels": Seq(Value("int32")),
            "position_ids": Seq(Value("int32")),
            "task_ids": Seq(Value("int16")),
            "seq_lens": Seq(Value("int32")),
        }
    )


def save_rows(table, path: Path, fingerprint: str) -> None:
    """Save as a datasets folder; the fingerprint is ours so the bytes don't depend on a random id."""
    from datasets import Dataset, disable_progress_bars

    disable_progress_bars()  # our own progress bar covers this
    Dataset(table.cast(_features().arrow_schema), fingerprint=fingerprint[:16]).save_to_disk(str(path))


# ---- the command ------------------------------------------------------------------------------------------------
@dataclass
class TokenizeResult:
    out: Path
    summary: dict[str, Any]
    up_to_date: bool = False


def _splits(folder: str) -> list[tuple[str, Split]]:
    """(output split, formatted split) pairs: train/valid after `mft-data split`, else everything as train."""
    return [("train", "train"), ("valid", "valid")] if has_split(folder) else [("train", "all")]


def _per_split(progress: Callable[[str, int, int], None], split: str, total: int) -> Callable[[int], None]:
    return lambda n: progress(split, n, total)


def tokenize_folder(cfg: TokenizeConfig, progress: Callable[[str, int, int], None] | None = None) -> TokenizeResult:
    """Tokenize every task of ``cfg.folder`` with ``cfg.tokenizer`` into ``cfg.out`` (atomically, manifest last)."""
    source = read_manifest(cfg.folder, "formatted-data", made_by=FORMAT_COMMAND)
    tasks = task_names(cfg.folder)
    tokenizer = load_tokenizer(cfg.tokenizer)
    forced = chat_template(cfg.chat_template) if cfg.chat_template else None  # --chat-template NAME
    encoder = ChatEncoder(tokenizer, forced)  # checks EOS and fast tokenizer before any work
    config = fingerprint_config(cfg)  # the settings that change the rows (see mft_data.config)
    config["chat_template"] = encoder.template
    inputs = (InputRef(str(Path(cfg.folder).resolve()), source.kind, source.id), tokenizer_ref(cfg.tokenizer))
    manifest_probe = new_manifest("tokenized-data", TOOL, __version__, config, inputs)
    if is_up_to_date(cfg.out, manifest_probe.fingerprint):
        return TokenizeResult(Path(cfg.out), read_manifest(cfg.out).summary, up_to_date=True)

    summary: dict[str, Any] = {"tasks": {}, "splits": {}}
    with atomic_output_dir(cfg.out, overwrite=cfg.overwrite) as staging:
        for split, source_split in _splits(cfg.folder):
            items: list[Encoded] = []
            item_tasks: list[int] = []
            tallies = {t: TaskTally() for t in tasks}
            lines, line_tasks = [], []
            for task_id, task in enumerate(tasks):
                with open(task_file(cfg.folder, task, source_split), encoding="utf-8") as handle:
                    task_lines = [line for line in handle if line.strip()]
                lines += task_lines
                line_tasks += [task_id] * len(task_lines)
            if not lines and split == "valid":
                continue  # `split --valid-ratio 0`: no valid split, as if the folder had not been split
            report = _per_split(progress, split, len(lines)) if progress else None
            encoded = encode_lines(lines, cfg.tokenizer, cfg.num_proc, cfg.batch_size, report, forced)
            preference = _preference_kind(encoded, line_tasks, tasks, cfg.folder)
            for (rid, enc), task_id in zip(encoded, line_tasks):
                tally = tallies[tasks[task_id]]
                fitted = fit_to_length(enc, cfg.seq_len, cfg.overlong, rid, tasks[task_id], tally)
                if fitted is None:
                    continue
                tally.records += 1
                tally.tokens += len(fitted)
                tally.supervised += fitted.supervised
                items.append(fitted)
                item_tasks.append(task_id)
            if not items:
                raise InputError(
                    f"{cfg.folder}: no record of split '{split}' fits --seq-len {cfg.seq_len}",
                    fix="raise --seq-len or check the data",
                )
            table, fill = build_rows(items, item_tasks, cfg.seq_len, cfg.mode)
            save_rows(table, staging.path / split, f"{manifest_probe.fingerprint}{split}")
            summary["splits"][split] = {
                "rows": table.num_rows,
                "records": len(items),
                "fill_rate": round(fill, 4),
                "tokens": int(sum(len(e) for e in items)),
            }
            summary["tasks"][split] = {t: tallies[t].to_dict() for t in tasks}
        (staging.path / "tasks.json").write_text(json.dumps({"tasks": tasks}, indent=2) + "\n", encoding="utf-8")
        (staging.path / "chat_template.jinja").write_text(encoder.template, encoding="utf-8")
        summary["task_names"] = tasks
        summary["preference"] = preference  # rows hold (chosen, rejected) pairs: seq_lens c1, r1, c2, r2, ...
        manifest = new_manifest("tokenized-data", TOOL, __version__, config, inputs, summary)
        staging.finish(manifest)
    return TokenizeResult(Path(cfg.out), summary)


def _preference_kind(encoded: list[tuple[str, Encoded]], line_tasks: list[int], tasks: list[str], folder: str) -> bool:
    """True when every record is a preference pair, False when none is; a mix is refused (one run trains one
    objective: a preference loss on pairs, or cross-entropy on chat records)."""
    pair_tasks = sorted({tasks[t] for (_, e), t in zip(encoded, line_tasks) if e.parts is not None})
    chat_tasks = sorted({tasks[t] for (_, e), t in zip(encoded, line_tasks) if e.parts is None})
    if pair_tasks and chat_tasks:
        raise InputError(
            f"{folder}: tasks {', '.join(pair_tasks)} hold preference pairs but {', '.join(chat_tasks)} hold chat "
            "records; a tokenized folder is one or the other",
            fix="tokenize the pair tasks into their own folder (mft-data from-eval --out a separate folder)",
        )
    return bool(pair_tasks)


def tokenizer_ref(path: str) -> InputRef:
    """Identify a tokenizer by the hash of its tokenizer.json (a hub id without local files: by name)."""
    from mft_core.artifacts import resolve_tokenizer_dir

    candidate = Path(resolve_tokenizer_dir(path)) / "tokenizer.json"
    return InputRef.of(candidate) if candidate.is_file() else InputRef(str(path))


# ---- reading it back (the API mft-train uses) ---------------------------------------------------------------
@dataclass(frozen=True)
class TokenizedData:
    """A tokenized folder loaded back: datasets per split, task names and the manifest."""

    path: Path
    tasks: tuple[str, ...]
    splits: dict[str, Any]
    manifest: Any
    seq_len: int

    @property
    def train(self):
        return self.splits["train"]

    @property
    def valid(self):
        return self.splits.get("valid")


def load_tokenized(path: str | Path) -> TokenizedData:
    """Load a folder written by ``mft-data tokenize``.

    Raises:
        ContractError: not a finished tokenized folder (names the command that makes one).
    """
    from datasets import load_from_disk

    manifest = read_manifest(path, "tokenized-data", made_by=TOKENIZE_COMMAND)
    tasks = tuple(json.loads((Path(path) / "tasks.json").read_text(encoding="utf-8"))["tasks"])
    splits = {s: load_from_disk(str(Path(path) / s)) for s in ("train", "valid") if (Path(path) / s).is_dir()}
    return TokenizedData(Path(path), tasks, splits, manifest, int(manifest.config["seq_len"]))


def decode_supervised(tokenizer, input_ids: Sequence[int], labels: Sequence[int]) -> list[str]:
    """The supervised spans of a row decoded as text (for tests and `mft-data stats --show`)."""
    spans, current = [], []
    for tok, lab in zip(input_ids, labels):
        if lab != IGNORE:
            current.append(tok)
        elif current:
            spans.append(tokenizer.decode(current, clean_up_tokenization_spaces=False))
            current = []
    if current:
        spans.append(tokenizer.decode(current, clean_up_tokenization_spaces=False))
    return spans
