"""Post-processing rules, program layout, the CodeT task matching."""

import pytest
from mft_core.errors import InputError
from mft_eval.convert import match_prompts
from mft_eval.postprocess import (
    DEFAULT_STOP,
    PRESETS,
    build_program,
    extract_chat_code,
    strip_top_level_statements,
    truncate_at_stop,
)

pytestmark = pytest.mark.fast  # unit/contract tier: `make test-fast`

PROBLEM = {
    "task_id": "T/0",
    "prompt": 'def add(a, b):\n    """Add."""\n',
    "entry_point": "add",
    "test": "def check(f):\n    assert f(1, 2) == 3\n",
}


def test_truncate_at_earliest_stop():
    raw = "    return a + b\n\nprint(add(1, 2))\ndef other():\n    pass"
    assert truncate_at_stop(raw, DEFAULT_STOP) == "    return a + b\n"
    assert truncate_at_stop("    return 1\n# done\nclass X: pass", DEFAULT_STOP) == "    return 1"
    assert truncate_at_stop("    return 1", DEFAULT_STOP) == "    return 1"
    assert (
        truncate_at_stop("    return 1\nif __name__ == '__main__':\n    main()", ("\nif __name__",)) == "    return 1"
    )


def test_chat_code_first_fenced_block_then_cut_after_function():
    answer = (
        "Sure! Here it is:\n```python\nimport math\n\ndef add(a, b):\n    return a + b\n\nprint(add(1, 2))\n```\n"
        "And a second one:\n```python\ndef nope(): pass\n```"
    )
    code = extract_chat_code(answer)
    assert code == "\nimport math\n\ndef add(a, b):\n    return a + b\n"
    assert "print" not in code and "nope" not in code


def test_chat_code_without_fence_starts_at_code_and_keeps_helpers():
    answer = (
        "Here is my solution\ndef helper(x):\n    return x\n\ndef add(a, b):\n    return helper(a) + b\n\n"
        "assert add(1, 2) == 3\nThat's it."
    )
    assert extract_chat_code(answer) == "\ndef helper(x):\n    return x\n\ndef add(a, b):\n    return helper(a) + b\n"


def test_chat_code_indented_body_is_kept_as_body():
    assert extract_chat_code("```\n    return a + b\n```") == "    return a + b\n"
    # an unterminated fence (the model ran out of tokens) still yields the code
    assert extract_chat_code("```python\ndef add(a, b):\n    return a + b") == "\ndef add(a, b):\n    return a + b\n"


def test_whole_function_from_chat_runs_after_the_prompt():
    program = build_program(PROBLEM, extract_chat_code("```python\ndef add(a, b):\n    return a + b\n```"))
    scope: dict = {}
    exec(program, scope)  # the model's definition replaces the stub; check() passes


def test_program_layout_is_human_evals():
    assert build_program(PROBLEM, "    return a + b\n") == (
        PROBLEM["prompt"] + "    return a + b\n" + "\n" + PROBLEM["test"] + "\n" + "check(add)"
    )


def test_codefuse_preset_prepends_imports_and_drops_top_level_statements():
    completion = (
        "    return a + b\n\nprint(add(1, 2))\nx = 5\nimport os\ndef more():\n    pass\n"
        "@decorator\nclass K:\n    pass\n"
    )
    stripped = strip_top_level_statements(completion)
    assert "print(" not in stripped and "x = 5" not in stripped
    assert "import os" in stripped and "def more()" in stripped and "@decorator" in stripped and "class K:" in stripped
    program = build_program(PROBLEM, completion, PRESETS["codefuse"])
    assert program.startswith("import math\nimport re\n") and "from typing import *\n" in program
    assert program.endswith("check(add)")


def test_codet_prompts_match_tasks_by_signature_and_text(problems):
    official = [problems[f"HumanEval/{i}"]["prompt"] for i in (0, 133, 142)]
    # 133 and 142 share `def sum_squares(lst):`: told apart by their text
    assert match_prompts(list(reversed(official)), problems) == ["HumanEval/142", "HumanEval/133", "HumanEval/0"]
    # CodeT-style edit: docstring examples removed
    edited = official[0].split(">>>")[0] + '    """\n'
    assert match_prompts([edited], problems) == ["HumanEval/0"]
    with pytest.raises(InputError, match="no function"):
        match_prompts(["just text"], problems)
    with pytest.raises(InputError, match="matches no problem"):
        match_prompts(["def unknown_fn(x):\n    pass\n"], problems)
    with pytest.raises(InputError, match="already does"):
        match_prompts([official[0], official[0]], problems)
