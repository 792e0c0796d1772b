from jinja2.sandbox import ImmutableSandboxedEnvironment
from mft_core.templates import DEFAULT_CHAT_TEMPLATE, RoleMarkers, build_chat_template


def render(template, messages, gen=False, eos="</s>"):
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    return env.from_string(template).render(messages=messages, add_generation_prompt=gen, eos_token=eos)


MSGS = [
    {"role": "system", "content": "S"},
    {"role": "user", "content": "U"},
    {"role": "assistant", "content": "A"},
    {"role": "user", "content": "U2"},
]


def test_mftcoder_format_exactly():
    assert render(DEFAULT_CHAT_TEMPLATE, MSGS[:3]) == "<s>system\nS\n<s>human\nU\n<s>bot\nA</s>\n"
    assert render(DEFAULT_CHAT_TEMPLATE, MSGS, gen=True).endswith("<s>human\nU2\n<s>bot\n")


def test_markers_are_configurable():
    template = build_chat_template(RoleMarkers(prefix="### ", user="User", assistant="Assistant"))
    assert render(template, MSGS[1:3]) == "### User\nU\n### Assistant\nA</s>\n"


def test_tokenizer_renders_the_same(llama_base):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(llama_base)
    assert tok.apply_chat_template(MSGS[:3], tokenize=False) == render(
        DEFAULT_CHAT_TEMPLATE, MSGS[:3], eos=tok.eos_token
    )
