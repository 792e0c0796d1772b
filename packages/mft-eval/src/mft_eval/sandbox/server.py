"""The sandbox server, run as ``python -m mft_eval.sandbox.server`` by :class:`mft_eval.sandbox.Sandbox`
(standard library only). It starts with an empty environment, so ``/proc/self/environ`` holds no secret.

Process tree when everything is available (root on Linux with cgroups and namespaces)::

    evaluator ── server (network + mount namespace, pivot_root into a minimal read-only root, cgroups made)
                   ├─ slot holder ── slot 0 (PID 1 of its own PID + mount namespace, own /proc)
                   │                  ├─ candidate (per-run uid, fresh /tmp, rlimits)   } one pair per program
                   │                  └─ judge     (another uid, non-dumpable)          }
                   └─ slot holder ── slot 1 ...

The server imports the modules programs commonly use once, so no program pays interpreter start-up or
``import numpy``: each program is a ``fork()`` of its slot (about 1 ms).
"""

from __future__ import annotations

import json
import os
import random
import signal
import sys

from .cgroups import Cgroups
from .guard import preload
from .linux import (
    CLONE_NEWNET,
    CLONE_NEWNS,
    CLONE_NEWPID,
    CLONE_NEWUSER,
    MS_NODEV,
    MS_NOSUID,
    MS_PRIVATE,
    MS_REC,
    PR_SET_DUMPABLE,
    PR_SET_PDEATHSIG,
    mount,
    prctl,
    unshare,
    write_small,
)
from .protocol import ServerConfig
from .rootfs import build_and_enter, inside, interpreter_paths, package_paths
from .slot import Slot

UID_RANGE = (1 << 20, 1 << 30)  # per-run uids come from here: no account, no file and no process owns them


def setup_namespaces(force_user_namespace: bool) -> dict:
    """New network + mount namespaces (a user namespace first when not root). Every step degrades."""
    info: dict = {"user_namespace": False, "net_namespace": False, "mount_namespace": False}
    uid, gid = os.getuid(), os.getgid()
    try:
        if os.geteuid() == 0 and not force_user_namespace:
            unshare(CLONE_NEWNET | CLONE_NEWNS)
        else:
            unshare(CLONE_NEWUSER | CLONE_NEWNET | CLONE_NEWNS)
            info["user_namespace"] = True
            for name, text in (("setgroups", "deny"), ("uid_map", f"0 {uid} 1"), ("gid_map", f"0 {gid} 1")):
                with open(f"/proc/self/{name}", "w") as f:
                    f.write(text)
        info["net_namespace"] = True
    except OSError as exc:
        info["namespace_error"] = str(exc)
        return info
    try:
        mount(None, "/", None, MS_REC | MS_PRIVATE)  # or remounts would reach the host's mounts
        info["mount_namespace"] = True
    except OSError as exc:
        info["mount_error"] = str(exc)
    return info


def pick_uids(count: int) -> list[int]:
    """``count`` consecutive uids that no process uses now (and no account: the range is above any)."""
    used = set()
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                used.add(os.stat(f"/proc/{name}").st_uid)
            except OSError:
                pass
    while True:
        base = random.SystemRandom().randrange(UID_RANGE[0], UID_RANGE[1] - count)
        if not any(base <= u < base + count for u in used):
            return list(range(base, base + count))


def can_import_as(uid: int) -> bool:
    """Can ``uid`` list the standard library and read a module that is not loaded yet?"""
    pid = os.fork()
    if pid == 0:
        ok = False
        try:
            os.setgroups([])
            os.setresgid(uid, uid, uid)
            os.setresuid(uid, uid, uid)
            for p in interpreter_paths():
                os.listdir(p)
            import importlib.util

            spec = importlib.util.find_spec("colorsys")
            assert spec is not None and spec.origin is not None  # (a failure here is caught: not ok)
            with open(spec.origin, "rb") as f:
                f.read(1)
            ok = True
        except BaseException:  # noqa: BLE001
            ok = False
        finally:
            os._exit(0 if ok else 1)
    _, status = os.waitpid(pid, 0)
    return os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0


def count_user_processes(uid: int) -> int:
    n = 0
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                n += os.stat(f"/proc/{name}").st_uid == uid
            except OSError:
                pass
    return n


def prepare(cfg: ServerConfig) -> tuple[dict, Cgroups]:
    """Everything below the server: namespaces, the new root, uids, process limits. Returns the ``ready`` info."""
    strong = cfg.isolation == "auto"
    n = len(cfg.slots)
    cgroups = Cgroups(n, cfg.limits.processes, cfg.slot_memory_mb << 20, enabled=strong)
    env: dict = {"cgroup": {"version": cgroups.version, "controllers": cgroups.controllers, "error": cgroups.error,
                            "dirs": cgroups.dirs}}  # fmt: skip
    env["cgroup_controllers"] = cgroups.controllers
    loaded = preload(cfg.preload + cfg.packages)  # before the root changes: packages load from site-packages
    env["packages"] = [p for p in cfg.packages if p in loaded]
    env["missing_packages"] = [p for p in cfg.packages if p not in loaded]
    env["under_tmp"] = [p for p in interpreter_paths() + package_paths(env["packages"]) if inside(p, "/tmp")]
    root = os.geteuid() == 0 and not cfg.force_user_namespace
    if strong:
        env |= setup_namespaces(cfg.force_user_namespace)
    elif root:
        # guard-only still never runs programs as root: a mount namespace of our own gives the per-run uid a
        # readable interpreter (a Python under a 0700 /root, say), and nothing else.
        try:
            unshare(CLONE_NEWNS)
            mount(None, "/", None, MS_REC | MS_PRIVATE)
            env["mount_namespace"] = True
        except OSError as exc:
            env["mount_error"] = str(exc)
    if env.get("mount_namespace"):
        try:
            env |= build_and_enter(env["packages"])
        except OSError as exc:
            env["root_error"] = str(exc)
    if root and not env.get("user_namespace"):
        uids = list(range(cfg.uid_base, cfg.uid_base + 2 * n)) if cfg.uid_base else pick_uids(2 * n)
        if not can_import_as(uids[0]):
            env["fatal"] = (
                "programs would have to run as root: an unprivileged uid cannot read the interpreter "
                f"({sys.base_prefix}) here; install Python where other users can read it"
            )
        env["uids"] = uids
    elif "pids" not in cgroups.controllers:
        # RLIMIT_NPROC counts every process of the real user: what runs now plus the slots' share.
        env["nproc_limit"] = count_user_processes(os.getuid()) + cfg.limits.processes * n
    if env.get("root") is None:  # no new root: programs work in a private folder of the host's /tmp
        import tempfile

        env["workroot"] = tempfile.mkdtemp(prefix="mft-eval-sandbox-")
        os.chmod(env["workroot"], 0o711)
    elif not strong:  # a new root but no slot namespaces: one tmpfs for all slots, a folder per program
        mount("tmpfs", "/tmp", "tmpfs", MS_NOSUID | MS_NODEV, f"size={cfg.limits.tmpfs_mb * n}m,mode=1777")
        env["workroot"] = "/tmp/work"
        os.mkdir(env["workroot"], 0o711)
    return env, cgroups


def _slot_holder(index: int, cfg: ServerConfig, env: dict, cgroups: Cgroups) -> None:
    """Fork the slot into new PID + mount namespaces (where allowed), then wait for it."""
    try:
        prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except OSError:
        pass
    if cfg.isolation == "auto":
        try:
            unshare(CLONE_NEWPID | (CLONE_NEWNS if env.get("mount_namespace") else 0))
        except OSError:
            pass
    cgroups.join(index)  # the slot lives in its cgroups; its programs inherit them
    write_small("/proc/self/oom_score_adj", b"-1000")  # the OOM killer picks programs, never their slot
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            try:
                prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
            except OSError:
                pass
            Slot(index, cfg.slots[index], cfg, env, cgroups).serve()
        except BrokenPipeError:
            pass
        except BaseException:  # noqa: BLE001
            import traceback

            traceback.print_exc()
            code = 1
        finally:
            os._exit(code)
    while True:
        try:
            _, status = os.waitpid(pid, 0)
            os._exit(0 if os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0 else 1)
        except InterruptedError:
            continue


def main() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the evaluator handles Ctrl-C and closes our pipes
    if sys.path and sys.path[0] in ("", "/", os.getcwd()):
        del sys.path[0]  # `python -m` put the cwd first; programs must not import from there
    first = json.loads(sys.stdin.readline())
    sys.path[1:1] = first.pop("sys_path_extra", [])
    cfg = ServerConfig.from_json(json.dumps(first))
    for option, arg in ((PR_SET_PDEATHSIG, signal.SIGKILL), (PR_SET_DUMPABLE, 0)):
        try:
            prctl(option, arg)
        except OSError:
            pass
    env, cgroups = prepare(cfg)
    ready = {"event": "ready", "pid": os.getpid(), **{k: v for k, v in env.items() if k != "uids"}}
    ready["per_run_uids"] = bool(env.get("uids"))
    sys.stdout.write(json.dumps(ready) + "\n")
    sys.stdout.flush()
    if env.get("fatal"):
        return
    holders = []
    for i in range(len(cfg.slots)):
        pid = os.fork()
        if pid == 0:
            try:
                for j, other in enumerate(cfg.slots):
                    if j != i:
                        for fd in other:
                            os.close(fd)
                _slot_holder(i, cfg, env, cgroups)
            finally:
                os._exit(1)
        holders.append(pid)
    for fds in cfg.slots:
        for fd in fds:
            os.close(fd)
    for pid in holders:
        while True:
            try:
                os.waitpid(pid, 0)
                break
            except InterruptedError:
                continue
    cgroups.cleanup()  # (after pivot_root the evaluator removes them: it passed us their paths)
    if env.get("workroot"):
        import shutil

        shutil.rmtree(env["workroot"], ignore_errors=True)


if __name__ == "__main__":
    main()
