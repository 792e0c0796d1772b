"""Merge maths as pure functions on tensors (fp32 in, fp32 out). Each states its formula.

Shapes follow PEFT: for a Linear of weight ``W [out, in]``, ``A [r, in]``, ``B [out, r]``; for an Embedding of
weight ``E [num, dim]``, ``A [r, num]``, ``B [dim, r]``. ``fan_in_fan_out`` layers (GPT-2 style Conv1D) store
``W`` transposed.
"""

from __future__ import annotations

import math

import torch


def lora_scale(alpha: float, r: int, rslora: bool) -> float:
    """``alpha / r`` (LoRA) or ``alpha / sqrt(r)`` (rsLoRA)."""
    return alpha / math.sqrt(r) if rslora else alpha / r


def linear_delta(a: torch.Tensor, b: torch.Tensor, scale: float, fan_in_fan_out: bool = False) -> torch.Tensor:
    """``ΔW = scale · B A`` (transposed for fan_in_fan_out layers)."""
    delta = (b.float() @ a.float()) * scale
    return delta.T if fan_in_fan_out else delta


def merge_linear(
    w: torch.Tensor,
    a: torch.Tensor,
    b: torch.Tensor,
    scale: float,
    fan_in_fan_out: bool = False,
    magnitude: torch.Tensor | None = None,
) -> torch.Tensor:
    """``W + ΔW``; with DoRA ``m ⊙ (W + ΔW) / ‖W + ΔW‖`` (norm of each output row, as PEFT computes it)."""
    merged = w.float() + linear_delta(a, b, scale, fan_in_fan_out)
    if magnitude is None:
        return merged
    rows = merged.T if fan_in_fan_out else merged
    norm = torch.linalg.norm(rows, dim=1)
    rows = (magnitude.float() / norm).unsqueeze(1) * rows
    return rows.T if fan_in_fan_out else rows


def merge_embedding(e: torch.Tensor, a: torch.Tensor, b: torch.Tensor, scale: float) -> torch.Tensor:
    """``E + scale · (B A)ᵀ`` for a LoRA on an embedding table."""
    return e.float() + (b.float() @ a.float()).T * scale


def nf4_roundtrip(w: torch.Tensor, blocksize: int = 64, load_dtype: torch.dtype = torch.bfloat16) -> torch.Tensor:
    """``dequantize(quantize_nf4(W))`` with bitsandbytes, as QLoRA saw the frozen base while training.

    QLoRA loads the base in ``load_dtype`` (bf16 in mft-train and most recipes) before quantizing, so the weight is
    rounded to it first: quantizing the fp32 weight instead puts ~0.4 % of values in another nf4 bin (measured).
    Double quantization only compresses the block scales; its rounding of them is reproduced too.
    """
    import bitsandbytes.functional as bnbf

    q, state = bnbf.quantize_4bit(
        w.to(load_dtype).contiguous(), blocksize=blocksize, quant_type="nf4", compress_statistics=True
    )
    return bnbf.dequantize_4bit(q, state).float().reshape(w.shape)
