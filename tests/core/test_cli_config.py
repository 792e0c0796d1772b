"""mft_core.config.opt + mft_core.cli_config.config_command: a Typer command generated from a config dataclass."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import pytest
import typer
from mft_core.cli_config import config_command
from mft_core.config import fingerprint_config, fingerprint_keys, opt, same_run_keys
from mft_core.errors import ConfigError
from typer.testing import CliRunner

pytestmark = pytest.mark.fast  # unit/contract tier: `make test-fast`


@dataclass(frozen=True)
class Base:
    out: str = opt("", help="Output folder.", fingerprint=False, same_run=False)
    k: tuple[int, ...] = opt((1, 10), help="ks, comma-separated.", flag="--k")


@dataclass(frozen=True)
class Cfg(Base):
    model: str = opt("", help="The model.", positional=True, fingerprint=False)
    stop: tuple[str, ...] = opt(("a",), help="A stop string (repeatable).", repeat=True, parse=lambda v: tuple(v))
    bits: Literal[2, 4] = opt(4, help="Bits.")
    sym: bool = opt(True, help="Symmetric.", flag="--sym/--asym")
    overwrite: bool = opt(False, help="Replace --out.", fingerprint=False)
    verify: str = opt("auto", help="Check.", aliases={"--no-verify": ("none", "No check.")})
    hidden: int = opt(3, help="YAML only.", cli=False)
    newer: bool = opt(False, help="Added later.", fingerprint="non-default")

    def __post_init__(self):
        if not self.model:
            raise ConfigError("no model given")


def make_app(seen: list):
    app = typer.Typer()

    @config_command(app, Cfg)
    def go(cfg: Cfg) -> None:
        """Do it."""
        seen.append(cfg)

    @app.command()
    def version() -> None:
        """A plain command next to it."""

    return app


def invoke(*args: str):
    seen: list[Cfg] = []
    res = CliRunner().invoke(make_app(seen), ["go", *args])
    return res, (seen[0] if seen else None)


def test_flags_come_from_the_fields():
    res, _ = invoke("--help")
    assert res.exit_code == 0
    for text in ("--out", "--k", "--stop", "--bits", "--sym", "--asym", "--no-verify", "--newer", "--config", "--set"):
        assert text in res.output
    assert "--hidden" not in res.output and "Do it." in res.output
    res, cfg = invoke("m", "--out", "o", "--k", "1,2", "--stop", "x", "--stop", "y", "--asym", "--no-verify")
    assert res.exit_code == 0, res.output
    assert cfg == Cfg(model="m", out="o", k=(1, 2), stop=("x", "y"), sym=False, verify="none")


def test_precedence_defaults_yaml_flags_sets(tmp_path):
    y = tmp_path / "c.yaml"
    y.write_text("out: from-yaml\nbits: 2\nhidden: 7\nk: [5]\n")
    _, cfg = invoke("m", "--config", str(y), "--bits", "4", "--set", "hidden=9")
    assert (cfg.out, cfg.bits, cfg.hidden, cfg.k, cfg.sym) == ("from-yaml", 4, 9, (5,), True)  # flags left out: YAML


def test_errors_are_config_errors_with_exit_2(tmp_path):
    res, _ = invoke("m", "--bits", "3")
    assert res.exit_code == 2 and "bits" in res.output
    y = tmp_path / "c.yaml"
    y.write_text("bitz: 2\n")
    res, _ = invoke("m", "--config", str(y))
    assert res.exit_code == 2 and "unknown config key 'bitz'" in res.output and "bits" in res.output


def test_fingerprint_and_same_run_keys_from_metadata():
    assert fingerprint_keys(Cfg) == ("k", "stop", "bits", "sym", "verify", "hidden")
    assert "out" not in same_run_keys(Cfg) and "overwrite" in same_run_keys(Cfg)
    assert "newer" not in fingerprint_config(Cfg(model="m"))  # at its default: older fingerprints still match
    assert fingerprint_config(Cfg(model="m", newer=True))["newer"] is True
    assert fingerprint_config(Cfg(model="m", out="o"))["k"] == [1, 10]


def test_only_some_fields_and_no_generic_options():
    app = typer.Typer()
    seen: list = []

    @config_command(app, Cfg, name="narrow", only=("model", "bits"), base={"hidden": 5})
    def narrow(cfg: Cfg) -> None:
        seen.append(cfg)

    @config_command(app, Base, name="bare", generic=False)
    def bare(cfg: Base) -> None:
        seen.append(cfg)

    helps = CliRunner().invoke(app, ["narrow", "--help"]).output
    assert "--bits" in helps and "--out" not in helps and "--set" in helps
    assert CliRunner().invoke(app, ["narrow", "m", "--bits", "2", "--set", "out=o"]).exit_code == 0
    assert seen[-1] == Cfg(model="m", bits=2, out="o", hidden=5)
    assert "--config" not in CliRunner().invoke(app, ["bare", "--help"]).output
    assert CliRunner().invoke(app, ["bare", "--k", "3"]).exit_code == 0 and seen[-1] == Base(k=(3,))
