import gzip
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from helpers import write_jsonl
from mft_core.errors import ConfigError, InputError
from mft_core.manifest import read_manifest
from mft_data.api import FormatConfig, format_task
from mft_data.cli import app
from typer.testing import CliRunner

pytestmark = pytest.mark.fast  # unit/contract tier: `make test-fast`

SAMPLES = {
    "mftcoder": {
        "chat_rounds": [
            {"role": "system", "content": "s"},
            {"role": "human", "content": "q"},
            {"role": "bot", "content": "a"},
        ]
    },
    "openai": {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]},
    "sharegpt": {"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]},
    "alpaca": {"instruction": "q", "input": "ctx", "output": "a"},
    "evol": {"instruction": "q", "output": "a"},
    "prompt/answer": {"prompt": "q", "answer": "a"},
    "prompt/response": {"prompt": "q", "response": "a"},
    "question/answer": {"question": "q", "answer": "a"},
    "input/output": {"input": "q", "output": "a"},
    "instruction/response": {"instruction": "q", "response": "a"},
    "query/response": {"query": "q", "response": "a"},
    "text": {"text": "print('hi')"},
}


def run(tmp_path, files, task="t", **kw):
    return format_task(FormatConfig(inputs=tuple(map(str, files)), task=task, out=str(tmp_path / "out"), **kw))


def records(tmp_path, task="t"):
    return [json.loads(x) for x in (tmp_path / "out" / task / "data.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_every_format_is_detected(tmp_path, name):
    run(tmp_path, [write_jsonl(tmp_path / "in.jsonl", [SAMPLES[name]])])
    rec = records(tmp_path)[0]
    roles = [r["role"] for r in rec["chat_rounds"]]
    if name == "text":
        assert rec["chat_rounds"] == [{"role": "assistant", "content": "print('hi')"}]
    else:
        assert roles[-2:] == ["user", "assistant"] and rec["chat_rounds"][-1]["content"] == "a"
    if name == "alpaca":
        assert rec["chat_rounds"][0]["content"] == "q\n\nctx"
    assert rec["task"] == "t" and rec["id"]


def test_containers_gz_json_array_parquet_csv(tmp_path):
    rows = [SAMPLES["openai"], SAMPLES["alpaca"]]
    with gzip.open(tmp_path / "a.jsonl.gz", "wt") as f:
        f.write("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "b.json").write_text(json.dumps(rows))
    pq.write_table(pa.Table.from_pylist([{"prompt": "q", "answer": "a"}] * 2), tmp_path / "c.parquet")
    (tmp_path / "d.csv").write_text('question,answer\nq1,a1\n"q2\nline two",a2\n')
    result = run(tmp_path, [tmp_path / "a.jsonl.gz", tmp_path / "b.json", tmp_path / "c.parquet", tmp_path / "d.csv"])
    assert result.records == 8
    recs = records(tmp_path)
    assert recs[-1]["chat_rounds"][0]["content"] == "q2\nline two" and recs[-1]["meta"]["line"] == 3
    assert len({r["id"] for r in recs}) == 8


def test_bom_crlf_blank_lines_trailing_whitespace(tmp_path):
    body = "\ufeff" + json.dumps(SAMPLES["sharegpt"]) + "  \r\n\r\n   \r\n" + json.dumps(SAMPLES["sharegpt"]) + "\t\r\n"
    (tmp_path / "in.jsonl").write_bytes(body.encode("utf-8"))
    assert run(tmp_path, [tmp_path / "in.jsonl"]).records == 2


def test_field_map_and_explicit_format(tmp_path):
    f = write_jsonl(tmp_path / "in.jsonl", [{"problem": "q", "solution": "a"}])
    with pytest.raises(InputError, match="cannot tell the format") as info:
        run(tmp_path, [f])
    assert "problem" in str(info.value) and "--from" in info.value.fix
    run(tmp_path, [f], field_map=("problem=prompt", "solution=answer"))
    assert records(tmp_path)[0]["chat_rounds"][1]["content"] == "a"


def test_tasks_accumulate_and_rerun_is_up_to_date(tmp_path):
    f = write_jsonl(tmp_path / "in.jsonl", [SAMPLES["openai"]] * 3)
    run(tmp_path, [f], task="one")
    run(tmp_path, [f], task="two")
    summary = read_manifest(tmp_path / "out", "formatted-data").summary
    assert {k: v["records"] for k, v in summary["tasks"].items()} == {"one": 3, "two": 3}
    assert run(tmp_path, [f], task="one").up_to_date
    write_jsonl(f, [SAMPLES["openai"]] * 4)
    with pytest.raises(ConfigError, match="--overwrite"):
        run(tmp_path, [f], task="one")
    assert run(tmp_path, [f], task="one", overwrite=True).records == 4


BAD_LINES = [
    ('{"messages": [', "not valid JSON"),
    ('{"messages": [{"role": "user", "content": 5}, {"role": "assistant", "content": "a"}]}', "messages[0].content"),
    ('{"messages": [{"role": "wizard", "content": "q"}]}', "(field messages[0].role): unknown role"),
    ('{"messages": [{"role": "user"}]}', "messages[0].content"),
    ('{"instruction": 3, "output": "a"}', "'instruction'"),
]


@pytest.mark.parametrize("line,expected", BAD_LINES)
def test_bad_line_names_file_line_field(tmp_path, line, expected):
    f = tmp_path / "in.jsonl"
    f.write_text(json.dumps(SAMPLES["openai"]) + "\n" + line + "\n")
    with pytest.raises(InputError) as info:
        run(tmp_path, [f])
    assert f"{f}:2" in str(info.value) and expected in str(info.value)
    assert not (tmp_path / "out" / "manifest.json").exists() and not (tmp_path / "out" / "t").exists()


def test_non_utf8_line(tmp_path):
    f = tmp_path / "in.jsonl"
    f.write_bytes(json.dumps(SAMPLES["openai"]).encode() + b"\n" + b'{"prompt": "\xff\xfe", "answer": "a"}\n')
    with pytest.raises(InputError) as info:
        run(tmp_path, [f])
    assert str(info.value).count("in.jsonl:2") == 1 and "in.jsonl:2: not UTF-8" in str(info.value)


def test_json_array_rows_are_named_by_item(tmp_path):
    f = tmp_path / "in.json"
    f.write_text(json.dumps([SAMPLES["openai"], {"instruction": 3, "output": "a"}]))
    with pytest.raises(InputError, match=r"in.json:item 2 \(field instruction\)"):
        run(tmp_path, [f])


def test_skip_invalid_writes_rejects(tmp_path):
    f = tmp_path / "in.jsonl"
    f.write_text("\n".join([json.dumps(SAMPLES["openai"])] + [line for line, _ in BAD_LINES]) + "\n")
    result = run(tmp_path, [f], skip_invalid=True)
    assert (result.records, result.rejected) == (1, len(BAD_LINES))
    rejects = [json.loads(x) for x in (tmp_path / "out" / "t" / "rejects.jsonl").read_text().splitlines()]
    assert [r["line"] for r in rejects] == list(range(2, 2 + len(BAD_LINES)))
    assert read_manifest(tmp_path / "out").summary["tasks"]["t"]["rejected"] == len(BAD_LINES)


def test_empty_input_is_an_error(tmp_path):
    (tmp_path / "in.jsonl").write_text("\n\n")
    with pytest.raises(InputError, match="empty input"):
        run(tmp_path, [tmp_path / "in.jsonl"])


def test_cli_exit_codes(tmp_path):
    f = tmp_path / "in.jsonl"
    f.write_text('{"messages": [\n')
    res = CliRunner().invoke(app, ["format", str(f), "--task", "t", "--out", str(tmp_path / "out")])
    assert res.exit_code == 3
    res = CliRunner().invoke(app, ["format", str(f), "--task", "bad name", "--out", str(tmp_path / "out")])
    assert res.exit_code == 2
    f.write_text(json.dumps(SAMPLES["openai"]) + "\n")
    res = CliRunner().invoke(app, ["format", str(f), "--task", "t", "--out", str(tmp_path / "out")])
    assert res.exit_code == 0, res.output


def test_from_overrides_detection(tmp_path):
    # a row carrying both an OpenAI `messages` list and a prompt/answer pair: auto picks openai, --from wins
    row = {
        "messages": [{"role": "user", "content": "m?"}, {"role": "assistant", "content": "m!"}],
        "prompt": "p?",
        "answer": "p!",
    }
    f = write_jsonl(tmp_path / "in.jsonl", [row])
    run(tmp_path, [f], task="auto")
    run(tmp_path, [f], task="forced", source_format="prompt-answer")
    read = lambda t: json.loads((tmp_path / "out" / t / "data.jsonl").read_text())["chat_rounds"][-1]["content"]
    assert (read("auto"), read("forced")) == ("m!", "p!")
