"""Model-family quirks, one row per HF ``model_type``; no other module branches on a model name.

Each row says which linear layers LoRA targets by default (all projections of attention and MLP, as MFTCoder
does), how EOS/pad/BOS behave, whether embeddings are usually tied, and how to build a tiny model of the
family from config (for tests and the built-in default). Sources are the HF modeling files and PEFT's own
target-module mapping (peft/utils/constants.py).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Literal

from .errors import ConfigError

# The pad used when a tokenizer has none. Pad positions are masked out of attention and loss, so any existing
# token is safe; "unk" keeps EOS unambiguous in logs and decoded batches where the family's tokenizers have <unk>.
PadPolicy = Literal["eos", "unk"]

# Generic size names -> the HF config keys most families use.
_STD_KEYS = MappingProxyType(
    {
        "hidden": "hidden_size",
        "layers": "num_hidden_layers",
        "heads": "num_attention_heads",
        "kv_heads": "num_key_value_heads",
        "intermediate": "intermediate_size",
        "max_positions": "max_position_embeddings",
    }
)
# DeepSeek V2/V3 tiny models: multi-head latent attention and a few routed experts (the first layer dense)
_MLA_MOE_TINY = {
    "kv_lora_rank": 64,
    "qk_rope_head_dim": 16,
    "qk_nope_head_dim": 16,
    "v_head_dim": 32,
    "n_routed_experts": 4,
    "num_experts_per_tok": 2,
    "n_group": 1,
    "topk_group": 1,
    "moe_intermediate_size": 128,
    "first_k_dense_replace": 1,
}
_LLAMA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
_ATTN_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj")


@dataclass(frozen=True)
class Family:
    """Quirks of one model family.

    Attributes:
        model_type: HF ``config.model_type``.
        lora_targets: module-name suffixes LoRA wraps by default.
        bos_is_marker: True when ``<s>`` (MFTCoder's round marker) is the BOS special token in this family's
            tokenizers (Llama-style SentencePiece); False when it is plain text.
        pad_policy: the pad mft-train sets when the tokenizer has none (``eos`` or ``unk``, see PadPolicy).
        eos: the EOS token of released checkpoints (tokenizer_config.json is what is used; this documents it).
        tied_embeddings: whether released checkpoints of this family usually tie input and output embeddings.
        packed_sdpa: whether attention is plain scaled-dot-product (no logit soft-capping), so packed rows can run
            SDPA once per record instead of one masked call over the whole row.
        size_keys: generic size name -> HF config key (``None``: the family has no such knob).
        tiny_extra: fixed config values for tiny test models (e.g. head_dim, MoE sizes).
        kv_per_head: attention keeps one key/value per head (MLA: released configs set num_key_value_heads to
            num_attention_heads); tiny models get ``kv_heads = heads``, since fewer makes eager and SDPA
            attention repeat the already per-head keys and fail on shapes.
        notes: anything a user should know, with sources.
    """

    model_type: str
    lora_targets: tuple[str, ...]
    bos_is_marker: bool = False
    pad_policy: PadPolicy = "eos"
    eos: str = ""
    tied_embeddings: bool = False
    size_keys: Mapping[str, str | None] = field(default_factory=lambda: _STD_KEYS)
    tiny_extra: Mapping[str, object] = field(default_factory=dict)
    packed_sdpa: bool = True
    kv_per_head: bool = False
    notes: str = ""
    source: str = ""

    def config_kwargs(self, sizes: Mapping[str, int]) -> dict[str, object]:
        """HF config kwargs for generic ``sizes`` (see :data:`PRESETS`) plus this family's fixed extras."""
        kwargs: dict[str, object] = {}
        for generic, value in sizes.items():
            key = self.size_keys.get(generic)
            if key:
                kwargs[key] = value
        kv_key = self.size_keys.get("kv_heads")
        if self.kv_per_head and kv_key and "heads" in sizes:
            kwargs[kv_key] = sizes["heads"]
        kwargs.update(self.tiny_extra)
        return kwargs


def _f(model_type: str, **kw) -> Family:
    return Family(model_type=model_type, **kw)


_HF = "https://github.com/huggingface/transformers/tree/main/src/transformers/models/"
FAMILIES: Mapping[str, Family] = MappingProxyType(
    {
        row.model_type: row
        for row in (
            _f(
                "llama",
                lora_targets=_LLAMA_TARGETS,
                bos_is_marker=True,
                pad_policy="unk",
                eos="</s>",
                source=_HF + "llama",
                notes="CodeLlama; released tokenizers have no pad token, so <unk> pads (as in MFTCoder).",
            ),
            _f(
                "mistral",
                lora_targets=_LLAMA_TARGETS,
                bos_is_marker=True,
                pad_policy="unk",
                eos="</s>",
                source=_HF + "mistral",
                notes="Codestral/Mistral: SentencePiece like Llama, no pad token, <unk> pads.",
            ),
            _f(
                "mixtral",
                lora_targets=_ATTN_TARGETS,
                bos_is_marker=True,
                pad_policy="unk",
                eos="</s>",
                source=_HF + "mixtral",
                tiny_extra={"num_local_experts": 4, "num_experts_per_tok": 2},
                notes="transformers 5 stores experts as fused 3D parameters, not nn.Linear: LoRA targets attention.",
            ),
            _f(
                "qwen2",
                lora_targets=_LLAMA_TARGETS,
                eos="<|endoftext|>",
                tied_embeddings=True,
                source=_HF + "qwen2",
                tiny_extra={"use_sliding_window": False},
                notes="Qwen2.5-Coder: EOS <|im_end|> (instruct) or <|endoftext|> (base), pad <|endoftext|>.",
            ),
            _f(
                "qwen3",
                lora_targets=_LLAMA_TARGETS,
                eos="<|endoftext|>",
                tied_embeddings=True,
                source=_HF + "qwen3",
                tiny_extra={"head_dim": 32, "use_sliding_window": False},
                notes="Qwen3 base: EOS <|endoftext|>, pad <|endoftext|> in released tokenizers; head_dim is explicit.",
            ),
            _f(
                "starcoder2",
                lora_targets=("q_proj", "k_proj", "v_proj", "o_proj", "c_fc", "c_proj"),
                eos="<|endoftext|>",
                tied_embeddings=True,
                source=_HF + "starcoder2",
                notes="MLP is c_fc/c_proj; released tokenizers have no pad, so EOS <|endoftext|> pads (masked).",
            ),
            _f(
                "gpt_bigcode",
                lora_targets=("c_attn", "c_proj", "c_fc"),
                tied_embeddings=True,
                size_keys=MappingProxyType(
                    {
                        "hidden": "n_embd",
                        "layers": "n_layer",
                        "heads": "n_head",
                        "kv_heads": None,
                        "intermediate": "n_inner",
                        "max_positions": "n_positions",
                    }
                ),
                tiny_extra={"multi_query": True},
                source=_HF + "gpt_bigcode",
                notes="StarCoder(1)/SantaCoder, CodeFuse-13B lineage; fused c_attn, multi-query attention.",
            ),
            _f(
                "gpt_neox",
                lora_targets=("query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"),
                size_keys=MappingProxyType({**_STD_KEYS, "kv_heads": None}),
                source=_HF + "gpt_neox",
                notes="Pythia/CodeFuse-13B style fused query_key_value.",
            ),
            _f(
                "phi3",
                lora_targets=("qkv_proj", "o_proj", "gate_up_proj", "down_proj"),
                source=_HF + "phi3",
                notes="Fused qkv_proj and gate_up_proj.",
            ),
            _f(
                "gemma2",
                lora_targets=_LLAMA_TARGETS,
                tied_embeddings=True,
                source=_HF + "gemma2",
                packed_sdpa=False,
                tiny_extra={"head_dim": 32, "sliding_window": 64},
                notes="Uses <bos>; logit soft-capping; eager attention recommended by HF for training.",
            ),
            _f(
                "deepseek_v2",
                lora_targets=("q_proj", "kv_a_proj_with_mqa", "kv_b_proj", "o_proj"),
                eos="<｜end▁of▁sentence｜>",
                source=_HF + "deepseek_v2",
                kv_per_head=True,
                tiny_extra={**_MLA_MOE_TINY, "q_lora_rank": None},
                notes="DeepSeek-Coder-V2(-Lite): MLA attention (Lite has no q LoRA, so q_proj), routed experts fused.",
            ),
            _f(
                "deepseek_v3",
                lora_targets=("q_a_proj", "q_b_proj", "kv_a_proj_with_mqa", "kv_b_proj", "o_proj"),
                bos_is_marker=False,
                source=_HF + "deepseek_v3",
                kv_per_head=True,
                tiny_extra={**_MLA_MOE_TINY, "q_lora_rank": 64},
                eos="<｜end▁of▁sentence｜>",
                notes="MLA attention; routed experts are fused parameters, so LoRA targets the attention linears.",
            ),
        )
    }
)

# Generic sizes; hidden and intermediate are multiples of 128 so bitsandbytes' CPU kernel (in_features % 64)
# and GPTQ group size 128 both work.
PRESETS: Mapping[str, Mapping[str, int]] = MappingProxyType(
    {
        "tiny": MappingProxyType(
            {
                "hidden": 128,
                "layers": 2,
                "heads": 4,
                "kv_heads": 2,
                "intermediate": 256,
                "max_positions": 2048,
                "vocab": 4096,
            }
        ),
        "small": MappingProxyType(
            {
                "hidden": 256,
                "layers": 4,
                "heads": 4,
                "kv_heads": 2,
                "intermediate": 768,
                "max_positions": 2048,
                "vocab": 8192,
            }
        ),
        "base": MappingProxyType(
            {
                "hidden": 512,
                "layers": 8,
                "heads": 8,
                "kv_heads": 4,
                "intermediate": 1536,
                "max_positions": 4096,
                "vocab": 16384,
            }
        ),
    }
)


def get_family(model_type: str) -> Family:
    """The row for ``model_type``.

    Raises:
        ConfigError: the family is not in the table (the message lists the ones that are).
    """
    try:
        return FAMILIES[model_type]
    except KeyError:
        raise ConfigError(
            f"model type '{model_type}' is not in MFT's family table",
            fix=f"use one of: {', '.join(sorted(FAMILIES))}, or pass target_modules explicitly",
        ) from None


def get_preset(name: str) -> Mapping[str, int]:
    try:
        return PRESETS[name]
    except KeyError:
        raise ConfigError(f"unknown preset '{name}'", fix=f"use one of: {', '.join(PRESETS)}") from None
