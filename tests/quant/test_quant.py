"""GPTQ on the tiny model on CPU: reloads with plain transformers, calibration really from the given data,
quality measured on the supervised answer tokens and gated (a damaged quantization fails), errors before any
work, a killed run leaves no manifest."""

import json
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from helpers import demo_tasks, format_folder
from mft_core.errors import ConfigError, ContractError, QualityGateError
from mft_core.manifest import read_manifest
from mft_quant.api import quantize_gptq
from mft_quant.config import GPTQConfig
from mft_quant.quality import EvalSequence, TokenScores, answer_nll, compare, score_logits, top1_agreement


def small_config(model, out, data, **kw) -> GPTQConfig:
    """GPTQ on the tiny model, calibrated on ``data``: small enough for CPU tests (group 64 fits hidden 128).

    The gate keeps its defaults: a good 4-bit quantization of the fine-tuned tiny model must pass them."""
    settings = dict(group_size=64, calib_samples=12, calib_seq_len=128, eval_samples=12)
    return GPTQConfig(model=str(model), out=str(out), calib=str(data), **{**settings, **kw})


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return format_folder(tmp_path_factory.mktemp("quant") / "data", demo_tasks(), split=0.25)


@pytest.fixture(scope="module")
def finetuned(llama_base, data, tmp_path_factory):
    """The tiny base fine-tuned on the demo tasks (about 20 s): a random model has no answers to damage (its
    argmax over a near-uniform distribution flips under any rounding) and nothing it was trained to produce."""
    from helpers import train_config
    from mft_train.api import train

    out = tmp_path_factory.mktemp("ft") / "ft"
    train(
        train_config(
            llama_base,
            data,
            out,
            peft="none",
            max_steps=40,
            micro_batch_size=4,
            grad_accum=1,
            seq_len=128,
            eval_every=0,
            log_every=10,
        )
    )
    return out / "model"


@pytest.fixture(scope="module")
def quantized(finetuned, data, tmp_path_factory):
    out = tmp_path_factory.mktemp("q") / "q"
    quantize_gptq(small_config(finetuned, out, data))  # raises if the default gate fails
    return out


def unquantized_linears(model) -> list[str]:
    """Linear layers of the decoder blocks that are not GPTQModel quantized modules (the type, not the name:
    a plain ``nn.Linear`` is also "Linear")."""
    from gptqmodel.nn_modules.qlinear import BaseQuantLinear

    return [
        name
        for name, module in model.model.layers.named_modules()
        if isinstance(module, torch.nn.Linear) or (name.endswith("_proj") and not isinstance(module, BaseQuantLinear))
    ]


def test_output_loads_with_plain_transformers_and_generates(quantized, finetuned):
    from gptqmodel.nn_modules.qlinear import BaseQuantLinear
    from transformers import AutoModelForCausalLM, AutoTokenizer

    config = json.loads((quantized / "config.json").read_text())
    assert config["quantization_config"]["bits"] == 4 and config["quantization_config"]["group_size"] == 64
    assert config["quantization_config"]["quant_method"] == "gptq"
    model = AutoModelForCausalLM.from_pretrained(quantized, device_map="cpu")
    reference_model = AutoModelForCausalLM.from_pretrained(finetuned)
    q_proj = model.model.layers[0].self_attn.q_proj
    assert isinstance(q_proj, BaseQuantLinear) and not isinstance(q_proj, torch.nn.Linear)
    assert (q_proj.bits, q_proj.group_size, q_proj.qweight.dtype) == (4, 64, torch.int32)
    assert unquantized_linears(model) == []  # every projection of every block, not just the first
    assert len(unquantized_linears(reference_model)) == 14  # the check sees a plain nn.Linear (2 blocks x 7)
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
        reference = reference_model(**ids).logits
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
    assert quality == json.loads((quantized / "quality.json").read_text())
    tasks = {"gen", "explain", "fix", "overall"}
    assert set(quality["answer_nll"]) == set(quality["agreement"]) == set(quality["perplexity"]) == tasks
    assert quality["gate"] == {"max_nll_increase": 0.05, "min_agreement": 0.9, "max_ppl_increase": None}
    assert quality["passed"] and quality["failures"] == []
    answer, ppl = quality["answer_nll"]["overall"], quality["perplexity"]["overall"]
    assert answer["tokens"] == cal["eval_answer_tokens"] > 0
    # the fine-tuned model learned its answers, not the prompts: all-token perplexity says little about them
    assert answer["fp"] < 1.5 and ppl["fp"] > 20
    assert abs(answer["increase"]) < 0.05 and quality["agreement"]["overall"] >= 0.9
    assert quality["overall"]["nll_increase"] == answer["increase"]
    settings = read_manifest(quantized, "quantized-model").config
    assert (settings["max_nll_increase"], settings["min_agreement"]) == (0.05, 0.9)


def test_gate_reads_the_supervised_tokens_as_mft_data_tokenizes(finetuned, data, tmp_path):
    """Held-out ids and answer mask = the row `mft-data tokenize` writes for training (assistant contents + EOS)."""
    from mft_data.api import TokenizeConfig, decode_supervised, load_tokenized, read_formatted_records, tokenize_folder
    from mft_quant.api import pick_samples
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(finetuned)
    _, held_out, description = pick_samples(small_config(finetuned, "o", data), tok)
    tokenize_folder(
        TokenizeConfig(
            folder=str(data),
            tokenizer=str(finetuned),
            out=str(tmp_path / "tok"),
            seq_len=128,
            mode="pad",
            overlong="truncate",
        )
    )
    rows = load_tokenized(tmp_path / "tok").splits["valid"]
    trained = {(tuple(r["input_ids"]), tuple(lab != -100 for lab in r["labels"])) for r in rows}
    valid = {str(r["id"]): r for records in read_formatted_records(data, "valid").values() for r in records}
    assert held_out and {s.id for s in held_out} <= set(valid)
    assert {s.task for s in held_out} == {"gen", "explain", "fix"}
    for s in held_out:
        assert (tuple(s.input_ids.tolist()), tuple(s.answer.tolist())) in trained
        rounds = valid[s.id]["chat_rounds"]
        spans = decode_supervised(tok, s.input_ids.tolist(), [i if a else -100 for i, a in zip(s.input_ids, s.answer)])
        answers = [t["content"] for t in rounds if t["role"] == "assistant"]
        assert len(spans) == len(answers) and all(
            span.startswith(a) and span.endswith(tok.eos_token) for span, a in zip(spans, answers)
        )
    assert description["eval_answer_tokens"] == sum(int(s.answer[1:].sum()) for s in held_out)


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
    assert all(isinstance(s, EvalSequence) and s.answer.any() for s in held_out)
    with pytest.raises(InputError, match="no record is left"):
        pick_samples(GPTQConfig(model=str(llama_base), out="o", calib=str(unsplit), calib_samples=everything), tok)


def test_rerun_is_up_to_date(quantized, finetuned, data):
    result = quantize_gptq(small_config(finetuned, quantized, data))
    assert result.up_to_date


def test_score_logits_reference():
    """Position t scores token t + 1: NLL = -log softmax(logits[t])[ids[t + 1]]; the last position predicts none."""
    logits = torch.tensor([[2.0, 0.0, 0.0], [0.0, 0.0, 3.0], [1.0, 1.0, 1.0], [9.0, 9.0, 9.0]])
    ids = torch.tensor([1, 0, 2, 1])
    scores = score_logits(logits, ids)
    expected = [-torch.log_softmax(logits[t], -1)[ids[t + 1]].item() for t in range(3)]
    assert scores.nll.tolist() == pytest.approx(expected)
    assert scores.top1.tolist() == [0, 2, 0]


def test_answer_nll_and_agreement_count_only_answer_tokens():
    # 5 tokens; tokens 3 and 4 are the answer (e.g. content + EOS): predicted at positions 2 and 3
    answer = np.array([False, False, False, True, True])
    fp = TokenScores(np.array([9.0, 9.0, 0.5, 0.25]), np.array([1, 2, 3, 4]))
    quant = TokenScores(np.array([1.0, 1.0, 1.0, 0.25]), np.array([7, 7, 3, 5]))
    assert answer_nll(fp, answer) == (0.75, 2)
    assert answer_nll(quant, answer) == (1.25, 2)
    assert top1_agreement(fp, quant, answer) == (1, 2)


def _scores(nll, top1) -> TokenScores:
    return TokenScores(np.asarray(nll, dtype=float), np.asarray(top1))


def test_gate_logic():
    # two tasks; each sequence: 4 tokens, the last two are answers (positions 1, 2); position 0 is prompt
    seqs = [EvalSequence(f"{t}", t, np.arange(4), np.array([False, False, True, True])) for t in ("a", "b")]
    fp = [_scores([5.0, 0.5, 0.5], [1, 2, 3]), _scores([5.0, 0.5, 0.5], [1, 2, 3])]
    # the prompt got "better" (as a damaged, less confident model does on text it never learned): answers worse
    damaged = [_scores([1.0, 0.75, 0.75], [1, 2, 3]), _scores([1.0, 0.5, 0.5], [1, 9, 9])]
    q = compare(seqs, fp, damaged, max_nll_increase=0.1, min_agreement=0.9)
    assert q["answer_nll"]["a"] == {
        "fp": 0.5,
        "quantized": 0.75,
        "increase": 0.25,
        "tokens": 2,
    }
    assert q["answer_nll"]["overall"]["increase"] == 0.125
    assert q["agreement"] == {"a": 1.0, "b": 0.0, "overall": 0.5}
    assert q["perplexity"]["overall"]["increase"] < -0.5  # the all-token number "improved"
    assert not q["passed"] and len(q["failures"]) == 2
    assert "--max-nll-increase" in q["failures"][0] and "--min-agreement" in q["failures"][1]
    assert compare(seqs, fp, damaged, 0.125, 0.5)["passed"]  # each bound is inclusive
    only_nll = compare(seqs, fp, damaged, 0.1, 0.5)
    assert only_nll["failures"] == ["answer-token NLL rose +0.125 nats, above --max-nll-increase 0.1"]
    only_agreement = compare(seqs, fp, damaged, 0.125, 0.6)
    assert only_agreement["failures"] == ["top-1 agreement on answer tokens 50.0%, below --min-agreement 0.6"]
    ppl_too = compare(seqs, fp, [_scores([9.0, 0.5, 0.5], [1, 2, 3])] * 2, 0.05, 0.9, max_ppl_increase=0.05)
    assert ppl_too["failures"] == ["all-token perplexity rose +279.4%, above --max-ppl-increase 0.05"]
    broken = compare(seqs, fp, [_scores([np.nan] * 3, [0, 0, 0])] * 2, 10.0, 0.0)
    assert not broken["passed"] and broken["answer_nll"]["overall"]["quantized"] is None
    json.dumps(broken, allow_nan=False)  # quality.json stays valid JSON
    from mft_quant.api import _gate

    with pytest.raises(QualityGateError, match=r"NLL rose \+0.125 nats.*agreement on answer tokens 50.0%"):
        _gate(q)


def test_gate_flags_are_checked(tmp_path):
    for kw, flag in (
        ({"max_nll_increase": -0.1}, "--max-nll-increase"),
        ({"min_agreement": 1.5}, "--min-agreement"),
        ({"max_ppl_increase": -1.0}, "--max-ppl-increase"),
        ({"eval_samples": 0}, "--eval-samples"),
    ):
        with pytest.raises(ConfigError, match=flag):
            GPTQConfig(model="m", out="o", **kw)


def test_damaged_quantization_fails_the_gate(finetuned, data, tmp_path, monkeypatch):
    """One layer's packed weights zeroed after quantizing: the answers are damaged while the all-token perplexity
    falls (the model is less sure of the prompts it never learned), so a perplexity gate would pass it."""
    import mft_quant.api as A
    from safetensors.torch import load_file, save_file
    from typer.testing import CliRunner

    real_quantize = A.quantize

    def quantize_then_damage(cfg, model_dir, tokens, out, device):
        real_quantize(cfg, model_dir, tokens, out, device)
        weights = load_file(out / "model.safetensors")
        key = "model.layers.0.self_attn.v_proj.qweight"
        weights[key] = torch.zeros_like(weights[key])
        save_file(weights, out / "model.safetensors", metadata={"format": "pt"})

    monkeypatch.setattr(A, "quantize", quantize_then_damage)
    out = tmp_path / "q"
    with pytest.raises(QualityGateError, match="--max-nll-increase 0.05.*--min-agreement 0.9"):
        quantize_gptq(small_config(finetuned, out, data))
    quality = read_manifest(out, "quantized-model").summary["quality"]  # kept for inspection, gate recorded
    assert not quality["passed"] and quality["overall"]["nll_increase"] > 0.2
    assert quality["overall"]["agreement"] < 0.9
    assert quality["perplexity"]["overall"]["increase"] < 0.05  # what the old gate read: it would have passed
    # the CLI prints the table and the failed gate, and exits 1
    from mft_quant.cli import app

    res = CliRunner().invoke(
        app,
        [
            "gptq",
            str(finetuned),
            "--out",
            str(out),
            "--group-size",
            "64",
            "--calib",
            str(data),
            "--calib-samples",
            "12",
            "--calib-seq-len",
            "128",
            "--eval-samples",
            "12",
            "--overwrite",
        ],
    )
    assert res.exit_code == 1, res.output
    assert "top-1 agree" in res.output and "failed" in res.output


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


def test_eval_humaneval_reports_delta(finetuned, data, tmp_path):
    out = tmp_path / "q"
    result = quantize_gptq(
        small_config(
            finetuned,
            out,
            data,
            calib_samples=4,
            calib_seq_len=64,
            eval_samples=3,
            eval_humaneval=True,
            eval_humaneval_limit=2,
        )
    )
    h = result.summary["quality"]["humaneval"]
    assert set(h) == {"fp", "quantized", "delta_pass@1"} and h["delta_pass@1"] == h["quantized"] - h["fp"]
    summary = json.loads((out / "humaneval-quantized" / "summary.json").read_text())
    assert summary["tasks"] == 2
