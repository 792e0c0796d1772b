"""The training data: an mft-data tokenized folder, or a formatted folder / raw files tokenized on the way in."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from mft_core.errors import ConfigError, ContractError
from mft_core.manifest import has_manifest, read_manifest, sha256_file

from .batches import Rows


@dataclass(frozen=True)
class TrainData:
    path: Path
    tasks: tuple[str, ...]
    train: Rows
    valid: Rows | None
    manifest_id: str
    packed: bool = True  # rows hold several records (mft-data tokenize --mode pack)
    row_tokens: int = 0  # the tokenized folder's --seq-len: what a packed row holds at most
    preference: bool = False  # rows hold (chosen, rejected) pairs (mft-data from-eval --mode pairs)


def prepare_data(
    data: str, model_dir: Path, seq_len: int, out: Path, raw_text: bool = False, text_max_mb: float = 0.0
) -> Path:
    """A tokenized folder for ``data``: itself if already tokenized, else tokenized into ``out/tokenized``."""
    from mft_data.api import TextTokenizeConfig, TokenizeConfig, tokenize_folder, tokenize_text_files

    path = Path(data)
    target = out / "tokenized"
    if raw_text:
        tokenize_text_files(
            TextTokenizeConfig(
                sources=tuple(data.split(",")),
                tokenizer=str(model_dir),
                out=str(target),
                seq_len=seq_len,
                max_mb=text_max_mb,
                overwrite=True,
            )
        )
        return target
    if not has_manifest(path):
        raise ContractError(
            f"data {path}: not a finished MFT data folder (no manifest.json)",
            fix="make one with `mft-data format` (then optionally `mft-data tokenize`)",
        )
    kind = read_manifest(path).kind
    if kind == "tokenized-data":
        return path
    if kind == "formatted-data":
        tokenize_folder(
            TokenizeConfig(folder=str(path), tokenizer=str(model_dir), out=str(target), seq_len=seq_len, overwrite=True)
        )
        return target
    raise ConfigError(f"data {path} is a '{kind}' folder; expected formatted-data or tokenized-data")


def load_data(path: Path, model_dir: Path, seq_len: int) -> TrainData:
    """Load rows and check they were made for this model's tokenizer and fit ``seq_len``."""
    from mft_data.api import load_tokenized

    data = load_tokenized(path)
    if data.seq_len > seq_len:
        raise ConfigError(
            f"{path} was tokenized with --seq-len {data.seq_len}, above the training seq_len {seq_len}",
            fix=f"--set seq_len={data.seq_len}, or re-tokenize with --seq-len {seq_len}",
        )
    tokenizer_file = model_dir / "tokenizer.json"
    used = {i.sha256 for i in data.manifest.inputs if i.sha256}
    if tokenizer_file.is_file() and used and sha256_file(tokenizer_file) not in used:
        raise ConfigError(
            f"{path} was tokenized with another tokenizer than {model_dir}'s",
            fix=f"re-run mft-data tokenize with --tokenizer {model_dir}",
        )
    valid = Rows(data.valid) if data.valid is not None and len(data.valid) else None
    packed = data.manifest.config.get("mode", "pack") == "pack"
    preference = bool(data.manifest.summary.get("preference", False))
    return TrainData(path, data.tasks, Rows(data.train), valid, data.manifest.id, packed, data.seq_len, preference)
