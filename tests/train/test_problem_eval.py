"""pass@1 per problem set while training (eval_problems, via mft-eval's public API), select_by, resume.

A tiny model learns the answers of a few `add_k` problems; its logged pass@1 must be what `mft-eval humaneval`
reports on the saved weights, best/ must hold the step with the best pass@1, and a killed + resumed run must log
the same metric history as an uninterrupted one.
"""

import json
import sys

import pytest
import yaml
from helpers import memorise_folder, run_killable, train_config
from mft_core.config import config_to_dict
from mft_core.errors import ConfigError

STEPS, EVERY = 30, 5


def settings(base, data, out, **kw):
    return train_config(
        base, data["tok"], out, peft="none", lr=3e-3, warmup_steps=0, max_steps=STEPS, eval_every=EVERY,
        micro_batch_size=4, grad_accum=1, seq_len=128, lora_dropout=0.0, log_every=3,
        eval_problems={"gen": str(data["gen"]), "other": str(data["other"])},
        eval_problems_max_new_tokens=24, select_by="pass@1:gen", **kw,
    )  # fmt: skip


@pytest.fixture(scope="module")
def data(llama_base, tmp_path_factory):
    return memorise_folder(tmp_path_factory.mktemp("memorise"), llama_base)


@pytest.fixture(scope="module")
def trained(llama_base, data, tmp_path_factory):
    from mft_train.api import train

    out = tmp_path_factory.mktemp("run") / "out"
    return train(settings(llama_base, data, out))


def evals(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if '"eval"' in line]


def humaneval(model_dir, problems, out):
    from mft_eval.api import run_humaneval
    from mft_eval.config import HumanEvalConfig

    return run_humaneval(HumanEvalConfig(model=str(model_dir), out=str(out), problems=str(problems), k=(1,),
                                         max_new_tokens=24, dtype="float32"))  # fmt: skip


def test_pass_at_1_is_logged_per_set_and_moves(trained):
    lines = evals(trained.out)
    assert [r["step"] for r in lines] == list(range(EVERY, STEPS + 1, EVERY))
    assert all(set(r["pass_at_1"]) == {"gen", "other"} and "task_loss" in r for r in lines)
    gen = [r["pass_at_1"]["gen"] for r in lines]
    assert gen[0] == 0 and max(gen) == 0.5, gen  # it learned the answer: 2 of the 4 tests accept it
    assert all(r["passed"]["gen"][1] == 4 and r["passed"]["other"][1] == 2 for r in lines)
    step_file = trained.out / "problems" / f"step-{STEPS}.jsonl"
    assert len(step_file.read_text().splitlines()) == 6
    cost = trained.summary["problems_eval"]
    assert cost["evaluations"] == len(lines) and cost["seconds_per_evaluation"] > 0 and cost["seconds_per_step"] > 0


def test_logged_pass_at_1_equals_mft_eval_on_the_saved_model(trained, data, tmp_path):
    final = evals(trained.out)[-1]
    logged = {json.loads(line)["task_id"]: json.loads(line)["status"]
              for line in (trained.out / "problems" / f"step-{STEPS}.jsonl").read_text().splitlines()}  # fmt: skip
    for name in ("gen", "other"):
        result = humaneval(trained.out / "model", data[name], tmp_path / name)
        assert result.summary["pass_at_k"]["pass@1"] == pytest.approx(final["pass_at_1"][name]), name
        rows = [json.loads(line) for line in (tmp_path / name / "results.jsonl").read_text().splitlines()]
        assert {r["task_id"]: r["status"] for r in rows} == {t: s for t, s in logged.items() if t in
                                                            {r["task_id"] for r in rows}}  # fmt: skip


def test_best_holds_the_step_with_the_best_pass_at_1(trained, data, tmp_path):
    lines = evals(trained.out)
    gen = [r["pass_at_1"]["gen"] for r in lines]
    best = lines[gen.index(max(gen))]["step"]  # the first step reaching the maximum
    assert trained.summary["best_step"] == best and trained.summary["select_by"] == "pass@1:gen"
    assert trained.summary["best_score"] == pytest.approx(max(gen))
    result = humaneval(trained.out / "best", data["gen"], tmp_path / "best")
    assert result.summary["pass_at_k"]["pass@1"] == pytest.approx(max(gen))


def test_killed_and_resumed_run_logs_the_same_metrics(trained, llama_base, data, tmp_path):
    cfg = config_to_dict(settings(llama_base, data, tmp_path / "x", save_every=EVERY * 2))
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    out = tmp_path / "b"
    first = run_killable(path, f"out={out}", KILL_AT_STEP=EVERY * 3 + 2)
    assert first.returncode == -9, first.stderr[-2000:]
    last = run_killable(path, f"out={out}", "resume=auto")
    assert last.returncode == 0 and "resumed from" in last.stderr, last.stderr[-3000:]
    a, b = evals(trained.out), evals(out)
    assert [r["step"] for r in a] == [r["step"] for r in b]
    assert [r["pass_at_1"] for r in a] == [r["pass_at_1"] for r in b]
    assert [r["loss"] for r in a] == pytest.approx([r["loss"] for r in b], abs=1e-5)
    summary = json.loads((out / "manifest.json").read_text())["summary"]
    assert summary["best_step"] == trained.summary["best_step"]


@pytest.mark.fast
def test_config_errors(llama_base, data, tmp_path):
    with pytest.raises(ConfigError, match="needs eval_problems"):
        train_config(llama_base, data["tok"], tmp_path, select_by="pass@1")
    with pytest.raises(ConfigError, match="no problem set 'nope'"):
        settings(llama_base, data, tmp_path).__class__(**{**config_to_dict(settings(llama_base, data, tmp_path)),
                                                          "select_by": "pass@1:nope"})  # fmt: skip
    with pytest.raises(ConfigError, match="is not a file"):
        train_config(llama_base, data["tok"], tmp_path, eval_problems={"gen": str(tmp_path / "missing.jsonl")})
    with pytest.raises(ConfigError, match="select_by: 'loss'"):
        train_config(llama_base, data["tok"], tmp_path, select_by="loss")


@pytest.mark.fast
def test_missing_mft_eval_names_the_extra(llama_base, data, tmp_path, monkeypatch):
    from mft_train.problem_eval import ProblemSets

    monkeypatch.setitem(sys.modules, "mft_eval", None)  # as if mft-eval were not installed
    with pytest.raises(ConfigError, match=r"needs mft-eval") as info:
        ProblemSets.load(settings(llama_base, data, tmp_path), llama_base, None, tmp_path)
    assert "mft-train[eval]" in info.value.fix
