"""The config of ``mft-quant gptq``, the only declaration of its settings (help, flag, fingerprint: see
:func:`mft_core.config.opt`); defaults < --config YAML < flags."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from mft_core.config import opt, overwrite_opt
from mft_core.errors import ConfigError


@dataclass(frozen=True)
class GPTQConfig:
    model: str = opt("", help="A model folder (e.g. the output of mft-merge).", positional=True, fingerprint=False)
    out: str = opt("", help="Output GPTQ folder.", fingerprint=False)
    bits: Literal[2, 3, 4, 8] = opt(4, help="Bits per weight.")
    group_size: int = opt(128, help="Weights sharing one scale (-1: per channel).")
    desc_act: bool = opt(False, help="Quantize columns by decreasing activation.", flag="--desc-act/--no-desc-act")
    sym: bool = opt(True, help="Symmetric quantization.", flag="--sym/--asym")
    damp: float = opt(0.01, help="Hessian dampening (share of the mean diagonal).")
    calib: str | None = opt(
        None, help="Formatted data folder (mft-data format) to calibrate on (default: a built-in code corpus)."
    )
    calib_samples: int = opt(128, help="Calibration records, drawn evenly across tasks.")
    calib_seq_len: int = opt(2048, help="Longest calibration sample in tokens.")
    calib_source: Literal["auto", "generic-text"] = opt(
        "auto",
        help="Without --calib: auto (built-in code) or generic-text (English prose, the benchmark's peer).",
        cli=False,
    )
    device: Literal["auto", "cpu", "cuda"] = opt(
        "auto", help="Where to quantize: auto (cuda when there is one), cpu or cuda.", fingerprint=False
    )
    batch_size: int = opt(1, help="Calibration samples GPTQModel runs at once.", cli=False)
    # the gate, on held-out answer tokens (see mft_quant.quality). NLL increase in nats per answer token, absolute:
    # 0.05 nats = +5.1 % answer perplexity whatever the fp loss (a relative threshold on a small loss is noise)
    max_nll_increase: float = opt(
        0.05, help="Exit 1 if held-out answer-token NLL rises more than this (nats per token; 0.05 ≈ +5 %)."
    )
    min_agreement: float = opt(
        0.9, help="Exit 1 if the quantized argmax matches fp on fewer answer tokens than this share."
    )
    max_ppl_increase: float | None = opt(
        None, help="Also exit 1 if all-token perplexity (prompts included) rises more than this (relative)."
    )
    eval_samples: int = opt(64, help="Held-out (valid split) records the gate reads.")
    eval_humaneval: bool = opt(False, help="Also run mft-eval on both models and report Δpass@1.")
    eval_humaneval_limit: int | None = opt(
        None, help="With eval_humaneval: only the first N HumanEval problems (smoke tests).", cli=False
    )
    seed: int = opt(0, help="Seed of the calibration and held-out draws.", cli=False)
    overwrite: bool = overwrite_opt()

    def __post_init__(self):
        if not self.model or not self.out:
            raise ConfigError("usage: mft-quant gptq MODEL_DIR --out DIR")
        if self.group_size != -1 and self.group_size < 8:
            raise ConfigError(f"--group-size {self.group_size}: use -1 (per channel) or >= 8 (e.g. 32, 64, 128)")
        if not 0 < self.damp < 1:
            raise ConfigError(f"--damp {self.damp}: must be in (0, 1)")
        if self.calib_samples < 1 or self.calib_seq_len < 16:
            raise ConfigError("--calib-samples must be >= 1 and --calib-seq-len >= 16")
        if self.max_nll_increase < 0:
            raise ConfigError(
                f"--max-nll-increase {self.max_nll_increase}: an increase in nats per answer token, >= 0 "
                "(e.g. 0.05, about +5 % answer perplexity)"
            )
        if not 0 <= self.min_agreement <= 1:
            raise ConfigError(f"--min-agreement {self.min_agreement}: a share of answer tokens, in [0, 1] (e.g. 0.9)")
        if self.max_ppl_increase is not None and self.max_ppl_increase < 0:
            raise ConfigError("--max-ppl-increase is a relative increase, >= 0 (e.g. 0.05 for +5 %)")
        if self.eval_samples < 1:
            raise ConfigError(f"--eval-samples {self.eval_samples}: must be >= 1 (held-out records to gate on)")
