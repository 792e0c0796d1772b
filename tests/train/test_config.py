"""The config: the old keys are read with one deprecation line each; what counts as "the same run"."""

from pathlib import Path

import pytest
from mft_core.config import build_config
from mft_core.errors import ConfigError
from mft_train.config import KIND_DEFAULTS, TrainConfig, fingerprint_config

pytestmark = pytest.mark.fast  # unit/contract tier: `make test-fast`


def write(tmp_path, text):
    path = tmp_path / "c.yaml"
    path.write_text("model: m\ndata: d\n" + text)
    return path


def deprecation_lines(capsys) -> list[str]:
    captured = capsys.readouterr()
    return [line for line in (captured.out + captured.err).splitlines() if "deprecated" in line]


def test_loss_mode_coba_is_read_as_task_loss_with_coba_weighting(tmp_path, capsys):
    cfg = build_config(TrainConfig, write(tmp_path, "out: o\nloss_mode: coba\n"))
    assert (cfg.loss, cfg.task_weighting) == ("task", "coba")
    lines = deprecation_lines(capsys)
    assert len(lines) == 1 and "loss_mode: coba" in lines[0] and "task_weighting: coba" in lines[0]
    assert "loss_mode" not in fingerprint_config(cfg)  # never written back


@pytest.mark.parametrize(
    "old, loss, weighting",
    [
        ("auto", "auto", "static"),
        ("token", "token", "static"),
        ("task-sample", "task-sample", "static"),
        ("selfpaced", "task", "selfpaced"),
    ],
)
def test_every_old_loss_mode(tmp_path, capsys, old, loss, weighting):
    cfg = build_config(TrainConfig, write(tmp_path, "out: o\n"), sets=[f"loss_mode={old}"], base=KIND_DEFAULTS["sft"])
    assert (cfg.loss, cfg.task_weighting) == (loss, weighting)
    assert len(deprecation_lines(capsys)) == 1


def test_output_dir_is_read_as_out(tmp_path, capsys):
    cfg = build_config(TrainConfig, write(tmp_path, "output_dir: runs/x\n"))
    assert cfg.out == "runs/x"
    lines = deprecation_lines(capsys)
    assert len(lines) == 1 and "`out`" in lines[0]
    with pytest.raises(ConfigError, match="both out"):
        build_config(TrainConfig, write(tmp_path, "output_dir: runs/x\nout: runs/y\n"))
    with pytest.raises(ConfigError, match="loss_mode"):
        build_config(TrainConfig, write(tmp_path, "out: o\nloss_mode: wavy\n"))


def test_new_keys_give_no_deprecation_line(tmp_path, capsys):
    cfg = build_config(TrainConfig, write(tmp_path, "out: o\nloss: task-sample\ntask_weighting: selfpaced\n"))
    assert (cfg.loss, cfg.task_weighting) == ("task-sample", "selfpaced")
    assert deprecation_lines(capsys) == []


def test_weightings_need_a_loss_with_task_weights():
    base = dict(model="m", data="d", out="o")
    with pytest.raises(ConfigError, match="loss token does not have"):
        TrainConfig(**base, loss="token", task_weighting="coba")
    with pytest.raises(ConfigError, match="sets the task weights itself"):
        TrainConfig(**base, task_weighting="coba", task_weights={"a": 2.0})
    with pytest.raises(ConfigError, match="act only in loss task or task-sample"):
        TrainConfig(**base, loss="sample", task_weights={"a": 2.0})
    with pytest.raises(ConfigError, match="needs strategy zero3"):
        TrainConfig(**base, strategy="zero2", offload="params")


def test_the_fingerprint_leaves_out_what_does_not_change_the_result():
    a = TrainConfig(model="m", data="d", out="o")
    b = TrainConfig(
        model="m", data="d", out="elsewhere", log_every=1, save_every=5, save_limit=9, tb_dir="t", resume="auto"
    )
    assert fingerprint_config(a) == fingerprint_config(b)
    assert fingerprint_config(a) != fingerprint_config(TrainConfig(model="m", data="d", out="o", lr=1e-3))
    assert {"out", "log_every", "resume"}.isdisjoint(fingerprint_config(a))


def test_the_engine_comes_from_the_strategy_field():
    import torch
    from mft_train.engine import LocalEngine
    from mft_train.engines import make_engine

    model = torch.nn.Linear(2, 2)
    sgd = lambda params: torch.optim.SGD(params, lr=0.1)
    constant = lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    for strategy in ("local", "ddp"):  # ddp over one process is the local engine
        cfg = TrainConfig(model="m", data="d", out="o", strategy=strategy)
        assert isinstance(make_engine(cfg, model, sgd, constant), LocalEngine)
    for strategy in ("zero2", "zero3", "fsdp"):  # never a silent fallback to one process
        with pytest.raises(ConfigError, match=f"strategy {strategy} shards over a process group"):
            make_engine(TrainConfig(model="m", data="d", out="o", strategy=strategy), model, sgd, constant)


EXAMPLE_CONFIGS = sorted((Path(__file__).resolve().parents[2] / "examples" / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", EXAMPLE_CONFIGS, ids=lambda p: p.name)
def test_every_shipped_example_config_builds_with_current_names(path, capsys):
    """What a user copies first: each examples/configs YAML is a valid config and uses no deprecated key."""
    cfg = build_config(TrainConfig, path, sets=["model=m", "data=d", "out=o"])
    assert cfg.out == "o"
    assert deprecation_lines(capsys) == []
