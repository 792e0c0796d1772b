"""Loss masks under MFTCoder's code form (`{A}\\n{EOS}` trained) and the README form; assistant-first records."""

import pytest
from helpers import MULTI_TURN, format_folder
from mft_core.manifest import read_manifest
from mft_core.templates import CHAT_TEMPLATES
from mft_data.api import ChatEncoder, TokenizeConfig, decode_supervised, tokenize_folder
from mft_data.encode import IGNORE

pytestmark = pytest.mark.fast  # unit/contract tier: `make test-fast`


def tokenizer(path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path)


@pytest.mark.parametrize("family", ["llama", "qwen2"])  # <s> is BOS in llama, plain text in qwen2
def test_mftcoder_form_trains_the_newline_and_eos(make_base, family):
    tok = tokenizer(make_base(family))
    eos = tok.eos_token
    records = [
        {"id": "1", "task": "t", "chat_rounds": MULTI_TURN},
        {"id": "2", "task": "t", "chat_rounds": MULTI_TURN[1:3], "meta": {"format": "prompt-answer"}},
    ]
    encoder = ChatEncoder(tok, CHAT_TEMPLATES["mftcoder"])
    encoded = encoder.encode(records)
    s, u1, a1, u2, a2 = (r["content"] for r in MULTI_TURN)
    # by hand, from MFTCoder v0.5's code: "\n" after every EOS of a chat_rounds record, none after a pair's
    assert encoder.render([records[0]["chat_rounds"]]) == [
        f"<s>system\n{s}\n<s>human\n{u1}\n<s>bot\n{a1}\n{eos}\n<s>human\n{u2}\n<s>bot\n{a2}\n{eos}\n"
    ]
    texts = [
        f"<s>system\n{s}\n<s>human\n{u1}\n<s>bot\n{a1}\n{eos}\n<s>human\n{u2}\n<s>bot\n{a2}\n{eos}\n",
        f"<s>human\n{u1}\n<s>bot\n{a1}\n{eos}",
    ]
    for text, enc in zip(texts, encoded):
        assert tok.decode(enc.input_ids, clean_up_tokenization_spaces=False) == text
        assert enc.labels[0] == IGNORE
    assert decode_supervised(tok, encoded[0].input_ids, encoded[0].labels) == [f"{a1}\n{eos}", f"{a2}\n{eos}"]
    assert decode_supervised(tok, encoded[1].input_ids, encoded[1].labels) == [f"{a1}\n{eos}"]
    assert encoded[0].labels[-1] == IGNORE  # the "\n" after the last EOS is not trained (as in MFTCoder)


def test_readme_form_trains_content_and_eos(llama_base):
    tok = tokenizer(llama_base)
    enc = ChatEncoder(tok, CHAT_TEMPLATES["mftcoder-readme"]).encode(
        [{"id": "1", "task": "t", "chat_rounds": MULTI_TURN}]
    )
    expected = [r["content"] + tok.eos_token for r in MULTI_TURN if r["role"] == "assistant"]
    assert decode_supervised(tok, enc[0].input_ids, enc[0].labels) == expected


@pytest.mark.parametrize("name", sorted(CHAT_TEMPLATES))
@pytest.mark.parametrize("content", ["bot", "s", "<s>bot\nx"])
def test_an_assistant_first_record_is_searched_after_its_marker(llama_base, name, content):
    # e.g. a raw `text` record: its only turn is the assistant's; its content also occurs inside "<s>bot\n"
    tok = tokenizer(llama_base)
    encoder = ChatEncoder(tok, CHAT_TEMPLATES[name])
    record = {"id": "1", "task": "t", "chat_rounds": [{"role": "assistant", "content": content}]}
    text = encoder.render([record["chat_rounds"]])[0]
    ((start, end),) = encoder.supervised_spans([record], [text])[0]
    assert start == len("<s>bot\n") and text[start:].startswith(content)
    assert text[start:end].rstrip("\n").endswith(tok.eos_token)


def test_tokenize_chat_template_by_name(tmp_path, llama_base):
    folder = format_folder(tmp_path / "data", {"t": [{"prompt": "q", "answer": "a"}, {"chat_rounds": MULTI_TURN}]})
    base = dict(folder=str(folder), tokenizer=str(llama_base), seq_len=128)
    readme = tokenize_folder(TokenizeConfig(out=str(tmp_path / "r"), chat_template="mftcoder-readme", **base))
    code = tokenize_folder(TokenizeConfig(out=str(tmp_path / "c"), chat_template="mftcoder", **base))
    assert (tmp_path / "r" / "chat_template.jinja").read_text() == CHAT_TEMPLATES["mftcoder-readme"]
    assert (tmp_path / "c" / "chat_template.jinja").read_text() == CHAT_TEMPLATES["mftcoder"]
    # the code form also supervises the "\n" before each EOS
    r, c = readme.summary["tasks"]["train"]["t"], code.summary["tasks"]["train"]["t"]
    assert c["supervised_tokens"] > r["supervised_tokens"]
    assert read_manifest(tmp_path / "c").config["chat_template"] == CHAT_TEMPLATES["mftcoder"]
