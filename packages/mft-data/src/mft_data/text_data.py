"""Raw text or code files -> a tokenized folder for continued pretraining (loss on every token).

Each document is tokenized whole with EOS appended and cut into pieces of at most ``seq_len`` tokens (a long
file cannot fit one row); pieces are then packed like chat records, with positions restarting at each piece.
A hash-chosen share of documents is held out as the valid split.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from mft_core.artifacts import load_tokenizer
from mft_core.errors import InputError
from mft_core.manifest import InputRef, atomic_output_dir, is_up_to_date, new_manifest, read_manifest, sha256_bytes

from . import __version__
from .encode import IGNORE, Encoded
from .splitting import split_ids
from .tokenized import TOOL, build_rows, save_rows, tokenizer_ref

SKIP_DIRS = {"site-packages", "dist-packages", "__pycache__", ".git", "node_modules", ".venv", "test", "tests"}
TEXT_SUFFIXES = (".py", ".txt", ".md", ".js", ".ts", ".java", ".c", ".h", ".cpp", ".go", ".rs", ".sh", ".rst", ".json")


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


def text_files(sources: Sequence[str], max_files: int = 0, max_mb: float = 0.0) -> list[Path]:
    """Files named directly, plus files with a known text suffix under named folders (sorted, deterministic).

    Inside folders, installed packages, caches and test suites (:data:`SKIP_DIRS`) are skipped: they are not the
    source a user points at, and a Python prefix holds gigabytes of them.
    """
    files: list[Path] = []
    for src in sources:
        path = Path(src)
        if path.is_file():
            files.append(path)
        elif path.is_dir():
            files += sorted(
                p
                for p in path.rglob("*")
                if p.is_file() and p.suffix in TEXT_SUFFIXES and not SKIP_DIRS & set(p.relative_to(path).parts[:-1])
            )
        else:
            raise InputError(f"{src}: no such file or folder")
    if max_files:
        files = files[:max_files]
    if max_mb:
        kept, total = [], 0
        for f in files:
            if total >= max_mb * 1e6:
                break
            kept.append(f)
            total += f.stat().st_size
        files = kept
    if not files:
        raise InputError(
            f"no text files found in {', '.join(sources)}", fix=f"use files ending in {', '.join(TEXT_SUFFIXES)}"
        )
    return files


def text_files_ref(sources: Sequence[str], max_files: int = 0, max_mb: float = 0.0) -> InputRef:
    """One input reference for a set of raw files: changes when a file is added, removed, resized or rewritten."""
    return _listing_ref(text_files(sources, max_files, max_mb))


def _listing_ref(files: Sequence[Path]) -> InputRef:
    listing = [(str(f), f.stat().st_size, f.stat().st_mtime_ns) for f in files]
    return InputRef("text-files", None, None, sha256_bytes(json.dumps(listing).encode()))


def chunk_document(ids: np.ndarray, seq_len: int) -> list[Encoded]:
    """Cut a document into pieces of at most ``seq_len``; every token is a target except each piece's first."""
    pieces = []
    for start in range(0, len(ids), seq_len):
        piece = ids[start : start + seq_len]
        if len(piece) < 2:
            continue
        labels = piece.copy()
        labels[0] = IGNORE
        pieces.append(Encoded(piece, labels))
    return pieces


def tokenize_text_files(cfg: TextTokenizeConfig, progress: Callable[[int, int], None] | None = None):
    """Write a tokenized-data folder (single task ``text``) from raw files; returns its manifest."""
    files = text_files(cfg.sources, cfg.max_files, cfg.max_mb)
    config = {
        "sources": [str(Path(s).resolve()) for s in cfg.sources],
        "files": len(files),
        "max_mb": cfg.max_mb,
        "seq_len": cfg.seq_len,
        "valid_ratio": cfg.valid_ratio,
        "seed": cfg.seed,
        "mode": "pack",
        "kind": "text",
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
    texts, names = [], []
    for path in files:
        try:
            texts.append(path.read_text(encoding="utf-8") + tokenizer.eos_token)
            names.append(str(path))
        except (UnicodeDecodeError, OSError):
            continue  # binary or unreadable: not text
    valid = split_ids(names, cfg.valid_ratio, cfg.seed)
    splits: dict[str, list[Encoded]] = {"train": [], "valid": []}
    batch = 64
    for start in range(0, len(texts), batch):
        encodings = tokenizer.backend_tokenizer.encode_batch(texts[start : start + batch], add_special_tokens=False)
        for name, enc in zip(names[start : start + batch], encodings):
            pieces = chunk_document(np.asarray(enc.ids, dtype=np.int32), cfg.seq_len)
            splits["valid" if name in valid else "train"].extend(pieces)
        progress and progress(min(start + batch, len(texts)), len(texts))
    summary = {"tasks": {}, "splits": {}, "task_names": ["text"], "documents": len(texts)}
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
                    "truncated": 0,
                    "dropped": 0,
                    "dropped_ids": [],
                }
            }
        (staging.path / "tasks.json").write_text(json.dumps({"tasks": ["text"]}) + "\n", encoding="utf-8")
        manifest = new_manifest("tokenized-data", TOOL, __version__, config, inputs, summary)
        staging.finish(manifest)
    return manifest
