"""Find the HF folder inside an MFT output folder, so every tool accepts either.

``mft-train`` writes ``OUT/manifest.json`` with ``summary.paths`` naming its ``adapter/`` or ``model/`` subfolder;
other tools write the HF files at the top. A plain HF folder (no manifest, e.g. a hub checkpoint) is accepted
as a model too.
"""

from __future__ import annotations

import json
from pathlib import Path

from .errors import ConfigError, ContractError
from .manifest import has_manifest, read_manifest


def model_type_of(model_dir: str | Path) -> str | None:
    """``model_type`` from a model folder's config.json (None when there is none or it is unreadable)."""
    try:
        return json.loads((Path(model_dir) / "config.json").read_text(encoding="utf-8")).get("model_type")
    except (OSError, ValueError):
        return None


def resolve_model_dir(path: str | Path) -> Path:
    """The folder holding ``config.json`` and the weights of a model given as an MFT output or HF folder."""
    path = Path(path)
    if (path / "config.json").is_file():
        return path
    if has_manifest(path):
        manifest = read_manifest(path)
        sub = manifest.summary.get("paths", {}).get("model")
        if sub and (path / sub / "config.json").is_file():
            return path / sub
        if manifest.kind == "adapter":
            raise ContractError(
                f"{path} holds a LoRA adapter, not a model", fix=f"merge it first: mft-merge {path} --out MERGED"
            )
    raise ContractError(
        f"{path}: no model here (no config.json, no model/ subfolder named in a manifest)",
        fix="pass a Hugging Face model folder or an MFT model output",
    )


def resolve_adapter_dir(path: str | Path) -> Path:
    """The folder holding ``adapter_config.json`` of an adapter given as an mft-train output or PEFT folder."""
    path = Path(path)
    if (path / "adapter_config.json").is_file():
        return path
    if has_manifest(path):
        sub = read_manifest(path).summary.get("paths", {}).get("adapter")
        if sub and (path / sub / "adapter_config.json").is_file():
            return path / sub
    raise ContractError(
        f"{path}: no LoRA adapter here (no adapter_config.json, no adapter/ named in a manifest)",
        fix="pass the output_dir of `mft-train run` (with peft: lora or qlora) or a PEFT adapter folder",
    )


def model_fingerprint(model_dir: str | Path) -> str:
    """sha256 of a model's ``config.json`` and its weights index (or weight file names and sizes).

    Cheap on models of any size (no weight is read) and changes whenever the architecture or the weights files do.
    """
    import hashlib

    model_dir = Path(model_dir)
    digest = hashlib.sha256()
    digest.update((model_dir / "config.json").read_bytes())
    index = model_dir / "model.safetensors.index.json"
    if index.is_file():
        digest.update(index.read_bytes())
    else:
        for f in sorted(model_dir.glob("*.safetensors")) + sorted(model_dir.glob("*.bin")):
            digest.update(f"{f.name}:{f.stat().st_size}".encode())
    return digest.hexdigest()


def resolve_tokenizer_dir(path: str | Path) -> str:
    """Where a tokenizer lives: a folder with tokenizer files, the model folder of an MFT output, or (when no such
    local path exists) a hub id passed through unchanged."""
    p = Path(path)
    if not p.exists():
        return str(path)
    if (p / "tokenizer_config.json").is_file() or (p / "tokenizer.json").is_file():
        return str(p)
    return str(resolve_model_dir(p))


def load_tokenizer(path: str | Path):
    """``AutoTokenizer.from_pretrained`` on :func:`resolve_tokenizer_dir`, with an error that names the folder.

    The one tokenizer loader of every tool (mft-train adds its EOS and pad checks on top). transformers is the
    ``hf`` extra of mft-core, imported only here.
    """
    try:
        from transformers import AutoTokenizer
    except ImportError:
        raise ConfigError(
            "loading a tokenizer needs transformers, which is not installed",
            fix="pip install 'mft-core[hf]' (or the tool's extra that includes it, e.g. 'mft-eval[generate]')",
        ) from None

    where = resolve_tokenizer_dir(path)
    try:
        return AutoTokenizer.from_pretrained(where)
    except (OSError, ValueError) as exc:
        first_line = (str(exc).splitlines() or [type(exc).__name__])[0]
        raise ContractError(
            f"{path}: no usable tokenizer ({first_line})",
            fix="pass a model or tokenizer folder (with tokenizer.json) or a hub id",
        ) from None
