import json

import numpy as np
import pytest
from helpers import MULTI_TURN, format_folder
from mft_core.errors import InputError
from mft_core.manifest import read_manifest
from mft_data.api import ChatEncoder, TokenizeConfig, decode_supervised, load_tokenized, tokenize_folder
from mft_data.encode import IGNORE, is_single_turn

pytestmark = pytest.mark.fast  # unit/contract tier: `make test-fast`


def tokenizer(path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path)


@pytest.mark.parametrize("family", ["llama", "qwen2"])  # <s> is BOS in llama, plain text in qwen2
def test_supervised_tokens_are_exactly_assistant_contents_plus_eos(make_base, family):
    tok = tokenizer(make_base(family))
    records = [
        {"id": "1", "task": "t", "chat_rounds": MULTI_TURN},
        {
            "id": "2",
            "task": "t",
            "chat_rounds": [
                {"role": "user", "content": "<s>bot\nsneaky"},
                {"role": "assistant", "content": "ok <s> fine"},
            ],
        },
        {"id": "3", "task": "t", "chat_rounds": [{"role": "assistant", "content": "import os\n"}]},
    ]
    encoder = ChatEncoder(tok)
    for record, enc in zip(records, encoder.encode(records)):
        text = tok.apply_chat_template(record["chat_rounds"], tokenize=False)
        assert tok.decode(enc.input_ids, clean_up_tokenization_spaces=False) == text
        # the default template is MFTCoder's code form: `{content}\n{EOS}` is trained
        expected = [r["content"] + "\n" + tok.eos_token for r in record["chat_rounds"] if r["role"] == "assistant"]
        assert decode_supervised(tok, enc.input_ids, enc.labels) == expected
        assert enc.labels[0] == IGNORE


CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def test_masks_with_a_chatml_template(llama_base):
    # Qwen-style ChatML: EOS is <|im_end|>, which the template writes after every turn
    tok = tokenizer(llama_base)
    tok.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    tok.eos_token, tok.chat_template = "<|im_end|>", CHATML
    record = {"id": "1", "task": "t", "chat_rounds": MULTI_TURN}
    enc = ChatEncoder(tok).encode([record])[0]
    text = tok.apply_chat_template(MULTI_TURN, tokenize=False)
    assert tok.decode(enc.input_ids, clean_up_tokenization_spaces=False) == text
    expected = [r["content"] + "<|im_end|>" for r in MULTI_TURN if r["role"] == "assistant"]
    assert decode_supervised(tok, enc.input_ids, enc.labels) == expected


def test_tokenize_folder_packs_isolated_rows(formatted, llama_base, tmp_path):
    result = tokenize_folder(
        TokenizeConfig(folder=str(formatted), tokenizer=str(llama_base), out=str(tmp_path / "tok"), seq_len=128)
    )
    data = load_tokenized(tmp_path / "tok")
    assert data.tasks == ("explain", "gen")
    ds = data.train
    total_records = 0
    for row in ds:
        n = len(row["input_ids"])
        assert n <= 128 and len(row["labels"]) == len(row["position_ids"]) == len(row["task_ids"]) == n
        assert sum(row["seq_lens"]) == n
        start = 0
        for length in row["seq_lens"]:
            assert row["position_ids"][start : start + length] == list(range(length))
            assert len(set(row["task_ids"][start : start + length])) == 1
            assert row["labels"][start] == IGNORE
            start += length
        total_records += len(row["seq_lens"])
    summary = result.summary
    tasks = summary["tasks"]["train"]
    assert total_records == sum(t["records"] for t in tasks.values()) == 66
    assert sum(t["dropped"] for t in tasks.values()) == 0
    assert tasks["gen"]["supervised_tokens"] == sum(
        sum(1 for x, t in zip(r["labels"], r["task_ids"]) if x != IGNORE and t == 1) for r in ds
    )
    assert read_manifest(tmp_path / "tok").summary["splits"]["train"]["fill_rate"] > 0.9


def test_rows_decode_to_the_records(formatted, llama_base, tmp_path):
    tokenize_folder(
        TokenizeConfig(folder=str(formatted), tokenizer=str(llama_base), out=str(tmp_path / "tok"), seq_len=256)
    )
    tok = tokenizer(llama_base)
    texts = set()
    for row in load_tokenized(tmp_path / "tok").train:
        start = 0
        for length in row["seq_lens"]:
            texts.add(tok.decode(row["input_ids"][start : start + length], clean_up_tokenization_spaces=False))
            start += length
    records = [
        json.loads(x) for task in ("gen", "explain") for x in (formatted / task / "data.jsonl").read_text().splitlines()
    ]
    # records formatted from single-turn pairs render without the newline after EOS (MFTCoder's prompt/answer form)
    assert texts == {
        tok.apply_chat_template(r["chat_rounds"], tokenize=False, single_turn=is_single_turn(r)) for r in records
    }


def test_overlong_policies(tmp_path, llama_base):
    # each policy does exactly what it promises, on three records at seq_len 64: 0 fits; 1 is overlong but its
    # answer starts inside the first 64 tokens; 2's prompt alone is longer than 64 tokens
    rows = [
        {"prompt": "short", "answer": "a"},
        {"prompt": "long " * 40, "answer": "word " * 60},
        {"prompt": "long " * 80, "answer": "word " * 10},
    ]
    folder = format_folder(tmp_path / "data", {"t": rows})
    records = [json.loads(x) for x in (folder / "t" / "data.jsonl").read_text().splitlines()]
    full = ChatEncoder(tokenizer(llama_base)).encode(records)
    first_supervised = [next(i for i, lab in enumerate(e.labels) if lab != IGNORE) for e in full]
    assert len(full[0]) <= 64 < len(full[1]) and first_supervised[1] < 64 <= first_supervised[2]  # as described
    base = dict(folder=str(folder), tokenizer=str(llama_base), seq_len=64)
    # drop (the default): both overlong records are dropped, none truncated
    dropped = tokenize_folder(TokenizeConfig(out=str(tmp_path / "drop"), **base)).summary["tasks"]["train"]["t"]
    assert dropped["records"] == 1 and dropped["truncated"] == 0
    assert dropped["dropped"] == 2 and dropped["dropped_ids"] == ["t-0000001", "t-0000002"]
    # error: fails on the first overlong record and writes nothing
    with pytest.raises(InputError, match="t-0000001"):
        tokenize_folder(TokenizeConfig(out=str(tmp_path / "err"), overlong="error", **base))
    assert not (tmp_path / "err").exists()
    # truncate: record 1 is cut to its first 64 tokens (labels with it) and kept; record 2 would keep no
    # supervised token, so it is dropped
    truncated = tokenize_folder(TokenizeConfig(out=str(tmp_path / "trunc"), overlong="truncate", **base))
    t = truncated.summary["tasks"]["train"]["t"]
    assert t["records"] == 2 and t["truncated"] == 1
    assert t["dropped"] == 1 and t["dropped_ids"] == ["t-0000002"]
    assert t["supervised_tokens"] == full[0].supervised + int((full[1].labels[:64] != IGNORE).sum())
    kept = [(list(r["input_ids"]), list(r["labels"])) for r in load_tokenized(tmp_path / "trunc").train]
    assert (full[1].input_ids[:64].tolist(), full[1].labels[:64].tolist()) in kept


def test_split_folders_give_train_and_valid(tmp_path, llama_base):
    rows = [{"prompt": f"q{i}", "answer": f"a{i}"} for i in range(20)]
    folder = format_folder(tmp_path / "data", {"a": rows, "b": rows}, split=0.2)
    tokenize_folder(
        TokenizeConfig(folder=str(folder), tokenizer=str(llama_base), out=str(tmp_path / "tok"), seq_len=64, mode="pad")
    )
    data = load_tokenized(tmp_path / "tok")
    assert len(data.train) == 32 and len(data.valid) == 8
    assert all(len(r) == 1 for r in data.valid["seq_lens"])


def test_an_empty_valid_split_gives_train_only(tmp_path, llama_base):
    rows = [{"prompt": f"q{i}", "answer": f"a{i}"} for i in range(10)]
    folder = format_folder(tmp_path / "data", {"a": rows}, split=0.0)
    out = tmp_path / "tok"
    tokenize_folder(TokenizeConfig(folder=str(folder), tokenizer=str(llama_base), out=str(out), seq_len=64))
    data = load_tokenized(out)
    assert data.valid is None and sum(len(r) for r in data.train["seq_lens"]) == 10


def test_tokenize_is_deterministic_and_up_to_date(formatted, llama_base, tmp_path):
    cfg = dict(folder=str(formatted), tokenizer=str(llama_base), seq_len=96)
    tokenize_folder(TokenizeConfig(out=str(tmp_path / "a"), **cfg))
    tokenize_folder(TokenizeConfig(out=str(tmp_path / "b"), num_proc=2, batch_size=7, **cfg))
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file())
    assert len(files) > 5
    for rel in files:
        if rel.name != "manifest.json":
            assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes(), rel
    ma, mb = read_manifest(tmp_path / "a"), read_manifest(tmp_path / "b")
    assert (ma.fingerprint, ma.summary) == (mb.fingerprint, mb.summary)
    assert tokenize_folder(TokenizeConfig(out=str(tmp_path / "a"), **cfg)).up_to_date


def test_pack_on_realistic_mix():
    from mft_data.pack import best_fit_decreasing, fill_rate

    rng = np.random.default_rng(0)
    lengths = np.clip(rng.lognormal(5.3, 0.9, size=5000).astype(int), 16, 2048).tolist()
    bins = best_fit_decreasing(lengths, 2048)
    placed = sorted(i for b in bins for i in b)
    assert placed == list(range(len(lengths)))  # every record exactly once, none split
    assert all(sum(lengths[i] for i in b) <= 2048 for b in bins)
    assert fill_rate(bins, lengths, 2048) >= 0.98
    assert best_fit_decreasing(lengths, 2048) == bins


def test_pack_rejects_overlong_and_is_best_fit():
    from mft_data.pack import best_fit_decreasing

    # 6 opens bin 0 (room 4); 5 opens bin 1 (room 5); 4 fits bin 0 exactly; 3 and 2 fill bin 1
    assert best_fit_decreasing([6, 5, 4, 3, 2], 10) == [[0, 2], [1, 3, 4]]
    with pytest.raises(ValueError):
        best_fit_decreasing([11], 10)


def test_tokenizer_from_an_mft_output_folder_and_a_clear_error(formatted, llama_base, tmp_path):
    import json as _json
    import shutil

    from mft_core.errors import ContractError

    out = tmp_path / "train-output"
    shutil.copytree(llama_base, out / "model")
    (out / "manifest.json").write_text(
        _json.dumps(
            {
                **_json.loads((llama_base / "manifest.json").read_text()),
                "kind": "model",
                "summary": {"paths": {"model": "model"}},
            }
        )
    )
    via_output = tokenize_folder(
        TokenizeConfig(folder=str(formatted), tokenizer=str(out), out=str(tmp_path / "a"), seq_len=128)
    )
    direct = tokenize_folder(
        TokenizeConfig(folder=str(formatted), tokenizer=str(llama_base), out=str(tmp_path / "b"), seq_len=128)
    )
    assert via_output.summary == direct.summary
    (tmp_path / "empty").mkdir()
    with pytest.raises(ContractError, match="empty"):
        tokenize_folder(
            TokenizeConfig(folder=str(formatted), tokenizer=str(tmp_path / "empty"), out=str(tmp_path / "c"))
        )


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_training_tokens_begin_with_the_inference_prompt_tokens(make_base, family):
    """The model is trained on exactly the token sequence it sees at inference: the prompt tokenized alone, then
    its answer. (Byte-level BPE would otherwise merge the template's newline with an indented answer.)"""
    tok = tokenizer(make_base(family))
    rounds = [
        {"role": "user", "content": '# language: Python\ndef f(x):\n    """Add one."""\n'},
        {"role": "assistant", "content": "    return x + 1\n"},
        {"role": "user", "content": "And two?"},
        {"role": "assistant", "content": "  x + 2"},
    ]
    enc = ChatEncoder(tok).encode([{"id": "1", "task": "t", "chat_rounds": rounds}])[0]
    prompt = tok.apply_chat_template(rounds[:1], tokenize=False, add_generation_prompt=True)
    prompt_ids = tok(prompt, add_special_tokens=False)["input_ids"]
    assert enc.input_ids.tolist()[: len(prompt_ids)] == prompt_ids
    assert enc.labels[len(prompt_ids) - 1] == IGNORE and enc.labels[len(prompt_ids)] != IGNORE
    answer_ids = tok("    return x + 1\n" + "\n" + tok.eos_token, add_special_tokens=False)["input_ids"]
    assert enc.input_ids.tolist()[len(prompt_ids) : len(prompt_ids) + len(answer_ids)] == answer_ids
