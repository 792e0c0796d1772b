"""Every option of every command comes from one place: its config dataclass (issue #16, part 1).

Walks each tool's Typer app: each command's flags and arguments, its YAML keys and its fingerprint keys must all
be fields of the command's config dataclass, declared with ``mft_core.config.opt``; no cli.py writes a
``typer.Option``/``typer.Argument`` itself; and each help text is written once in the source tree.
"""

from __future__ import annotations

import ast
import dataclasses
import importlib
import typing
from pathlib import Path

import pytest
import typer
from mft_core.cli_config import CONFIG_PARAM, SETS_PARAM
from mft_core.config import build_config, fingerprint_keys, same_run_keys, setting_of
from mft_core.errors import ConfigError

pytestmark = pytest.mark.fast  # unit/contract tier: `make test-fast`

ROOT = Path(__file__).resolve().parents[1]
TOOLS = {
    "mft_data": "mft-data",
    "mft_train": "mft-train",
    "mft_merge": "mft-merge",
    "mft_quant": "mft-quant",
    "mft_eval": "mft-eval",
}
NO_CONFIG = {"version"}  # commands without settings (they take no parameter at all)


def commands(package: str) -> dict:
    """``{command name: click command}`` of a tool (a one-command app is its own command)."""
    app = importlib.import_module(f"{package}.cli").app
    root = typer.main.get_command(app)
    return dict(root.commands) if hasattr(root, "commands") else {TOOLS[package]: root}


def all_commands() -> list[tuple[str, str, typing.Any]]:
    return [(pkg, name, cmd) for pkg in TOOLS for name, cmd in commands(pkg).items()]


@pytest.mark.parametrize("package", list(TOOLS))
def test_every_flag_yaml_key_and_fingerprint_key_comes_from_the_config_dataclass(package, tmp_path):
    exposed: dict[type, set[str]] = {}  # config class -> the fields some command of this tool has a flag for
    for name, cmd in commands(package).items():
        where = f"{TOOLS[package]} {name}"
        cls = getattr(cmd.callback, "mft_config", None)
        if cls is None:
            assert name in NO_CONFIG and not cmd.params, f"{where}: options not generated from a config dataclass"
            continue
        fields = {f.name: f for f in dataclasses.fields(cls)}
        for f in fields.values():
            assert setting_of(f) is not None, f"{where}: field {f.name} not declared with opt() (no help, no flag)"
        bindings = cmd.callback.mft_bindings
        flagged = set()
        for param in cmd.params:
            if param.name in (CONFIG_PARAM, SETS_PARAM):
                continue
            assert param.name in bindings, f"{where}: {param.opts} sets no config field"
            field = bindings[param.name].field
            assert field in fields and setting_of(fields[field]).cli, f"{where}: {param.opts} -> {field}"
            if param.name == field:  # (an alias has its own help)
                assert param.help == setting_of(fields[field]).help, f"{where}: {param.opts} help"
            flagged.add(field)
        on_cli = {n for n, f in fields.items() if setting_of(f).cli}
        assert flagged == set(cmd.callback.mft_fields) <= on_cli
        exposed.setdefault(cls, set()).update(flagged)
        # YAML keys: exactly the fields (anything else is refused, with a suggestion)
        assert set(fields) <= set(typing.get_type_hints(cls))
        bad = tmp_path / f"{name}.yaml"
        bad.write_text("surely_not_a_key: 1\n")
        with pytest.raises(ConfigError, match="unknown config key 'surely_not_a_key'"):
            build_config(cls, bad)
        # fingerprint and "same run" keys: fields, as their metadata says
        assert set(fingerprint_keys(cls)) <= set(fields) and set(same_run_keys(cls)) <= set(fields)
        for n, f in fields.items():
            counted = setting_of(f).fingerprint
            assert (n in fingerprint_keys(cls)) == (counted is True), f"{where}: {n}"
    for cls, flagged in exposed.items():
        on_cli = {f.name for f in dataclasses.fields(cls) if setting_of(f).cli}
        assert flagged == on_cli, f"{cls.__name__}: cli=True fields no command has a flag for: {on_cli - flagged}"


@pytest.mark.parametrize("package", list(TOOLS))
def test_no_cli_module_declares_options_itself(package):
    source = (ROOT / "packages" / TOOLS[package] / "src" / package / "cli.py").read_text(encoding="utf-8")
    calls = [
        node.func.attr
        for node in ast.walk(ast.parse(source))
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr in ("Option", "Argument")
    ]
    assert not calls, f"{package}/cli.py writes typer.{calls[0]} itself; declare the setting with opt() instead"


def _string_constants() -> list[tuple[Path, str]]:
    out = []
    for path in sorted((ROOT / "packages").glob("*/src/**/*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                out.append((path, node.value))
    return out


def test_each_help_text_is_written_once():
    constants = _string_constants()
    seen: dict[str, str] = {}
    for package, name, cmd in all_commands():
        for param in cmd.params:
            if param.help and param.help not in seen:
                seen[param.help] = f"{TOOLS[package]} {name} {'/'.join(param.opts)}"
    assert len(seen) > 50
    for help_text, where in seen.items():
        places = [str(p.relative_to(ROOT)) for p, s in constants if help_text in s]
        assert len(places) == 1, f"help of {where} is written {len(places)} times: {places}"
