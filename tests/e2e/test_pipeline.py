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
