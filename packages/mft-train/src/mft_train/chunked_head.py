"""Put :func:`head_loss.chunked_head_loss` behind the model's own forward (``lm_head_chunk``).

:func:`install` replaces the transformers model's ``forward`` on the instance (before PEFT wraps it, so the
strategies' wrappers, DDP, FSDP2 and PEFT, still run their hooks around it): called with ``mft_targets=(mask,
labels)`` it runs the backbone, keeps the hidden states of the supervised positions and returns their per-token
losses; called without it, it is the original forward (generation, ``save_pretrained`` and everything else).

The head is looked up on every call (PEFT replaces ``lm_head`` after :func:`install`): a plain ``nn.Linear``
(tied or not, with or without bias), a ``modules_to_save`` copy of it, or a LoRA ``Linear`` on it. Anything else
(DoRA or another variant on the head, a merged adapter's bias, an unknown module) runs the head unchunked,
noted once in the log.
"""

from __future__ import annotations

import types
from dataclasses import dataclass

import torch

from .head_loss import chunk_tokens_for, chunked_head_loss

ATTR = "_mft_chunked_head"  # on the transformers model: the HeadPlan it was installed with
# work budget of one chunk of logits (auto): with Qwen's 151,936-entry vocabulary ~120 tokens per chunk
AUTO_BUDGET_BYTES = 256 * 2**20
# config keys that rescale logits between the head and the loss in some families; the chunked path does not
# apply them, so a model whose config sets one keeps the unchunked head
_LOGIT_SCALE_KEYS = ("logit_scale", "logits_scaling", "output_multiplier", "lm_head_multiplier")


@dataclass(frozen=True)
class HeadPlan:
    chunk: int  # tokens per chunk
    softcap: float | None  # gemma2's final_logit_softcapping


def plan_for(setting: int | str, config, strategy: str) -> tuple[HeadPlan | None, str]:
    """The plan for ``lm_head_chunk`` (``auto`` | 0 | N) on this model and strategy, and a line for the log."""
    if setting == 0:
        return None, "lm_head_chunk 0: logits of the supervised positions materialised (unchunked head)"
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    scaled = [k for k in _LOGIT_SCALE_KEYS if getattr(text, k, None) not in (None, 1, 1.0)]
    reason = None
    if strategy == "zero3":
        reason = "ZeRO-3 partitions lm_head's weight outside its own forward"
    elif scaled:
        reason = f"the config rescales logits ({', '.join(scaled)})"
    elif not getattr(text, "vocab_size", None):
        reason = "the config has no vocab_size"
    if reason:
        return None, f"lm_head_chunk {setting}: unchunked head ({reason})"
    chunk = chunk_tokens_for(text.vocab_size, AUTO_BUDGET_BYTES) if setting == "auto" else int(setting)
    softcap = getattr(text, "final_logit_softcapping", None) or None
    note = f"lm_head_chunk {setting}: LM head + cross-entropy in chunks of {chunk} tokens (vocab {text.vocab_size})"
    return HeadPlan(chunk, softcap), note + (f", soft-cap {softcap}" if softcap else "")


def install(model, plan: HeadPlan, log=print) -> None:
    """Make ``model(..., mft_targets=(mask, labels))`` return per-token losses through the chunked head."""
    original = model.forward
    backbone_name = model.base_model_prefix
    warned: set[str] = set()

    def forward(self, *args, mft_targets=None, **kwargs):
        if mft_targets is None:
            return original(*args, **kwargs)
        mask, labels = mft_targets
        kwargs["use_cache"] = False
        hidden = getattr(self, backbone_name)(*args, **kwargs).last_hidden_state[mask]
        head = self.get_output_embeddings()
        parts = head_parts(head, hidden)
        if isinstance(parts, str):
            if parts not in warned:
                warned.add(parts)
                log(f"lm_head_chunk: unchunked head for this call ({parts})")
            logits = head(hidden)
            if plan.softcap:
                logits = torch.tanh(logits / plan.softcap) * plan.softcap
            return torch.nn.functional.cross_entropy(logits.float(), labels, reduction="none")
        weight, bias, lowrank = parts
        return chunked_head_loss(
            hidden, weight, labels, chunk=plan.chunk, bias=bias, lowrank=lowrank, softcap=plan.softcap
        )

    model.forward = types.MethodType(forward, model)
    setattr(model, ATTR, plan)


def installed(model) -> HeadPlan | None:
    """The plan under any wrapper (DDP, DeepSpeed: ``.module``; PEFT forwards attribute reads to the model)."""
    while hasattr(model, "module"):
        model = model.module
    return getattr(model, ATTR, None)


def head_parts(head, hidden):
    """``(weight, bias, lowrank)`` of the head for :func:`chunked_head_loss`, or why it cannot be chunked."""
    from peft.tuners.lora import Linear as LoraLinear
    from peft.utils.other import ModulesToSaveWrapper

    if isinstance(head, ModulesToSaveWrapper):
        active = head.active_adapters
        use_copy = not head.disable_adapters and len(active) == 1 and active[0] in head.modules_to_save
        head = head.modules_to_save[active[0]] if use_copy else head.original_module
    if isinstance(head, LoraLinear):
        return _lora_parts(head, hidden)
    if type(head) is torch.nn.Linear:
        return head.weight, head.bias, None
    return f"{type(head).__name__} is not a linear head"


def _lora_parts(layer, hidden):
    base = layer.get_base_layer()
    if type(base) is not torch.nn.Linear:
        return f"LoRA over {type(base).__name__}"
    if layer.disable_adapters or layer.merged:
        return base.weight, base.bias, None
    downs, ups = [], []
    for name in layer.active_adapters:
        if name not in layer.lora_A:
            continue
        if name in layer.lora_variant or layer.lora_bias.get(name):
            return f"LoRA variant or lora_bias on the head (adapter {name})"
        a, b = layer.lora_A[name], layer.lora_B[name]
        downs.append(a(layer.lora_dropout[name](layer._cast_input_dtype(hidden, a.weight.dtype))) * layer.scaling[name])
        ups.append(b.weight)
    if not downs:
        return base.weight, base.bias, None
    lowrank = (downs[0], ups[0]) if len(downs) == 1 else (torch.cat(downs, 1), torch.cat(ups, 1))
    return base.weight, base.bias, lowrank
