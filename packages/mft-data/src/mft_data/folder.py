"""The formatted-data folder's manifest: one per folder, rewritten last by every command that changes it."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from mft_core.manifest import InputRef, has_manifest, new_manifest, read_manifest, write_manifest, write_text_atomic

from . import __version__

TOOL = "mft-data"


def load_summary(folder: Path) -> tuple[dict[str, Any], tuple[InputRef, ...]]:
    if not has_manifest(folder):
        return {"tasks": {}}, ()
    manifest = read_manifest(folder, "formatted-data")
    return dict(manifest.summary), manifest.inputs


def update_folder_manifest(
    folder: Path, mutate: Callable[[dict[str, Any]], None], new_inputs: Iterable[InputRef] = ()
) -> None:
    """Apply ``mutate`` to the folder summary and write a fresh manifest (last, atomically)."""
    summary, inputs = load_summary(folder)
    mutate(summary)
    merged = {i.path: i for i in inputs}
    merged.update({i.path: i for i in new_inputs})
    totals = {"records": sum(t["records"] for t in summary["tasks"].values()), "tasks": len(summary["tasks"])}
    summary["totals"] = totals
    config = {"tasks": {name: t.get("config", {}) for name, t in summary["tasks"].items()}}
    write_manifest(folder, new_manifest("formatted-data", TOOL, __version__, config, tuple(merged.values()), summary))


def write_jsonl_atomic(path: Path, records: Iterable[dict[str, Any]]) -> int:
    """Write records one per line (UTF-8, no ASCII escaping) atomically; returns the count."""
    lines = [json.dumps(r, ensure_ascii=False) for r in records]
    write_text_atomic(path, "".join(line + "\n" for line in lines))
    return len(lines)
