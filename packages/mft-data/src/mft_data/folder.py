"""The formatted-data folder's manifest: one per folder, rewritten last by every command that changes it."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from mft_core.datafolder import FORMAT_COMMAND
from mft_core.errors import InputError
from mft_core.manifest import (
    MANIFEST_NAME,
    InputRef,
    has_manifest,
    manifest_from_dict,
    new_manifest,
    read_manifest,
    write_manifest,
    write_text_atomic,
)

from . import __version__

TOOL = "mft-data"
# progress(label, done_since_last_call, total or None): the CLI turns these calls into progress bars
Progress = Callable[[str, int, "int | None"], None]


# While a command changes a folder in place, its manifest is set aside under this name: a run killed mid-edit
# leaves a folder without a manifest, which no tool takes for finished; running the same command again finishes it.
EDITING_NAME = ".manifest.editing.json"


def begin_edit(folder: Path, command: str) -> None:
    """Set the manifest aside (atomically) before ``command`` changes files in ``folder``."""
    current = folder / MANIFEST_NAME
    if not current.is_file():
        return  # a new folder, or the same command resuming its own interrupted edit
    data = json.loads(current.read_text(encoding="utf-8"))
    data["editing"] = command
    write_text_atomic(folder / EDITING_NAME, json.dumps(data, indent=2))
    os.unlink(current)


def load_summary(
    folder: Path, command: str | None = None, *, required: bool = False
) -> tuple[dict[str, Any], tuple[InputRef, ...], bool]:
    """The folder's summary and inputs, and whether ``command`` is resuming its own interrupted edit.

    A folder left mid-edit by another command is refused: its files no longer match any manifest.
    """
    if has_manifest(folder):
        manifest = read_manifest(folder, "formatted-data", made_by=FORMAT_COMMAND)
        return dict(manifest.summary), manifest.inputs, False
    editing = folder / EDITING_NAME
    if editing.is_file():
        data = json.loads(editing.read_text(encoding="utf-8"))
        if data.get("editing") != command:
            raise InputError(
                f"{folder}: `mft-data {data.get('editing')}` was interrupted while changing this folder",
                fix=f"run that `mft-data {data.get('editing')}` command again to finish it",
            )
        manifest = manifest_from_dict(data)
        return dict(manifest.summary), manifest.inputs, True
    if required:
        read_manifest(folder, "formatted-data", made_by=FORMAT_COMMAND)  # raises the standard "no manifest" error
    return {"tasks": {}}, (), False


def update_folder_manifest(
    folder: Path, command: str, mutate: Callable[[dict[str, Any]], None], new_inputs: Iterable[InputRef] = ()
) -> None:
    """Apply ``mutate`` to the folder summary and write a fresh manifest (last, atomically)."""
    summary, inputs, _ = load_summary(folder, command)
    mutate(summary)
    merged = {i.path: i for i in inputs}
    merged.update({i.path: i for i in new_inputs})
    totals = {"records": sum(t["records"] for t in summary["tasks"].values()), "tasks": len(summary["tasks"])}
    summary["totals"] = totals
    config = {"tasks": {name: t.get("config", {}) for name, t in summary["tasks"].items()}}
    write_manifest(folder, new_manifest("formatted-data", TOOL, __version__, config, tuple(merged.values()), summary))
    (folder / EDITING_NAME).unlink(missing_ok=True)


def write_jsonl_atomic(path: Path, records: Iterable[dict[str, Any]]) -> int:
    """Write records one per line (UTF-8, no ASCII escaping) atomically; returns the count."""
    lines = [json.dumps(r, ensure_ascii=False) for r in records]
    write_text_atomic(path, "".join(line + "\n" for line in lines))
    return len(lines)
