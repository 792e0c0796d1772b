"""The config of ``mft-merge``, the only declaration of its settings (help, flag, fingerprint: see
:func:`mft_core.config.opt`); defaults < --config YAML < flags."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from mft_core.config import opt, overwrite_opt
from mft_core.errors import ConfigError


@dataclass(frozen=True)
class MergeConfig:
    adapter: str = opt(
        "", help="An mft-train output folder, or a PEFT adapter folder.", positional=True, fingerprint=False
    )
    out: str = opt("", help="Output model folder (written atomically).", fingerprint=False)
    base: str | None = opt(None, help="Base model folder; default: the one the adapter names.", fingerprint=False)
    dtype: Literal["auto", "bf16", "fp16", "fp32"] = opt("auto", help="auto|bf16|fp16|fp32 (auto: the base's dtype).")
    max_shard_size: str = opt("5GB", help="Largest output shard, e.g. 5GB, 500MB.")
    verify: Literal["auto", "logits", "layers", "none"] = opt(
        "auto",
        help="auto|logits|layers|none (auto: layers, each changed weight against PEFT's own merge of it).",
        aliases={"--no-verify": ("none", "Skip verification (same as --verify none).")},
    )
    simulate_nf4: bool = opt(False, help="Round base weights through nf4 first, as a QLoRA adapter saw them.")
    prompts: int = opt(4, help="Prompts the logits check runs (from the training data's valid split when found).")
    new_tokens: int = opt(16, help="Tokens the logits check generates greedily per prompt.")
    overwrite: bool = overwrite_opt()

    def __post_init__(self):
        if not self.adapter:
            raise ConfigError("no adapter given: mft-merge ADAPTER_DIR --out DIR")
        if not self.out:
            raise ConfigError("--out is required")
        if self.prompts < 1 or self.new_tokens < 1:
            raise ConfigError("--prompts and --new-tokens must be at least 1")
