"""Merged logits equal base + adapter logits; sharding, rsLoRA, DoRA, tied and resized embeddings, nf4, errors."""

import json
import shutil
import signal
import subprocess
import sys
import textwrap

import pytest
import torch
from mft_core.errors import ConfigError, ContractError
from mft_core.manifest import read_manifest
from mft_merge.api import merge
from mft_merge.cli import app
from mft_merge.config import MergeConfig
from typer.testing import CliRunner

IDS = torch.tensor([[5, 17, 99, 3, 250, 7, 42, 8, 1000, 12]])


def make_adapter(base, out, targets=None, seed=0, **lora_kwargs):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    from mft_core.families import FAMILIES

    targets = targets or list(FAMILIES[model.config.model_type].lora_targets)
    peft_model = get_peft_model(
        model, LoraConfig(r=4, lora_alpha=8, target_modules=targets, init_lora_weights=False, **lora_kwargs)
    )
    with torch.no_grad():  # make B non-trivial too (PEFT's non-default init is small)
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    peft_model.save_pretrained(out)
    return out


def adapter_logits(base, adapter, ids=IDS, base_transform=None):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    if base_transform:
        base_transform(model)
    with torch.no_grad():
        return PeftModel.from_pretrained(model, adapter).eval()(ids).logits


def merged_logits(path, ids=IDS):
    from transformers import AutoModelForCausalLM

    with torch.no_grad():
        return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()(ids).logits


@pytest.mark.parametrize("family", ["llama", "qwen2", "starcoder2"])
def test_merged_logits_equal_adapter_logits(make_base, tmp_path, family):
    base = make_base(family)
    adapter = make_adapter(base, tmp_path / "adapter")
    result = merge(MergeConfig(adapter=str(adapter), out=str(tmp_path / "merged"), dtype="fp32"))
    assert result.summary["verification"]["passed"] and result.summary["verification"]["check"] == "layers"  # auto
    assert torch.allclose(merged_logits(tmp_path / "merged"), adapter_logits(base, adapter), atol=1e-5)
    files = {p.name for p in (tmp_path / "merged").iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "generation_config.json", "manifest.json"} <= files
    if family == "starcoder2":  # tied embeddings stay tied: no separate lm_head tensor
        from safetensors import safe_open

        with safe_open(tmp_path / "merged" / "model.safetensors", "pt") as f:
            assert "lm_head.weight" not in f.keys()
        assert json.loads((tmp_path / "merged" / "config.json").read_text())["tie_word_embeddings"] is True
    # the same merge again is a no-op
    assert merge(MergeConfig(adapter=str(adapter), out=str(tmp_path / "merged"), dtype="fp32")).up_to_date


def test_sharded_base_merges_like_unsharded(llama_base, tmp_path):
    from transformers import AutoModelForCausalLM

    sharded = tmp_path / "sharded"
    AutoModelForCausalLM.from_pretrained(llama_base).save_pretrained(sharded, max_shard_size="300KB")
    for f in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        shutil.copy2(llama_base / f, sharded / f)
    assert len(list(sharded.glob("model-*.safetensors"))) > 2
    adapter = make_adapter(llama_base, tmp_path / "adapter")
    merge(MergeConfig(adapter=str(adapter), out=str(tmp_path / "a"), dtype="fp32"))
    merge(
        MergeConfig(
            adapter=str(adapter), base=str(sharded), out=str(tmp_path / "b"), dtype="fp32", max_shard_size="250KB"
        )
    )
    assert len(list((tmp_path / "b").glob("model-*.safetensors"))) > 2
    assert (tmp_path / "b" / "model.safetensors.index.json").is_file()
    assert torch.equal(merged_logits(tmp_path / "a"), merged_logits(tmp_path / "b"))


@pytest.mark.parametrize(
    "variant",
    [
        {"use_rslora": True},
        {"use_dora": True},
        {"modules_to_save": ["lm_head"]},
        {"use_rslora": True, "use_dora": True},
    ],
)
def test_rslora_dora_modules_to_save(llama_base, tmp_path, variant):
    adapter = make_adapter(llama_base, tmp_path / "adapter", **variant)
    if "modules_to_save" in variant:  # make the trained copy differ from the base
        from safetensors.torch import load_file, save_file

        sd = load_file(str(adapter / "adapter_model.safetensors"))
        sd["base_model.model.lm_head.weight"] = sd["base_model.model.lm_head.weight"] + 0.01
        save_file(sd, str(adapter / "adapter_model.safetensors"))
    merge(MergeConfig(adapter=str(adapter), out=str(tmp_path / "m"), dtype="fp32", verify="layers"))
    assert torch.allclose(merged_logits(tmp_path / "m"), adapter_logits(llama_base, adapter), atol=1e-5)


def test_resized_embeddings_with_extra_tokens(llama_base, tmp_path):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(llama_base)
    tok.add_tokens(["<extra_a>", "<extra_b>"])
    model = AutoModelForCausalLM.from_pretrained(llama_base)
    model.resize_token_embeddings(len(tok) + 62)  # 4098 -> 4160 rows (a multiple of 64)
    torch.manual_seed(1)
    pm = get_peft_model(
        model,
        LoraConfig(
            r=4,
            lora_alpha=8,
            target_modules=["q_proj"],
            init_lora_weights=False,
            modules_to_save=["embed_tokens", "lm_head"],
        ),
    )
    adapter = tmp_path / "adapter"
    pm.save_pretrained(adapter)
    tok.save_pretrained(adapter)
    result = merge(
        MergeConfig(adapter=str(adapter), base=str(llama_base), out=str(tmp_path / "m"), dtype="fp32", verify="layers")
    )
    assert result.summary["config_updates"]["vocab_size"] == 4160
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "m")
    assert merged.get_input_embeddings().weight.shape[0] == 4160
    ids = torch.tensor([[5, 6, len(tok) - 1]])
    with torch.no_grad():
        assert torch.allclose(merged(ids).logits, pm.eval()(ids).logits, atol=1e-5)
    assert len(AutoTokenizer.from_pretrained(tmp_path / "m")) == len(tok)


def test_simulate_nf4_matches_qlora_view(llama_base, tmp_path):
    from mft_merge.merge import quantized_linear_weights
    from mft_merge.ops import nf4_roundtrip

    adapter = make_adapter(llama_base, tmp_path / "adapter")
    result = merge(MergeConfig(adapter=str(adapter), out=str(tmp_path / "m"), dtype="fp32", simulate_nf4=True))
    assert result.summary["verification"]["passed"]
    names = quantized_linear_weights(llama_base)
    assert "lm_head.weight" not in names and any("q_proj" in n for n in names)

    def round_base(model):
        params = dict(model.named_parameters())
        with torch.no_grad():
            for n in names:
                params[n].copy_(nf4_roundtrip(params[n]))

    expected = adapter_logits(llama_base, adapter, base_transform=round_base)
    assert torch.allclose(merged_logits(tmp_path / "m"), expected, atol=1e-5)
    assert not torch.allclose(merged_logits(tmp_path / "m"), adapter_logits(llama_base, adapter), atol=1e-3)


def test_nf4_roundtrip_equals_the_weights_qlora_really_trains_on(llama_base):
    # the base as mft-train's QLoRA loads it (bf16 then nf4, double quant), dequantized, vs our simulation
    import bitsandbytes as bnb
    import bitsandbytes.functional as bnbf
    from mft_merge.ops import nf4_roundtrip
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    quant = BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.bfloat16,
        bnb_4bit_quant_storage=torch.bfloat16,
    )
    qlora = AutoModelForCausalLM.from_pretrained(
        llama_base, quantization_config=quant, dtype=torch.bfloat16, device_map={"": "cpu"}
    )
    full = dict(AutoModelForCausalLM.from_pretrained(llama_base, dtype=torch.float32).named_parameters())
    linears = [(n, m) for n, m in qlora.named_modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert linears
    for name, module in linears:
        seen = bnbf.dequantize_4bit(module.weight.data, module.weight.quant_state).float()
        assert torch.equal(nf4_roundtrip(full[name + ".weight"].detach()), seen), name


def test_bf16_output_is_verified_with_bf16_tolerance(llama_base, tmp_path):
    adapter = make_adapter(llama_base, tmp_path / "adapter")
    result = merge(MergeConfig(adapter=str(adapter), out=str(tmp_path / "m"), dtype="bf16", verify="logits"))
    v = result.summary["verification"]
    assert result.summary["dtype"] == "bfloat16" and v["passed"] and v["tolerance"] == 0.5
    assert v["token_agreement"] >= 0.8 and v["max_abs_diff"] < 0.1
    assert json.loads((tmp_path / "m" / "config.json").read_text())["dtype"] == "bfloat16"


@pytest.mark.parametrize("check,factor", [("logits", 1.01), ("layers", 1.001)])
def test_verification_catches_a_wrong_merge(llama_base, tmp_path, monkeypatch, check, factor):
    import mft_merge.stream as S

    adapter = make_adapter(llama_base, tmp_path / "adapter")
    real = S.add_lora_
    monkeypatch.setattr(S, "add_lora_", lambda *a, **k: real(*a, **k).mul_(factor))
    with pytest.raises(Exception, match=f"verification \\({check}\\) failed"):
        merge(MergeConfig(adapter=str(adapter), out=str(tmp_path / "m"), dtype="fp32", verify=check))
    assert not (tmp_path / "m").exists()


def test_errors(llama_base, make_base, tmp_path):
    adapter = make_adapter(llama_base, tmp_path / "adapter")
    with pytest.raises(ContractError, match="another architecture or hidden size"):
        merge(MergeConfig(adapter=str(adapter), base=str(make_base("llama", "small")), out=str(tmp_path / "o")))
    with pytest.raises(ContractError, match="trained on a llama model .* is qwen2"):  # same shapes, other model
        merge(MergeConfig(adapter=str(adapter), base=str(make_base("qwen2")), out=str(tmp_path / "o")))
    other = make_adapter(llama_base, tmp_path / "other", targets=["q_proj"])
    cfg = json.loads((other / "adapter_config.json").read_text())
    cfg["target_modules"] = ["q_proj", "c_attn"]
    from safetensors.torch import load_file, save_file

    sd = load_file(str(other / "adapter_model.safetensors"))
    sd["base_model.model.model.layers.0.self_attn.c_attn.lora_A.weight"] = torch.zeros(4, 128)
    sd["base_model.model.model.layers.0.self_attn.c_attn.lora_B.weight"] = torch.zeros(128, 4)
    save_file(sd, str(other / "adapter_model.safetensors"))
    with pytest.raises(ContractError, match="base has no tensor model.layers.0.self_attn.c_attn.weight"):
        merge(MergeConfig(adapter=str(other), out=str(tmp_path / "o")))
    cfg["peft_type"] = "IA3"
    (other / "adapter_config.json").write_text(json.dumps(cfg))
    with pytest.raises(ContractError, match="IA3"):
        merge(MergeConfig(adapter=str(other), out=str(tmp_path / "o")))
    cfg["peft_type"], cfg["layer_replication"] = "LORA", [[0, 1]]
    (other / "adapter_config.json").write_text(json.dumps(cfg))
    with pytest.raises(ContractError, match="layer_replication"):
        merge(MergeConfig(adapter=str(other), out=str(tmp_path / "o")))
    (adapter / "adapter_model.safetensors").rename(tmp_path / "moved")
    with pytest.raises(ContractError, match="adapter_model.safetensors is missing"):
        merge(MergeConfig(adapter=str(adapter), out=str(tmp_path / "o")))
    (tmp_path / "moved").rename(adapter / "adapter_model.safetensors")
    (tmp_path / "exists").mkdir()
    with pytest.raises(ConfigError, match="--overwrite"):
        merge(MergeConfig(adapter=str(adapter), out=str(tmp_path / "exists")))
    with pytest.raises(ContractError, match="no LoRA adapter"):
        merge(MergeConfig(adapter=str(tmp_path / "exists"), out=str(tmp_path / "o")))
    res = CliRunner().invoke(app, [str(tmp_path / "exists"), "--out", str(tmp_path / "o")])
    assert res.exit_code == 3


def test_killed_merge_leaves_no_manifest(llama_base, tmp_path):
    adapter = make_adapter(llama_base, tmp_path / "adapter")
    script = textwrap.dedent(f"""
        import os, signal, sys
        import mft_merge.safetensors_io as io
        real = io.StreamingWriter.write
        count = [0]
        def slow(*a, **k):
            count[0] += 1
            if count[0] == 5:
                os.kill(os.getpid(), signal.SIGKILL)
            return real(*a, **k)
        io.StreamingWriter.write = slow
        from mft_merge.cli import main
        sys.argv = ["mft-merge", {str(adapter)!r}, "--out", {str(tmp_path / "m")!r}]
        main()
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL
    assert not (tmp_path / "m").exists()
    leftovers = [p for p in tmp_path.iterdir() if p.name.startswith(".m.tmp-")]
    assert leftovers and not any((p / "manifest.json").exists() for p in leftovers)
    result = merge(MergeConfig(adapter=str(adapter), out=str(tmp_path / "m")))  # the next run cleans up and works
    assert result.summary["verification"]["passed"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".m.tmp-")]


def test_merge_from_mft_train_output(llama_base, llama_tok, tmp_path):
    from helpers import train_config
    from mft_train.api import train

    out = tmp_path / "run"
    train(train_config(llama_base, llama_tok, out, max_steps=3, eval_every=0))
    res = CliRunner().invoke(app, [str(out), "--out", str(tmp_path / "m"), "--dtype", "fp32", "--verify", "logits"])
    assert res.exit_code == 0, res.output
    manifest = read_manifest(tmp_path / "m", "merged-model")
    assert manifest.summary["verification"]["prompt_source"].startswith("valid split")
    assert manifest.inputs[0].manifest_id == read_manifest(out).id
    # the base moved on since training: refused
    moved = tmp_path / "base-copy"
    shutil.copytree(llama_base, moved)
    manifest_path = out / "manifest.json"
    data = json.loads(manifest_path.read_text())
    data["summary"]["base_model_sha256"] = "0" * 64
    manifest_path.write_text(json.dumps(data))
    with pytest.raises(ContractError, match="changed since the adapter was trained"):
        merge(MergeConfig(adapter=str(out), out=str(tmp_path / "m2")))
