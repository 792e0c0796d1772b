"""Nothing is dropped without a word: raw-text skips and tails, CSV extra cells, --map collisions, broken .gz."""

import gzip
import json
import random
from pathlib import Path

import numpy as np
import pytest
from helpers import write_jsonl
from mft_core.errors import InputError
from mft_core.manifest import read_manifest
from mft_data.api import FormatConfig, TextTokenizeConfig, format_task, load_tokenized, tokenize_text_files
from mft_data.cli import app
from mft_data.text_data import DEFAULT_SKIP_DIRS
from typer.testing import CliRunner

pytestmark = pytest.mark.fast  # unit/contract tier: `make test-fast`


def run(tmp_path, files, **kw):
    return format_task(FormatConfig(inputs=tuple(map(str, files)), task="t", out=str(tmp_path / "out"), **kw))


def records(tmp_path):
    return [json.loads(x) for x in (tmp_path / "out" / "t" / "data.jsonl").read_text().splitlines()]


# ---- CSV cells beyond the header --------------------------------------------------------------------------------


def test_csv_cells_beyond_the_header_are_an_error(tmp_path):
    f = tmp_path / "in.csv"
    f.write_text("prompt,answer\nq1,a1\nq2,a2,lost cell\n")
    with pytest.raises(InputError) as info:
        run(tmp_path, [f])
    assert f"{f}:3" in str(info.value) and "1 cell beyond the header" in str(info.value)
    assert "--allow-extra-cells" in info.value.fix
    res = CliRunner().invoke(app, ["format", str(f), "--task", "t", "--out", str(tmp_path / "cli")])
    assert res.exit_code == 3 and "in.csv:3" in res.output
    # asked for: the extra cells are dropped and the rows kept
    assert run(tmp_path, [f], allow_extra_cells=True).records == 2
    res = CliRunner().invoke(
        app, ["format", str(f), "--task", "t", "--out", str(tmp_path / "cli"), "--allow-extra-cells"]
    )
    assert res.exit_code == 0, res.output


# ---- --map onto an existing field -------------------------------------------------------------------------------


def test_map_onto_an_existing_field_is_an_error(tmp_path):
    f = write_jsonl(tmp_path / "in.jsonl", [{"prompt": "q", "answer": "kept?"}, {"prompt": "q", "solution": "s"}])
    g = write_jsonl(tmp_path / "in2.jsonl", [{"prompt": "q", "solution": "s", "answer": "old"}])
    with pytest.raises(InputError) as info:
        run(tmp_path, [f, g], field_map=("solution=answer",))
    assert f"{g}:1" in str(info.value) and "'answer'" in str(info.value) and "--map-overwrite" in info.value.fix
    res = CliRunner().invoke(
        app, ["format", str(g), "--task", "t", "--out", str(tmp_path / "cli"), "--map", "solution=answer"]
    )
    assert res.exit_code == 3 and "in2.jsonl:1" in res.output
    run(tmp_path, [g], field_map=("solution=answer",), map_overwrite=True)
    assert records(tmp_path)[0]["chat_rounds"][-1]["content"] == "s"


# ---- a truncated .jsonl.gz ----------------------------------------------------------------------------------------


def test_truncated_gzip_exits_3_naming_file_and_line(tmp_path):
    rng = random.Random(0)
    rows = [{"prompt": f"q{i}", "answer": "".join(rng.choice("abcdefgh ") for _ in range(200))} for i in range(400)]
    whole = tmp_path / "whole.jsonl.gz"
    with gzip.open(whole, "wt") as handle:
        handle.write("".join(json.dumps(r) + "\n" for r in rows))
    data = whole.read_bytes()
    cut = tmp_path / "cut.jsonl.gz"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError) as info:
        run(tmp_path, [cut])
    message = str(info.value)
    assert f"{cut}:" in message and "ends early" in message and "byte" in message
    line = int(message.split(f"{cut}:", 1)[1].split(":", 1)[0])
    assert 1 < line < len(rows)
    res = CliRunner().invoke(app, ["format", str(cut), "--task", "t", "--out", str(tmp_path / "cli")])
    assert res.exit_code == 3, res.output
    assert "Aborted" not in res.output and f"cut.jsonl.gz:{line}" in res.output
    assert not (tmp_path / "cli").exists()


@pytest.mark.parametrize("name", ["cut.json.gz", "cut.csv.gz"])
def test_truncated_gzip_of_other_containers(tmp_path, name):
    rng = random.Random(1)
    rows = [{"prompt": f"q{i}", "answer": "".join(rng.choice("abcdefgh ") for _ in range(200))} for i in range(200)]
    body = (
        json.dumps(rows)
        if name.endswith(".json.gz")
        else "prompt,answer\n" + "".join(f"{r['prompt']},{r['answer']}\n" for r in rows)
    )
    data = gzip.compress(body.encode())
    f = tmp_path / name
    f.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match=r"ends early.*byte"):
        run(tmp_path, [f])


# ---- raw-text mode (`mft-train pretrain`) ---------------------------------------------------------------------------


def _tokens(tok, text):
    return tok.backend_tokenizer.encode(text + tok.eos_token, add_special_tokens=False).ids


def test_raw_text_counts_and_lists_everything_it_leaves_out(tmp_path, llama_base, capsys):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(llama_base)
    src = tmp_path / "src"
    (src / "pkg" / "tests").mkdir(parents=True)
    (src / "test").mkdir()
    good = "def f(x):\n    return x + 1\n" * 5
    (src / "pkg" / "a.py").write_text(good)
    (src / "pkg" / "bad.py").write_bytes(b"x = 1\n\xff\xfe\n")
    (src / "pkg" / "empty.py").write_text("")  # only its EOS: one token, nothing to predict
    (src / "pkg" / "tests" / "test_a.py").write_text("assert True\n")
    (src / "test" / "b.py").write_text("b = 2\n")
    seq_len = len(_tokens(tok, good)) - 1  # a.py is seq_len + 1 tokens: its tail piece would be its EOS alone
    out = tmp_path / "tok"
    manifest = tokenize_text_files(
        TextTokenizeConfig(sources=(str(src),), tokenizer=str(llama_base), out=str(out), seq_len=seq_len, valid_ratio=0)
    )
    s = manifest.summary
    assert s["documents"] == 2  # a.py and empty.py were read
    assert s["skipped_files"] == [{"file": str(src / "pkg" / "bad.py"), "reason": "not UTF-8 (byte 0xff at offset 6)"}]
    assert s["skipped_dirs"] == {
        "names": sorted(DEFAULT_SKIP_DIRS),
        "folders": [str(src / "pkg" / "tests"), str(src / "test")],
    }
    text = s["tasks"]["train"]["text"]
    assert text["dropped"] == 1 and text["dropped_ids"] == [str(src / "pkg" / "empty.py")]
    # every token of a.py but its first is a target exactly once: its EOS is not lost
    assert text["supervised_tokens"] == len(_tokens(tok, good)) - 1
    labels = np.concatenate([np.asarray(r["labels"]) for r in load_tokenized(out).train])
    assert int((labels == tok.eos_token_id).sum()) == 1
    assert read_manifest(out).summary == s
    line = capsys.readouterr().err
    assert "2 documents" in line and "1 file skipped" in line and "bad.py" in line
    assert "2 folders skipped" in line and "1 document dropped" in line and "empty.py" in line


def test_raw_text_unreadable_file_is_listed(tmp_path, llama_base, monkeypatch):
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.py").write_text("a = 1\n" * 10)
    (src / "locked.py").write_text("b = 2\n")
    real = Path.read_bytes

    def read_bytes(self):
        if self.name == "locked.py":
            raise PermissionError(13, "Permission denied", str(self))
        return real(self)

    monkeypatch.setattr(Path, "read_bytes", read_bytes)
    manifest = tokenize_text_files(
        TextTokenizeConfig(sources=(str(src),), tokenizer=str(llama_base), out=str(tmp_path / "tok"), valid_ratio=0)
    )
    (skipped,) = manifest.summary["skipped_files"]
    assert skipped["file"] == str(src / "locked.py") and "Permission denied" in skipped["reason"]


def test_raw_text_folder_skip_is_configurable(tmp_path, llama_base):
    assert {"test", "tests"} <= set(DEFAULT_SKIP_DIRS) == set(TextTokenizeConfig().skip_dirs)
    src = tmp_path / "src"
    (src / "tests").mkdir(parents=True)
    (src / "a.py").write_text("a = 1\n" * 10)
    (src / "tests" / "t.py").write_text("t = 1\n" * 10)
    manifest = tokenize_text_files(
        TextTokenizeConfig(
            sources=(str(src),), tokenizer=str(llama_base), out=str(tmp_path / "tok"), valid_ratio=0, skip_dirs=()
        )
    )
    assert manifest.summary["documents"] == 2 and manifest.summary["skipped_dirs"]["folders"] == []
    assert manifest.summary["skipped_dirs"]["names"] == []
