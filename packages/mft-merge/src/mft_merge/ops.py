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
    """``W + ΔW``; with DoRA ``m ⊙ (W + ΔW) / ‖W + ΔW‖``, the norm of each output row (PEFT's
    ``DoraLinearLayer``: for fan_in_fan_out layers, stored ``[in, out]``, of each column as stored)."""
    merged = w.float() + linear_delta(a, b, scale, fan_in_fan_out)
    if magnitude is None:
        return merged
    rows = merged.T if fan_in_fan_out else merged
    rows = dora_factor(magnitude, row_norms(rows)).unsqueeze(1) * rows
    return rows.T if fan_in_fan_out else rows


def add_lora_(
    w: torch.Tensor, a: torch.Tensor, b: torch.Tensor, scale: float, fan_in_fan_out: bool, scratch: torch.Tensor
) -> torch.Tensor:
    """``W += ΔW`` in place, with ``ΔW`` computed into ``scratch`` (a float32 buffer of ``W``'s size, reused across
    layers): :func:`merge_linear` without DoRA, in the same float32 operations in the same order (matmul, scale,
    add; PEFT's ``merge``), so bit for bit equal to it, without allocating a weight-sized tensor per layer."""
    out_f, in_f = b.shape[0], a.shape[1]
    delta = torch.matmul(b.float(), a.float(), out=scratch[: out_f * in_f].view(out_f, in_f))
    delta.mul_(scale)
    return w.add_(delta.T if fan_in_fan_out else delta)


def merge_embedding(
    e: torch.Tensor, a: torch.Tensor, b: torch.Tensor, scale: float, magnitude: torch.Tensor | None = None
) -> torch.Tensor:
    """``E + ΔE`` with ``ΔE = scale · (B A)ᵀ`` for a LoRA on an embedding table; with DoRA
    ``m ⊙ (E + ΔE) / ‖E + ΔE‖``, the norm of each embedding dimension (a column ``[:, j]``, over the whole
    vocabulary), as PEFT's ``DoraEmbeddingLayer`` computes it: ``m`` has ``dim`` entries."""
    merged = e.float() + (b.float() @ a.float()).T * scale
    if magnitude is None:
        return merged
    return dora_factor(magnitude, row_norms(merged.T)).unsqueeze(0) * merged


def row_norms(x: torch.Tensor, max_elements: int = 1 << 24) -> torch.Tensor:
    """``‖x[i, :]‖₂`` for every row, accumulated in float64 a block of rows at a time (float64).

    A float32 sum over a long axis, such as an embedding's whole vocabulary, drifts by several eps (measured 9);
    blocks of at most ``max_elements`` keep the float64 copy small."""
    out = torch.empty(x.shape[0], dtype=torch.float64)
    step = max(1, max_elements // max(1, x.shape[1]))
    for i in range(0, x.shape[0], step):
        out[i : i + step] = torch.linalg.norm(x[i : i + step].double(), dim=1)
    return out


def dora_factor(magnitude: torch.Tensor, norms: torch.Tensor) -> torch.Tensor:
    """DoRA's ``m / ‖W + ΔW‖`` per output row (per embedding dimension), as float32."""
    return (magnitude.double() / norms.double()).float()


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
