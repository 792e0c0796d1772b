"""Generation on the tiny random llama: greedy outputs do not depend on batch size; backends and prompting."""

import importlib.util
from pathlib import Path

import pytest
from mft_core.artifacts import load_tokenizer
from mft_core.errors import ConfigError
from mft_eval.config import HumanEvalConfig
from mft_eval.generate import build_prompts, clean_completion, generate_hf

pytestmark = pytest.mark.fast  # unit/contract tier: `make test-fast`


def _cfg(base, **kw):
    return HumanEvalConfig(model=str(base), out="unused", max_new_tokens=24, threads=1, **kw)


@pytest.mark.parametrize("mode", ["completion", "chat"])
def test_greedy_does_not_depend_on_batch_size(llama_base, problems, mode):
    chosen = [problems[f"HumanEval/{i}"] for i in (0, 2, 7, 23, 35, 53, 100, 151)]  # prompts of many lengths
    tok = load_tokenizer(Path(llama_base))
    prompting = build_prompts(tok, chosen, _cfg(llama_base, prompt=mode))
    lengths = {len(tok(t, add_special_tokens=prompting.add_special_tokens).input_ids) for t in prompting.texts}
    assert len(lengths) == len(chosen)  # every batch of 8 is left-padded
    one = generate_hf(Path(llama_base), tok, prompting, _cfg(llama_base, prompt=mode, batch_size=1))
    eight = generate_hf(Path(llama_base), tok, prompting, _cfg(llama_base, prompt=mode, batch_size=8))
    assert one == eight
    assert all(len(o) == 1 and len(o[0]) > 20 for o in one)  # real outputs, not empty strings


def test_prompting_is_recorded_as_used(llama_base, problems):
    tok = load_tokenizer(Path(llama_base))
    chat = build_prompts(tok, [problems["HumanEval/0"]], _cfg(llama_base, prompt="chat"))
    assert chat.texts[0] == "<s>human\n# language: Python\n" + problems["HumanEval/0"]["prompt"] + "\n<s>bot\n"
    assert not chat.add_special_tokens and chat.stop == ()
    completion = build_prompts(tok, [problems["HumanEval/0"]], _cfg(llama_base, prompt="completion"))
    assert completion.texts[0] == problems["HumanEval/0"]["prompt"] and "\ndef " in completion.stop
    assert clean_completion("    return 1\ndef x():\n    pass", completion) == "    return 1"
    assert clean_completion("```python\ndef f():\n    return 1\n```", chat) == "\ndef f():\n    return 1\n"


def test_sampling_settings_are_checked():
    with pytest.raises(ConfigError, match="--temperature"):
        HumanEvalConfig(model="m", out="o", n_samples=10)
    with pytest.raises(ConfigError, match="--top-p"):
        HumanEvalConfig(model="m", out="o", top_p=0)


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vllm is installed here")
def test_vllm_backend_without_vllm_is_a_config_error(llama_base, problems):
    from mft_eval.generate import generate_vllm

    tok = load_tokenizer(Path(llama_base))
    prompting = build_prompts(tok, [problems["HumanEval/0"]], _cfg(llama_base, backend="vllm"))
    with pytest.raises(ConfigError, match="vllm"):
        generate_vllm(Path(llama_base), tok, prompting, _cfg(llama_base, backend="vllm"))


def test_a_quantization_that_failed_its_gate_is_flagged(tmp_path, capsys):
    from mft_core.manifest import new_manifest, write_manifest
    from mft_eval.api import _warn_if_gate_failed

    quality = {"passed": False, "failures": ["answer NLL +0.120 nats > 0.05"]}
    write_manifest(tmp_path, new_manifest("quantized-model", "mft-quant", "0", {}, (), {"quality": quality}))
    _warn_if_gate_failed(tmp_path)
    said = " ".join(capsys.readouterr().err.split())  # rich wraps long lines
    assert "failed mft-quant's quality gate (answer NLL +0.120 nats > 0.05)" in said
    quality["passed"] = True
    write_manifest(tmp_path, new_manifest("quantized-model", "mft-quant", "0", {}, (), {"quality": quality}))
    _warn_if_gate_failed(tmp_path)
    assert "quality gate" not in capsys.readouterr().err


def test_vllm_engine_args_size_memory_and_context_for_cpu(llama_base):
    """vLLM reserves gpu_memory_utilization of the RAM on CPU and refuses to start without it free: a smaller
    default there; the context is the longest prompt plus the new tokens, capped by the model's positions."""
    import json

    from mft_eval.generate import vllm_engine_args

    args = vllm_engine_args(Path(llama_base), _cfg(llama_base, backend="vllm"), longest_prompt=100)
    assert args["gpu_memory_utilization"] == 0.25 and args["max_model_len"] == 124
    assert args["model"] == str(llama_base) and args["dtype"] == "auto"
    limit = json.loads((Path(llama_base) / "config.json").read_text())["max_position_embeddings"]
    assert vllm_engine_args(Path(llama_base), _cfg(llama_base), longest_prompt=10**6)["max_model_len"] == limit
    assert vllm_engine_args(Path(llama_base), _cfg(llama_base, vllm_memory=0.5), 1)["gpu_memory_utilization"] == 0.5
    with pytest.raises(ConfigError, match="vllm-memory"):
        _cfg(llama_base, vllm_memory=1.5)
