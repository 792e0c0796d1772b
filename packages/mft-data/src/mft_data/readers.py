"""Read instruction files of any common container: JSONL, JSON arrays, Parquet, CSV; plain or ``.gz``.

Each reader yields ``(location, row)`` where ``location`` is ``file:line`` (or ``file:item N`` / ``file:row N``)
so that every later error can name where the bad row came from.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mft_core.errors import InputError

CONTAINERS = ("jsonl", "json", "parquet", "csv")


@dataclass(frozen=True)
class Row:
    """One input row and where it came from."""

    file: str
    line: int  # the line of a JSONL/CSV file, the 1-based item of a JSON array or Parquet table
    data: Any
    error: str | None = None  # set when the row could not be decoded; the caller reports or rejects it
    unit: str = ""  # "" for lines, "item " or "row " where ``line`` counts records

    @property
    def where(self) -> str:
        return f"{self.file}:{self.unit}{self.line}"


def container_of(path: Path) -> str:
    name = path.name.lower()
    if name.endswith(".gz"):
        name = name[:-3]
    suffix = name.rsplit(".", 1)[-1] if "." in name else ""
    if suffix in ("jsonl", "ndjson"):
        return "jsonl"
    if suffix in ("json", "parquet", "csv"):
        return suffix
    raise InputError(
        f"{path}: unknown file type '.{suffix}'",
        fix="use .jsonl, .json, .parquet or .csv (optionally .gz)",
    )


def _open_bytes(path: Path) -> io.BufferedIOBase:
    return gzip.open(path, "rb") if path.name.lower().endswith(".gz") else open(path, "rb")


def _not_utf8(raw: bytes, exc: UnicodeDecodeError) -> str:
    return f"not UTF-8 (byte 0x{raw[exc.start]:02x} at column {exc.start + 1})"


def _decode(raw: bytes, path: Path, line: int) -> str:
    """UTF-8 text without a BOM; raises UnicodeDecodeError (JSONL rows) to be reported at their line."""
    text = raw.decode("utf-8")
    return text.lstrip("\ufeff") if line == 1 else text


def read_rows(path: str | Path) -> Iterator[Row]:
    """All rows of one file. Decoding problems become rows with ``error`` set (never silently dropped)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    kind = container_of(path)
    if kind == "jsonl" or (kind == "json" and _looks_like_jsonl(path)):
        yield from _read_jsonl(path)
    elif kind == "json":
        yield from _read_json_array(path)
    elif kind == "parquet":
        yield from _read_parquet(path)
    else:
        yield from _read_csv(path)


def _looks_like_jsonl(path: Path) -> bool:
    with _open_bytes(path) as handle:
        head = handle.read(4096).decode("utf-8", errors="replace").lstrip("\ufeff \t\r\n")
    return not head.startswith("[")


def _read_jsonl(path: Path) -> Iterator[Row]:
    with _open_bytes(path) as handle:
        for line_no, raw in enumerate(handle, 1):
            try:
                text = _decode(raw, path, line_no)
            except UnicodeDecodeError as exc:
                yield Row(str(path), line_no, None, _not_utf8(raw, exc))
                continue
            if not text.strip():
                continue
            try:
                yield Row(str(path), line_no, json.loads(text))
            except json.JSONDecodeError as exc:
                yield Row(str(path), line_no, None, f"not valid JSON: {exc.msg} at column {exc.colno}")


def _read_json_array(path: Path) -> Iterator[Row]:
    with _open_bytes(path) as handle:
        raw = handle.read()
    try:
        data = json.loads(_decode(raw, path, 1))
    except UnicodeDecodeError as exc:
        raise InputError(f"{path}: {_not_utf8(raw, exc)}", fix="re-encode the file as UTF-8") from None
    except json.JSONDecodeError as exc:
        raise InputError(f"{path}:{exc.lineno}: not valid JSON: {exc.msg} at column {exc.colno}") from None
    if not isinstance(data, list):
        raise InputError(f"{path}: expected a JSON array of records (or JSONL), found {type(data).__name__}")
    for index, item in enumerate(data, 1):
        yield Row(str(path), index, item, unit="item ")


def _read_parquet(path: Path) -> Iterator[Row]:
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    for index, item in enumerate(table.to_pylist(), 1):
        yield Row(str(path), index, item, unit="row ")


def _read_csv(path: Path) -> Iterator[Row]:
    with _open_bytes(path) as handle:
        try:
            text = handle.read().decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            raise InputError(
                f"{path}: not UTF-8 (byte offset {exc.start})", fix="re-encode the file as UTF-8"
            ) from None
    reader = csv.DictReader(io.StringIO(text, newline=""))
    start = 2  # the header is line 1; a row may span several lines when a field holds newlines
    for item in reader:
        yield Row(str(path), start, {k: v for k, v in item.items() if k is not None})
        start = reader.line_num + 1
