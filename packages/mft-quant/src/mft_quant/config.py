"""The config of ``mft-quant gptq`` (defaults < --config YAML < flags)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from mft_core.errors import ConfigError


@dataclass(frozen=True)
class GPTQConfig:
    model: str = ""
    out: str = ""
    bits: Literal[2, 3, 4, 8] = 4
    group_size: int = 128
    desc_act: bool = False
    sym: bool = True
    damp: float = 0.01
    calib: str | None = None  # formatted-data folder; None: the built-in code corpus
    calib_samples: int = 128
    calib_seq_len: int = 2048
    calib_source: Literal["auto", "generic-text"] = "auto"  # generic-text: English prose (the benchmark's peer)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    batch_size: int = 1
    max_ppl_increase: float = 0.05
    eval_samples: int = 64
    eval_humaneval: bool = False
    eval_humaneval_limit: int | None = None  # only the first N HumanEval problems (smoke tests)
    seed: int = 0
    overwrite: bool = False

    def __post_init__(self):
        if not self.model or not self.out:
            raise ConfigError("usage: mft-quant gptq MODEL_DIR --out DIR")
        if self.group_size != -1 and self.group_size < 8:
            raise ConfigError(f"--group-size {self.group_size}: use -1 (per channel) or >= 8 (e.g. 32, 64, 128)")
        if not 0 < self.damp < 1:
            raise ConfigError(f"--damp {self.damp}: must be in (0, 1)")
        if self.calib_samples < 1 or self.calib_seq_len < 16:
            raise ConfigError("--calib-samples must be >= 1 and --calib-seq-len >= 16")
        if self.max_ppl_increase < 0:
            raise ConfigError("--max-ppl-increase is a relative increase, >= 0 (e.g. 0.05 for +5 %)")
