"""Prove a merged folder equals base + adapter by logits (load both); for models too big to load twice, the layers
check (:mod:`.layer_check`) compares weight by weight against PEFT's own merge of each layer."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from .adapter import Adapter
from .merge import Plan
from .ops import nf4_roundtrip

# max |Δlogit| and minimum greedy-token agreement per output dtype. fp32 merges should be exact to rounding;
# bf16/fp16 store every weight with 8/11 mantissa bits, which moves logits by up to a few tenths on real models.
TOLERANCE = {torch.float32: (1e-4, 0.95), torch.float16: (0.1, 0.8), torch.bfloat16: (0.5, 0.8)}
BUILTIN_PROMPTS = (
    'def fibonacci(n):\n    """Return the n-th Fibonacci number."""\n',
    "import os\n\n\ndef list_python_files(root):\n",
    "class Stack:\n    def __init__(self):\n",
    "# Sort a list of dictionaries by the key 'age'\n",
)


@dataclass
class Verification:
    check: str  # "logits" or "layers"
    passed: bool
    tolerance: float
    max_abs_diff: float
    token_agreement: float | None = None
    min_agreement: float | None = None
    prompts: int = 0
    prompt_source: str = ""
    tensors_checked: int = 0
    detail: str = ""  # what did not match, by name

    def to_dict(self) -> dict:
        return asdict(self)


def reference_model(base_dir: Path, adapter: Adapter, simulate_nf4: bool, quantized: set[str]):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    if simulate_nf4:
        params = dict(base.named_parameters())
        with torch.no_grad():
            for name in quantized:
                if name in params:
                    params[name].copy_(nf4_roundtrip(params[name]))
    return PeftModel.from_pretrained(base, adapter.path).eval()


def verify_logits(
    base_dir: Path,
    adapter: Adapter,
    out: Path,
    dtype: torch.dtype,
    prompts: list[list[int]],
    prompt_source: str,
    new_tokens: int,
    plan: Plan,
) -> Verification:
    from transformers import AutoModelForCausalLM

    reference = reference_model(base_dir, adapter, bool(plan.quantized), plan.quantized)
    merged = AutoModelForCausalLM.from_pretrained(out, dtype=dtype).eval()
    tol, min_agree = TOLERANCE[dtype]
    max_diff, agree, total = 0.0, 0, 0
    with torch.no_grad():
        for ids in prompts:
            # both models read the same text, the prompt plus the reference's greedy continuation (teacher
            # forcing): one early flip then counts once, instead of derailing every later token of a free run
            kwargs = dict(max_new_tokens=new_tokens, do_sample=False, pad_token_id=0)
            seq = reference.generate(input_ids=torch.tensor([ids]), **kwargs)
            ref_logits = reference(input_ids=seq).logits.float()[0]
            out_logits = merged(input_ids=seq).logits.float()[0]
            max_diff = max(max_diff, (ref_logits - out_logits).abs().max().item())
            scored = slice(len(ids) - 1, seq.shape[1] - 1)  # the positions that chose the continuation
            agree += int((ref_logits[scored].argmax(-1) == out_logits[scored].argmax(-1)).sum())
            total += seq.shape[1] - len(ids)
    agreement = agree / total if total else 1.0
    return Verification(
        "logits",
        max_diff <= tol and agreement >= min_agree,
        tol,
        max_diff,
        agreement,
        min_agree,
        len(prompts),
        prompt_source,
    )


def prompts_from_data(train_output: Path | None, tokenizer, count: int) -> tuple[list[list[int]], str]:
    """Prompt token ids from the training data's valid split (what the model was tuned for), else built-ins."""
    from mft_core.manifest import has_manifest, read_manifest

    if train_output is not None and has_manifest(train_output):
        data = read_manifest(train_output).config.get("data")
        tokenized = train_output / "tokenized" if (train_output / "tokenized").is_dir() else Path(data or "")
        try:
            prompts = _valid_prompts(tokenized, count)
            if prompts:
                return prompts, f"valid split of {tokenized}"
        except Exception:  # noqa: BLE001 - data moved or not tokenized: fall back to built-in prompts
            pass
    ids = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in BUILTIN_PROMPTS[:count]]
    return ids, "built-in code prompts"


def _valid_prompts(tokenized: Path, count: int) -> list[list[int]]:
    from datasets import load_from_disk

    split = tokenized / "valid" if (tokenized / "valid").is_dir() else tokenized / "train"
    ds = load_from_disk(str(split))
    prompts = []
    for row in ds.select(range(min(len(ds), count))):
        first = row["seq_lens"][0]
        labels = row["labels"][:first]
        end = next((i for i, lab in enumerate(labels) if lab != -100), first)
        if end > 0:
            prompts.append(row["input_ids"][:end])
    return prompts
