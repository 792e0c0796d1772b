"""The layers check, now computed on the fly in float32: still catches every wrong merge the float64 check caught,
and a single corrupted element anywhere; a plain LoRA merge is bit for bit PEFT's; unchanged tensors are the
base's bytes."""

import random

import pytest
import torch
from merge.test_peft_parity import peft_merged, stock_adapter
from mft_merge.api import merge
from mft_merge.config import MergeConfig

ALL_LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def _merge(adapter, out):
    return merge(MergeConfig(adapter=str(adapter), out=str(out), dtype="fp32", verify="layers"))


def _written(out) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    got = {}
    for f in sorted(out.glob("model*.safetensors")):
        got.update(load_file(str(f)))
    return got


def test_plain_lora_merge_is_bit_equal_to_merge_and_unload(llama_base, tmp_path):
    from safetensors.torch import load_file

    adapter = stock_adapter(llama_base, tmp_path / "adapter", r=4, lora_alpha=8, target_modules=ALL_LINEAR)
    result = _merge(adapter, tmp_path / "m")
    v = result.summary["verification"]
    assert v["passed"] and v["max_abs_diff"] == 0.0 and v["tensors_checked"] == result.summary["merged_tensors"]
    got, expected = _written(tmp_path / "m"), peft_merged(llama_base, adapter)
    base = load_file(str(llama_base / "model.safetensors"))
    for name, tensor in got.items():
        assert torch.equal(tensor, expected[name]), name  # exactly PEFT's, not merely close
        if not any(t in name for t in ALL_LINEAR):
            assert torch.equal(tensor, base[name]), name  # copied file to file: the base's bytes


def test_sharded_merge_is_checked_shard_by_shard(llama_base, tmp_path):
    adapter = stock_adapter(llama_base, tmp_path / "adapter", r=4, lora_alpha=8, target_modules=ALL_LINEAR)
    result = merge(
        MergeConfig(adapter=str(adapter), out=str(tmp_path / "m"), dtype="fp32", verify="layers", max_shard_size="40KB")
    )
    assert result.summary["shards"] > 3 and result.summary["verification"]["passed"]
    expected = peft_merged(llama_base, adapter)
    assert all(torch.equal(t, expected[n]) for n, t in _written(tmp_path / "m").items())


def _wrong_scale(S, monkeypatch):
    real = S.add_lora_
    monkeypatch.setattr(S, "add_lora_", lambda w, a, b, scale, *rest: real(w, a, b, scale * 1.001, *rest))


def _transposed(S, monkeypatch):
    real = S.add_lora_  # ΔWᵀ instead of ΔW, on the square projections where it fits
    monkeypatch.setattr(
        S,
        "add_lora_",
        lambda w, a, b, scale, fan, scratch: real(w, a, b, scale, fan ^ (w.shape[0] == w.shape[1]), scratch),
    )


def _missed_module(S, monkeypatch):
    real, calls = S.add_lora_, []

    def skip_third(w, *rest):
        calls.append(1)
        return w if len(calls) == 3 else real(w, *rest)

    monkeypatch.setattr(S, "add_lora_", skip_third)


def _dora_magnitude_ignored(S, monkeypatch):
    real = S.merge_linear
    monkeypatch.setattr(S, "merge_linear", lambda w, a, b, scale, fan, magnitude=None: real(w, a, b, scale, fan))


def _wrong_modules_to_save_copy(S, monkeypatch):
    import mft_merge.api as api

    real = api.load_adapter

    def misread(path):
        parsed = real(path)
        parsed.replaced["lm_head.weight"] = parsed.replaced["lm_head.weight"] * 1.001
        return parsed

    monkeypatch.setattr(api, "load_adapter", misread)


WRONG = {
    "wrong scale": (_wrong_scale, {}),
    "A and B transposed": (_transposed, {}),
    "a module not merged": (_missed_module, {}),
    "DoRA magnitude ignored": (_dora_magnitude_ignored, {"use_dora": True}),
    "wrong modules_to_save copy": (_wrong_modules_to_save_copy, {"modules_to_save": ["lm_head"]}),
}


@pytest.mark.parametrize("wrong", list(WRONG))
def test_layers_check_catches_each_wrong_merge(llama_base, tmp_path, monkeypatch, wrong):
    import mft_merge.stream as S

    break_it, extra = WRONG[wrong]
    adapter = stock_adapter(llama_base, tmp_path / "adapter", r=4, lora_alpha=8, target_modules=ALL_LINEAR, **extra)
    _merge(adapter, tmp_path / "control")  # the same adapter, merged right, passes
    break_it(S, monkeypatch)
    with pytest.raises(Exception, match="verification \\(layers\\) failed"):
        _merge(adapter, tmp_path / "m")
    assert not (tmp_path / "m").exists()


@pytest.mark.parametrize("seed", range(4))
def test_one_corrupted_element_anywhere_fails_the_check(llama_base, tmp_path, monkeypatch, seed):
    # one element of one merged tensor, picked at random, moved by 64 eps of the tensor's largest value (a change
    # far below what logits would show) as it is written: the check reads the file back and must see it
    import mft_merge.safetensors_io as io

    adapter = stock_adapter(llama_base, tmp_path / "adapter", r=4, lora_alpha=8, target_modules=ALL_LINEAR)
    rng = random.Random(seed)
    layer, proj = rng.randrange(2), rng.choice(ALL_LINEAR)
    section = "self_attn" if proj in ALL_LINEAR[:4] else "mlp"
    target = f"model.layers.{layer}.{section}.{proj}.weight"
    real = io.StreamingWriter.write

    def corrupt(self, name, tensor):
        if name == target:
            tensor = tensor.clone()
            flat = tensor.view(-1)
            flat[rng.randrange(flat.numel())] += 64 * torch.finfo(tensor.dtype).eps * tensor.abs().max()
        return real(self, name, tensor)

    monkeypatch.setattr(io.StreamingWriter, "write", corrupt)
    with pytest.raises(Exception, match="verification \\(layers\\) failed"):
        _merge(adapter, tmp_path / "m")


@pytest.mark.parametrize("change", [{"num_hidden_layers": 3}, {"tie_word_embeddings": True, "vocab_size": 300}])
def test_a_config_that_does_not_build_the_written_model_fails(llama_base, tmp_path, monkeypatch, change):
    import json

    import mft_merge.api as api

    adapter = stock_adapter(llama_base, tmp_path / "adapter", r=4, lora_alpha=8, target_modules=["q_proj"])
    real = api.write_side_files

    def wrong_config(plan, model_dir, adapter, out, dtype):
        real(plan, model_dir, adapter, out, dtype)
        config = json.loads((out / "config.json").read_text())
        (out / "config.json").write_text(json.dumps({**config, **change}))

    monkeypatch.setattr(api, "write_side_files", wrong_config)
    with pytest.raises(Exception, match="verification \\(layers\\) failed.*config.json"):
        _merge(adapter, tmp_path / "m")
