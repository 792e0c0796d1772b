"""Perplexity per task, full precision vs quantized, and the gate on its relative increase."""

from __future__ import annotations

import gc
import math
from collections import defaultdict
from pathlib import Path

import torch

from .calibration import Sample


@torch.no_grad()
def perplexity(model, tokenizer, samples: list[Sample], seq_len: int) -> dict[str, float]:
    """exp(mean token NLL) per task and ``overall`` (token-weighted) over every token of each rendered sample."""
    nll, count = defaultdict(float), defaultdict(int)
    device = next(model.parameters()).device
    for s in samples:
        ids = tokenizer(s.text, add_special_tokens=False, return_tensors="pt")["input_ids"][:, :seq_len].to(device)
        if ids.shape[1] < 2:
            continue
        logits = model(input_ids=ids, use_cache=False).logits[0, :-1].float()
        loss = torch.nn.functional.cross_entropy(logits, ids[0, 1:], reduction="sum").item()
        n = ids.shape[1] - 1
        for key in (s.task, "overall"):
            nll[key] += loss
            count[key] += n
    return {k: math.exp(nll[k] / count[k]) for k in nll}


def measure(
    model_dir: Path, tokenizer, samples: list[Sample], seq_len: int, device: str, dtype=None
) -> dict[str, float]:
    """Load a model (plain transformers, so a GPTQ folder goes through optimum + gptqmodel), measure, free it."""
    from transformers import AutoModelForCausalLM

    kwargs = {"device_map": device}
    if dtype is not None:
        kwargs["dtype"] = dtype
    model = AutoModelForCausalLM.from_pretrained(model_dir, **kwargs).eval()
    try:
        return perplexity(model, tokenizer, samples, seq_len)
    finally:
        del model
        gc.collect()


def compare(fp: dict[str, float], quant: dict[str, float], max_increase: float) -> dict:
    rows = {
        k: {"fp": fp[k], "quantized": quant.get(k, math.inf), "increase": quant.get(k, math.inf) / fp[k] - 1}
        for k in fp
    }
    increase = rows["overall"]["increase"]
    return {
        "perplexity": rows,
        "overall_increase": increase,
        "max_increase": max_increase,
        "passed": bool(math.isfinite(increase) and increase <= max_increase),
    }
