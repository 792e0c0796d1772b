"""``mft-data format``: input files of any common format -> ``DIR/<task>/data.jsonl`` in the unified schema."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mft_core.config import fingerprint_config
from mft_core.errors import ConfigError, InputError
from mft_core.manifest import InputRef, compute_fingerprint, staged_dir
from mft_core.schema import validate_record

from . import __version__
from .config import FormatConfig
from .folder import TOOL, Progress, begin_edit, load_summary, update_folder_manifest, write_jsonl_atomic
from .formats import CONVERTERS, FORMATS, Remap, RowError, detect_format
from .pairs import pair_problems
from .readers import Row, read_rows


@dataclass
class FormatResult:
    task: str
    folder: Path
    records: int = 0
    rejected: int = 0
    formats: dict[str, int] = field(default_factory=dict)
    up_to_date: bool = False


class _Rejects:
    """Collects bad rows; raises at the first one unless ``--skip-invalid``."""

    def __init__(self, skip: bool):
        self.skip = skip
        self.rows: list[dict[str, Any]] = []

    def add(self, row: Row, field_name: str | None, message: str, fix: str | None = None) -> None:
        if not self.skip:
            at = f" (field {field_name})" if field_name else ""
            fix = fix or row.fix or "fix that line"
            raise InputError(
                f"{row.where}{at}: {message}", fix=f"{fix}, or pass --skip-invalid to set such lines aside"
            )
        self.rows.append(
            {
                "file": row.file,
                "line": row.line,
                "field": field_name,
                "reason": message,
                "raw": row.data if row.error is None else None,
            }
        )


def _unknown_format(row: Row, keys: set[str]) -> InputError:
    return InputError(
        f"{row.where}: cannot tell the format from fields {sorted(keys)}",
        fix=f"pass --from one of {', '.join(FORMATS)}, or rename fields with --map SRC=DST "
        "(e.g. --map solution=answer)",
    )


def _convert_file(
    path: str,
    cfg: FormatConfig,
    remap: Remap,
    rejects: _Rejects,
    out: list,
    result: FormatResult,
    seen_ids: dict[str, str],
    progress: Progress | None = None,
) -> None:
    fixed_format = None if cfg.source_format == "auto" else cfg.source_format
    for row in read_rows(path, allow_extra_cells=cfg.allow_extra_cells):
        if progress:
            progress(os.path.basename(path), 1, None)
        if row.error is not None:
            rejects.add(row, None, row.error)
            continue
        if not isinstance(row.data, dict):
            rejects.add(row, None, f"expected a JSON object per line, found {type(row.data).__name__}")
            continue
        clash = None if cfg.map_overwrite else remap.collision(row.data)
        if clash is not None:
            src, dst = clash
            rejects.add(
                row,
                dst,
                f"--map {src}={dst} would overwrite the row's own '{dst}' field",
                fix=f"map onto a field the rows do not have, or pass --map-overwrite to replace '{dst}' with '{src}'",
            )
            continue
        data = remap.apply(row.data)
        fmt = fixed_format or detect_format(set(data))
        if fmt is None:
            if rejects.skip:
                rejects.add(row, None, f"unknown format; fields seen: {sorted(data)}")
                continue
            raise _unknown_format(row, set(data))
        try:
            rounds = CONVERTERS[fmt](data)
        except RowError as exc:
            rejects.add(row, exc.field, exc.message)
            continue
        raw_id = data.get("id", data.get("task_id"))
        rid = (
            str(raw_id)
            if isinstance(raw_id, (str, int)) and str(raw_id)
            else f"{cfg.task}-{len(out) + len(rejects.rows):07d}"
        )
        if rid in seen_ids:
            rejects.add(row, "id", f"duplicate id {rid!r} (first seen at {seen_ids[rid]})")
            continue
        meta = {"source": os.path.basename(row.file), "line": row.line, "format": fmt}
        if fmt == "pairs":  # both sides kept as they are: a preference record (mft_data.pairs)
            record = {"id": rid, "task": cfg.task, **rounds, "meta": meta}
            problems = pair_problems(record)
        else:
            record = {"id": rid, "task": cfg.task, "chat_rounds": rounds, "meta": meta}
            problems = validate_record(record)
        if problems:
            rejects.add(row, problems[0].field, "; ".join(p.message for p in problems))
            continue
        seen_ids[rid] = row.where
        out.append(record)
        result.formats[fmt] = result.formats.get(fmt, 0) + 1


def format_task(cfg: FormatConfig, progress: Progress | None = None) -> FormatResult:
    """Convert ``cfg.inputs`` into task ``cfg.task`` of folder ``cfg.out`` (other tasks are kept).

    Raises:
        InputError: a bad row (file:line and field named) without --skip-invalid, or no usable record at all.
        ConfigError: the task exists from other inputs and --overwrite was not given.
    """
    folder = Path(cfg.out)
    try:
        remap = Remap.parse(cfg.field_map)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    inputs = tuple(InputRef.of(p) for p in cfg.inputs)
    task_config = fingerprint_config(cfg)  # the settings that change the task's data (see mft_data.config)
    fingerprint = compute_fingerprint("formatted-data", TOOL, __version__, task_config, inputs)
    command = f"format --task {cfg.task}"
    summary, _, resuming = load_summary(folder, command) if folder.is_dir() else ({"tasks": {}}, (), False)
    existing = summary["tasks"].get(cfg.task)
    result = FormatResult(cfg.task, folder)
    fresh = existing and existing.get("fingerprint") == fingerprint and (folder / cfg.task / "data.jsonl").is_file()
    if fresh and not resuming:
        result.records, result.rejected, result.up_to_date = existing["records"], existing.get("rejected", 0), True
        return result
    if existing and not cfg.overwrite and not resuming:
        raise ConfigError(
            f"task '{cfg.task}' already exists in {folder} (from other inputs or settings)",
            fix="pass --overwrite to replace it, or choose another --task",
        )

    rejects = _Rejects(cfg.skip_invalid)
    records: list[dict] = []
    seen: dict[str, str] = {}
    for path in cfg.inputs:
        _convert_file(path, cfg, remap, rejects, records, result, seen, progress)
    if not records:
        raise InputError(
            f"no usable record in {', '.join(cfg.inputs)}"
            + (f" ({len(rejects.rows)} rejected)" if rejects.rows else " (empty input)"),
            fix="check the files (see rejects with --skip-invalid)",
        )
    result.records, result.rejected = len(records), len(rejects.rows)
    if folder.is_dir():
        begin_edit(folder, command)
    write_task_dir(folder, cfg.task, records, rejects.rows)

    def mutate(s: dict[str, Any]) -> None:
        s["tasks"][cfg.task] = {
            "records": len(records),
            "rejected": len(rejects.rows),
            "formats": result.formats,
            "fingerprint": fingerprint,
            "config": task_config,
        }
        s.pop("split", None)  # a changed task invalidates an earlier split
        if s.get("decontamination"):
            s["decontamination"].pop(cfg.task, None)

    update_folder_manifest(folder, command, mutate, inputs)
    return result


def write_task_dir(folder: Path, task: str, records: list, rejects: list) -> None:
    """Write the task folder under a temp name, then swap it in (a killed run leaves no half task)."""
    with staged_dir(folder / task, overwrite=True) as staged:
        write_jsonl_atomic(staged / "data.jsonl", records)
        if rejects:
            write_jsonl_atomic(staged / "rejects.jsonl", rejects)
