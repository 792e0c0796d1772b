"""A slot runs one program at a time: it forks the candidate (the model's code, sandboxed) and, for an external
verdict, the judge (the benchmark's test, trusted), watches both, and reports one outcome.

What a program gets, each time afresh: its own session; a tmpfs on /tmp (its working directory inside it), so
nothing survives it; its slot's uid (never root: a per-run uid, or uid 0 of a user namespace with every
capability dropped); rlimits (address space, CPU, file size, open files, processes where no pids cgroup binds);
stdin /dev/null, stdout/stderr kept to a cap. The judge runs under another uid, non-dumpable, so the candidate
can neither read nor write its memory; only the judge holds the verdict pipe.

Time: CPU seconds of the candidate and of the judge are read from ``/proc/<pid>/stat`` (the kernel's accounting,
which does not grow when the machine is busy), enforced by polling and by ``RLIMIT_CPU``; a wall-clock ceiling
is only a backstop (a program that sleeps).
"""

from __future__ import annotations

import gc
import json
import math
import os
import resource
import select
import signal
import socket
import time

from . import candidate as candidate_side
from . import judge as judge_side
from .guard import guard, run_in_process, stdlib_only_imports
from .linux import (
    MS_BIND,
    MS_NODEV,
    MS_NOSUID,
    MS_RDONLY,
    MS_REC,
    MS_REMOUNT,
    PR_SET_DUMPABLE,
    PR_SET_NO_NEW_PRIVS,
    PR_SET_PDEATHSIG,
    drop_capabilities,
    mount,
    prctl,
    set_pipe_size,
    umount,
    write_small,
)
from .protocol import JobHeader, ServerConfig, read_frame, write_frame

CLOCK_TICK = os.sysconf("SC_CLK_TCK")
POLL_S = 0.05
AFTER_VERDICT_S = 0.5  # how long the candidate may take to exit once the judge is done
# Kept before the slot applies the guard to itself (the guard removes them from `os`).
_fork, _kill, _killpg, _chown, _chdir, _unlink, _rmdir, _setuid = (
    os.fork, os.kill, os.killpg, os.chown, os.chdir, os.unlink, os.rmdir, os.setuid)  # fmt: skip


class Slot:
    def __init__(self, index: int, fds: tuple[int, int, int], cfg: ServerConfig, env: dict, cgroups):
        self.index = index
        self.job_fd, self.test_fd, self.res_fd = fds
        self.cfg, self.env, self.cgroups = cfg, env, cgroups
        self.pid_namespace = os.getpid() == 1
        uids = env.get("uids")
        self.uid: int | None = uids[2 * index] if uids else None
        self.judge_uid: int | None = uids[2 * index + 1] if uids else None
        self.drop_caps = bool(env.get("user_namespace"))
        self.private_tmp = False
        self.keep_under_tmp: dict[str, int] = {}
        self.counter = 0
        self.judge_pid: int | None = None
        self.judge_sock: socket.socket | None = None
        self._socketpair = socket.socketpair  # kept before the guard may replace it

    # -- once ----------------------------------------------------------------------------------------------------
    def prepare(self) -> dict:
        """What every program inherits: a clean environment, no_new_privs, the guard, stdlib-only imports, a
        /proc of this PID namespace, a frozen GC (so programs do not copy the slot's memory)."""
        info: dict = {"slot": self.index, "pid_namespace": self.pid_namespace}
        if self.pid_namespace and self.env.get("mount_namespace"):
            try:
                mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | 8, "hidepid=2")  # 8: noexec
                info["proc"] = "own"
            except OSError as exc:
                info["proc_error"] = str(exc)
            self._probe_private_tmp(info)
        self.workroot = "/tmp" if self.private_tmp else self.env.get("workroot", "/tmp")
        os.environ.clear()
        os.environ.update(PATH="/usr/bin:/bin", HOME="/tmp", TMPDIR="/tmp", LANG="C.UTF-8", OMP_NUM_THREADS="1",
                          OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1")  # fmt: skip
        if not self.private_tmp:
            os.environ.update(HOME=self.workroot, TMPDIR=self.workroot)
        for option, arg in ((PR_SET_NO_NEW_PRIVS, 1), (PR_SET_DUMPABLE, 0)):
            try:
                prctl(option, arg)
            except OSError:
                pass
        guard(block_network=not self.env.get("net_namespace"))
        stdlib_only_imports(self.cfg.packages)
        gc.collect()
        gc.freeze()
        return info

    def _probe_private_tmp(self, info: dict) -> None:
        """A tmpfs per program on /tmp needs mount rights here; interpreter paths under /tmp are bound back."""
        under = [p for p in self.env.get("under_tmp", []) if os.path.exists(p)]
        self.keep_under_tmp = {p: os.open(p, os.O_PATH) for p in under}
        try:
            self._mount_tmp()
            umount("/tmp")
            self.private_tmp = True
            info["tmp"] = "tmpfs per program"
        except OSError as exc:
            info["tmp_error"] = str(exc)

    def _mount_tmp(self) -> None:
        mount("tmpfs", "/tmp", "tmpfs", MS_NOSUID | MS_NODEV,
              f"size={self.cfg.limits.tmpfs_mb}m,nr_inodes=16384,mode=1777")  # fmt: skip
        for path, fd in self.keep_under_tmp.items():
            os.makedirs(path, 0o755, exist_ok=True)
            mount(f"/proc/self/fd/{fd}", path, None, MS_BIND | MS_REC)
            mount(None, path, None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV)

    def serve(self) -> None:
        info = self.prepare()
        write_frame(self.res_fd, {"event": "hello", **info})
        while True:
            raw = read_frame(self.job_fd)
            if raw is None:
                return
            header = JobHeader(**raw)
            write_frame(self.res_fd, self.run(header))

    # -- one program -----------------------------------------------------------------------------------------------
    def run(self, job: JobHeader) -> dict:
        self.counter += 1
        if self.private_tmp:
            self._mount_tmp()
            workdir = "/tmp/w"
        else:
            workdir = os.path.join(self.workroot, f"s{self.index}-{self.counter}")
        os.mkdir(workdir, 0o700)
        if self.uid is not None:
            _chown(workdir, self.uid, self.uid)
        external = job.judge_bytes > 0
        names = ("calls", "replies", "verdict", "output") if external else ("report", "output")
        pipes = {name: os.pipe() for name in names}
        start = time.monotonic()
        judge_cpu0 = None
        if external:
            for name in ("calls", "replies"):
                set_pipe_size(pipes[name][1])
            judge_cpu0 = self._hand_to_judge(job, pipes)
        cpid = self._spawn(lambda: self._candidate(job, pipes, workdir))
        for name, (r, w) in pipes.items():  # the slot keeps only what it reads
            for fd, keep in ((w, False), (r, name in ("verdict", "output", "report"))):
                if not keep:
                    try:
                        os.close(fd)
                    except OSError:
                        pass  # the judge's ends were closed when they were handed over
        try:
            seen = self._supervise(job, cpid, judge_cpu0, pipes, start)
        finally:
            for name in ("verdict", "output", "report"):
                if name in pipes:
                    os.close(pipes[name][0])
        self._kill_leftovers()
        if self.private_tmp:
            try:
                umount("/tmp")
            except OSError:
                pass
        else:
            _rmtree(workdir)
        outcome = _outcome(job, seen, external)
        outcome.update(event="done", id=job.id, slot=self.index, wall_s=round(time.monotonic() - start, 4))
        return outcome

    @staticmethod
    def _spawn(body) -> int:
        pid = _fork()
        if pid == 0:
            try:
                body()
            finally:
                os._exit(71)
        return pid

    # -- the judge: one trusted process per slot, serving every program in turn -------------------------------------
    def _hand_to_judge(self, job: JobHeader, pipes: dict) -> float:
        """Give the judge this program's pipe ends (fresh for every program, so nothing crosses between programs)
        and return its CPU time so far (its share of this program is measured from there)."""
        if self.judge_pid is None or _cpu_seconds(self.judge_pid) is None:
            self._start_judge()
        sock, pid = self.judge_sock, self.judge_pid
        assert sock is not None and pid is not None  # set together by _start_judge
        ends = [pipes["calls"][1], pipes["replies"][0], pipes["verdict"][1]]
        socket.send_fds(sock, [str(job.id).encode()], ends)
        for fd in ends:
            os.close(fd)
        return _cpu_seconds(pid) or 0.0

    def _start_judge(self) -> None:
        self._stop_judge()
        ours, theirs = self._socketpair()
        pid = _fork()
        if pid == 0:
            try:
                ours.close()
                self._judge_loop(theirs)
            finally:
                os._exit(71)
        theirs.close()
        self.judge_sock, self.judge_pid = ours, pid

    def _stop_judge(self) -> None:
        if self.judge_pid is not None:
            _kill_quietly(self.judge_pid)
            try:
                os.waitpid(self.judge_pid, 0)
            except ChildProcessError:
                pass  # already reaped
        if self.judge_sock is not None:
            self.judge_sock.close()
        self.judge_pid = self.judge_sock = None

    def _judge_loop(self, sock) -> None:
        """The judge process: its own session and uid, non-dumpable; per program it receives the pipe ends, reads
        the test from the test pipe (which the slot never reads) and writes one verdict."""
        import random

        os.setsid()
        os.dup2(sock.fileno(), 3)
        os.dup2(self.test_fd, 4)
        null = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(null, fd)
        os.closerange(5, 1 << 16)
        channel = socket.socket(fileno=3)
        self._limits(None, 8 if self.judge_uid is not None else None)
        self._become(self.judge_uid)
        try:
            prctl(PR_SET_DUMPABLE, 0)  # after setuid: nobody else may ptrace it or read /proc/<pid>/mem
        except OSError:
            pass
        while True:
            message, fds, _flags, _addr = socket.recv_fds(channel, 64, 3)
            if not message or len(fds) != 3:
                os._exit(0)
            calls, replies, verdict = fds
            spec = read_frame(4)
            if not isinstance(spec, dict) or str(spec.get("id")) != message.decode():
                os._exit(72)  # out of step with the evaluator: the slot reports a crash and starts another
            random.seed()  # as in a fresh process: a test's random inputs do not follow from the previous test's
            judge_side.judge(spec["prelude"], spec["test"], spec["entry_point"], calls, replies, verdict)
            for fd in fds:
                os.close(fd)
            del spec
            gc.collect()

    def _supervise(self, job: JobHeader, cpid: int, judge_cpu0: float | None, pipes: dict, start: float) -> dict:
        """Wait for the candidate and the verdict, reading output, enforcing CPU and wall limits on both."""
        seen: dict = {"verdict": None, "report": b"", "output": b"", "limit": None, "status": {}, "cpu": {}}
        try:
            pidfd = os.pidfd_open(cpid)
        except (AttributeError, OSError):
            pidfd = None
        readers = {pipes[n][0]: n for n in ("verdict", "output", "report") if n in pipes}
        for fd in readers:
            os.set_blocking(fd, False)
        slow_at, deadline = start + self.cfg.slow_after_s, start + job.wall_s
        slow_sent, judge_done_at, alive = False, None if judge_cpu0 is not None else start, True
        try:
            while alive or judge_done_at is None:
                now = time.monotonic()
                if not slow_sent and now >= slow_at:
                    write_frame(self.res_fd, {"event": "slow", "id": job.id})
                    slow_sent = True
                late = now >= deadline
                # CPU is read from /proc only once a program has run a while: before slow_after_s it cannot have
                # used a limit's worth (and RLIMIT_CPU stands behind the candidate all along).
                watch = now >= slow_at
                if judge_done_at is None and (watch or late):  # then this program has a judge (judge_cpu0 set)
                    cpu = _cpu_seconds(self.judge_pid) if self.judge_pid is not None else None
                    if cpu is not None and judge_cpu0 is not None:
                        seen["cpu"]["judge"] = cpu - judge_cpu0
                    if cpu is None or seen["cpu"]["judge"] > job.cpu_s or late:
                        if seen["limit"] is None and cpu is not None:
                            seen["limit"] = f"judge {'wall-clock' if late else 'CPU'} limit"
                        self._stop_judge()  # a new one serves the next program
                        judge_done_at = now
                if alive and (watch or late or judge_done_at is not None):
                    cpu = _cpu_seconds(cpid)
                    if cpu is not None:
                        seen["cpu"]["candidate"] = cpu
                    over = cpu is not None and cpu > job.cpu_s
                    since_verdict = now - judge_done_at if judge_done_at is not None else 0.0
                    lingering = judge_cpu0 is not None and since_verdict > AFTER_VERDICT_S
                    if over or late or lingering:
                        if (over or late) and seen["limit"] is None and not _decided(seen):
                            seen["limit"] = f"candidate {'CPU' if over else 'wall-clock'} limit"
                        _kill_quietly(cpid)
                wait = POLL_S if now >= slow_at else min(POLL_S, slow_at - now)
                waits = list(readers) + ([pidfd] if pidfd is not None and alive else [])
                ready, _, _ = select.select(waits, [], [], max(wait, 0.0))
                for fd in ready:
                    if fd in readers and not _drain(fd, seen, readers[fd], self.cfg.limits.output_bytes):
                        if readers.pop(fd) == "verdict" and judge_done_at is None:
                            judge_done_at = time.monotonic()  # the judge closed its end: done with this program
                if alive and (pidfd in ready if pidfd is not None else True):
                    got, status, usage = os.wait4(cpid, 0 if pidfd is not None else os.WNOHANG)
                    if got:
                        alive = False
                        seen["status"]["candidate"] = status
                        seen["cpu"]["candidate"] = usage.ru_utime + usage.ru_stime
                        if seen["cpu"]["candidate"] > job.cpu_s and seen["limit"] is None and not _decided(seen):
                            seen["limit"] = "candidate CPU limit"
                if judge_done_at is None and seen["verdict"] is not None and "verdict" not in readers.values():
                    judge_done_at = time.monotonic()
        finally:
            if pidfd is not None:
                os.close(pidfd)
        for fd, name in readers.items():
            _drain(fd, seen, name, self.cfg.limits.output_bytes)
        if judge_cpu0 is not None and "judge" not in seen["cpu"] and self.judge_pid is not None:
            seen["cpu"]["judge"] = max(0.0, (_cpu_seconds(self.judge_pid) or judge_cpu0) - judge_cpu0)  # the record
        return seen

    # -- inside the forked processes -------------------------------------------------------------------------------
    def _limits(self, cpu_s: float | None, processes: int | None) -> None:
        limits = self.cfg.limits
        rl = [
            (resource.RLIMIT_AS, limits.memory_mb << 20),
            (resource.RLIMIT_FSIZE, limits.file_size_mb << 20),
            (resource.RLIMIT_NOFILE, limits.open_files),
            (resource.RLIMIT_CORE, 0),
        ]
        if cpu_s is not None:  # a backstop to the slot's polling (the judge, serving many programs, has none)
            rl.append((resource.RLIMIT_CPU, math.ceil(cpu_s) + 1))
        if processes:
            rl.append((resource.RLIMIT_NPROC, processes))
        for which, value in rl:
            try:
                _soft, hard = resource.getrlimit(which)
                value = value if hard == resource.RLIM_INFINITY else min(value, hard)
                resource.setrlimit(which, (value, value + (1 if which == resource.RLIMIT_CPU else 0)))
            except (ValueError, OSError):
                pass

    def _become(self, uid: int | None) -> None:
        """Leave the slot's privileges for good: the per-run uid as root, no capabilities in a user namespace."""
        if uid is not None:
            os.setgroups([])
            os.setresgid(uid, uid, uid)
            os.setresuid(uid, uid, uid)
        elif self.drop_caps:
            drop_capabilities()
        if not self.pid_namespace:  # (in a PID namespace the kernel kills everything when the slot dies)
            try:
                prctl(PR_SET_PDEATHSIG, signal.SIGKILL)  # after setuid, which clears it
            except OSError:
                pass

    def _processes_limit(self) -> int | None:
        if "pids" in self.env.get("cgroup_controllers", []):
            return None
        if self.uid is not None:
            return self.cfg.limits.processes  # the per-run uid runs nothing else
        return self.env.get("nproc_limit")

    def _candidate(self, job: JobHeader, pipes: dict, workdir: str) -> None:
        os.setsid()
        write_small("/proc/self/oom_score_adj", b"1000")  # the program, never its slot, is what an OOM kills
        self._limits(job.cpu_s, self._processes_limit())
        _chdir(workdir)
        null = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(null, fd)
        keep = ("calls", "replies", "output") if "calls" in pipes else ("report", "output")
        ends = {"calls": 0, "replies": 1, "output": 1, "report": 1}
        for target, name in enumerate(keep, start=3):
            os.dup2(pipes[name][ends[name]], target)
        os.closerange(3 + len(keep), 1 << 16)
        self._become(self.uid)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        cap = self.cfg.limits.output_bytes
        if "calls" in pipes:
            candidate_side.serve(job.program, job.entry_point, 3, 4, 5, cap)
        else:
            run_in_process(job.program, job.cpu_s, 3, cap)

    # -- after ---------------------------------------------------------------------------------------------------
    def _kill_leftovers(self) -> None:
        """Kill and reap everything the program left (daemons, fork bombs, setsid escapes); never the judge."""
        keep = {os.getpid(), os.getppid(), self.judge_pid}
        if self.pid_namespace:  # PID 1 of a namespace holding only this program's processes and the judge
            while True:
                victims = [int(p) for p in os.listdir("/proc") if p.isdigit() and int(p) not in keep]
                for v in victims:
                    _kill_quietly(v)
                self._reap_checking_judge()
                if not victims:
                    return
        if self.uid is not None:  # kill(-1) as the program's uid reaches exactly that uid's processes
            pid = _fork()
            if pid == 0:
                try:
                    os.setresuid(self.uid, self.uid, self.uid)
                    _kill(-1, signal.SIGKILL)
                finally:
                    os._exit(0)
            os.waitpid(pid, 0)
        deadline = time.monotonic() + 5.0
        while time.monotonic() < deadline:
            strays = (set(self._cgroup_members()) | set(_descendants(os.getpid()))) - keep
            for v in strays:
                _kill_quietly(v)
            reaped = self._reap_checking_judge()
            if not strays and not reaped:
                return
            time.sleep(0.005)

    def _reap_checking_judge(self) -> int:
        n = 0
        while True:
            try:
                got, _ = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return n
            if got == 0:
                return n
            if got == self.judge_pid:  # it died (killed by the memory limit, say): start another next time
                if self.judge_sock is not None:
                    self.judge_sock.close()
                self.judge_pid = self.judge_sock = None
            n += 1

    def _cgroup_members(self) -> list[int]:
        out = []
        for path in self.cgroups.slot_procs[self.index] if self.cgroups else []:
            try:
                with open(path) as f:
                    out += [int(x) for x in f.read().split()]
            except (OSError, ValueError):
                pass
        return out


def _decided(seen: dict) -> bool:
    return seen["verdict"] is not None


def _drain(fd: int, seen: dict, name: str, cap: int) -> bool:
    """Read what is there; False at end of file. The verdict is one frame of at most 64 KB."""
    while True:
        try:
            chunk = os.read(fd, 1 << 16)
        except BlockingIOError:
            return True
        except OSError:
            return False
        if not chunk:
            if name == "verdict" and seen["verdict"] is None and seen.get("verdict_bytes"):
                seen["verdict"] = _parse_verdict(seen.pop("verdict_bytes"))
            return False
        if name == "verdict":
            buf = seen.get("verdict_bytes", b"") + chunk
            seen["verdict_bytes"] = buf[: 1 << 16]
            parsed = _parse_verdict(buf)
            if parsed is not None and seen["verdict"] is None:
                seen["verdict"] = parsed
        elif name == "report":
            if len(seen["report"]) < (1 << 20):
                seen["report"] += chunk
        elif len(seen["output"]) < cap:
            seen["output"] += chunk[: cap - len(seen["output"])]


def _parse_verdict(buf: bytes) -> dict | None:
    if len(buf) < 4:
        return None
    size = int.from_bytes(buf[:4], "big")
    if len(buf) < 4 + size:
        return None
    try:
        value = json.loads(buf[4 : 4 + size])
    except ValueError:
        return {"status": "failed", "message": "unreadable verdict"}
    return value if isinstance(value, dict) else {"status": "failed", "message": "unreadable verdict"}


def _signal_name(status: int) -> str | None:
    if not os.WIFSIGNALED(status):
        return None
    sig = os.WTERMSIG(status)
    return signal.Signals(sig).name if sig in signal.Signals._value2member_map_ else str(sig)


def _outcome(job: JobHeader, seen: dict, external: bool) -> dict:
    """The one result of a program. For an external verdict only the judge's frame can say passed."""
    cpu = seen["cpu"]
    base = {"cpu_s": round(cpu.get("candidate", 0.0), 4), "judge_cpu_s": round(cpu["judge"], 4) if "judge" in cpu
            else None, "verdict": "external" if external else "in-process"}  # fmt: skip
    output = seen["output"].decode("utf-8", "replace") or None
    status = seen["status"].get("candidate")
    sig = _signal_name(status) if status is not None else None
    if seen["limit"] is not None:
        return base | {"status": "timed out", "message": f"{seen['limit']} ({job.cpu_s:g} s CPU, {job.wall_s:g} s "
                       "wall)", "output": output}  # fmt: skip
    if not external:
        return base | _in_process_outcome(seen["report"], status, sig)
    verdict = seen["verdict"] or {}
    kind = verdict.get("status")
    if kind == "passed":
        return base | {"status": "passed", "output": output}
    if kind == "in-process":
        return base | {"status": "failed", "needs_in_process": True, "message": verdict.get("message")}
    gone = kind == "failed" and verdict.get("exc_type") == "CallFailed"  # the program died before answering
    if kind == "failed" and not gone:
        return base | {"status": "failed", "exc_type": verdict.get("exc_type"), "message": verdict.get("message"),
                       "output": output}  # fmt: skip
    if sig is not None:
        why = " (memory limit?)" if sig == "SIGKILL" else ""
        return base | {"status": "crashed", "signal": sig, "message": f"killed by {sig}{why}", "output": output}
    if gone and status is not None and os.WIFEXITED(status):
        return base | {"status": "crashed", "message": f"the program exited (code {os.WEXITSTATUS(status)}) "
                       "instead of answering", "output": output}  # fmt: skip
    judge_status = seen["status"].get("judge")
    why = f"the judge ended without a verdict ({_signal_name(judge_status) or 'exit'})" if judge_status else ""
    why = why or "no verdict"
    return base | {"status": "crashed", "message": why, "output": output}


def _in_process_outcome(data: bytes, status, sig) -> dict:
    """The program's own report (forgeable by the program: hence ``verdict: in-process``)."""
    for line in data.decode("utf-8", "replace").splitlines():
        try:
            report = json.loads(line)
        except ValueError:
            continue
        if isinstance(report, dict) and report.get("status") in ("passed", "failed", "timed out"):
            return {k: report.get(k) for k in ("status", "exc_type", "message", "output")}
    if sig is not None:
        why = " (memory limit?)" if sig == "SIGKILL" else ""
        return {"status": "crashed", "signal": sig, "message": f"killed by {sig}{why}"}
    code = os.WEXITSTATUS(status) if status is not None and os.WIFEXITED(status) else -1
    return {"status": "crashed", "message": f"exited with code {code} without reporting"}


def _cpu_seconds(pid: int) -> float | None:
    """utime + stime of a live process, from /proc/<pid>/stat (None once it is gone)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    fields = data[data.rindex(b")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICK


def _kill_quietly(pid: int) -> None:
    try:
        _kill(pid, signal.SIGKILL)
    except OSError:
        pass


def _descendants(root: int) -> list[int]:
    """Live descendants of ``root`` via /proc/<pid>/task/<tid>/children (where the kernel offers it)."""
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        try:
            tids = os.listdir(f"/proc/{pid}/task")
        except OSError:
            continue
        for tid in tids:
            try:
                with open(f"/proc/{pid}/task/{tid}/children") as f:
                    kids = [int(x) for x in f.read().split()]
            except (OSError, ValueError):
                continue
            out += kids
            todo += kids
    return out


def _rmtree(path: str) -> None:
    """shutil.rmtree with the slot's saved functions (the guard removed os.unlink and os.rmdir)."""
    try:
        entries = list(os.scandir(path))
    except OSError:
        return
    for entry in entries:
        try:
            if entry.is_dir(follow_symlinks=False):
                _rmtree(entry.path)
            else:
                _unlink(entry.path)
        except OSError:
            pass
    try:
        _rmdir(path)
    except OSError:
        pass
