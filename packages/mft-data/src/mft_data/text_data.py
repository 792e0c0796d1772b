"""Raw text or code files -> a tokenized folder for continued pretraining (loss on every token).

Each document is tokenized whole with EOS appended and cut into pieces of at most ``seq_len`` tokens (a long
file cannot fit one row); each piece after the first starts with the previous piece's last token (context
only), so every token but the document's first is a target exactly once, EOS included. Pieces are then packed
like chat records, with positions restarting at each piece. A hash-chosen share of documents is held out as
the valid split.

Nothing is left out silently: files that are not UTF-8 or cannot be read, folders skipped by name
(:data:`DEFAULT_SKIP_DIRS`, configurable with ``skip_dirs``) and documents too short to train on (under two
tokens, e.g. an empty file) are counted and listed in the manifest's summary and in one summary line.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from mft_core.artifacts import load_tokenizer
from mft_core.errors import ConfigError, InputError
from mft_core.manifest import InputRef, atomic_output_dir, is_up_to_date, new_manifest, read_manifest, sha256_bytes
from mft_core.ui import info

from . import __version__
from .encode import IGNORE, Encoded
from .splitting import split_ids
from .tokenized import TOOL, build_rows, save_rows, tokenizer_ref

DEFAULT_SKIP_DIRS: tuple[str, ...] = (
    ".git",
    ".venv",
    "__pycache__",
    "dist-packages",
    "node_modules",
    "site-packages",
    "test",
    "tests",
)
"""Folder names skipped under a named folder by default: installed packages, caches, VCS data and test suites
(not the source a user points at; a Python prefix holds gigabytes of the first, and the standard library's
``test/`` is mostly fixtures). Pass ``skip_dirs=()`` to keep everything."""
SKIP_DIRS = set(DEFAULT_SKIP_DIRS)  # the former name
TEXT_SUFFIXES = (".py", ".txt", ".md", ".js", ".ts", ".java", ".c", ".h", ".cpp", ".go", ".rs", ".sh", ".rst", ".json")
_SHOWN = 5  # names shown per kind in the summary line (the manifest lists all)


@dataclass(frozen=True)
class TextTokenizeConfig:
    sources: tuple[str, ...] = ()
    tokenizer: str = ""
    out: str = ""
    seq_len: int = 1024
    valid_ratio: float = 0.02
    max_files: int = 0  # 0: all
    max_mb: float = 0.0  # 0: all; else stop adding files past this many megabytes (in sorted order)
    seed: int = 0
    overwrite: bool = False
    skip_dirs: tuple[str, ...] = DEFAULT_SKIP_DIRS  # folder names not entered under a named folder

    def __post_init__(self):
        if self.seq_len < 2:
            raise ConfigError(f"seq_len {self.seq_len}: a piece needs at least 2 tokens (one context, one target)")


@dataclass(frozen=True)
class TextListing:
    """The files to read, and the folders left out because of their name (topmost only, sorted)."""

    files: list[Path]
    skipped_dirs: list[Path] = field(default_factory=list)


def list_text_files(
    sources: Sequence[str], max_files: int = 0, max_mb: float = 0.0, skip_dirs: Sequence[str] = DEFAULT_SKIP_DIRS
) -> TextListing:
    """Files named directly, plus files with a known text suffix under named folders (sorted, deterministic).

    Inside folders, folders whose name is in ``skip_dirs`` are not entered; they are returned in
    ``skipped_dirs``. A folder named directly is always read, whatever its name.
    """
    skip = set(skip_dirs)
    files: list[Path] = []
    skipped: list[Path] = []
    for src in sources:
        path = Path(src)
        if path.is_file():
            files.append(path)
        elif path.is_dir():
            found: list[Path] = []
            for root, dirs, names in os.walk(path):
                skipped += [Path(root) / d for d in dirs if d in skip]
                dirs[:] = [d for d in dirs if d not in skip]  # not entered
                found += [Path(root) / n for n in names if Path(n).suffix in TEXT_SUFFIXES]
            files += sorted(p for p in found if p.is_file())
        else:
            raise InputError(f"{src}: no such file or folder")
    if max_files:
        files = files[:max_files]
    if max_mb:
        kept_files, total = [], 0
        for f in files:
            if total >= max_mb * 1e6:
                break
            kept_files.append(f)
            total += f.stat().st_size
        files = kept_files
    if not files:
        raise InputError(
            f"no text files found in {', '.join(sources)}"
            + (f" ({len(skipped)} folders skipped by name: {', '.join(sorted(skip))})" if skipped else ""),
            fix=f"use files ending in {', '.join(TEXT_SUFFIXES)}" + (", or pass skip_dirs" if skipped else ""),
        )
    return TextListing(files, sorted(skipped))


def text_files(
    sources: Sequence[str], max_files: int = 0, max_mb: float = 0.0, skip_dirs: Sequence[str] = DEFAULT_SKIP_DIRS
) -> list[Path]:
    """The files :func:`list_text_files` finds."""
    return list_text_files(sources, max_files, max_mb, skip_dirs).files


def text_files_ref(
    sources: Sequence[str], max_files: int = 0, max_mb: float = 0.0, skip_dirs: Sequence[str] = DEFAULT_SKIP_DIRS
) -> InputRef:
    """One input reference for a set of raw files: changes when a file is added, removed, resized or rewritten."""
    return _listing_ref(text_files(sources, max_files, max_mb, skip_dirs))


def _listing_ref(files: Sequence[Path]) -> InputRef:
    listing = [(str(f), f.stat().st_size, f.stat().st_mtime_ns) for f in files]
    return InputRef("text-files", None, None, sha256_bytes(json.dumps(listing).encode()))


def chunk_document(ids: np.ndarray, seq_len: int) -> list[Encoded]:
    """Cut a document into pieces of at most ``seq_len`` tokens; every token but the document's first is a
    target exactly once. Each piece after the first begins with the previous piece's last token, as context
    (its label is ignored), so no tail is lost. A document under two tokens gives no piece."""
    if seq_len < 2:
        raise ConfigError(f"seq_len {seq_len}: a piece needs at least 2 tokens")
    pieces: list[Encoded] = []
    if len(ids) < 2:
        return pieces
    start = 0
    while True:
        piece = ids[start : start + seq_len]
        labels = piece.copy()
        labels[0] = IGNORE
        pieces.append(Encoded(piece, labels))
        if start + seq_len >= len(ids):
            return pieces
        start += seq_len - 1


def read_documents(files: Sequence[Path]) -> tuple[list[tuple[str, str]], list[dict[str, str]]]:
    """``(name, text)`` of each UTF-8 file, and ``{"file", "reason"}`` for each file that is not (or unreadable)."""
    documents, skipped = [], []
    for path in files:
        try:
            raw = path.read_bytes()
        except OSError as exc:
            skipped.append({"file": str(path), "reason": f"unreadable ({exc.strerror or exc})"})
            continue
        try:
            documents.append((str(path), raw.decode("utf-8")))
        except UnicodeDecodeError as exc:
            skipped.append(
                {"file": str(path), "reason": f"not UTF-8 (byte 0x{raw[exc.start]:02x} at offset {exc.start})"}
            )
    return documents, skipped


def _some(names: Sequence[str]) -> str:
    shown = ", ".join(names[:_SHOWN])
    return shown + (f", ... ({len(names) - _SHOWN} more)" if len(names) > _SHOWN else "")


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def summary_line(summary: dict[str, Any]) -> str:
    """One line saying what was read and everything that was left out (the manifest lists them all)."""
    skipped = summary["skipped_files"]
    folders = summary["skipped_dirs"]["folders"]
    dropped = summary["dropped_documents"]
    pieces = sum(s["records"] for s in summary["splits"].values())
    parts = [f"text: {_plural(summary['documents'], 'document')} read, {_plural(pieces, 'piece')}"]
    parts.append(
        f"{_plural(len(skipped), 'file')} skipped"
        + (f" (not UTF-8 or unreadable: {_some([s['file'] for s in skipped])})" if skipped else "")
    )
    parts.append(
        f"{_plural(len(folders), 'folder')} skipped"
        + (f" by name ({', '.join(summary['skipped_dirs']['names'])}: {_some(folders)})" if folders else "")
    )
    parts.append(
        f"{_plural(len(dropped), 'document')} dropped" + (f" (under 2 tokens: {_some(dropped)})" if dropped else "")
    )
    return "; ".join(parts)


def tokenize_text_files(cfg: TextTokenizeConfig, progress: Callable[[int, int], None] | None = None):
    """Write a tokenized-data folder (single task ``text``) from raw files; returns its manifest.

    The summary lists what was left out: ``skipped_files`` (``{"file", "reason"}``: not UTF-8, unreadable),
    ``skipped_dirs`` (``{"names", "folders"}``), ``dropped_documents`` (under two tokens), and per split
    ``tasks[split]["text"]["dropped"/"dropped_ids"]``; :func:`summary_line` says it in one line (printed).
    """
    listing = list_text_files(cfg.sources, cfg.max_files, cfg.max_mb, cfg.skip_dirs)
    files = listing.files
    config = {
        "sources": [str(Path(s).resolve()) for s in cfg.sources],
        "files": len(files),
        "max_mb": cfg.max_mb,
        "seq_len": cfg.seq_len,
        "valid_ratio": cfg.valid_ratio,
        "seed": cfg.seed,
        "mode": "pack",
        "kind": "text",
        "skip_dirs": sorted(cfg.skip_dirs),
        "chunking": "overlap-1",  # pieces share one context token (every token a target once)
    }
    inputs = (
        _listing_ref(files),  # the files listed above, not a second walk of the folders
        tokenizer_ref(cfg.tokenizer),
    )
    probe = new_manifest("tokenized-data", TOOL, __version__, config, inputs)
    if is_up_to_date(cfg.out, probe.fingerprint):
        return read_manifest(cfg.out)
    tokenizer = load_tokenizer(cfg.tokenizer)
    if tokenizer.eos_token is None:
        raise InputError(f"{cfg.tokenizer}: the tokenizer has no EOS token")
    documents, skipped_files = read_documents(files)
    names = [name for name, _ in documents]
    texts = [text + tokenizer.eos_token for _, text in documents]
    valid = split_ids(names, cfg.valid_ratio, cfg.seed)
    splits: dict[str, list[Encoded]] = {"train": [], "valid": []}
    dropped: dict[str, list[str]] = {"train": [], "valid": []}
    batch = 64
    for start in range(0, len(texts), batch):
        encodings = tokenizer.backend_tokenizer.encode_batch(texts[start : start + batch], add_special_tokens=False)
        for name, enc in zip(names[start : start + batch], encodings):
            split = "valid" if name in valid else "train"
            pieces = chunk_document(np.asarray(enc.ids, dtype=np.int32), cfg.seq_len)
            if not pieces:
                dropped[split].append(name)  # under 2 tokens (an empty file is its EOS alone): nothing to predict
            splits[split].extend(pieces)
        progress and progress(min(start + batch, len(texts)), len(texts))
    summary: dict[str, Any] = {
        "tasks": {},
        "splits": {},
        "task_names": ["text"],
        "documents": len(texts),
        "skipped_files": skipped_files,
        "skipped_dirs": {"names": sorted(cfg.skip_dirs), "folders": [str(d) for d in listing.skipped_dirs]},
        "dropped_documents": dropped["train"] + dropped["valid"],
    }
    if not splits["train"] and not splits["valid"]:
        raise InputError(
            f"no trainable text in {', '.join(cfg.sources)}: {summary_line(summary)}",
            fix="point at UTF-8 text or code files with some content",
        )
    with atomic_output_dir(cfg.out, overwrite=cfg.overwrite) as staging:
        for split, items in splits.items():
            if not items:
                continue
            table, fill = build_rows(items, [0] * len(items), cfg.seq_len, "pack")
            save_rows(table, staging.path / split, probe.fingerprint + split)
            tokens = int(sum(len(e) for e in items))
            summary["splits"][split] = {
                "rows": table.num_rows,
                "records": len(items),
                "fill_rate": round(fill, 4),
                "tokens": tokens,
            }
            summary["tasks"][split] = {
                "text": {
                    "records": len(items),
                    "tokens": tokens,
                    "supervised_tokens": int(sum(e.supervised for e in items)),
                    "truncated": 0,  # nothing is cut off: long documents become several pieces
                    "dropped": len(dropped[split]),
                    "dropped_ids": dropped[split],
                }
            }
        (staging.path / "tasks.json").write_text(json.dumps({"tasks": ["text"]}) + "\n", encoding="utf-8")
        manifest = new_manifest("tokenized-data", TOOL, __version__, config, inputs, summary)
        staging.finish(manifest)
    info(summary_line(summary))
    return manifest
