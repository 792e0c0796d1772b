"""Streaming safetensors reads and writes, one tensor at a time.

The ``safetensors`` library maps whole files (every page touched stays resident) and writes a file from a
complete dict in memory. Merging a model of any size in about one tensor's memory needs both ends streamed:
the format is an 8-byte little-endian header length, a JSON header of ``name -> {dtype, shape, data_offsets}``
and the raw little-endian bytes, so reading one entry is a seek and a read, and writing needs only the plan.
"""

from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass
from io import BufferedIOBase
from pathlib import Path

import torch

DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}
NAMES = {v: k for k, v in DTYPES.items()}


@dataclass(frozen=True)
class Entry:
    name: str
    dtype: str
    shape: tuple[int, ...]
    start: int  # absolute offset in the file
    nbytes: int


def read_header(path: str | Path) -> tuple[list[Entry], dict]:
    """Entries in file order and the ``__metadata__`` dict."""
    with open(path, "rb") as f:
        (length,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(length))
    meta = header.pop("__metadata__", {}) or {}
    base = 8 + length
    entries = [
        Entry(
            name,
            v["dtype"],
            tuple(v["shape"]),
            base + v["data_offsets"][0],
            v["data_offsets"][1] - v["data_offsets"][0],
        )
        for name, v in header.items()
    ]
    return sorted(entries, key=lambda e: e.start), meta


def read_tensor(handle: BufferedIOBase, entry: Entry) -> torch.Tensor:
    """Read one tensor into fresh memory (nothing else of the file stays resident)."""
    buffer = bytearray(entry.nbytes)
    handle.seek(entry.start)
    handle.readinto(buffer)
    flat = (
        torch.frombuffer(buffer, dtype=DTYPES[entry.dtype])
        if entry.nbytes
        else torch.empty(0, dtype=DTYPES[entry.dtype])
    )
    return flat.reshape(entry.shape)


def tensor_nbytes(shape: tuple[int, ...], dtype: torch.dtype) -> int:
    n = 1
    for d in shape:
        n *= d
    return n * torch.empty((), dtype=dtype).element_size()


class StreamingWriter:
    """Writes a safetensors file whose tensor list (names, dtypes, shapes) is known up front."""

    def __init__(
        self, path: str | Path, plan: list[tuple[str, torch.dtype, tuple[int, ...]]], metadata: dict | None = None
    ):
        header: dict = {"__metadata__": metadata or {"format": "pt"}}
        offset = 0
        self._expected = []
        for name, dtype, shape in plan:
            size = tensor_nbytes(shape, dtype)
            header[name] = {"dtype": NAMES[dtype], "shape": list(shape), "data_offsets": [offset, offset + size]}
            self._expected.append((name, dtype, tuple(shape)))
            offset += size
        raw = json.dumps(header, separators=(",", ":")).encode()
        raw += b" " * (-len(raw) % 8)  # align the data section, as the reference writer does
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)  # unbuffered: copies go by fd
        self._write_all(memoryview(struct.pack("<Q", len(raw)) + raw))
        self._next = 0

    def write(self, name: str, tensor: torch.Tensor) -> None:
        self._expect(name, tensor.dtype, tuple(tensor.shape))
        data = tensor.contiguous()
        if data.dtype == torch.bfloat16:  # numpy has no bf16: write its raw 16-bit pattern
            data = data.view(torch.int16)
        if data.numel():
            self._write_all(data.numpy().data.cast("B"))
        self._next += 1

    def copy(self, name: str, source_fd: int, entry: Entry) -> None:
        """Write a tensor as another safetensors file stores it, its bytes copied by the kernel."""
        self._expect(name, DTYPES[entry.dtype], entry.shape)
        done = 0
        while done < entry.nbytes:
            try:
                got = os.copy_file_range(source_fd, self._fd, entry.nbytes - done, entry.start + done)
            except OSError:  # a file system or kernel without it: read and write
                got = 0
            if got <= 0:
                chunk = os.pread(source_fd, min(64 << 20, entry.nbytes - done), entry.start + done)
                if not chunk:
                    raise OSError(f"short read of {entry.name}")
                self._write_all(memoryview(chunk))
                got = len(chunk)
            done += got
        self._next += 1

    def close(self) -> None:
        if self._next != len(self._expected):
            raise ValueError(f"only {self._next} of {len(self._expected)} planned tensors were written")
        os.fsync(self._fd)
        os.close(self._fd)

    def _expect(self, name: str, dtype: torch.dtype, shape: tuple[int, ...]) -> None:
        expected = self._expected[self._next]
        if (name, dtype, tuple(shape)) != expected:
            raise ValueError(f"tensor {name} {dtype} {tuple(shape)} out of plan, expected {expected}")

    def _write_all(self, data: memoryview) -> None:
        while len(data):
            data = data[os.write(self._fd, data) :]
