"""What crosses the pipes between the evaluator, the server, the slots, the candidate and the judge.

Every message is a frame: a 4-byte big-endian length, then that many bytes of JSON. Readers bound the length,
so a program that floods a pipe gets its call failed, never a reader's memory.

Pipes of one program (made fresh for each program, so nothing a program writes survives it)::

    evaluator ──job──► slot              JobHeader: the candidate's program, limits (never the test)
    evaluator ──test─► judge             JudgeSpec: prelude (prompt), test, entry point (read by the judge only)
    judge ─────call──► candidate         {"args": plain, "kwargs": plain}
    candidate ─reply─► judge             Reply frames (see candidate.py); nothing else is read from it
    judge ────verdict► slot              {"status": "passed" | "failed" | "in-process", ...}
    candidate ─output► slot              captured stdout/stderr text, at the end (for the record only)
"""

from __future__ import annotations

import json
import os
import struct
from dataclasses import asdict, dataclass, fields
from typing import Any

FRAME_HEADER = struct.Struct(">I")
MAX_FRAME = 64 << 20
STATUSES = ("passed", "failed", "timed out", "crashed")
VERDICTS = ("external", "in-process")


def write_frame(fd: int, message: Any, raw: bytes | None = None) -> None:
    """Write one frame (all of it). ``raw`` sends bytes that are already JSON."""
    data = raw if raw is not None else json.dumps(message, ensure_ascii=True).encode()
    data = FRAME_HEADER.pack(len(data)) + data
    while data:
        data = data[os.write(fd, data) :]


def read_exact(fd: int, n: int) -> bytes | None:
    """``n`` bytes from ``fd``, or None at end of file before that."""
    parts, got = [], 0
    while got < n:
        chunk = os.read(fd, min(n - got, 1 << 20))
        if not chunk:
            return None
        parts.append(chunk)
        got += len(chunk)
    return b"".join(parts)


def read_frame_bytes(fd: int, limit: int = MAX_FRAME) -> bytes | None:
    """The payload of the next frame; None at end of file; ``ValueError`` when it announces more than ``limit``."""
    head = read_exact(fd, FRAME_HEADER.size)
    if head is None:
        return None
    (size,) = FRAME_HEADER.unpack(head)
    if size > limit:
        raise ValueError(f"frame of {size} bytes exceeds {limit}")
    return read_exact(fd, size)


def read_frame(fd: int, limit: int = MAX_FRAME) -> Any:
    data = read_frame_bytes(fd, limit)
    return None if data is None else json.loads(data)


@dataclass(frozen=True)
class Limits:
    """Per-program resource limits (and per-slot cgroup limits)."""

    memory_mb: int = 2048  # RLIMIT_AS of each process, and the memory cgroup limit of its slot
    file_size_mb: int = 16  # RLIMIT_FSIZE
    open_files: int = 256  # RLIMIT_NOFILE
    processes: int = 64  # pids.max of the slot's cgroup, or RLIMIT_NPROC of the slot's own uid
    output_bytes: int = 4096  # stdout+stderr kept per program (the rest is counted and dropped)
    tmpfs_mb: int = 64  # the private /tmp of each program

    def __post_init__(self):
        for f in fields(self):
            if getattr(self, f.name) < 1:
                raise ValueError(f"sandbox limit {f.name} must be positive, got {getattr(self, f.name)}")
        if self.memory_mb < 256:
            raise ValueError(f"--memory-mb {self.memory_mb}: Python itself needs more than 256 MB of address space")


@dataclass(frozen=True)
class JobHeader:
    """What the slot reads for one program. ``judge_bytes`` > 0: a judge follows on the test pipe (external
    verdict); 0: the program is its own check (in-process: it passes if it runs to the end)."""

    id: int
    program: str
    entry_point: str = ""
    cpu_s: float = 3.0  # CPU seconds for the candidate, and for the judge
    wall_s: float = 12.0  # wall-clock backstop for both
    judge_bytes: int = 0


@dataclass(frozen=True)
class JudgeSpec:
    """The trusted half of a problem: never sent to the slot or the candidate."""

    prelude: str  # preamble + the problem's prompt: helpers the test uses (poly, encode_cyclic, ...)
    test: str
    entry_point: str


@dataclass(frozen=True)
class ServerConfig:
    """The server's whole configuration, one JSON line on its stdin."""

    slots: list[tuple[int, int, int]]  # (job read end, test read end, result write end) per slot
    limits: Limits
    slot_memory_mb: int
    slow_after_s: float
    preload: list[str]
    packages: list[str]
    isolation: str  # "auto" (all the kernel allows) | "minimal" (guard and rlimits only)
    force_user_namespace: bool = False  # tests: take the unprivileged path while root
    uid_base: int | None = None  # first of the per-run uids (2 per slot); chosen by the server when None

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, line: str) -> ServerConfig:
        raw = json.loads(line)
        raw["limits"] = Limits(**raw["limits"])
        raw["slots"] = [tuple(s) for s in raw["slots"]]
        return cls(**raw)
