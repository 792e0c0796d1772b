"""One cgroup per slot with ``pids`` and ``memory`` limits (cgroup v1 controllers or v2), made by the server."""

from __future__ import annotations

import os
import time
import uuid

from .linux import mountinfo, write_small


class Cgroups:
    """One cgroup per slot with ``pids`` and ``memory`` limits (cgroup v1 controllers or v2), made by the server."""

    def __init__(self, n_slots: int, pids_max: int, memory_bytes: int, enabled: bool = True):
        self.version: str = "none"
        self.dirs: list[str] = []  # made by us, removed at the end (children first)
        self.slot_procs: list[list[str]] = [[] for _ in range(n_slots)]  # cgroup.procs files a program joins
        self.slot_fds: list[list[int]] = [[] for _ in range(n_slots)]  # opened now: the slots join after pivot_root
        self.controllers: list[str] = []
        self.error = ""
        tag = f"mft-eval-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        if not enabled:
            return
        try:
            v1, v2_mount = self._mounts()
            own = self._own_paths()
            if "pids" in v1:
                self._setup_v1(v1, own, tag, n_slots, pids_max, memory_bytes)
            elif v2_mount:
                self._setup_v2(v2_mount, own.get("", "/"), tag, n_slots, pids_max, memory_bytes)
        except OSError as exc:
            self.error = str(exc)
            self.cleanup()
            self.version, self.controllers = "none", []
            self.slot_procs = [[] for _ in range(n_slots)]
            self.slot_fds = [[] for _ in range(n_slots)]

    @staticmethod
    def _mounts() -> tuple[dict[str, str], str]:
        v1: dict[str, str] = {}
        v2 = ""
        for point, _opts, fstype, superopts in mountinfo():
            if fstype == "cgroup":
                for c in ("pids", "memory"):
                    if c in superopts:
                        v1.setdefault(c, point)
            elif fstype == "cgroup2" and not v2:
                v2 = point
        return v1, v2

    @staticmethod
    def _own_paths() -> dict[str, str]:
        out = {}
        with open("/proc/self/cgroup") as f:
            for line in f:
                _id, controllers, path = line.rstrip("\n").split(":", 2)
                for c in controllers.split(","):
                    out[c] = path
        return out

    def _add_procs(self, slot: int, path: str) -> None:
        self.slot_procs[slot].append(path)
        self.slot_fds[slot].append(os.open(path, os.O_WRONLY))

    def join(self, slot: int) -> None:
        """Move the calling process into its slot's cgroups (through fds opened before the root changed)."""
        for fd in self.slot_fds[slot]:
            write_small(fd, b"0")

    def _mkdir(self, path: str) -> str:
        os.mkdir(path, 0o755)
        self.dirs.append(path)
        return path

    @staticmethod
    def _write(path: str, value: str) -> None:
        with open(path, "w") as f:
            f.write(value)

    @staticmethod
    def _remove_stale(base: str) -> None:
        """Remove cgroups left by servers that were killed: their pid is gone, or (pids get reused) they have
        held no process for a minute. A cgroup in use always holds its slots' processes."""
        try:
            names = [n for n in os.listdir(base) if n.startswith("mft-eval-")]
        except OSError:
            return
        for name in names:
            top = os.path.join(base, name)
            try:
                subs = [os.path.join(top, d) for d in os.listdir(top) if os.path.isdir(os.path.join(top, d))]
                empty = all(not open(os.path.join(d, "cgroup.procs")).read().strip() for d in subs + [top])
                old = time.time() - os.stat(top).st_mtime > 60
                pid = int(name.split("-")[2])
            except (OSError, ValueError, IndexError):
                continue
            if not empty or not (old or not pid_alive(pid)):
                continue
            for d in subs + [top]:
                try:
                    os.rmdir(d)
                except OSError:
                    pass

    def _setup_v1(self, v1, own, tag, n, pids_max, memory_bytes) -> None:
        for ctrl in ("pids", "memory"):
            if ctrl not in v1:
                continue
            base = os.path.join(v1[ctrl], own.get(ctrl, "/").lstrip("/"))
            self._remove_stale(base)
            top = self._mkdir(os.path.join(base, tag))
            for i in range(n):
                d = self._mkdir(os.path.join(top, f"slot{i}"))
                if ctrl == "pids":
                    self._write(os.path.join(d, "pids.max"), str(pids_max))
                else:
                    self._write(os.path.join(d, "memory.limit_in_bytes"), str(memory_bytes))
                    try:  # swap too, where swap accounting is on
                        self._write(os.path.join(d, "memory.memsw.limit_in_bytes"), str(memory_bytes))
                    except OSError:
                        pass
                self._add_procs(i, os.path.join(d, "cgroup.procs"))
            self.controllers.append(ctrl)
        self.version = "v1"

    def _setup_v2(self, mount_point, own, tag, n, pids_max, memory_bytes) -> None:
        base = os.path.join(mount_point, own.lstrip("/"))
        with open(os.path.join(base, "cgroup.controllers")) as f:
            available = f.read().split()
        if "pids" not in available:
            return
        wanted: list[str] = [c for c in ("pids", "memory") if c in available]
        with open(os.path.join(base, "cgroup.subtree_control")) as f:
            enabled = f.read().split()
        if any(c not in enabled for c in wanted):
            # Fails (EBUSY) when our own cgroup holds processes and is not the root: then no cgroups.
            self._write(os.path.join(base, "cgroup.subtree_control"), " ".join("+" + c for c in wanted))
        self._remove_stale(base)
        top = self._mkdir(os.path.join(base, tag))
        self._write(os.path.join(top, "cgroup.subtree_control"), " ".join("+" + c for c in wanted))
        for i in range(n):
            d = self._mkdir(os.path.join(top, f"slot{i}"))
            self._write(os.path.join(d, "pids.max"), str(pids_max))
            if "memory" in wanted:
                self._write(os.path.join(d, "memory.max"), str(memory_bytes))
                try:
                    self._write(os.path.join(d, "memory.swap.max"), "0")
                except OSError:
                    pass
            self._add_procs(i, os.path.join(d, "cgroup.procs"))
        self.controllers = wanted
        self.version = "v2"

    def cleanup(self) -> None:
        remove_dirs(self.dirs)
        self.dirs = []


def remove_dirs(dirs: list[str]) -> None:
    """Remove cgroup folders, children first, waiting briefly for their last processes to be torn down."""
    for d in reversed(dirs):
        for _ in range(50):
            try:
                os.rmdir(d)
                break
            except FileNotFoundError:
                break
            except OSError:
                time.sleep(0.02)


def pid_alive(pid: int) -> bool:  # as mft_core.manifest's: the server imports nothing outside the stdlib
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
