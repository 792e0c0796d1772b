"""``mft-train init-base``: a randomly initialised model of any table family plus a locally trained tokenizer.

No model can be downloaded here, so the built-in default is made on the spot: a byte-level BPE tokenizer
trained in seconds on the standard library's source, with EOS, pad and (for Llama-style families) ``<s>`` as
BOS, MFTCoder's chat template, and a model from config whose hidden/intermediate sizes are multiples of 128.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mft_core.config import opt, overwrite_opt
from mft_core.families import get_family, get_preset
from mft_core.manifest import atomic_output_dir, is_up_to_date, new_manifest
from mft_core.templates import DEFAULT_CHAT_TEMPLATE

from . import __version__
from .corpus import iter_texts, stdlib_files

EOS, PAD, BOS = "<|endoftext|>", "<|pad|>", "<s>"


@dataclass(frozen=True)
class InitBaseConfig:
    out: str = opt("", help="Output model folder.", fingerprint=False, same_run=False)
    family: str = opt("llama", help="Model family (HF model_type) from MFT's family table.")
    preset: str = opt("tiny", help="Size preset: tiny|small|base.")
    seed: int = opt(0, help="Seed of the random initialisation.")
    tokenizer_corpus_mb: float = opt(4.0, help="MB of stdlib source the tokenizer is trained on.", cli=False)
    vocab_size: int | None = opt(None, help="Tokenizer vocabulary (default from the preset).")
    overwrite: bool = overwrite_opt()

    def __post_init__(self):
        from mft_core.errors import ConfigError

        get_family(self.family)
        get_preset(self.preset)
        if not self.out:
            raise ConfigError("--out is required")
        if self.vocab_size is not None and self.vocab_size % 64:
            raise ConfigError(f"--vocab-size {self.vocab_size}: use a multiple of 64")


def train_tokenizer(vocab_size: int, corpus_mb: float, bos_special: bool):
    """A byte-level BPE tokenizer trained on the stdlib source (deterministic for a given Python)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = [EOS, PAD] + ([BOS] if bos_special else [])
    tok = Tokenizer(models.BPE())
    # numbers split into single digits, as in Qwen2/Llama-3 tokenizers: a number never seen in fine-tuning is still
    # made of tokens the model has learned to copy (the demo's held-out constants rely on it)
    digits = pre_tokenizers.Digits(individual_digits=True)
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [digits, pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        min_frequency=2,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(iter_texts(stdlib_files(), int(corpus_mb * 1e6)), trainer=trainer)
    kwargs: dict[str, Any] = {"eos_token": EOS, "pad_token": PAD}
    if bos_special:
        kwargs["bos_token"] = BOS
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, clean_up_tokenization_spaces=False, **kwargs)
    fast.chat_template = DEFAULT_CHAT_TEMPLATE
    return fast


def build_model(family_name: str, preset_name: str, tokenizer, seed: int):
    """A randomly initialised model of the family, sized by the preset, with the tokenizer's special ids."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    family = get_family(family_name)
    sizes = dict(get_preset(preset_name))
    sizes.pop("vocab")
    vocab = -(-len(tokenizer) // 64) * 64  # round up: embedding rows a multiple of 64
    config = AutoConfig.for_model(
        family.model_type,
        vocab_size=vocab,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id,
        tie_word_embeddings=family.tied_embeddings,
        **family.config_kwargs(sizes),
    )
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model


def init_base(cfg: InitBaseConfig) -> Path:
    """Build and save the tiny base (atomically, manifest last); returns the output folder.

    The same settings again find the finished folder and return it untouched.
    """
    family = get_family(cfg.family)
    preset = get_preset(cfg.preset)
    config = {
        "family": cfg.family,
        "preset": cfg.preset,
        "seed": cfg.seed,
        "sizes": dict(preset),
        "tokenizer_corpus_mb": cfg.tokenizer_corpus_mb,
        "vocab_size": cfg.vocab_size,
    }
    if is_up_to_date(cfg.out, new_manifest("base-model", "mft-train", __version__, config).fingerprint):
        return Path(cfg.out)
    tokenizer = train_tokenizer(cfg.vocab_size or preset["vocab"], cfg.tokenizer_corpus_mb, family.bos_is_marker)
    model = build_model(cfg.family, cfg.preset, tokenizer, cfg.seed)
    tokenizer.model_max_length = preset["max_positions"]
    with atomic_output_dir(cfg.out, overwrite=cfg.overwrite) as staging:
        model.save_pretrained(staging.path)
        tokenizer.save_pretrained(staging.path)
        params = sum(p.numel() for p in model.parameters())
        summary = {
            "model_type": family.model_type,
            "parameters": params,
            "vocab_size": model.config.vocab_size,
            "tokenizer_vocab": len(tokenizer),
            "bos_is_marker": family.bos_is_marker,
        }
        staging.finish(new_manifest("base-model", "mft-train", __version__, config, (), summary))
    return Path(cfg.out)
