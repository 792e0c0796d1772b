"""The whole chain, cut down (`run.py --quick`), then every stage's output loaded with plain
transformers / peft / datasets in a fresh interpreter that never imports mft."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
STAGES = [
    "base",
    "pretrain",
    "data",
    "tok",
    "train",
    "merged",
    "quant",
    "eval-demo-base",
    "eval-demo-merged",
    "eval-demo-quant",
    "eval-humaneval-merged",
]

CHECK = textwrap.dedent("""
    import json, sys
    from pathlib import Path
    import torch
    from datasets import load_from_disk
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    run = Path(sys.argv[1])
    ids = torch.tensor([[5, 6, 7, 8]])
    for folder in ("base", "pretrain/model", "merged"):
        model = AutoModelForCausalLM.from_pretrained(run / folder)
        assert torch.isfinite(model(ids).logits).all(), folder
        assert AutoTokenizer.from_pretrained(run / folder).chat_template, folder
    base = AutoModelForCausalLM.from_pretrained(run / "pretrain/model")
    tuned = PeftModel.from_pretrained(base, run / "train/adapter")
    assert torch.isfinite(tuned(ids).logits).all()
    quant = AutoModelForCausalLM.from_pretrained(run / "quant", device_map="cpu")
    assert torch.isfinite(quant(ids).logits.float()).all()
    rows = load_from_disk(str(run / "tok/train"))
    assert {"input_ids", "labels", "position_ids", "task_ids"} <= set(rows.column_names) and len(rows) > 0
    for line in (run / "data/codegen/train.jsonl").read_text().splitlines():
        assert json.loads(line)["chat_rounds"][-1]["role"] == "assistant"
    for name in ("eval-demo-base", "eval-demo-merged", "eval-demo-quant", "eval-humaneval-merged"):
        summary = json.loads((run / name / "summary.json").read_text())
        assert 0.0 <= summary["pass_at_k"]["pass@1"] <= 1.0, name
    leaked = [m for m in sys.modules if m.startswith("mft")]
    assert not leaked, leaked
    print("OK")
""")


def test_quick_pipeline_end_to_end(tmp_path):
    run = tmp_path / "pipeline"
    cmd = [sys.executable, str(REPO / "examples" / "pipeline" / "run.py"), "--quick", "--run-dir", str(run)]
    first = subprocess.run(cmd, capture_output=True, text=True, timeout=1500)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-5000:]
    assert "warning: deprecated:" not in first.stdout + first.stderr  # current setting names
    for stage in STAGES:
        assert (run / stage / "manifest.json").is_file(), stage
    report = (run / "report.md").read_text()
    assert "pass@1" in report and "Merge check" in report and "Quantization" in report
    check = subprocess.run(
        [sys.executable, "-c", CHECK, str(run)],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert check.returncode == 0 and "OK" in check.stdout, check.stderr[-3000:]
    # a second run redoes nothing: every tool finds its finished folder
    manifests = {s: json.loads((run / s / "manifest.json").read_text())["id"] for s in STAGES}
    second = subprocess.run(cmd, capture_output=True, text=True, timeout=1500)
    assert second.returncode == 0, second.stderr[-3000:]
    assert {s: json.loads((run / s / "manifest.json").read_text())["id"] for s in STAGES} == manifests


def test_demo_heldout_problems_are_unseen_and_solvable(tmp_path):
    # The pipeline's proof rests on this: no held-out docstring (with its constant) or name occurs in training.
    import re

    sys.path.insert(0, str(REPO / "examples" / "pipeline"))
    from demo_data import generate

    files = generate(tmp_path, n_codegen=600, n_explain=300, n_bugfix=300, n_heldout=40)
    train = "".join(files[t].read_text() for t in ("codegen", "explain", "bugfix"))
    for line in files["heldout"].read_text().splitlines():
        problem = json.loads(line)
        doc = problem["prompt"].split('"""')[1].strip()
        assert doc not in train, doc
        assert not re.search(rf"\b{problem['entry_point']}\b", train), problem["entry_point"]
        program = problem["prompt"] + problem["canonical_solution"] + "\n" + problem["test"]
        exec(program + f"\ncheck({problem['entry_point']})\n", {})
        # the tests tell the right constant from a near miss (no pass for a wrong one)
        wrong = re.sub(r"\d+", lambda m: str(int(m.group()) + 1), problem["canonical_solution"], count=1)
        wrong = wrong if wrong != problem["canonical_solution"] else re.sub(r"'(\w*)'", r"'\1x'", wrong)
        with pytest.raises(AssertionError):
            exec(problem["prompt"] + wrong + "\n" + problem["test"] + f"\ncheck({problem['entry_point']})\n", {})


def test_feedback_problems_are_training_family_and_disjoint_from_every_demo_name(tmp_path):
    # examples/feedback learns from these: new names (never trained on, held out or dev), training constants only
    import re

    sys.path.insert(0, str(REPO / "examples" / "pipeline"))
    from demo_data import (
        FAMILIES,
        HELDOUT_CONSTANTS,
        HELDOUT_SMALL,
        HELDOUT_WORDS,
        family_of,
        generate,
        names_in,
        write_fresh_problems,
    )

    raw = tmp_path / "raw"
    generate(raw, n_codegen=600, n_explain=300, n_bugfix=300, n_heldout=40, n_dev=8)
    used = names_in(raw)
    held = {json.loads(l)["entry_point"] for l in (raw / "heldout.jsonl").read_text().splitlines()}
    assert held and held <= used and len(used) > 1000  # names_in sees the held-out and training names
    problems = [json.loads(l) for l in write_fresh_problems(tmp_path / "f.jsonl", 64, 0, used).read_text().splitlines()]
    again = write_fresh_problems(tmp_path / "g.jsonl", 64, 0, used).read_text()
    assert len(problems) == 64 and (tmp_path / "f.jsonl").read_text() == again  # deterministic for a seed
    assert write_fresh_problems(tmp_path / "h.jsonl", 64, 1, used).read_text() != again
    for problem in problems:
        assert problem["entry_point"] not in used
        body = problem["canonical_solution"]
        numbers = {int(n) for n in re.findall(r"\d+", body)}
        assert not numbers & HELDOUT_CONSTANTS, body
        if "s[" in body or "s *" in body or "count" in body:
            assert not numbers & HELDOUT_SMALL, body
        assert not any(f"'{w}'" in body for w in HELDOUT_WORDS), body
        exec(problem["prompt"] + body + "\n" + problem["test"] + f"\ncheck({problem['entry_point']})\n", {})
    # the round reports passes per family: every problem maps to its family's docstring with the constant as N
    families = {family_of(p["prompt"]) for p in problems}
    assert families <= {f.doc("N").replace("'N'", "N") for f in FAMILIES} and len(families) >= 10, families


def test_pipeline_with_a_real_model_and_config_skips_the_tiny_base(tmp_path, monkeypatch):
    # `make pipeline ARGS="--model M --config C"`: the same stages with M as the base and C's settings
    sys.path.insert(0, str(REPO / "examples" / "pipeline"))
    import run as pipeline_run

    calls = []
    pipeline = pipeline_run.Pipeline(
        tmp_path, pipeline_run.QUICK, "Org/Coder-7B", REPO / "examples" / "configs" / "qwen2.5-coder-7b-lora.yaml"
    )
    monkeypatch.setattr(pipeline, "sh", lambda stage, *args: calls.append((stage, [str(a) for a in args])))
    for stage in (pipeline.base, pipeline.data, pipeline.train, pipeline.evaluate):
        stage()
    stages = dict(calls)
    assert "init-base" not in stages and "pretrain" not in stages
    tok = stages["tokenize"]
    assert tok[tok.index("--tokenizer") + 1] == "Org/Coder-7B" and tok[tok.index("--seq-len") + 1] == "4096"
    train = stages["train"]
    assert train[2].endswith("qwen2.5-coder-7b-lora.yaml") and "model=Org/Coder-7B" in train
    assert not any(a.startswith("epochs=") for a in train)  # the config's own epochs
    assert stages["eval-demo-base"][2] == "Org/Coder-7B"


@pytest.mark.slow
def test_feedback_round_end_to_end_on_the_quick_pipeline(tmp_path):
    """examples/feedback on a --quick pipeline: every stage's folder, lineage to the eval folder, every arm merged.
    A quick model passes nothing, and the round then stops at from-eval with its clear error; so the sampled file is
    re-scored by the sandbox with the reference solution in half the samples (plumbing, not a result)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    pipeline, run = tmp_path / "pipeline", tmp_path / "feedback"
    quick = [sys.executable, str(REPO / "examples" / "pipeline" / "run.py"), "--quick", "--run-dir", str(pipeline)]
    assert subprocess.run(quick, capture_output=True, text=True, timeout=1500, env=env).returncode == 0
    cmd = [sys.executable, str(REPO / "examples" / "feedback" / "run.py"), "--quick", "--pipeline", str(pipeline),
           "--run-dir", str(run), "--seeds", "0"]  # fmt: skip
    first = subprocess.run(cmd, capture_output=True, text=True, timeout=1500, env=env)
    seed = run / "seed-0"
    if first.returncode != 0:  # nothing passed: the error names the fix; give half the samples the reference
        assert "no problem has a passing sample" in first.stderr + first.stdout
        problems = {json.loads(l)["task_id"]: json.loads(l) for l in (seed / "fresh.jsonl").read_text().splitlines()}
        rows = [json.loads(l) for l in (seed / "samples" / "samples.jsonl").read_text().splitlines()]
        for r in rows:
            if r["sample"] % 2 == 0:
                r["completion"] = r["raw"] = problems[r["task_id"]]["canonical_solution"]
        (tmp_path / "s.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        score = [str(Path(sys.executable).parent / "mft-eval"), "score", str(tmp_path / "s.jsonl"), "--problems",
                 str(seed / "fresh.jsonl"), "--out", str(seed / "samples"), "--overwrite"]  # fmt: skip
        assert subprocess.run(score, capture_output=True, text=True, timeout=600, env=env).returncode == 0
        second = subprocess.run(cmd, capture_output=True, text=True, timeout=1500, env=env)
        assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    assert "warning: deprecated:" not in first.stdout + first.stderr
    round_ = json.loads((run / "results.json").read_text())["rounds"][0]
    assert set(round_["arms"]) == {"before", "rft", "dpo", "rpo", "rft+dpo"}
    for kind in ("sft", "pairs"):
        assert round_["data"][kind]["eval"] == str(seed / "samples") and round_["data"][kind]["records"] > 0
    for arm in ("rft", "dpo", "rpo", "rft+dpo"):
        assert (seed / f"merged-{arm}" / "manifest.json").is_file()
        assert 0.0 <= round_["arms"][arm]["heldout"]["pass@1"] <= 1.0
    assert round_["arms"]["dpo"]["train"]["last"]["rewards"]["prefs"]["pairs"] > 0  # the DPO arm trained on pairs
    assert round_["arms"]["rft"]["train"]["last"]["rewards"] is None
    merged_rft = json.loads((seed / "train-rft+dpo" / "manifest.json").read_text())
    assert str(seed / "merged-rft") in json.dumps(merged_rft)  # RFT then DPO starts from the RFT model
