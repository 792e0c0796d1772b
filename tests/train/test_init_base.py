import json

import pytest
import torch

pytestmark = pytest.mark.fast  # unit/contract tier: `make test-fast`


@pytest.mark.parametrize("family", ["llama", "qwen2", "starcoder2", "gpt_neox"])
def test_init_base_loads_with_plain_transformers(make_base, family):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = make_base(family)
    manifest = json.loads((path / "manifest.json").read_text())
    assert manifest["kind"] == "base-model" and manifest["summary"]["model_type"] == family
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path)
    assert model.config.model_type == family
    assert tok.eos_token == "<|endoftext|>" and tok.pad_token_id != tok.eos_token_id
    assert model.config.vocab_size >= len(tok) and model.config.vocab_size % 64 == 0
    assert model.generation_config.eos_token_id == tok.eos_token_id
    text = tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)
    assert text == "<s>human\nhi\n<s>bot\n"
    ids = tok(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
    # <s> is the BOS special token only in Llama-style families
    assert (ids[0, 0].item() == tok.convert_tokens_to_ids("<s>")) == (family == "llama")
    with torch.no_grad():
        logits = model(ids).logits
    assert logits.shape[-1] == model.config.vocab_size and torch.isfinite(logits).all()


def test_init_base_is_deterministic(tmp_path):
    from mft_train.base_init import InitBaseConfig, init_base

    a = init_base(InitBaseConfig(family="qwen2", out=str(tmp_path / "a"), tokenizer_corpus_mb=0.5))
    b = init_base(InitBaseConfig(family="qwen2", out=str(tmp_path / "b"), tokenizer_corpus_mb=0.5))
    assert (a / "tokenizer.json").read_bytes() == (b / "tokenizer.json").read_bytes()
    assert (a / "model.safetensors").read_bytes() == (b / "model.safetensors").read_bytes()
