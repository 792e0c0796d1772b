"""The config of ``mft-merge`` (defaults < --config YAML < flags)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from mft_core.errors import ConfigError


@dataclass(frozen=True)
class MergeConfig:
    adapter: str = ""
    out: str = ""
    base: str | None = None
    dtype: Literal["auto", "bf16", "fp16", "fp32"] = "auto"
    max_shard_size: str = "5GB"
    verify: Literal["auto", "logits", "layers", "none"] = "auto"
    simulate_nf4: bool = False
    prompts: int = 4
    new_tokens: int = 16
    overwrite: bool = False

    def __post_init__(self):
        if not self.adapter:
            raise ConfigError("no adapter given: mft-merge ADAPTER_DIR --out DIR")
        if not self.out:
            raise ConfigError("--out is required")
        if self.prompts < 1 or self.new_tokens < 1:
            raise ConfigError("--prompts and --new-tokens must be at least 1")
