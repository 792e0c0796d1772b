"""Shared fixtures: offline, CPU-only, tiny models built locally (never downloaded)."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

_BASES: dict[tuple[str, str], Path] = {}


@pytest.fixture(scope="session")
def make_base(tmp_path_factory):
    """``make_base(family, preset="tiny")`` -> folder of a tiny base built by ``mft-train init-base`` (cached)."""

    def build(family: str = "llama", preset: str = "tiny") -> Path:
        key = (family, preset)
        if key not in _BASES:
            from mft_train.base_init import InitBaseConfig, init_base

            out = tmp_path_factory.mktemp("bases") / f"{family}-{preset}"
            init_base(InitBaseConfig(family=family, preset=preset, out=str(out), tokenizer_corpus_mb=1.0))
            _BASES[key] = out
        return _BASES[key]

    return build


@pytest.fixture(scope="session")
def llama_base(make_base) -> Path:
    return make_base("llama")


@pytest.fixture(scope="session")
def qwen2_base(make_base) -> Path:
    return make_base("qwen2")


REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO / "tests" / "fixtures" / "humaneval-real"
