"""`make install` hands pip the tools in one command; pip 23 resolves a local requirement only if the package
that provides it comes earlier on that line (CI failed when mft-train[test] needed mft-eval listed after it)."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.fast


def _make_packages() -> list[str]:
    line = re.search(r"^PACKAGES := (.+)$", (ROOT / "Makefile").read_text(), re.M)
    assert line, "Makefile has no PACKAGES line"
    return line.group(1).split()


def _local_requirements(package: str) -> set[str]:
    project = tomllib.loads((ROOT / "packages" / package / "pyproject.toml").read_text())["project"]
    names = list(project.get("dependencies", []))
    for extra in project.get("optional-dependencies", {}).values():
        names += extra
    local = {p.name for p in (ROOT / "packages").iterdir() if (p / "pyproject.toml").exists()}
    return {re.split(r"[\s\[<>=;!~]", n, maxsplit=1)[0] for n in names} & local


def test_every_tool_is_installed():
    local = {p.name for p in (ROOT / "packages").iterdir() if (p / "pyproject.toml").exists()}
    assert set(_make_packages()) == local


def test_tools_come_after_the_tools_they_need():
    order = _make_packages()
    for i, package in enumerate(order):
        later = _local_requirements(package) - set(order[:i])
        assert not later, f"Makefile PACKAGES: {package} needs {sorted(later)}, listed after it; move them before"
