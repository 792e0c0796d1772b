import shutil

import pytest
from helpers import tokenized_folder


@pytest.fixture(scope="session")
def llama_tok(llama_base, tmp_path_factory):
    return tokenized_folder(tmp_path_factory.mktemp("merge-tok"), llama_base, seq_len=96, split=0.2)


@pytest.fixture(scope="session")
def gpt2_base(llama_base, tmp_path_factory):
    """A tiny GPT-2 (Conv1D layers: PEFT merges them with fan_in_fan_out) with an untied lm_head (a Linear),
    sharing the tiny llama's tokenizer."""
    import json

    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    config = GPT2Config(
        vocab_size=json.loads((llama_base / "config.json").read_text())["vocab_size"],
        n_embd=64,
        n_layer=2,
        n_head=2,
        n_positions=128,
        tie_word_embeddings=False,
        bos_token_id=2,
        eos_token_id=0,
        pad_token_id=1,
    )
    out = tmp_path_factory.mktemp("bases") / "gpt2-tiny"
    GPT2LMHeadModel(config).save_pretrained(out)
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        shutil.copy2(llama_base / name, out / name)
    return out
