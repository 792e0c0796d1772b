"""One test walks every family row: tiny model from config, targets exist, LoRA forward/backward works."""

import pytest
import torch
from mft_core.errors import ConfigError
from mft_core.families import FAMILIES, PRESETS, get_family

pytestmark = pytest.mark.fast  # unit/contract tier: `make test-fast`


@pytest.mark.parametrize("model_type", sorted(FAMILIES))
def test_family_row_builds_and_trains(model_type):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoConfig, AutoModelForCausalLM

    family = get_family(model_type)
    sizes = {k: v for k, v in PRESETS["tiny"].items() if k != "vocab"}
    config = AutoConfig.for_model(
        model_type,
        vocab_size=256,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        tie_word_embeddings=family.tied_embeddings,
        **family.config_kwargs(sizes),
    )
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config)
    assert model.config.model_type == model_type
    names = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)]
    for target in family.lora_targets:
        assert any(n == target or n.endswith("." + target) for n in names), f"{model_type}: no Linear named {target}"
    peft_model = get_peft_model(
        model, LoraConfig(r=4, lora_alpha=8, target_modules=list(family.lora_targets), init_lora_weights=False)
    )
    ids = torch.randint(3, 256, (2, 16))
    out = peft_model(input_ids=ids, labels=ids, use_cache=False)
    assert torch.isfinite(out.loss)
    out.loss.backward()
    lora_grads = [p.grad for n, p in peft_model.named_parameters() if "lora_" in n]
    assert lora_grads and all(g is not None for g in lora_grads)
    assert sum(g.abs().sum().item() for g in lora_grads) > 0


def test_unknown_family_lists_known():
    with pytest.raises(ConfigError) as info:
        get_family("gpt17")
    assert "llama" in info.value.fix


def test_presets_fit_quantization_kernels():
    for sizes in PRESETS.values():
        assert sizes["hidden"] % 128 == 0 and sizes["intermediate"] % 128 == 0


@pytest.mark.parametrize(
    "model_type,unk,expected", [("llama", "<unk>", "<unk>"), ("llama", None, "</s>"), ("qwen2", "<unk>", "</s>")]
)
def test_pad_policy_is_what_training_uses(tmp_path, model_type, unk, expected):
    import json
    from types import SimpleNamespace

    from mft_train.modeling import fallback_pad

    (tmp_path / "config.json").write_text(json.dumps({"model_type": model_type}))
    tokenizer = SimpleNamespace(unk_token=unk, eos_token="</s>")
    assert fallback_pad(tokenizer, tmp_path) == expected
