"""mft-merge's weights equal PEFT's own merge_and_unload: DoRA on embeddings, fan_in_fan_out (GPT-2 Conv1D),
rank_pattern / alpha_pattern, for stock PEFT adapters and mft-train ones; the layers check catches wrong merges."""

import pytest
import torch
from mft_merge.api import merge
from mft_merge.config import MergeConfig


def stock_adapter(base, out, seed=0, **lora_kwargs):
    """An adapter made by stock PEFT (get_peft_model + save_pretrained), its weights moved off their init as
    training leaves them: A and B non-zero, every DoRA magnitude away from the weight norm it starts at."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    peft_model = get_peft_model(model, LoraConfig(**lora_kwargs))
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name or "lora_embedding" in name:
                p.normal_(0, 0.05)
            elif "lora_magnitude_vector" in name:
                p.mul_(1 + 0.2 * torch.rand_like(p))
    peft_model.save_pretrained(out)
    return out


def peft_merged(base, adapter) -> dict[str, torch.Tensor]:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    merged = PeftModel.from_pretrained(model, adapter).merge_and_unload()
    return {k: v.detach() for k, v in merged.state_dict().items()}


def assert_equals_merge_and_unload(out, base, adapter):
    from safetensors.torch import load_file

    got = {}
    for f in sorted(out.glob("model*.safetensors")):
        got.update(load_file(str(f)))
    expected = peft_merged(base, adapter)
    base_tensors = load_file(str(base / "model.safetensors"))
    assert set(got) == set(base_tensors)  # nothing renamed, dropped or added (e.g. a PEFT wrapper name)
    changed = 0
    for name, tensor in got.items():
        torch.testing.assert_close(tensor, expected[name], rtol=1e-6, atol=1e-6, msg=lambda m, n=name: f"{n}: {m}")
        changed += not torch.equal(tensor, base_tensors[name])
    assert changed  # the adapter did something


LLAMA_DORA_EMBED = dict(r=4, lora_alpha=8, target_modules=["embed_tokens", "q_proj", "v_proj"], use_dora=True)
# PEFT matches pattern keys as `(.*\.)?(KEY)$`: a key may be a regex alternation
PATTERNS = dict(
    rank_pattern={"v_proj": 2, "layers.0.self_attn.q_proj|layers.1.mlp.down_proj": 6},
    alpha_pattern={"layers.1.self_attn.q_proj|layers.0.self_attn.v_proj": 3, "embed_tokens|down_proj": 5},
)


@pytest.mark.parametrize(
    "variant",
    [
        pytest.param(LLAMA_DORA_EMBED, id="dora-embed"),
        pytest.param(dict(r=4, lora_alpha=8, target_modules=["embed_tokens", "q_proj"]), id="lora-embed"),
        pytest.param(
            dict(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"], **PATTERNS),
            id="patterns",
        ),
        pytest.param(
            dict(
                r=4,
                lora_alpha=8,
                target_modules=["embed_tokens", "q_proj", "v_proj", "down_proj"],
                use_dora=True,
                use_rslora=True,
                **PATTERNS,
            ),
            id="dora-rslora-patterns",
        ),
    ],
)
def test_stock_llama_adapter_equals_merge_and_unload(llama_base, tmp_path, variant):
    adapter = stock_adapter(llama_base, tmp_path / "adapter", **variant)
    result = merge(MergeConfig(adapter=str(adapter), out=str(tmp_path / "m"), dtype="fp32", verify="layers"))
    assert result.summary["verification"]["passed"]
    assert_equals_merge_and_unload(tmp_path / "m", llama_base, adapter)


@pytest.mark.parametrize("dora", [False, True], ids=["lora", "dora"])
def test_stock_gpt2_conv1d_adapter_equals_merge_and_unload(gpt2_base, tmp_path, dora):
    # Conv1D layers (c_attn, c_proj square, c_fc) merge transposed; lm_head is an nn.Linear in the same adapter, and
    # PEFT forces fan_in_fan_out per module type, so the saved config's flag is whatever the last module left it at
    variant = dict(
        r=4,
        lora_alpha=8,
        target_modules=["c_attn", "c_proj", "c_fc", "lm_head", "wte"],
        fan_in_fan_out=True,
        use_dora=dora,
        rank_pattern={"h.1.attn.c_attn": 2},
        alpha_pattern={"c_fc": 3},
    )
    adapter = stock_adapter(gpt2_base, tmp_path / "adapter", **variant)
    result = merge(MergeConfig(adapter=str(adapter), out=str(tmp_path / "m"), dtype="fp32", verify="layers"))
    assert result.summary["verification"]["passed"]
    assert_equals_merge_and_unload(tmp_path / "m", gpt2_base, adapter)


def test_mft_train_dora_embedding_adapter_equals_merge_and_unload(llama_base, llama_tok, tmp_path):
    from helpers import train_config
    from mft_core.artifacts import resolve_adapter_dir
    from mft_train.api import train

    out = tmp_path / "run"
    cfg = train_config(
        llama_base,
        llama_tok,
        out,
        max_steps=3,
        eval_every=0,
        use_dora=True,
        target_modules=("embed_tokens", "q_proj", "v_proj"),
    )
    train(cfg)
    result = merge(MergeConfig(adapter=str(out), out=str(tmp_path / "m"), dtype="fp32", verify="layers"))
    assert result.summary["verification"]["passed"]
    assert_equals_merge_and_unload(tmp_path / "m", llama_base, resolve_adapter_dir(out))


def test_layers_check_catches_dora_embedding_merged_without_magnitude(llama_base, tmp_path, monkeypatch):
    import mft_merge.stream as S

    adapter = stock_adapter(llama_base, tmp_path / "adapter", **LLAMA_DORA_EMBED)
    real = S.merge_embedding
    monkeypatch.setattr(S, "merge_embedding", lambda e, a, b, scale, *_, **__: real(e, a, b, scale))
    with pytest.raises(Exception, match="verification \\(layers\\) failed"):
        merge(MergeConfig(adapter=str(adapter), out=str(tmp_path / "m"), dtype="fp32", verify="layers"))
    assert not (tmp_path / "m").exists()


@pytest.mark.parametrize("corrupt", ["scale", "magnitude"])
def test_layers_check_does_not_trust_the_adapter_parse(llama_base, tmp_path, monkeypatch, corrupt):
    # a bug in reading the adapter (a wrong scale, a wrong magnitude) must not cancel out in the check
    import mft_merge.api as api

    variant = dict(r=4, lora_alpha=8, target_modules=["q_proj"], use_dora=True)
    adapter = stock_adapter(llama_base, tmp_path / "adapter", **variant)
    real = api.load_adapter

    def misread(path):
        parsed = real(path)
        for lora in parsed.modules.values():
            if corrupt == "scale":
                lora.scale *= 1.01
            else:
                lora.magnitude = lora.magnitude * 1.01
        return parsed

    monkeypatch.setattr(api, "load_adapter", misread)
    with pytest.raises(Exception, match="verification \\(layers\\) failed"):
        merge(MergeConfig(adapter=str(adapter), out=str(tmp_path / "m"), dtype="fp32", verify="layers"))


# --- the maths, as pure functions, against PEFT's own layers --------------------------------------------------------


class _Tiny(torch.nn.Module):
    def __init__(self):
        from transformers.pytorch_utils import Conv1D

        super().__init__()
        self.emb = torch.nn.Embedding(50, 16)
        self.lin = torch.nn.Linear(16, 24, bias=False)
        self.conv = Conv1D(24, 16)  # weight [in 16, out 24]


@pytest.mark.parametrize("dora", [False, True], ids=["lora", "dora"])
@pytest.mark.parametrize("rslora", [False, True], ids=["", "rslora"])
def test_ops_equal_peft_layer_merge(dora, rslora):
    from mft_merge.ops import lora_scale, merge_embedding, merge_linear
    from peft import LoraConfig, inject_adapter_in_model

    torch.manual_seed(0)
    model = inject_adapter_in_model(
        LoraConfig(
            r=4,
            lora_alpha=8,
            target_modules=["emb", "lin", "conv"],
            use_dora=dora,
            use_rslora=rslora,
            init_lora_weights=False,
            rank_pattern={"lin": 3},
        ),
        _Tiny(),
    )
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_magnitude_vector" in name:
                p.mul_(1 + 0.3 * torch.rand_like(p))
    for module, fan_in_fan_out in ((model.lin, False), (model.conv, True)):
        w = module.get_base_layer().weight.detach().clone()
        a, b = module.lora_A["default"].weight.detach(), module.lora_B["default"].weight.detach()
        magnitude = module.lora_magnitude_vector["default"].weight.detach() if dora else None
        scale = lora_scale(8, a.shape[0], rslora)
        assert scale == module.scaling["default"]
        ours = merge_linear(w, a, b, scale, fan_in_fan_out, magnitude)
        module.merge()
        torch.testing.assert_close(ours, module.get_base_layer().weight.detach(), rtol=1e-6, atol=1e-6)
    e = model.emb.get_base_layer().weight.detach().clone()
    a, b = model.emb.lora_embedding_A["default"].detach(), model.emb.lora_embedding_B["default"].detach()
    magnitude = model.emb.lora_magnitude_vector["default"].weight.detach() if dora else None
    ours = merge_embedding(e, a, b, model.emb.scaling["default"], magnitude)
    model.emb.merge()
    torch.testing.assert_close(ours, model.emb.get_base_layer().weight.detach(), rtol=1e-6, atol=1e-6)


def test_adapter_and_base_disagreements_are_refused_by_name(llama_base, tmp_path):
    import json

    from mft_core.errors import ContractError
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    # r / rank_pattern in adapter_config.json contradicting the saved A and B: PEFT could not load it either
    adapter = stock_adapter(llama_base, tmp_path / "a", r=4, lora_alpha=8, target_modules=["q_proj"])
    cfg = json.loads((adapter / "adapter_config.json").read_text())
    cfg["rank_pattern"] = {"layers.1.self_attn.q_proj": 2}
    (adapter / "adapter_config.json").write_text(json.dumps(cfg))
    with pytest.raises(ContractError, match="layers.1.self_attn.q_proj has LoRA rank 4 .* r=2"):
        merge(MergeConfig(adapter=str(adapter), out=str(tmp_path / "m"), dtype="fp32"))
    # a LoRA on embeddings resized before training: PEFT saved the resized embed_tokens but not the lm_head
    model = AutoModelForCausalLM.from_pretrained(llama_base)
    model.resize_token_embeddings(model.config.vocab_size + 64)
    get_peft_model(model, LoraConfig(r=4, target_modules=["embed_tokens", "q_proj"])).save_pretrained(tmp_path / "b")
    with pytest.raises(ContractError, match="model.embed_tokens.weight has shape .* embeddings were resized"):
        merge(MergeConfig(adapter=str(tmp_path / "b"), base=str(llama_base), out=str(tmp_path / "m"), dtype="fp32"))
