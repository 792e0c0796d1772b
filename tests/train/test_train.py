"""Real training runs on the tiny model: losses fall, outputs load with plain transformers/peft, errors are clear."""

import json
import math

import pytest
import torch
from helpers import train_config
from mft_core.errors import ConfigError, ContractError
from mft_core.manifest import read_manifest
from mft_train.api import train
from mft_train.metrics import read_metrics


def test_lora_multitask_run_learns_and_writes_a_complete_output(llama_base, llama_tok, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    out = tmp_path / "run"
    result = train(train_config(llama_base, llama_tok, out, max_steps=30, save_every=10))
    manifest = read_manifest(out, "adapter")
    assert manifest.summary["loss"] == "task" and manifest.summary["task_weighting"] == "static"
    assert manifest.summary["steps"] == 30
    assert manifest.summary["resolved"]["tasks"] == ["explain", "fix", "gen"]
    metrics = read_metrics(out / "metrics.jsonl")
    train_losses = [m["loss"] for m in metrics if m["kind"] == "train"]
    assert sum(train_losses[-5:]) / 5 < sum(train_losses[:5]) / 5 - 0.5  # the loss falls (nats)
    evals = [m for m in metrics if m["kind"] == "eval"]
    assert evals[-1]["loss"] < evals[0]["loss"] and set(evals[-1]["task_loss"]) == {"explain", "fix", "gen"}
    assert (out / "loss_per_task.png").stat().st_size > 5000
    assert list((out / "tb").iterdir())
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-10", "checkpoint-20"]  # save_limit 2
    # the adapter loads with plain peft and changes the base's outputs
    base = AutoModelForCausalLM.from_pretrained(llama_base)
    ids = torch.tensor([[5, 6, 7, 8]])
    before = base(ids).logits
    tuned = PeftModel.from_pretrained(base, out / "adapter")
    assert not torch.allclose(tuned(ids).logits, before)
    assert json.loads((out / "adapter" / "adapter_config.json").read_text())["r"] == 8
    assert result.summary["supervised_tokens_per_task"]["gen"] > 0
    # same config again: nothing to do
    assert train(train_config(llama_base, llama_tok, out, max_steps=30, save_every=10)).up_to_date


def test_settings_that_leave_the_result_alone_keep_a_finished_run_up_to_date(llama_base, llama_tok, tmp_path):
    out = tmp_path / "done"
    kw = dict(max_steps=2, eval_every=0)
    train(train_config(llama_base, llama_tok, out, **kw))
    quieter = dict(log_every=7, save_every=1, save_limit=5, tb_dir=str(tmp_path / "tb"))
    assert train(train_config(llama_base, llama_tok, out, **quieter, **kw)).up_to_date
    with pytest.raises(ConfigError, match="another config or inputs"):
        train(train_config(llama_base, llama_tok, out, lr=1e-3, **kw))


def test_full_fine_tuning_saves_a_complete_model(llama_base, llama_tok, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path / "full"
    train(train_config(llama_base, llama_tok, out, peft="none", lr=1e-3, max_steps=4, eval_every=0))
    assert read_manifest(out, "model").summary["paths"]["model"] == "model"
    model = AutoModelForCausalLM.from_pretrained(out / "model")
    base = AutoModelForCausalLM.from_pretrained(llama_base)
    assert not torch.allclose(model.model.embed_tokens.weight, base.model.embed_tokens.weight)
    assert AutoTokenizer.from_pretrained(out / "model").chat_template


def test_qlora_on_cpu_learns(llama_base, llama_tok, tmp_path):
    out = tmp_path / "qlora"
    train(train_config(llama_base, llama_tok, out, peft="qlora", max_steps=8, eval_every=0, lr=1e-2))
    adapter = out / "adapter"
    assert (adapter / "adapter_model.safetensors").is_file()
    assert not list(adapter.glob("model*.safetensors"))  # never a re-saved 4-bit base
    losses = [m["loss"] for m in read_metrics(out / "metrics.jsonl") if m["kind"] == "train"]  # one per step
    assert len(losses) == 8 and all(math.isfinite(l) for l in losses)
    # the adapter on the 4-bit base learns: about 8.2 -> 7.4 nats over 8 steps (a frozen adapter stays at ~8.2)
    assert sum(losses[-2:]) / 2 < sum(losses[:2]) / 2 - 0.4


def test_early_stopping_keeps_best(llama_base, llama_tok, tmp_path):
    out = tmp_path / "early"
    # a huge lr makes valid loss rise after the first eval, so patience 1 stops it
    result = train(
        train_config(
            llama_base,
            llama_tok,
            out,
            lr=0.5,
            max_steps=40,
            eval_every=2,
            early_stop_patience=1,
            optimizer="sgd",
            max_grad_norm=0.0,
            lr_schedule="constant",
            warmup_steps=0,
        )
    )
    s = result.summary
    valid = [m["loss"] for m in read_metrics(out / "metrics.jsonl") if m["kind"] == "eval"]
    assert s["stopped_early"], valid
    assert s["steps"] < 40 and (out / "best" / "adapter_model.safetensors").is_file()
    # stopped at the first eval that did not improve on the best one (patience 1)
    assert valid[-1] >= min(valid[:-1]) and s["best_step"] < s["steps"]


def test_errors_are_clear(llama_base, llama_tok, tmp_path, make_base):
    with pytest.raises(ContractError, match="manifest"):
        train(train_config(llama_base, tmp_path, tmp_path / "o1"))
    with pytest.raises(ConfigError, match="target modules not found in the model: nope") as info:
        train(train_config(llama_base, llama_tok, tmp_path / "o2", target_modules=("nope",)))
    assert "q_proj" in info.value.fix
    with pytest.raises(ConfigError, match="above the model's maximum"):
        train(train_config(llama_base, llama_tok, tmp_path / "o3", seq_len=100_000))
    with pytest.raises(ConfigError, match="another tokenizer"):
        train(train_config(make_base("qwen2"), llama_tok, tmp_path / "o4"))
    with pytest.raises(ConfigError, match="unknown tasks: nope"):
        train(train_config(llama_base, llama_tok, tmp_path / "o5", task_weights={"nope": 2.0}))


def test_cli_exit_codes_and_messages(llama_base, llama_tok, tmp_path):
    from mft_train.cli import app
    from typer.testing import CliRunner

    config = tmp_path / "c.yaml"
    config.write_text(f"model: {llama_base}\nout: {tmp_path / 'cli'}\nseq_len: 96\nmax_steps: 2\n")

    def run_cli(*sets):
        base = ["run", str(config)]
        return CliRunner().invoke(app, base + [x for s in sets for x in ("--set", s)])

    res = run_cli(f"data={tmp_path}")  # a folder without a manifest
    assert res.exit_code == 3 and "manifest" in res.output
    res = run_cli(f"data={llama_tok}", "target_modules=[nope]")
    assert res.exit_code == 2 and "target modules not found" in res.output and "q_proj" in res.output
    res = run_cli(f"data={llama_tok}", "seq_len=100000")
    assert res.exit_code == 2 and "maximum" in res.output
    res = run_cli(f"data={llama_tok}", "lr_schedule=wavy")
    assert res.exit_code == 2 and "lr_schedule" in res.output


def test_tokenizer_problems(llama_base, llama_tok, tmp_path):
    import shutil

    bad = tmp_path / "bad-base"
    shutil.copytree(llama_base, bad)
    cfg = json.loads((bad / "config.json").read_text())
    cfg["vocab_size"] = 1000
    (bad / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ConfigError, match="embeddings only 1000 rows"):
        train(train_config(bad, llama_tok, tmp_path / "o"))
    tk = json.loads((bad / "tokenizer_config.json").read_text())
    tk["eos_token"] = None
    (bad / "tokenizer_config.json").write_text(json.dumps(tk))
    with pytest.raises(ConfigError, match="no EOS"):
        train(train_config(bad, llama_tok, tmp_path / "o"))


def test_pretrain_on_raw_code(llama_base, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for i in range(6):
        (src / f"m{i}.py").write_text(f"def f{i}(x):\n    return x + {i}\n" * 30)
    out = tmp_path / "pre"
    result = train(
        train_config(
            llama_base, str(src), out, peft="none", loss="token", seq_len=128, max_steps=6, eval_every=0, lr=1e-3
        ),
        kind="pretrain",
    )
    assert result.summary["tasks"] == ["text"]
    assert (out / "model" / "model.safetensors").is_file()
    losses = [m["loss"] for m in read_metrics(out / "metrics.jsonl") if m["kind"] == "train"]
    assert losses[-1] < losses[0]
    again = train(
        train_config(
            llama_base, str(src), out, peft="none", loss="token", seq_len=128, max_steps=6, eval_every=0, lr=1e-3
        ),
        kind="pretrain",
    )
    assert again.up_to_date
    (src / "m0.py").write_text("def changed():\n    return 1\n" * 30)  # same path, new content: not up to date
    same_config = dict(peft="none", loss="token", seq_len=128, max_steps=6, eval_every=0, lr=1e-3)
    with pytest.raises(ConfigError, match="another config or inputs"):
        train(train_config(llama_base, str(src), out, **same_config), kind="pretrain")
