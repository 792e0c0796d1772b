"""SIGKILL a training run at a few points (once in the middle of writing a checkpoint), resume with
`--set resume=auto`, and the final weights equal an uninterrupted run's."""

import json

import pytest
import torch
import yaml
from helpers import run_killable as run
from helpers import train_config
from mft_core.config import config_to_dict


def adapter_weights(out):
    from safetensors.torch import load_file

    return load_file(str(out / "adapter" / "adapter_model.safetensors"))


def test_killed_and_resumed_equals_uninterrupted(llama_base, llama_tok, tmp_path):
    cfg = config_to_dict(
        train_config(
            llama_base, llama_tok, tmp_path / "x", max_steps=12, save_every=3, eval_every=4, save_limit=3, log_every=2
        )
    )
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))

    straight = run(path, f"out={tmp_path / 'a'}")
    assert straight.returncode == 0, straight.stderr[-3000:]

    out = tmp_path / "b"
    first = run(path, f"out={out}", KILL_AT_STEP=5)
    assert first.returncode == -9 and (out / "checkpoint-3").is_dir() and not (out / "manifest.json").exists()
    second = run(path, f"out={out}", "resume=auto", KILL_IN_SAVE="optimizer.pt", KILL_AT_STEP=-1)
    # it resumed from checkpoint-3 and died while writing checkpoint-6: that one must not exist as a checkpoint
    assert second.returncode == -9 and not (out / "checkpoint-6").exists()
    assert any(p.name.startswith(".checkpoint-6.tmp-") for p in out.iterdir())
    third = run(path, f"out={out}", "resume=auto", KILL_AT_STEP=10)
    assert third.returncode == -9 and "resumed from" in third.stderr
    last = run(path, f"out={out}", "resume=auto")
    assert last.returncode == 0, last.stderr[-3000:]
    assert "checkpoint-9" in last.stderr

    a, b = adapter_weights(tmp_path / "a"), adapter_weights(out)
    assert a.keys() == b.keys()
    for name in a:
        assert torch.allclose(a[name], b[name], atol=1e-6, rtol=0), name

    def train_lines(run_dir):
        return [json.loads(l) for l in (run_dir / "metrics.jsonl").read_text().splitlines() if '"train"' in l]

    resumed, uninterrupted = train_lines(out), train_lines(tmp_path / "a")
    assert [r["step"] for r in resumed] == list(range(2, 13, 2))  # no line twice, none missing
    # every line averages the same steps (checkpoints at odd steps fall inside a logging window)
    for r, u in zip(resumed, uninterrupted):
        assert r["loss"] == pytest.approx(u["loss"], abs=1e-6) and r["task_loss"] == pytest.approx(u["task_loss"])


def test_resume_with_another_config_shows_the_diff(llama_base, llama_tok, tmp_path):
    from mft_core.errors import ConfigError
    from mft_train.api import train

    out = tmp_path / "r"
    train(train_config(llama_base, llama_tok, out, max_steps=3, save_every=2, eval_every=0))
    (out / "manifest.json").unlink()  # pretend it never finished
    with pytest.raises(ConfigError, match=r"lr: checkpoint 0.003 != now 0.001"):
        train(train_config(llama_base, llama_tok, out, max_steps=3, save_every=2, eval_every=0, lr=1e-3, resume="auto"))
    with pytest.raises(ConfigError, match="resume=auto"):
        train(train_config(llama_base, llama_tok, out, max_steps=3, save_every=2, eval_every=0))


def test_every_resume_checks_the_saved_weights_fit_the_model(llama_base, llama_tok, tmp_path):
    """One layout for every engine; a settings change that leaves the result alone resumes, a checkpoint whose
    weights are not this model's trainable parameters (names and shapes) is refused."""
    from mft_core.errors import ConfigError
    from mft_train.api import train
    from safetensors.torch import load_file, save_file

    out = tmp_path / "w"
    kw = dict(max_steps=3, save_every=2, eval_every=0)
    train(train_config(llama_base, llama_tok, out, **kw))
    checkpoint = out / "checkpoint-2"
    assert sorted(p.name for p in checkpoint.iterdir()) == [
        "optimizer",
        "rng-rank0.pt",
        "scheduler.pt",
        "state.json",
        "weights.safetensors",
    ]
    (out / "manifest.json").unlink()  # pretend it never finished
    resumed = train(train_config(llama_base, llama_tok, out, log_every=3, save_limit=4, resume="auto", **kw))
    assert resumed.summary["steps"] == 3 and not resumed.up_to_date

    (out / "manifest.json").unlink()
    weights = load_file(str(checkpoint / "weights.safetensors"))
    dropped, reshaped = sorted(weights)[:2]
    del weights[dropped]
    weights[reshaped] = weights[reshaped][:1].contiguous()
    save_file(weights, str(checkpoint / "weights.safetensors"))
    with pytest.raises(ConfigError, match="do not fit this model") as info:
        train(train_config(llama_base, llama_tok, out, resume=str(checkpoint), **kw))
    assert f"{dropped}: missing from the checkpoint" in info.value.message
    assert f"{reshaped}: shape [1, " in info.value.message


def test_resume_with_task_sampling_equals_uninterrupted(llama_base, llama_tok, tmp_path):
    """Sampled epochs are a function of (seed, epoch): a resumed process draws the same rows for the same steps."""
    from mft_data.api import load_tokenized

    a, b, _ = load_tokenized(llama_tok).tasks
    cfg = config_to_dict(
        train_config(
            llama_base,
            llama_tok,
            tmp_path / "x",
            max_steps=0,
            epochs=3,
            save_every=2,
            eval_every=0,
            log_every=1,
            task_sampling={a: 2.0, b: 0.5},
            task_sampling_by="tokens",
        )  # fmt: skip
    )
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    straight = run(path, f"out={tmp_path / 'a'}")
    assert straight.returncode == 0, straight.stderr[-3000:]
    steps = json.loads((tmp_path / "a" / "manifest.json").read_text())["summary"]["steps"]
    out = tmp_path / "b"
    first = run(path, f"out={out}", KILL_AT_STEP=steps - 2)  # in the last epoch, after a checkpoint
    assert first.returncode == -9
    last = run(path, f"out={out}", "resume=auto")
    assert last.returncode == 0 and "resumed from" in last.stderr, last.stderr[-3000:]
    wa, wb = adapter_weights(tmp_path / "a"), adapter_weights(out)
    for name in wa:
        assert torch.allclose(wa[name], wb[name], atol=1e-6, rtol=0), name
    lines = [[json.loads(l)["loss"] for l in (d / "metrics.jsonl").read_text().splitlines() if '"train"' in l]
             for d in (tmp_path / "a", out)]  # fmt: skip
    assert lines[0] == pytest.approx(lines[1], abs=1e-6) and len(lines[0]) == steps
