"""Load the base model and tokenizer, check they fit the data and config, and wrap them with PEFT.

All model-name knowledge comes from ``mft_core.families``; this module never branches on a model name.
"""

from __future__ import annotations

from pathlib import Path

import torch
from mft_core import artifacts
from mft_core.artifacts import model_type_of, resolve_model_dir
from mft_core.errors import ConfigError
from mft_core.families import FAMILIES

from .config import TrainConfig, checkpoint_every


def load_tokenizer(model_dir: Path):
    """:func:`mft_core.artifacts.load_tokenizer` (the one loader) followed by :func:`check_tokenizer`."""
    return check_tokenizer(artifacts.load_tokenizer(model_dir), model_dir)


def check_tokenizer(tokenizer, model_dir: Path):
    """Training's checks on a loaded tokenizer: it has an EOS token; a pad token is chosen if it has none."""
    if tokenizer.eos_token is None:
        raise ConfigError(
            f"{model_dir}: the tokenizer has no EOS token, so the model could never learn to stop",
            fix="set eos_token in tokenizer_config.json",
        )
    if tokenizer.pad_token is None:  # pad positions are never attended or trained: the family table picks which
        tokenizer.pad_token = fallback_pad(tokenizer, model_dir)
    return tokenizer


def fallback_pad(tokenizer, model_dir: Path) -> str:
    """The family's pad policy (``unk`` for Llama-style tokenizers that have one, else EOS)."""
    family = FAMILIES.get(model_type_of(model_dir) or "")
    if family is not None and family.pad_policy == "unk" and tokenizer.unk_token is not None:
        return tokenizer.unk_token
    return tokenizer.eos_token


def max_positions(config) -> int | None:
    for key in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def check_model_fits(config, tokenizer, seq_len: int, model_dir: Path) -> None:
    """Errors found before any weights are loaded."""
    vocab = getattr(config, "vocab_size", None)
    if vocab is not None and len(tokenizer) > vocab:
        raise ConfigError(
            f"{model_dir}: the tokenizer has {len(tokenizer)} tokens but the model's embeddings only {vocab} rows",
            fix="use the tokenizer saved with this model, or resize the embeddings before training",
        )
    limit = max_positions(config)
    if limit is not None and seq_len > limit:
        raise ConfigError(
            f"seq_len {seq_len} is above the model's maximum of {limit} positions",
            fix=f"--set seq_len={limit} (and tokenize the data with --seq-len {limit})",
        )


def target_modules_for(cfg: TrainConfig, model) -> list[str] | str:
    """The LoRA targets: the config's, or the family table's default; checked against the model's modules."""
    if cfg.target_modules == ("all-linear",):
        return "all-linear"
    targets = list(cfg.target_modules)
    if not targets:
        family = FAMILIES.get(model.config.model_type)
        if family is None:
            raise ConfigError(
                f"model type '{model.config.model_type}' is not in MFT's family table",
                fix="set target_modules (e.g. [q_proj, v_proj]) or target_modules: [all-linear]",
            )
        targets = list(family.lora_targets)
    linear_names = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)})
    missing = [t for t in targets if not any(n == t or n.endswith("." + t) for n, _ in model.named_modules())]
    if missing:
        raise ConfigError(
            f"target modules not found in the model: {', '.join(missing)}",
            fix=f"linear layers that exist: {', '.join(linear_names)}",
        )
    return targets


def check_kbit_cpu(model_dir: Path) -> None:
    """bitsandbytes' CPU 4-bit kernel needs in_features % 64 == 0: say which layers break that before loading."""
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModelForCausalLM

    with init_empty_weights():
        meta = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(model_dir))
    bad = sorted(
        {
            f"{n} (in_features {m.in_features})"
            for n, m in meta.named_modules()
            if isinstance(m, torch.nn.Linear) and "lm_head" not in n and m.in_features % 64
        }
    )
    if bad:
        raise ConfigError(
            "QLoRA on CPU: bitsandbytes' 4-bit CPU kernel needs every quantized layer's in_features to be a "
            f"multiple of 64; these are not: {', '.join(bad[:5])}" + (" ..." if len(bad) > 5 else ""),
            fix="use peft: lora on CPU, a GPU, or a model whose hidden/intermediate sizes are multiples of 64",
        )


def attention_for(cfg: TrainConfig, config) -> str:
    """The attention implementation to load: ``sdpa`` on packed rows runs once per record where the family allows.

    Not where attention has soft-capping (family table) or a sliding window shorter than the rows (the window
    would be applied by a mask this path does not build).
    """
    if cfg.attn_implementation == "sdpa_masked":
        return "sdpa"
    if cfg.attn_implementation != "sdpa":
        return cfg.attn_implementation
    family = FAMILIES.get(config.model_type)
    window = getattr(config, "sliding_window", None) if getattr(config, "use_sliding_window", True) else None
    if family is None or not family.packed_sdpa or (window and window < cfg.seq_len):
        return "sdpa"
    from . import attention

    attention.register()
    return attention.NAME


def load_model(cfg: TrainConfig, model_dir: Path, tokenizer):
    """The base model in the right precision, with LoRA/QLoRA applied when asked; ``use_cache`` off.

    ``use_cache=False`` is not cosmetic: with a cache transformers skips its packed-sequence detection and packed
    records attend to each other.
    """
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(model_dir)
    check_model_fits(config, tokenizer, cfg.seq_len, model_dir)
    if cfg.attn_implementation == "flash_attention_2":
        from transformers.utils import is_flash_attn_2_available

        if not is_flash_attn_2_available():
            raise ConfigError("attn_implementation flash_attention_2 is not installed here", fix="use sdpa")
    # bf16 with LoRA: the frozen base is stored in bf16 (half the memory); full fine-tuning keeps fp32 master weights
    # (AdamW updates on bf16 weights lose most small steps) and bf16 comes from autocast
    base_dtype = torch.bfloat16 if cfg.bf16 and cfg.peft != "none" else torch.float32
    kwargs = {"attn_implementation": attention_for(cfg, config), "dtype": base_dtype}
    cpu = not torch.cuda.is_available()
    if cfg.peft == "qlora":
        from transformers import BitsAndBytesConfig

        if cpu:
            check_kbit_cpu(model_dir)
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.bfloat16,
            bnb_4bit_quant_storage=torch.bfloat16,
        )
        kwargs["dtype"] = torch.bfloat16
        kwargs["device_map"] = {"": "cpu" if cpu else torch.cuda.current_device()}
    model = AutoModelForCausalLM.from_pretrained(model_dir, **kwargs)
    model.config.use_cache = False
    install_head(cfg, model)
    if cfg.compile:
        compile_layers(model)
    every = checkpoint_every(str(cfg.grad_checkpointing))  # normalised by TrainConfig
    if cfg.peft == "none":
        enable_checkpointing(model, every)
        return model
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    if cfg.peft == "qlora":
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    enable_checkpointing(model, every)
    lora = LoraConfig(
        r=cfg.lora_r,
        lora_alpha=cfg.lora_alpha,
        lora_dropout=cfg.lora_dropout,
        target_modules=target_modules_for(cfg, model),
        use_dora=cfg.use_dora,
        use_rslora=cfg.use_rslora,
        task_type="CAUSAL_LM",
    )
    model = get_peft_model(model, lora)
    if cfg.bf16:
        # under bf16 autocast the matmuls cast to bf16 anyway; PEFT's own cast of every LoRA input to the fp32
        # adapter dtype would copy the activations to fp32 and straight back
        from peft.tuners.tuners_utils import BaseTunerLayer

        for module in model.modules():
            if isinstance(module, BaseTunerLayer):
                module.cast_input_dtype_enabled = False
    return model


def install_head(cfg: TrainConfig, model) -> None:
    """The chunked LM head + loss (``lm_head_chunk``), or the reason it falls back, said once in the log."""
    from . import chunked_head, dist

    plan, note = chunked_head.plan_for(cfg.lm_head_chunk, model.config, cfg.strategy)
    if plan is not None:
        chunked_head.install(model, plan, log=_log_main)
    if dist.is_main():
        _log_main(note)


def _log_main(message: str) -> None:
    from mft_core.ui import console

    console.print(message)


def enable_checkpointing(model, every: int) -> None:
    """Activation checkpointing of every ``every``-th decoder layer (0: none); inputs keep requiring grad, so a
    frozen embedding in front of checkpointed LoRA layers still carries gradients."""
    if every:
        model.activation_checkpointing_enable(
            activation_checkpointing_kwargs={"use_reentrant": False}, every_n_layers=every
        )


def compile_layers(model) -> int:
    """``torch.compile`` each decoder layer (regional compilation: short compile, no graph break at the
    attention plan, which stays outside). Returns how many layers were compiled."""

    layer_types = set(getattr(model, "_no_split_modules", None) or [])
    count = 0
    for module in model.modules():
        if type(module).__name__ in layer_types:
            module.compile(dynamic=True)
            count += 1
    return count


def base_model_dir(cfg: TrainConfig) -> Path:
    return resolve_model_dir(cfg.model)
