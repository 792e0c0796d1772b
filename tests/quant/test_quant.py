"""GPTQ on the tiny model on CPU: reloads with plain transformers, calibration really from the given data,
quality measured and gated, errors before any work, a killed run leaves no manifest."""

import json
import signal
import subprocess
import sys
import textwrap

import pytest
import torch
from helpers import demo_tasks, format_folder
from mft_core.errors import ConfigError, ContractError, QualityGateError
from mft_core.manifest import read_manifest
from mft_quant.api import quantize_gptq
from mft_quant.config import GPTQConfig
from mft_quant.quality import compare


def small_config(model, out, data, **kw) -> GPTQConfig:
    """GPTQ on the tiny model, calibrated on ``data``: small enough for CPU tests (group 64 fits hidden 128)."""
    settings = dict(group_size=64, calib_samples=12, calib_seq_len=128, eval_samples=6, max_ppl_increase=0.5)
    return GPTQConfig(model=str(model), out=str(out), calib=str(data), **{**settings, **kw})


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return format_folder(tmp_path_factory.mktemp("quant") / "data", demo_tasks(), split=0.25)


@pytest.fixture(scope="module")
def quantized(llama_base, data, tmp_path_factory):
    out = tmp_path_factory.mktemp("q") / "q"
    quantize_gptq(small_config(llama_base, out, data))
    return out


def test_output_loads_with_plain_transformers_and_generates(quantized, llama_base):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    config = json.loads((quantized / "config.json").read_text())
    assert config["quantization_config"]["bits"] == 4 and config["quantization_config"]["group_size"] == 64
    assert config["quantization_config"]["quant_method"] == "gptq"
    model = AutoModelForCausalLM.from_pretrained(quantized, device_map="cpu")
    assert (
        "QuantLinear" in type(model.model.layers[0].self_attn.q_proj).__name__
        or "Linear" in type(model.model.layers[0].self_attn.q_proj).__name__
    )
    tok = AutoTokenizer.from_pretrained(quantized)
    assert tok.chat_template  # copied with the model
    prompt = tok.apply_chat_template(
        [{"role": "user", "content": "Write add"}], tokenize=False, add_generation_prompt=True
    )
    ids = tok(prompt, return_tensors="pt", add_special_tokens=False)
    out = model.generate(**ids, max_new_tokens=8, do_sample=False, pad_token_id=tok.pad_token_id)
    assert out.shape[1] > ids["input_ids"].shape[1]
    with torch.no_grad():
        logits = model(**ids).logits.float()
        reference = AutoModelForCausalLM.from_pretrained(llama_base)(**ids).logits
    assert torch.isfinite(logits).all()
    assert (logits - reference).abs().mean() < 0.5 * reference.abs().mean()  # close to, not equal to, the fp model
    assert not torch.allclose(logits, reference)


def test_calibration_comes_from_the_given_data(quantized, data):
    summary = read_manifest(quantized, "quantized-model").summary
    cal = summary["calibration"]
    train_ids = {json.loads(l)["id"] for t in ("gen", "explain", "fix") for l in (data / t / "train.jsonl").open()}
    valid_ids = {json.loads(l)["id"] for t in ("gen", "explain", "fix") for l in (data / t / "valid.jsonl").open()}
    assert cal["source"] == "chat" and cal["samples"] == 12
    assert set(cal["ids"]) <= train_ids and set(cal["eval_ids"]) <= valid_ids
    assert cal["tasks"] == {"gen": 4, "explain": 4, "fix": 4}  # drawn evenly across tasks
    quality = summary["quality"]
    assert set(quality["perplexity"]) == {"gen", "explain", "fix", "overall"}
    for row in quality["perplexity"].values():
        assert 1 < row["fp"] < 1e5 and 1 < row["quantized"] < 1e5
    assert (quantized / "quality.json").is_file()


def test_unsplit_data_measures_on_records_not_calibrated_on(llama_base, tmp_path):
    from mft_core.errors import InputError
    from mft_quant.api import pick_samples
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(llama_base)
    unsplit = format_folder(tmp_path / "unsplit", demo_tasks())
    cfg = GPTQConfig(model=str(llama_base), out=str(tmp_path / "o"), calib=str(unsplit), calib_samples=9)
    calib, held_out, _ = pick_samples(cfg, tok)
    assert len(calib) == 9 and held_out and not {s.id for s in calib} & {s.id for s in held_out}
    everything = sum(len(v) for v in demo_tasks().values())
    with pytest.raises(InputError, match="no record is left"):
        pick_samples(GPTQConfig(model=str(llama_base), out="o", calib=str(unsplit), calib_samples=everything), tok)


def test_rerun_is_up_to_date(quantized, llama_base, data):
    result = quantize_gptq(small_config(llama_base, quantized, data))
    assert result.up_to_date


def test_gate_logic():
    fp = {"a": 10.0, "overall": 10.0}
    assert compare(fp, {"a": 10.4, "overall": 10.4}, 0.05)["passed"]
    failed = compare(fp, {"a": 11.0, "overall": 11.0}, 0.05)
    assert not failed["passed"] and failed["overall_increase"] == pytest.approx(0.1)
    from mft_quant.api import _gate

    with pytest.raises(QualityGateError, match=r"\+10.0%"):
        _gate(failed)


def test_errors_before_any_work(llama_base, tmp_path, data):
    with pytest.raises(ConfigError, match="does not divide"):
        quantize_gptq(GPTQConfig(model=str(llama_base), out=str(tmp_path / "o"), group_size=96))
    from transformers import BertConfig

    BertConfig(
        hidden_size=128, num_hidden_layers=1, num_attention_heads=2, intermediate_size=256, is_decoder=True
    ).save_pretrained(tmp_path / "bert")
    with pytest.raises(ConfigError, match="cannot quantize model type 'bert'"):
        quantize_gptq(GPTQConfig(model=str(tmp_path / "bert"), out=str(tmp_path / "o")))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ContractError, match="mft-data format"):
        quantize_gptq(
            GPTQConfig(model=str(llama_base), out=str(tmp_path / "o"), group_size=64, calib=str(tmp_path / "empty"))
        )
    assert not (tmp_path / "o").exists()


def test_killed_run_leaves_no_manifest(llama_base, data, tmp_path):
    script = textwrap.dedent(f"""
        import os, signal, sys
        import mft_quant.quality as Q
        def die(*a, **k):
            os.kill(os.getpid(), signal.SIGKILL)  # quantized and saved, not yet measured or finished
        Q.measure = die
        import mft_quant.api as A
        A.measure = die
        from mft_quant.cli import main
        sys.argv = ["mft-quant", "gptq", {str(llama_base)!r}, "--out", {str(tmp_path / "q")!r}, "--group-size", "64",
                    "--calib", {str(data)!r}, "--calib-samples", "4", "--calib-seq-len", "64"]
        main()
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    assert not (tmp_path / "q").exists()
    staged = [p for p in tmp_path.iterdir() if p.name.startswith(".q.tmp-")]
    assert staged and (staged[0] / "model.safetensors").exists() and not (staged[0] / "manifest.json").exists()


def test_eval_humaneval_reports_delta(llama_base, data, tmp_path):
    out = tmp_path / "q"
    result = quantize_gptq(
        small_config(
            llama_base,
            out,
            data,
            calib_samples=4,
            calib_seq_len=64,
            eval_samples=3,
            max_ppl_increase=1.0,
            eval_humaneval=True,
            eval_humaneval_limit=2,
        )
    )
    h = result.summary["quality"]["humaneval"]
    assert set(h) == {"fp", "quantized", "delta_pass@1"} and h["delta_pass@1"] == h["quantized"] - h["fp"]
    summary = json.loads((out / "humaneval-quantized" / "summary.json").read_text())
    assert summary["tasks"] == 2
