"""``manifest.json``: what a folder is, who made it from what, written last.

A folder with a manifest is finished; a folder without one is not (an interrupted run never leaves a
manifest, see :func:`atomic_output_dir`). The next tool reads everything it needs from the manifest.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from .errors import ConfigError, ContractError

MANIFEST_NAME = "manifest.json"
Kind = Literal[
    "formatted-data",
    "tokenized-data",
    "base-model",
    "adapter",
    "model",
    "merged-model",
    "quantized-model",
    "eval",
    "report",
]
KINDS: tuple[str, ...] = Kind.__args__  # type: ignore[attr-defined]
_TMP_MARK = ".tmp-"


def canonical_json(value: Any) -> str:
    """JSON with sorted keys and no spaces: the form we hash."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=_json_default)


def _json_default(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    if isinstance(value, (Path,)):
        return str(value)
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """sha256 of a file, read in chunks (model shards can be many GB)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class InputRef:
    """An input of a run: a folder with a manifest (``manifest_id``) or a plain file (``sha256``)."""

    path: str
    kind: str | None = None
    manifest_id: str | None = None
    sha256: str | None = None

    @staticmethod
    def of(path: str | os.PathLike) -> InputRef:
        """Describe ``path``: by its manifest when it has one, else by content hash (files) or listing hash."""
        p = Path(path)
        if p.is_dir() and (p / MANIFEST_NAME).is_file():
            m = read_manifest(p)
            return InputRef(str(p.resolve()), m.kind, m.id)
        if p.is_file():
            return InputRef(str(p.resolve()), None, None, sha256_file(p))
        if p.is_dir():
            listing = sorted((str(f.relative_to(p)), f.stat().st_size) for f in p.rglob("*") if f.is_file())
            return InputRef(str(p.resolve()), None, None, sha256_bytes(canonical_json(listing).encode()))
        raise ContractError(f"input not found: {p}")

    def identity(self) -> str:
        """What makes two inputs the same for the 'up to date' check (not the path)."""
        return self.manifest_id or self.sha256 or self.path


@dataclass(frozen=True)
class Manifest:
    """The manifest of one output folder.

    ``fingerprint`` hashes kind, tool, version, config and input identities: the same fingerprint means the
    same work, so a re-run can say "up to date". ``id`` hashes the whole manifest (creation time included) and
    is what downstream manifests cite.
    """

    kind: str
    tool: str
    version: str
    config: dict[str, Any]
    inputs: tuple[InputRef, ...] = ()
    summary: dict[str, Any] = field(default_factory=dict)
    created: str = ""
    fingerprint: str = ""
    id: str = ""

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown manifest kind {self.kind!r}; known: {', '.join(KINDS)}")

    def to_dict(self) -> dict[str, Any]:
        return json.loads(canonical_json(dataclasses.asdict(self)))


def compute_fingerprint(kind: str, tool: str, version: str, config: dict, inputs: tuple[InputRef, ...]) -> str:
    payload = {
        "kind": kind,
        "tool": tool,
        "version": version,
        "config": config,
        "inputs": sorted(i.identity() for i in inputs),
    }
    return sha256_bytes(canonical_json(payload).encode())


def new_manifest(
    kind: str,
    tool: str,
    version: str,
    config: dict[str, Any],
    inputs: tuple[InputRef, ...] | list[InputRef] = (),
    summary: dict[str, Any] | None = None,
) -> Manifest:
    """Build a manifest with its fingerprint, creation time and id filled in."""
    inputs = tuple(inputs)
    config = json.loads(canonical_json(config))
    fingerprint = compute_fingerprint(kind, tool, version, config, inputs)
    created = _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")
    draft = Manifest(kind, tool, version, config, inputs, dict(summary or {}), created, fingerprint, "")
    manifest_id = sha256_bytes(canonical_json(draft.to_dict()).encode())[:16]
    return dataclasses.replace(draft, id=manifest_id)


def _fsync_write(path: Path, text: str) -> None:
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write a file via a temp sibling and ``os.replace``: readers see the old or the new file, never half."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}{_TMP_MARK}{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        _fsync_write(tmp, text)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_manifest(folder: str | os.PathLike, manifest: Manifest) -> Path:
    """Write ``folder/manifest.json`` atomically. Call it last."""
    path = Path(folder) / MANIFEST_NAME
    write_text_atomic(path, json.dumps(manifest.to_dict(), indent=2, ensure_ascii=False) + "\n")
    return path


def manifest_from_dict(data: dict[str, Any]) -> Manifest:
    inputs = tuple(InputRef(**i) for i in data.get("inputs", ()))
    known = {f.name for f in dataclasses.fields(Manifest)}
    return Manifest(**{k: v for k, v in data.items() if k in known and k != "inputs"}, inputs=inputs)


def read_manifest(
    folder: str | os.PathLike, expect: str | tuple[str, ...] | None = None, *, made_by: str = ""
) -> Manifest:
    """Read a folder's manifest, checking its kind.

    Args:
        folder: the folder another tool wrote.
        expect: kind or kinds this caller accepts.
        made_by: the command that produces such a folder, named in the error's fix.

    Raises:
        ContractError: no folder, no manifest (an unfinished or foreign folder), unreadable, or wrong kind.
    """
    folder = Path(folder)
    fix = f"run `{made_by}` to create it" if made_by else None
    if not folder.is_dir():
        raise ContractError(f"{folder}: no such folder", fix=fix)
    path = folder / MANIFEST_NAME
    if not path.is_file():
        raise ContractError(
            f"{folder}: has no {MANIFEST_NAME}, so it is not a finished MFT output (interrupted, or not made by MFT)",
            fix=fix,
        )
    try:
        manifest = manifest_from_dict(json.loads(path.read_text(encoding="utf-8")))
    except (ValueError, TypeError) as exc:
        raise ContractError(f"{path}: unreadable manifest ({exc})", fix=fix) from exc
    wanted = (expect,) if isinstance(expect, str) else expect
    if wanted and manifest.kind not in wanted:
        raise ContractError(
            f"{folder}: is a '{manifest.kind}' folder (made by {manifest.tool}), expected {' or '.join(wanted)}",
            fix=fix,
        )
    return manifest


def has_manifest(folder: str | os.PathLike) -> bool:
    return (Path(folder) / MANIFEST_NAME).is_file()


def is_up_to_date(folder: str | os.PathLike, fingerprint: str) -> bool:
    """True when ``folder`` is finished and was made by the same work (same fingerprint)."""
    try:
        return read_manifest(folder).fingerprint == fingerprint
    except ContractError:
        return False


class StagingDir:
    """The temp sibling a run writes into; :meth:`finish` writes the manifest, the only way to make it final."""

    def __init__(self, path: Path):
        self.path = path
        self.manifest: Manifest | None = None

    def finish(self, manifest: Manifest) -> None:
        write_manifest(self.path, manifest)
        self.manifest = manifest


def remove_stale_staging(final: Path) -> None:
    """Delete temp siblings left by killed runs of ``final`` (their pid is gone)."""
    for sibling in final.parent.glob(f".{final.name}{_TMP_MARK}*"):
        try:
            pid = int(sibling.name.rsplit(_TMP_MARK, 1)[1].split("-")[0])
        except (ValueError, IndexError):
            continue
        if pid != os.getpid() and not _pid_alive(pid):
            shutil.rmtree(sibling, ignore_errors=True) if sibling.is_dir() else sibling.unlink(missing_ok=True)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextmanager
def staged_dir(final: str | os.PathLike, *, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temp sibling of ``final`` to write into; on normal exit swap it into place, on error delete it.

    Raises:
        ConfigError: ``final`` exists and ``overwrite`` is False.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_staging(final)
    if final.exists() and not overwrite:
        raise ConfigError(f"output folder {final} already exists", fix="pass --overwrite, or choose another --out")
    staged = final.with_name(f".{final.name}{_TMP_MARK}{os.getpid()}-{uuid.uuid4().hex[:8]}")
    staged.mkdir()
    try:
        yield staged
        _swap_into_place(staged, final)
    finally:
        if staged.exists():
            shutil.rmtree(staged, ignore_errors=True)


@contextmanager
def atomic_output_dir(final: str | os.PathLike, *, overwrite: bool = False) -> Iterator[StagingDir]:
    """Write an output folder atomically, manifest last.

    Yields a :class:`StagingDir` (a temp sibling of ``final``). The caller writes its files into ``.path`` and
    calls ``.finish(manifest)`` last; on leaving the block the temp folder is renamed to ``final``. If the block
    raises, or never calls ``finish``, the temp folder is removed and ``final`` is untouched. A SIGKILL leaves
    only a hidden temp sibling without manifest, which the next run deletes.

    Raises:
        ConfigError: ``final`` exists and ``overwrite`` is False.
    """
    with staged_dir(final, overwrite=overwrite) as path:
        staging = StagingDir(path)
        yield staging
        if staging.manifest is None:
            raise RuntimeError("atomic_output_dir: the block ended without calling finish(manifest)")


def _swap_into_place(staged: Path, final: Path) -> None:
    """Rename ``staged`` to ``final``; an existing ``final`` is moved aside first and deleted after."""
    if not final.exists():
        os.replace(staged, final)
        return
    old = final.with_name(f".{final.name}{_TMP_MARK}{os.getpid()}-old-{uuid.uuid4().hex[:8]}")
    os.replace(final, old)
    os.replace(staged, final)
    shutil.rmtree(old, ignore_errors=True) if old.is_dir() else old.unlink(missing_ok=True)
