"""Built-in multi-task demo data: three small coding tasks in three source formats, plus held-out problems.

Deterministic for a seed. Every function comes from a family of simple parameterised functions (arithmetic,
string and list transforms) with names and constants varied:
- ``codegen`` (Alpaca): a HumanEval-style prompt (signature + docstring) -> the function;
- ``explain`` (ShareGPT): a function -> its one-line description;
- ``bugfix`` (OpenAI messages): a function with one injected bug -> the fixed function;
- ``heldout.jsonl`` (HumanEval format: task_id, prompt, entry_point, test, canonical_solution): codegen
  problems whose names and constants never occur in training.
"""

from __future__ import annotations

import argparse
import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

VERBS = ["get", "make", "compute", "find", "build", "calc", "give", "produce", "fetch", "yield"]
TRAIN_NOUNS = ["apples", "total", "value", "score", "count", "price", "level", "amount", "weight", "speed",
               "height", "size", "index", "number", "result", "answer", "output", "item", "thing", "data"]
HELDOUT_NOUNS = ["pears", "budget", "energy", "signal", "volume", "metric", "token", "width"]
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
    const: Callable[[random.Random, bool], object] | None = None
    bug: Callable[[object], str] | None = None  # a plausible wrong body


def _num(lo_train=2, hi_train=49, lo_held=51, hi_held=97):
    return lambda rng, held: rng.randint(lo_held, hi_held) if held else rng.randint(lo_train, hi_train)


def _word(rng, held):
    return rng.choice(HELDOUT_WORDS if held else WORDS)


FAMILIES = [
    Family("x", lambda c: f"Return x plus {c}.", lambda c: f"return x + {c}", lambda c, x: x + c, (0, 3, -5, 40),
           _num(), lambda c: f"return x - {c}"),
    Family("x", lambda c: f"Return x minus {c}.", lambda c: f"return x - {c}", lambda c, x: x - c, (0, 3, -5, 40),
           _num(), lambda c: f"return x + {c}"),
    Family("x", lambda c: f"Return x multiplied by {c}.", lambda c: f"return x * {c}", lambda c, x: x * c,
           (0, 3, -5, 7), _num(), lambda c: f"return x * {c + 1}"),
    Family("x", lambda c: f"Return x divided by {c}, rounded down.", lambda c: f"return x // {c}",
           lambda c, x: x // c, (0, 100, 251, 999), _num(), lambda c: f"return x / {c}"),
    Family("x", lambda c: f"Return the remainder of x divided by {c}.", lambda c: f"return x % {c}",
           lambda c, x: x % c, (0, 100, 251, 999), _num(), lambda c: f"return x // {c}"),
    Family("s", lambda c: f"Return s repeated {c} times.", lambda c: f"return s * {c}", lambda c, s: s * c,
           ("a", "ab", ""), _num(2, 9, 11, 19), lambda c: f"return s * {c - 1}"),
    Family("s", lambda c: f"Return s followed by '{c}'.", lambda c: f"return s + '{c}'", lambda c, s: s + c,
           ("a", "hello", ""), _word, lambda c: f"return '{c}' + s"),
    Family("s", lambda c: "Return s in upper case.", lambda c: "return s.upper()", lambda c, s: s.upper(),
           ("a", "Hello", ""), None, lambda c: "return s.lower()"),
    Family("s", lambda c: "Return s reversed.", lambda c: "return s[::-1]", lambda c, s: s[::-1],
           ("abc", "x", ""), None, lambda c: "return s"),
    Family("xs", lambda c: "Return the sum of xs.", lambda c: "return sum(xs)", lambda c, xs: sum(xs),
           ([1, 2, 3], [], [5]), None, lambda c: "return max(xs)"),
    Family("xs", lambda c: f"Return a list with every item of xs multiplied by {c}.",
           lambda c: f"return [v * {c} for v in xs]", lambda c, xs: [v * c for v in xs], ([1, 2, 3], [], [-4]),
           _num(), lambda c: f"return [v + {c} for v in xs]"),
    Family("xs", lambda c: f"Return the items of xs greater than {c}.", lambda c: f"return [v for v in xs if v > {c}]",
           lambda c, xs: [v for v in xs if v > c], ([1, 50, 99, 3, 60], [], [100]), _num(),
           lambda c: f"return [v for v in xs if v < {c}]"),
    Family("xs", lambda c: f"Return how many times {c} appears in xs.", lambda c: f"return xs.count({c})",
           lambda c, xs: xs.count(c), ([1, 2, 2], [], [7, 7, 7]), _num(1, 9, 11, 19),
           lambda c: "return len(xs)"),
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
        if self.family.arg == "xs" and self.const is not None and "appears" in self.family.doc(self.const):
            inputs.append([self.const, 1, self.const])
        for value in inputs:
            lines.append(f"    assert candidate({value!r}) == {self.family.ref(self.const, value)!r}")
        return "\n".join(lines) + "\n"


def make_func(rng: random.Random, held: bool) -> Func:
    family = rng.choice(FAMILIES)
    nouns = HELDOUT_NOUNS if held else TRAIN_NOUNS
    name = f"{rng.choice(VERBS)}_{rng.choice(nouns)}"
    const = family.const(rng, held) if family.const else None
    return Func(name, family, const)


def generate(out: Path, seed: int = 0, n_codegen: int = 3000, n_explain: int = 1500, n_bugfix: int = 1500,
             n_heldout: int = 40) -> dict[str, Path]:
    """Write the three task files (three formats) and the held-out HumanEval-format problem file."""
    rng = random.Random(seed)
    out.mkdir(parents=True, exist_ok=True)
    files = {"codegen": out / "codegen.alpaca.jsonl", "explain": out / "explain.sharegpt.jsonl",
             "bugfix": out / "bugfix.openai.jsonl", "heldout": out / "heldout.jsonl"}
    with files["codegen"].open("w") as f:
        for _ in range(n_codegen):
            fn = make_func(rng, held=False)
            # the user turn as mft-eval's chat prompting writes it (MFTCoder's "# language: Python" header)
            f.write(json.dumps({"instruction": f"# language: Python\n{fn.prompt}", "input": "", "output": fn.code}) + "\n")
    with files["explain"].open("w") as f:
        for _ in range(n_explain):
            fn = make_func(rng, held=False)
            f.write(json.dumps({"conversations": [
                {"from": "human", "value": f"What does this function do?\n{fn.code}"},
                {"from": "gpt", "value": fn.family.doc(fn.const)}]}) + "\n")
    with files["bugfix"].open("w") as f:
        for _ in range(n_bugfix):
            fn = make_func(rng, held=False)
            f.write(json.dumps({"messages": [
                {"role": "system", "content": "You fix bugs in Python functions."},
                {"role": "user", "content": f"{fn.family.doc(fn.const)} Fix this function:\n{fn.buggy}"},
                {"role": "assistant", "content": fn.code}]}) + "\n")
    held_rng = random.Random(seed + 1_000_003)
    seen = set()
    with files["heldout"].open("w") as f:
        i = 0
        while i < n_heldout:
            fn = make_func(held_rng, held=True)
            if (fn.name, fn.family.doc(fn.const)) in seen:
                continue
            seen.add((fn.name, fn.family.doc(fn.const)))
            body = f"    {fn.family.body(fn.const)}\n"
            f.write(json.dumps({"task_id": f"Demo/{i}", "prompt": fn.prompt, "entry_point": fn.name,
                                "canonical_solution": body, "test": fn.test()}) + "\n")
            i += 1
    return files


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
