from dataclasses import dataclass
from typing import Literal

import pytest
from mft_core.config import build_config
from mft_core.errors import ConfigError

pytestmark = pytest.mark.fast  # unit/contract tier: `make test-fast`


@dataclass(frozen=True)
class Cfg:
    lr: float = 1e-4
    steps: int = 10
    mode: Literal["a", "b"] = "a"
    flag: bool = False
    name: str | None = None
    mods: tuple[str, ...] = ("q", "v")
    weights: dict[str, float] | None = None

    def __post_init__(self):
        if self.steps < 0:
            raise ConfigError("--steps must be >= 0")


def test_precedence_defaults_yaml_flags_sets(tmp_path):
    y = tmp_path / "c.yaml"
    y.write_text("lr: 0.001\nsteps: 5\nmode: b\nmods: [a, b]\n")
    cfg = build_config(Cfg, y, {"steps": 7, "lr": None}, ["flag=true", "weights=x=1,y=2.5"])
    assert cfg == Cfg(lr=0.001, steps=7, mode="b", flag=True, mods=("a", "b"), weights={"x": 1.0, "y": 2.5})


def test_unknown_key_suggests(tmp_path):
    y = tmp_path / "c.yaml"
    y.write_text("stesp: 3\n")
    with pytest.raises(ConfigError, match="unknown config key 'stesp'") as info:
        build_config(Cfg, y)
    assert "steps" in info.value.fix


def test_bad_values_are_named():
    with pytest.raises(ConfigError, match="mode"):
        build_config(Cfg, sets=["mode=c"])
    with pytest.raises(ConfigError, match="steps: expected an integer"):
        build_config(Cfg, sets=["steps=1.5"])
    with pytest.raises(ConfigError, match="--steps must be"):
        build_config(Cfg, sets=["steps=-1"])
    assert build_config(Cfg, sets=["name=none"]).name == "none"


def test_list_values_from_set_flags_in_both_spellings():
    assert build_config(Cfg, sets=["mods=q_proj,v_proj"]).mods == ("q_proj", "v_proj")
    assert build_config(Cfg, sets=["mods=[q_proj, v_proj]"]).mods == ("q_proj", "v_proj")
    assert build_config(Cfg, sets=["weights={x: 1, y: 2}"]).weights == {"x": 1.0, "y": 2.0}
