"""Preference folders: MFTCoder's chosen/rejected layout formatted, validated and tokenized with the same masks."""

from __future__ import annotations

import json

import numpy as np
import pytest
from helpers import format_folder, pair_folder, pair_rows, write_jsonl
from mft_core.errors import InputError
from mft_core.manifest import read_manifest
from mft_data.api import FormatConfig, TokenizeConfig, decode_supervised, format_task, load_tokenized, tokenize_folder

pytestmark = pytest.mark.fast


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_pairs_sit_side_by_side_and_only_each_final_answer_is_supervised(make_base, family, tmp_path):
    from transformers import AutoTokenizer

    base = make_base(family)
    tok_dir = pair_folder(tmp_path, base)
    data = load_tokenized(tok_dir)
    assert read_manifest(tok_dir).summary["preference"] is True
    tokenizer = AutoTokenizer.from_pretrained(base)
    rows = {r["id"]: r for r in pair_rows(12) + pair_rows(8, 3)}
    answers = {(side, turn["content"]) for r in rows.values() for side in ("chosen", "rejected")
               for turn in r[side][-1:]}  # fmt: skip
    seen = 0
    for split in data.splits.values():
        for row in split:
            lens = row["seq_lens"]
            assert len(lens) % 2 == 0, "a row holds whole pairs"
            starts = np.concatenate([[0], np.cumsum(lens)])
            assert sum(lens) == len(row["input_ids"]) <= data.seq_len
            for k in range(len(lens)):
                a, b = starts[k], starts[k + 1]
                assert row["position_ids"][a:b] == list(range(b - a))  # each side attends as its own record
                spans = decode_supervised(tokenizer, row["input_ids"][a:b], row["labels"][a:b])
                assert len(spans) == 1, "only the final answer is supervised (not the shared earlier turn)"
                text = spans[0].replace(tokenizer.eos_token, "").strip()
                side = "chosen" if k % 2 == 0 else "rejected"
                assert (side, text) in answers
                assert "hi" != text and "Say hi." not in spans[0]
            for k in range(0, len(lens), 2):  # the two sides of a pair share the prompt tokens exactly
                c = row["input_ids"][starts[k] : starts[k + 1]]
                r = row["input_ids"][starts[k + 1] : starts[k + 2]]
                first_c = row["labels"][starts[k] : starts[k + 1]]
                cut = next(i for i, lab in enumerate(first_c) if lab != -100)
                assert c[:cut] == r[:cut]
                seen += 1
    assert seen == 20


def test_stock_datasets_reads_a_preference_folder(llama_base, tmp_path):
    from datasets import load_from_disk

    tok_dir = pair_folder(tmp_path, llama_base)
    train = load_from_disk(str(tok_dir / "train"))
    assert set(train.column_names) >= {"input_ids", "labels", "seq_lens"} and len(train) > 0
    raw = [json.loads(line) for line in (tmp_path / "pairs-data" / "gen" / "train.jsonl").read_text().splitlines()]
    assert all(set(r) == {"id", "task", "chosen", "rejected", "meta"} for r in raw)


def test_a_pair_file_with_a_missing_side_names_the_line(tmp_path):
    rows = pair_rows(3)
    del rows[1]["rejected"]
    path = write_jsonl(tmp_path / "pairs.jsonl", rows)
    with pytest.raises(InputError, match=r"pairs.jsonl:2.*rejected"):
        format_task(FormatConfig(inputs=(str(path),), task="prefs", out=str(tmp_path / "d")))
    rows = pair_rows(3)
    rows[2]["rejected"][-1]["content"] = rows[2]["chosen"][-1]["content"]
    with pytest.raises(InputError, match=r"pairs.jsonl:3.*identical"):
        format_task(FormatConfig(inputs=(str(write_jsonl(path, rows)),), task="prefs", out=str(tmp_path / "d")))


def test_pairs_and_chat_records_in_one_folder_are_refused(llama_base, tmp_path):
    chat = [{"prompt": "Add 1", "answer": "def f(x):\n    return x + 1"}] * 3
    folder = format_folder(tmp_path / "mixed", {"prefs": pair_rows(4), "chat": chat})
    with pytest.raises(InputError, match="preference pairs but chat"):
        tokenize_folder(TokenizeConfig(folder=str(folder), tokenizer=str(llama_base), out=str(tmp_path / "t")))


def test_an_overlong_pair_is_dropped_whole_never_truncated(llama_base, tmp_path):
    rows = pair_rows(4)
    rows[0]["chosen"][-1]["content"] += "\n" + "    x = x + 1\n" * 60
    folder = format_folder(tmp_path / "long", {"prefs": rows})
    out = tmp_path / "t"
    tokenize_folder(
        TokenizeConfig(folder=str(folder), tokenizer=str(llama_base), out=str(out), seq_len=128, overlong="truncate")
    )
    tally = read_manifest(out).summary["tasks"]["train"]["prefs"]
    assert tally["dropped_ids"] == ["p0"] and tally["truncated"] == 0 and tally["records"] == 3
    with pytest.raises(InputError, match="both sides of a pair go in one row"):
        tokenize_folder(TokenizeConfig(folder=str(folder), tokenizer=str(llama_base), out=str(tmp_path / "e"),
                                       seq_len=128, overlong="error"))  # fmt: skip
