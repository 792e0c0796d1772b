"""Read instruction files of any common container: JSONL, JSON arrays, Parquet, CSV; plain or ``.gz``.

Each reader yields ``(location, row)`` where ``location`` is ``file:line`` (or ``file:item N`` / ``file:row N``)
so that every later error can name where the bad row came from. A file that cannot be read to its end (a
truncated or corrupt ``.gz``, an I/O error) is an :class:`InputError` naming the line and byte where it broke.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mft_core.errors import InputError


@dataclass(frozen=True)
class Row:
    """One input row and where it came from."""

    file: str
    line: int  # the line of a JSONL/CSV file, the 1-based item of a JSON array or Parquet table
    data: Any
    error: str | None = None  # set when the row could not be decoded; the caller reports or rejects it
    unit: str = ""  # "" for lines, "item " or "row " where ``line`` counts records
    fix: str | None = None  # how to fix ``error``, when it has a specific remedy

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


_READ_ERRORS = (EOFError, OSError, zlib.error)  # gzip: EOFError when truncated, BadGzipFile (OSError)/zlib.error


def _broken(path: Path, line: int, offset: int, exc: BaseException) -> InputError:
    """The error for a file whose bytes stop making sense at ``line`` (which starts at ``offset``)."""
    if path.name.lower().endswith(".gz"):
        what = "the gzip data ends early or is corrupt"
        fix = f"re-download or re-compress it (`gzip -t {path}` checks a .gz file)"
    else:
        what, fix = "the file could not be read to its end", "check the file and the disk, then re-run"
    size = path.stat().st_size if path.exists() else 0
    text = "decompressed text" if path.name.lower().endswith(".gz") else "text"
    return InputError(
        f"{path}:{line}: {what} ({exc}); the {text} reads cleanly up to byte {offset} (the start of line {line}); "
        f"the file is {size} bytes",
        fix=fix,
    )


def _lines(path: Path, handle: io.BufferedIOBase) -> Iterator[tuple[int, bytes]]:
    """``(line number, raw line)``; a stream that breaks raises :func:`_broken` at the line it broke in."""
    line_no, offset = 0, 0
    while True:
        try:
            raw = handle.readline()
        except _READ_ERRORS as exc:
            raise _broken(path, line_no + 1, offset, exc) from None
        if not raw:
            return
        line_no += 1
        offset += len(raw)
        yield line_no, raw


def _read_all(path: Path, limit: int = -1) -> bytes:
    """The file's (decompressed) bytes, up to ``limit``; a stream that breaks raises :func:`_broken` (at the last
    line start read whole: a chunk that fails is lost, so the break is in that line or within 64 KiB after)."""
    chunks: list[bytes] = []
    size = 0
    with _open_bytes(path) as handle:
        while limit < 0 or size < limit:
            try:
                chunk = handle.read(1 << 16 if limit < 0 else min(1 << 16, limit - size))
            except _READ_ERRORS as exc:
                data = b"".join(chunks)
                line_start = data.rfind(b"\n") + 1
                raise _broken(path, data.count(b"\n") + 1, line_start, exc) from None
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    return b"".join(chunks)


def _not_utf8(raw: bytes, exc: UnicodeDecodeError) -> str:
    return f"not UTF-8 (byte 0x{raw[exc.start]:02x} at column {exc.start + 1})"


def _decode(raw: bytes, path: Path, line: int) -> str:
    """UTF-8 text without a BOM; raises UnicodeDecodeError (JSONL rows) to be reported at their line."""
    text = raw.decode("utf-8")
    return text.lstrip("\ufeff") if line == 1 else text


def read_rows(path: str | Path, allow_extra_cells: bool = False) -> Iterator[Row]:
    """All rows of one file. Decoding problems become rows with ``error`` set (never silently dropped).

    ``allow_extra_cells``: a CSV row with more cells than the header keeps its named cells (the extras are
    dropped) instead of becoming an error row.
    """
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
        yield from _read_csv(path, allow_extra_cells)


def _looks_like_jsonl(path: Path) -> bool:
    head = _read_all(path, 4096).decode("utf-8", errors="replace").lstrip("\ufeff \t\r\n")
    return not head.startswith("[")


def _read_jsonl(path: Path) -> Iterator[Row]:
    with _open_bytes(path) as handle:
        for line_no, raw in _lines(path, handle):
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
    raw = _read_all(path)
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
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except (OSError, pa.ArrowException) as exc:
        raise InputError(f"{path}: not a readable Parquet file ({exc})", fix="re-export or re-download it") from None
    for index, item in enumerate(table.to_pylist(), 1):
        yield Row(str(path), index, item, unit="row ")


def _read_csv(path: Path, allow_extra_cells: bool = False) -> Iterator[Row]:
    raw = _read_all(path)
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise InputError(f"{path}: not UTF-8 (byte offset {exc.start})", fix="re-encode the file as UTF-8") from None
    reader = csv.DictReader(io.StringIO(text, newline=""))
    start = 2  # the header is line 1; a row may span several lines when a field holds newlines
    for item in reader:
        extra = item.get(None)  # DictReader's restkey: cells past the header's last column
        if extra and not allow_extra_cells:
            n, columns = len(extra), len(reader.fieldnames or ())
            yield Row(
                str(path),
                start,
                None,
                f"{n} cell{'s' if n > 1 else ''} beyond the header's {columns} columns: {extra!r}",
                fix="quote cells that hold commas, add the column to the header, or pass --allow-extra-cells "
                "to drop cells past the header",
            )
        else:
            yield Row(str(path), start, {k: v for k, v in item.items() if k is not None})
        start = reader.line_num + 1
