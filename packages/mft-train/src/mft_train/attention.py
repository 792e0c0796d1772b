"""Packed-row attention without the quadratic row cost: torch SDPA over each record ("varlen" on CPU).

A packed row of ``T`` tokens holding records of lengths ``n_1..n_k`` needs attention only inside each record.
transformers builds a ``T x T`` block-diagonal mask and runs one masked SDPA (cost ``T^2``); flash-attention's
varlen kernels avoid that on GPUs but do not exist on CPU. This registers, through transformers' public
``AttentionInterface``, an attention function that gathers the records of a micro-batch into buckets of equal
padded length and runs causal SDPA once per bucket (cost ``sum n_i^2`` plus a little padding). The model code is
untouched. Records never see each other by construction; right-padding a record inside its bucket is exact
because causal attention never lets a real query see a later (padding) key.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

NAME = "mft_sdpa_varlen"
SEGMENTS_KWARG = "mft_segments"
BUCKET = 64  # records are padded up to a multiple of this inside their bucket
MATH_UP_TO = 128  # on CPU, torch's plain (math) SDPA beats its flash kernel for short records (measured: ~2x at 64-128)


@dataclass(frozen=True)
class Bucket:
    gather: torch.Tensor  # [n, L] flat token index of each (record, position); padding repeats the last token
    valid: torch.Tensor  # [k] positions in the flattened [n * L] output that are real tokens, in token order
    tokens: torch.Tensor  # [k] the flat token index each of those real outputs belongs to


@dataclass(frozen=True)
class SegmentPlan:
    batch: int
    length: int
    buckets: tuple[Bucket, ...]


def plan_segments(position_ids: torch.Tensor, bucket: int = BUCKET) -> SegmentPlan:
    """Find every run of positions restarting at 0 (records and padding tails) and bucket them by length."""
    batch, length = position_ids.shape
    flat = position_ids.reshape(-1)
    starts = torch.nonzero(flat == 0).flatten()
    row_starts = torch.arange(batch) * length
    starts = torch.unique(torch.cat([starts, row_starts]))  # a row always starts a segment
    ends = torch.cat([starts[1:], torch.tensor([batch * length])])
    # a segment never crosses a row boundary
    row_end = (starts // length + 1) * length
    ends = torch.minimum(ends, row_end)
    lens = ends - starts
    padded = ((lens + bucket - 1) // bucket) * bucket
    buckets = []
    for size in torch.unique(padded).tolist():
        pick = torch.nonzero(padded == size).flatten()
        s, n = starts[pick], lens[pick]
        offs = torch.arange(size)
        gather = s[:, None] + torch.minimum(offs[None, :], (n - 1)[:, None])
        real = offs[None, :] < n[:, None]
        valid = torch.nonzero(real.reshape(-1)).flatten()
        buckets.append(Bucket(gather, valid, gather.reshape(-1)[valid]))
    return SegmentPlan(batch, length, tuple(buckets))


def varlen_sdpa_forward(module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kwargs):
    """Same contract as transformers' ``sdpa_attention_forward`` (returns ``[B, T, heads, head_dim]``)."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    plan: SegmentPlan | None = kwargs.pop(SEGMENTS_KWARG, None)
    training_shape = query.shape[2] > 1 and query.shape[2] == key.shape[2] and attention_mask is None
    if plan is None and training_shape and kwargs.get("position_ids") is not None:
        # called like any HF model (no plan): the model's own position ids still mark the records
        plan = plan_segments(kwargs["position_ids"].expand(query.shape[0], -1).cpu())
    if plan is None:  # one sequence per row (no positions given), decoding with a cache, or an explicit mask
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
        )
    b, heads, t, dim = query.shape

    def flat(x):  # [B, H, T, D] -> [B*T, H, D]
        return x.transpose(1, 2).reshape(b * t, x.shape[1], x.shape[3])

    q, k, v = flat(query), flat(key), flat(value)
    out = query.new_empty((b * t, heads, value.shape[3]))
    for bucket in plan.buckets:
        n, size = bucket.gather.shape
        idx = bucket.gather.to(query.device).reshape(-1)
        qb, kb, vb = (_take(x, idx, n, size) for x in (q, k, v))
        with _backend_for(size, query.device):
            res, _ = sdpa_attention_forward(
                module, qb, kb, vb, None, dropout=dropout, scaling=scaling, is_causal=True, **kwargs
            )  # [n, L, H, D]
        res = res.reshape(n * size, heads, res.shape[-1])
        out = out.index_copy(0, bucket.tokens.to(query.device), res.index_select(0, bucket.valid.to(query.device)))
    return out.reshape(b, t, heads, value.shape[3]), None


def _take(x: torch.Tensor, idx: torch.Tensor, n: int, size: int) -> torch.Tensor:
    """Gather a bucket's records from flat tokens ``[B*T, H, D]`` into ``[n, H, L, D]``."""
    return x.index_select(0, idx).reshape(n, size, x.shape[1], x.shape[2]).transpose(1, 2)


def _backend_for(size: int, device: torch.device):
    import contextlib

    if device.type != "cpu" or size > MATH_UP_TO:
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel([SDPBackend.MATH])


def no_mask(*args, **kwargs):
    """The varlen path needs no mask: segments come from the position ids."""
    return None


def register() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    AttentionInterface.register(NAME, varlen_sdpa_forward)
    AttentionMaskInterface.register(NAME, no_mask)
