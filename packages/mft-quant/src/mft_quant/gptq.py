"""GPTQ with GPTQModel: checks before any work, then quantize and save a standard GPTQ folder."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from mft_core.errors import ConfigError, ContractError
from mft_core.ui import info

from .config import GPTQConfig


def supported_model_types() -> list[str]:
    from gptqmodel.models.auto import SUPPORTED_MODELS

    return list(SUPPORTED_MODELS)


def check_model(model_dir: Path, group_size: int) -> str:
    """Refuse an unsupported model type or layers GPTQ cannot group, before loading any weight."""
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(model_dir)
    if config.model_type not in supported_model_types():
        raise ConfigError(
            f"GPTQModel cannot quantize model type '{config.model_type}'",
            fix="supported: " + ", ".join(sorted(supported_model_types())[:40]) + ", ...",
        )
    if getattr(config, "quantization_config", None):
        raise ContractError(f"{model_dir} is already quantized", fix="quantize the full-precision (merged) model")
    if group_size == -1:
        return config.model_type
    with init_empty_weights():
        meta = AutoModelForCausalLM.from_config(config)
    output = meta.get_output_embeddings()
    bad = sorted(
        f"{n} (in_features {m.in_features})"
        for n, m in meta.named_modules()
        if isinstance(m, torch.nn.Linear) and m is not output and m.in_features % group_size
    )
    if bad:
        raise ConfigError(
            f"--group-size {group_size} does not divide the input size of: {', '.join(bad[:4])}"
            + (" ..." if len(bad) > 4 else ""),
            fix="use a group size that divides every layer's in_features (e.g. 32 or 64), or -1",
        )
    return config.model_type


def resolve_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda: no CUDA device here", fix="use --device cpu")
    return device


def quantize(cfg: GPTQConfig, model_dir: Path, calibration: list[dict], out: Path, device: str) -> None:
    """Run GPTQModel and save into ``out`` (GPTQ folder: quantization config inside config.json)."""
    if device == "cpu":
        # GPTQModel sizes its CPU thread pool from this; without it a small machine oversubscribes
        os.environ.setdefault(
            "GPTQMODEL_CPU_WORKERS", str(min(8, max(2, os.cpu_count() or 2)))
        )  # its loader pool needs >= 2
        info(
            "GPTQModel on CPU: its C++ kernel is compiled once (about 30 s, needs g++), then layers are quantized "
            "one by one; its own per-layer progress follows"
        )
    from gptqmodel import GPTQModel, QuantizeConfig

    qcfg = QuantizeConfig(
        bits=cfg.bits, group_size=cfg.group_size, desc_act=cfg.desc_act, sym=cfg.sym, damp_percent=cfg.damp
    )
    model_dir, out = model_dir.resolve(), out.resolve()
    cwd = os.getcwd()
    os.chdir(out)  # GPTQModel writes its per-layer log to ./logs: keep it with the output, not in the user's cwd
    try:
        model = GPTQModel.load(str(model_dir), qcfg, device=device)
        model.quantize(calibration, batch_size=cfg.batch_size)
        model.save(str(out))
    finally:
        os.chdir(cwd)
