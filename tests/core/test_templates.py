import pytest
from jinja2.sandbox import ImmutableSandboxedEnvironment
from mft_core.errors import ConfigError
from mft_core.templates import (
    CHAT_TEMPLATES,
    DEFAULT_CHAT_TEMPLATE,
    DEFAULT_TEMPLATE,
    RoleMarkers,
    build_chat_template,
    chat_template,
)

pytestmark = pytest.mark.fast  # unit/contract tier: `make test-fast`


def render(template, messages, gen=False, eos="</s>", **extra):
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    return env.from_string(template).render(messages=messages, add_generation_prompt=gen, eos_token=eos, **extra)


MSGS = [
    {"role": "system", "content": "S"},
    {"role": "user", "content": "U"},
    {"role": "assistant", "content": "A"},
    {"role": "user", "content": "U2"},
]
TWO_ROUNDS = MSGS + [{"role": "assistant", "content": "A2"}]

# MFTCoder v0.5 (mftcoder_accelerate/src/data/preprocess_data.py, UniformEncoder._tokenize_fields), written out by
# hand. content_format() appends "\n" to every content. A chat_rounds record is
#   "<s>system\n" + S + "\n"                          (system, not trained)
#   "<s>human\n" + U + "\n" + "<s>bot\n"              (each user turn, not trained)
#   A + "\n" + EOS                                    (each assistant turn, trained)
#   "\n"                                              (after every assistant turn, the last too, not trained)
# and a single-turn prompt/answer record (is_prompt_answer_format & co) is
#   "<s>system\n" + S + "\n" + "<s>human\n" + P + "\n" + "<s>bot\n" + A + "\n" + EOS   (no "\n" after EOS)
# Its chat_template.py (MFTCoder_template) renders chat_rounds the same way and ends a prompt with "<s>bot\n".
MFTCODER_ONE_ROUND = "<s>system\nS\n<s>human\nU\n<s>bot\nA\n</s>\n"
MFTCODER_TWO_ROUNDS = "<s>system\nS\n<s>human\nU\n<s>bot\nA\n</s>\n<s>human\nU2\n<s>bot\nA2\n</s>\n"
MFTCODER_PAIR = "<s>system\nS\n<s>human\nU\n<s>bot\nA\n</s>"
# MFTCoder's README layout ("...<s>bot\nAssistant output{EOS_TOKEN}\n<s>human\n..."): no newline before EOS
README_ONE_ROUND = "<s>system\nS\n<s>human\nU\n<s>bot\nA</s>\n"


def _mftcoder_code(rounds, eos="</s>", pair=False):
    """MFTCoder v0.5's string concatenation, step by step (its code tokenizes these pieces; text is their sum)."""

    def content_format(content):
        return content + "\n"

    text = ""
    if rounds[0]["role"] == "system":
        text += "<s>system\n" + content_format(rounds[0]["content"])
        rounds = rounds[1:]
    for r in rounds:
        if r["role"] == "user":
            text += "<s>human\n" + content_format(r["content"]) + "<s>bot\n"
        else:
            text += content_format(r["content"]) + eos + ("" if pair else "\n")
    return text


def test_mftcoder_is_byte_identical_to_mftcoder_code():
    template = CHAT_TEMPLATES["mftcoder"]
    assert render(template, MSGS[:3]) == MFTCODER_ONE_ROUND == _mftcoder_code(MSGS[:3])
    assert render(template, TWO_ROUNDS) == MFTCODER_TWO_ROUNDS == _mftcoder_code(TWO_ROUNDS)
    assert render(template, MSGS[1:3]) == "<s>human\nU\n<s>bot\nA\n</s>\n"
    # the single-turn prompt/answer variant: no newline after the final EOS
    assert render(template, MSGS[:3], single_turn=True) == MFTCODER_PAIR == _mftcoder_code(MSGS[:3], pair=True)
    assert render(template, MSGS, gen=True).endswith("A\n</s>\n<s>human\nU2\n<s>bot\n")
    assert render(template, MSGS[:2], gen=True) == "<s>system\nS\n<s>human\nU\n<s>bot\n"


def test_readme_form_is_kept_under_its_own_name():
    template = CHAT_TEMPLATES["mftcoder-readme"]
    assert render(template, MSGS[:3]) == README_ONE_ROUND
    assert render(template, MSGS[:3], single_turn=True) == README_ONE_ROUND  # the flag is mftcoder's only
    assert render(template, MSGS, gen=True).endswith("A</s>\n<s>human\nU2\n<s>bot\n")


def test_the_default_is_mftcoder_code_form():
    assert DEFAULT_TEMPLATE == "mftcoder"
    assert DEFAULT_CHAT_TEMPLATE == CHAT_TEMPLATES["mftcoder"] == chat_template("mftcoder")
    assert render(DEFAULT_CHAT_TEMPLATE, MSGS[:3]) == MFTCODER_ONE_ROUND


def test_unknown_template_name_is_a_config_error():
    with pytest.raises(ConfigError, match="mftcoder-readme"):
        chat_template("mftcoder-docs")


def test_markers_are_configurable():
    markers = RoleMarkers(prefix="### ", user="User", assistant="Assistant")
    assert render(build_chat_template(markers), MSGS[1:3]) == "### User\nU\n### Assistant\nA\n</s>\n"
    readme = build_chat_template(markers, "mftcoder-readme")
    assert render(readme, MSGS[1:3]) == "### User\nU\n### Assistant\nA</s>\n"


def test_tokenizer_renders_the_same(llama_base):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(llama_base)
    for template in CHAT_TEMPLATES.values():
        assert tok.apply_chat_template(MSGS[:3], tokenize=False, chat_template=template) == render(
            template, MSGS[:3], eos=tok.eos_token
        )
    assert tok.apply_chat_template(
        MSGS[:3], tokenize=False, chat_template=CHAT_TEMPLATES["mftcoder"], single_turn=True
    ) == render(CHAT_TEMPLATES["mftcoder"], MSGS[:3], eos=tok.eos_token, single_turn=True)
