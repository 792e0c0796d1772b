"""Built-in multi-task demo data: three small coding tasks in three source formats, plus held-out problems.

Deterministic for a seed. Every function comes from a family of simple parameterised functions (arithmetic,
string and list transforms) with names and constants varied:
- ``codegen`` (Alpaca): a HumanEval-style prompt (signature + docstring) -> the function's body;
- ``explain`` (ShareGPT): a function -> its one-line description;
- ``bugfix`` (OpenAI messages): a function with one injected bug -> the fixed function;
- ``heldout.jsonl`` (HumanEval format: task_id, prompt, entry_point, test, canonical_solution): codegen
  problems whose names and constants never occur in training;
- ``dev_numbers.jsonl``, ``dev_strings.jsonl``, ``dev_lists.jsonl``: small codegen problem sets, one per family
  group (argument ``x``, ``s``, ``xs``), for pass@1 while training (mft-train ``eval_problems``): names never in
  training nor held out, constants from the training range, so choosing a checkpoint by them never looks at the
  held-out problems;
- ``write_fresh_problems``: more training-family problems with new names, for examples/feedback.
"""

from __future__ import annotations

import argparse
import json
import random
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

VERBS = ["get", "make", "compute", "find", "build", "calc", "give", "produce", "fetch", "yield"]
# Function names end in a made-up word, so a model can only get them right by copying from the prompt; held-out
# names are checked never to occur in training, and held-out constants are kept out of the training ranges.
SYLLABLES = ["ka", "lo", "mi", "ru", "te", "po", "za", "ne", "vi", "do", "ge", "su", "ba", "fi", "xo", "qu", "ye", "wa"]
HELDOUT_CONSTANTS = {13, 27, 38, 41, 56, 63, 74, 85, 92}
HELDOUT_SMALL = {5, 7}
WORDS = ["ok", "end", "done", "x", "py", "abc", "yes", "no", "hi", "go"]
HELDOUT_WORDS = ["zz", "fin", "tail", "qq"]


@dataclass(frozen=True)
class Family:
    """One kind of function: argument, docstring, body and reference implementation from a constant."""

    arg: str
    doc: Callable[[object], str]
    body: Callable[[object], str]
    ref: Callable[[object, object], object]
    inputs: tuple
    const: Callable[[random.Random, bool], object]  # every family has one, so held-out problems differ in it
    bug: Callable[[object], str] | None = None  # a plausible wrong body
    # inputs built from the constant, where the fixed ones cannot tell a wrong constant from the right one
    edge_inputs: Callable[[object], list] | None = None


def _num(lo=2, hi=99, held_values=HELDOUT_CONSTANTS):
    train_values = [v for v in range(lo, hi + 1) if v not in held_values]
    held_list = sorted(held_values)
    return lambda rng, held: rng.choice(held_list) if held else rng.choice(train_values)


def _word(rng, held):
    return rng.choice(HELDOUT_WORDS if held else WORDS)


FAMILIES = [
    Family(
        "x",
        lambda c: f"Return x plus {c}.",
        lambda c: f"return x + {c}",
        lambda c, x: x + c,
        (0, 3, -5, 40),
        _num(),
        lambda c: f"return x - {c}",
    ),
    Family(
        "x",
        lambda c: f"Return x minus {c}.",
        lambda c: f"return x - {c}",
        lambda c, x: x - c,
        (0, 3, -5, 40),
        _num(),
        lambda c: f"return x + {c}",
    ),
    Family(
        "x",
        lambda c: f"Return x multiplied by {c}.",
        lambda c: f"return x * {c}",
        lambda c, x: x * c,
        (0, 3, -5, 7),
        _num(),
        lambda c: f"return x * {c + 1}",
    ),
    Family(
        "x",
        lambda c: f"Return x divided by {c}, rounded down.",
        lambda c: f"return x // {c}",
        lambda c, x: x // c,
        (0, 100, 251, 999),
        _num(),
        lambda c: f"return x / {c}",
    ),
    Family(
        "x",
        lambda c: f"Return the remainder of x divided by {c}.",
        lambda c: f"return x % {c}",
        lambda c, x: x % c,
        (0, 100, 251, 999),
        _num(),
        lambda c: f"return x // {c}",
    ),
    Family(
        "s",
        lambda c: f"Return s repeated {c} times.",
        lambda c: f"return s * {c}",
        lambda c, s: s * c,
        ("a", "ab", ""),
        _num(2, 9, HELDOUT_SMALL),
        lambda c: f"return s * {c - 1}",
    ),
    Family(
        "s",
        lambda c: f"Return s followed by '{c}'.",
        lambda c: f"return s + '{c}'",
        lambda c, s: s + c,
        ("a", "hello", ""),
        _word,
        lambda c: f"return '{c}' + s",
    ),
    Family(
        "s",
        lambda c: f"Return the first {c} characters of s.",
        lambda c: f"return s[:{c}]",
        lambda c, s: s[:c],
        ("abcdefghijkl", "ab", ""),
        _num(1, 9, HELDOUT_SMALL),
        lambda c: f"return s[{c}:]",
    ),
    Family(
        "s",
        lambda c: f"Return the last {c} characters of s.",
        lambda c: f"return s[-{c}:]",
        lambda c, s: s[-c:],
        ("abcdefghijkl", "ab", ""),
        _num(1, 9, HELDOUT_SMALL),
        lambda c: f"return s[:-{c}]",
    ),
    Family(
        "xs",
        lambda c: f"Return the sum of xs plus {c}.",
        lambda c: f"return sum(xs) + {c}",
        lambda c, xs: sum(xs) + c,
        ([1, 2, 3], [], [5]),
        _num(),
        lambda c: f"return sum(xs) - {c}",
    ),
    Family(
        "xs",
        lambda c: f"Return a list with every item of xs multiplied by {c}.",
        lambda c: f"return [v * {c} for v in xs]",
        lambda c, xs: [v * c for v in xs],
        ([1, 2, 3], [], [-4]),
        _num(),
        lambda c: f"return [v + {c} for v in xs]",
    ),
    Family(
        "xs",
        lambda c: f"Return the items of xs greater than {c}.",
        lambda c: f"return [v for v in xs if v > {c}]",
        lambda c, xs: [v for v in xs if v > c],
        ([1, 50, 99, 3, 60], [], [100]),
        _num(),
        lambda c: f"return [v for v in xs if v < {c}]",
        edge_inputs=lambda c: [[c - 1, c, c + 1]],
    ),
    Family(
        "xs",
        lambda c: f"Return how many times {c} appears in xs.",
        lambda c: f"return xs.count({c})",
        lambda c, xs: xs.count(c),
        ([1, 2, 2], [], [7, 7, 7]),
        _num(1, 9, HELDOUT_SMALL),
        lambda c: "return len(xs)",
        edge_inputs=lambda c: [[c, 1, c]],
    ),
]


@dataclass(frozen=True)
class Func:
    name: str
    family: Family
    const: object

    @property
    def prompt(self) -> str:
        return f'def {self.name}({self.family.arg}):\n    """{self.family.doc(self.const)}\n    """\n'

    @property
    def code(self) -> str:
        return f"def {self.name}({self.family.arg}):\n    {self.family.body(self.const)}\n"

    @property
    def buggy(self) -> str:
        return f"def {self.name}({self.family.arg}):\n    {self.family.bug(self.const)}\n"

    def test(self) -> str:
        lines = ["def check(candidate):"]
        inputs = list(self.family.inputs)
        if self.family.edge_inputs:
            inputs += self.family.edge_inputs(self.const)
        for value in inputs:
            lines.append(f"    assert candidate({value!r}) == {self.family.ref(self.const, value)!r}")
        return "\n".join(lines) + "\n"


def made_up_word(rng: random.Random) -> str:
    return "".join(rng.choice(SYLLABLES) for _ in range(rng.randint(2, 3)))


def make_func(rng: random.Random, held: bool) -> Func:
    family = rng.choice(FAMILIES)
    name = f"{rng.choice(VERBS)}_{made_up_word(rng)}"
    const = family.const(rng, held)
    return Func(name, family, const)


def unique_funcs(rng: random.Random, count: int, held: bool = False, avoid_names: set | None = None):
    """``count`` distinct functions (by name and docstring), so every record is unique, as validate --strict wants;
    names in ``avoid_names`` (the training names, for held-out problems) are never used."""
    seen = set()
    while len(seen) < count:
        fn = make_func(rng, held)
        key = (fn.name, fn.family.doc(fn.const))
        if key not in seen and fn.name not in (avoid_names or ()):
            seen.add(key)
            yield fn


DEV_GROUPS = {"numbers": "x", "strings": "s", "lists": "xs"}  # dev set name -> the families' argument


def generate(
    out: Path,
    seed: int = 0,
    n_codegen: int = 3000,
    n_explain: int = 1500,
    n_bugfix: int = 1500,
    n_heldout: int = 40,
    n_dev: int = 8,
) -> dict[str, Path]:
    """Write the three task files (three formats), the held-out problem file and the dev problem sets."""
    rng = random.Random(seed)
    out.mkdir(parents=True, exist_ok=True)
    files = {
        "codegen": out / "codegen.alpaca.jsonl",
        "explain": out / "explain.sharegpt.jsonl",
        "bugfix": out / "bugfix.openai.jsonl",
        "heldout": out / "heldout.jsonl",
    }
    train_names: set[str] = set()
    with files["codegen"].open("w") as f:
        for fn in unique_funcs(rng, n_codegen):
            train_names.add(fn.name)
            # the user turn as mft-eval's chat prompting writes it (MFTCoder's "# language: Python" header); the
            # answer completes the function, HumanEval's way (its body), so the prompt's stub becomes the solution
            f.write(
                json.dumps(
                    {
                        "instruction": f"# language: Python\n{fn.prompt}",
                        "input": "",
                        "output": f"    {fn.family.body(fn.const)}\n",
                    }
                )
                + "\n"
            )
    with files["explain"].open("w") as f:
        for fn in unique_funcs(rng, n_explain):
            train_names.add(fn.name)
            f.write(
                json.dumps(
                    {
                        "conversations": [
                            {"from": "human", "value": f"What does this function do?\n{fn.code}"},
                            {"from": "gpt", "value": fn.family.doc(fn.const)},
                        ]
                    }
                )
                + "\n"
            )
    with files["bugfix"].open("w") as f:
        for fn in unique_funcs(rng, n_bugfix):
            train_names.add(fn.name)
            f.write(
                json.dumps(
                    {
                        "messages": [
                            {"role": "system", "content": "You fix bugs in Python functions."},
                            {"role": "user", "content": f"{fn.family.doc(fn.const)} Fix this function:\n{fn.buggy}"},
                            {"role": "assistant", "content": fn.code},
                        ]
                    }
                )
                + "\n"
            )
    held_names: set[str] = set()
    with files["heldout"].open("w") as f:
        held_rng = random.Random(seed + 1_000_003)
        for i, fn in enumerate(unique_funcs(held_rng, n_heldout, held=True, avoid_names=train_names)):
            held_names.add(fn.name)
            f.write(json.dumps(_problem(f"Demo/{i}", fn)) + "\n")
    dev_rng = random.Random(seed + 2_000_003)
    for group, arg in DEV_GROUPS.items():
        files[f"dev_{group}"] = path = out / f"dev_{group}.jsonl"
        chosen: list[Func] = []
        while len(chosen) < n_dev:
            fn = make_func(dev_rng, held=False)
            if fn.family.arg == arg and fn.name not in train_names | held_names | {c.name for c in chosen}:
                chosen.append(fn)
        with path.open("w") as f:
            for i, fn in enumerate(chosen):
                f.write(json.dumps(_problem(f"Dev/{group}/{i}", fn)) + "\n")
    return files


def names_in(folder: Path) -> set[str]:
    """Every function name defined in a demo raw folder (training records, held-out and dev problems)."""
    return {m for f in folder.glob("*.jsonl") for m in re.findall(r"def (\w+)\(", f.read_text())}


def write_fresh_problems(path: Path, n: int, seed: int, avoid_names: set[str]) -> Path:
    """``n`` new *training-family* problems (the examples/feedback round's): constants from the training ranges,
    names never in ``avoid_names`` (pass ``names_in(raw)``: no training, held-out or dev name), so a feedback round
    learns from problems like its training data and is still measured on the untouched held-out ones."""
    rng = random.Random(seed + 3_000_003)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as f:
        for i, fn in enumerate(unique_funcs(rng, n, held=False, avoid_names=avoid_names)):
            f.write(json.dumps(_problem(f"Fresh/{seed}/{i}", fn)) + "\n")
    return path


def family_of(prompt: str) -> str:
    """A demo problem's family from its prompt: the docstring with its constant written N ("Return x plus N.")."""
    doc = prompt.split('"""')[1].strip()
    return re.sub(r"'[^']*'|\d+", "N", doc)


def _problem(task_id: str, fn: Func) -> dict:
    """A HumanEval-format problem of one function."""
    return {
        "task_id": task_id,
        "prompt": fn.prompt,
        "entry_point": fn.name,
        "canonical_solution": f"    {fn.family.body(fn.const)}\n",
        "test": fn.test(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--scale", type=float, default=1.0, help="multiply the training record counts")
    parser.add_argument("--heldout", type=int, default=40)
    args = parser.parse_args()
    s = args.scale
    for name, path in generate(args.out, args.seed, int(3000 * s), int(1500 * s), int(1500 * s), args.heldout).items():
        print(f"{name}: {path}")


if __name__ == "__main__":
    main()
