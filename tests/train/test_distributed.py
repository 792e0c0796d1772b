"""Two CPU processes (gloo) give the same losses and weights as one; silent launcher fallbacks are refused.

For ddp, zero2, zero3, fsdp (and atorch, in its own environment): 2 processes x 2 micro-batches vs 1 process x 4
micro-batches on the same rows,
`task` loss, one task held by a single row (so in every step one rank has no token of it).
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from helpers import format_folder, pair_folder, train_config
from mft_core.config import config_to_dict
from mft_core.errors import ConfigError
from mft_train.launch import check_launch_environment

EXE = os.path.join(os.path.dirname(sys.executable), "mft-train")
pytestmark = pytest.mark.multiproc


def _atorch_imports() -> bool:
    import importlib.util

    return importlib.util.find_spec("atorch") is not None


# ATorch lives in its own environment (`make test-atorch` runs these there); in the default one it is absent
ATORCH = pytest.param(
    "atorch", marks=pytest.mark.skipif(not _atorch_imports(), reason="ATorch not installed: make test-atorch")
)
STRATEGIES = ["ddp", "zero2", "zero3", "fsdp", ATORCH]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def uneven(llama_base, tmp_path_factory):
    """8 rows, one record each (pad mode): task `rare` has a single row."""
    from mft_data.api import TokenizeConfig, tokenize_folder

    tmp = tmp_path_factory.mktemp("dist")
    tasks = {
        "common": [{"prompt": f"Add {i} to x", "answer": f"def f(x):\n    return x + {i}"} for i in range(5)],
        "other": [{"prompt": f"Explain {i}", "answer": f"It returns {i} more." * (1 + i)} for i in range(2)],
        "rare": [{"prompt": "Write max", "answer": "def m(a, b):\n    return a if a > b else b"}],
    }
    folder = format_folder(tmp / "data", tasks)
    tokenize_folder(
        TokenizeConfig(folder=str(folder), tokenizer=str(llama_base), out=str(tmp / "tok"), seq_len=64, mode="pad")
    )
    return tmp / "tok"


def write_config(path, base, data, **kw):
    cfg = config_to_dict(
        train_config(
            base,
            data,
            path.parent / "unused",
            **{
                "lora_dropout": 0.0,
                "max_steps": 3,
                "eval_every": 0,
                "lr": 1e-3,
                "warmup_steps": 0,
                "loss": "task",
                "micro_batch_size": 2,
                **kw,
            },
        )
    )
    path.write_text(yaml.safe_dump(cfg))
    return path


def run_single(config, out, *sets):
    """One process x 4 micro-batches: the reference for `launch_cmd`'s 2 x 2."""
    proc = subprocess.run(
        [EXE, "run", str(config)] + [a for s in (f"out={out}", "grad_accum=4", *sets) for a in ("--set", s)],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]


def launch_cmd(config, out, strategy, *sets) -> list[str]:
    """`mft-train launch` on 2 processes x 2 micro-batches (the single-process reference runs 1 x 4)."""
    cmd = [EXE, "launch", str(config), "--nproc", "2", "--strategy", strategy, "--master-port", str(free_port())]
    return cmd + [a for s in (f"out={out}", "grad_accum=2", *sets) for a in ("--set", s)]


def run_launch(config, out, strategy, *sets, check=True, **popen):
    cmd = launch_cmd(config, out, strategy, *sets)
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900, **popen)
    if check:
        assert proc.returncode == 0, proc.stderr[-5000:]
    return proc


def losses(out):
    return [json.loads(l)["loss"] for l in (out / "metrics.jsonl").read_text().splitlines() if '"train"' in l]


def adapter(out):
    from safetensors.torch import load_file

    return load_file(str(out / "adapter" / "adapter_model.safetensors"))


@pytest.fixture(scope="module")
def reference(llama_base, uneven, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ref")
    config = write_config(tmp / "cfg.yaml", llama_base, uneven)
    run_single(config, tmp / "single")
    return config, tmp / "single"


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_two_processes_equal_one(reference, strategy, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    config, single = reference
    out = tmp_path / strategy
    proc = run_launch(config, out, strategy)
    if strategy == "zero3":  # never the whole model on every rank
        assert "loaded partitioned over 2 ranks" in proc.stdout + proc.stderr
    if strategy == "atorch":  # ATorch's own auto_accelerate did the wrapping
        wrapped = "auto_accelerate: parallel_mode wrapped the model in DistributedDataParallel"
        assert wrapped in proc.stdout + proc.stderr
    assert losses(out) == pytest.approx(losses(single), abs=1e-5)
    a, b = adapter(single), adapter(out)
    assert a.keys() == b.keys()
    for name in a:
        assert torch.allclose(a[name], b[name], atol=1e-5), (strategy, name)
    # the output is a plain PEFT adapter, loadable without DeepSpeed or a process group
    base = AutoModelForCausalLM.from_pretrained(yaml.safe_load(config.read_text())["model"])
    PeftModel.from_pretrained(base, out / "adapter")


# fsdp (synced generation on a sharded model) passes too; it runs in `make test-slow` to keep `make test` shorter
@pytest.mark.parametrize("strategy", ["ddp", pytest.param("fsdp", marks=pytest.mark.slow)])
def test_problem_eval_two_processes_equal_one(llama_base, strategy, tmp_path):
    """eval_problems under 2 ranks: problems split over ranks, counts summed; pass@1 as with 1 process (fsdp: the
    sharded model generates in step on both ranks)."""
    from helpers import memorise_folder

    data = memorise_folder(tmp_path / "mem", llama_base)
    sets = {"gen": str(data["gen"]), "other": str(data["other"])}
    config = write_config(tmp_path / "cfg.yaml", llama_base, data["tok"], peft="none", max_steps=60, eval_every=30,
                          lr_schedule="constant", lr=5e-3, seq_len=128, eval_problems=sets,
                          eval_problems_max_new_tokens=24)  # fmt: skip
    run_single(config, tmp_path / "single")
    run_launch(config, tmp_path / strategy, strategy)

    def evals(out):
        return [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines() if '"eval"' in l]

    one, two = evals(tmp_path / "single"), evals(tmp_path / strategy)
    assert [r["passed"] for r in one] == [r["passed"] for r in two]
    assert one[-1]["passed"]["gen"] == [2, 4], one  # it learned (a run passing nothing would prove little)
    rows = (tmp_path / strategy / "problems" / "step-60.jsonl").read_text().splitlines()
    assert len(rows) == 6  # every rank's samples, written once


def test_task_sampling_two_processes_equal_one(llama_base, uneven, tmp_path):
    """Sampled epochs (common x0.6, rare x3) give the same global batches on 2 ranks as on 1: same losses, weights."""
    config = write_config(tmp_path / "cfg.yaml", llama_base, uneven, task_sampling={"common": 0.6, "rare": 3.0})
    run_single(config, tmp_path / "single", "max_steps=0", "epochs=2")
    run_launch(config, tmp_path / "ddp", "ddp", "max_steps=0", "epochs=2")
    assert losses(tmp_path / "ddp") == pytest.approx(losses(tmp_path / "single"), abs=1e-5)
    a, b = adapter(tmp_path / "single"), adapter(tmp_path / "ddp")
    for name in a:
        assert torch.allclose(a[name], b[name], atol=1e-5), name
    summary = json.loads((tmp_path / "ddp" / "manifest.json").read_text())["summary"]
    assert [e["rare"]["records"] for e in summary["task_sampling"]["per_epoch"]] == [3, 3]
    assert [e["common"]["records"] for e in summary["task_sampling"]["per_epoch"]] == [3, 3]  # round(0.6 x 5)


@pytest.mark.parametrize("strategy", ["zero3", "fsdp"])
def test_full_fine_tuning_under_sharded_strategies_equals_one_process(reference, strategy, tmp_path):
    """peft none: the sharded states are gathered into one plain HF model folder equal to a single process's.

    SGD, not Adam: Adam moves every weight by ~lr whatever its gradient's size, so float noise on a near-zero
    gradient (an embedding row seen once) flips a step's sign; with SGD the weights differ by lr x the gradients'."""
    from safetensors.torch import load_file

    config, _ = reference
    full = ("peft=none", "optimizer=sgd", "lr=0.5")
    single = tmp_path / "single"
    run_single(config, single, *full)
    out = tmp_path / strategy
    run_launch(config, out, strategy, *full)
    assert losses(out) == pytest.approx(losses(single), abs=1e-5)
    a, b = load_file(str(single / "model" / "model.safetensors")), load_file(str(out / "model" / "model.safetensors"))
    base = load_file(str(Path(yaml.safe_load(Path(config).read_text())["model"]) / "model.safetensors"))
    assert a.keys() == b.keys()
    assert max(float((a[n] - base[n]).abs().max()) for n in a) > 1e-3, "the steps moved the weights"
    for name in a:
        assert torch.allclose(a[name], b[name], atol=1e-5, rtol=0), (strategy, name)


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_kill_and_resume_equals_uninterrupted(reference, strategy, tmp_path):
    """SIGKILL the whole launch (torchrun and both workers) after step 3, resume, compare to uninterrupted."""
    config, _ = reference
    sets = ("max_steps=6", "save_every=2")
    straight = tmp_path / "straight"
    run_launch(config, straight, strategy, *sets)
    out = tmp_path / "killed"
    cmd = launch_cmd(config, out, strategy, *sets)
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 600
    while time.time() < deadline and not (out / "checkpoint-2").is_dir():
        time.sleep(0.2)
    metrics = out / "metrics.jsonl"
    while time.time() < deadline and (not metrics.exists() or metrics.read_text().count('"train"') < 3):
        time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (out / "manifest.json").exists()
    run_launch(config, out, strategy, *sets, "resume=auto")
    a, b = adapter(straight), adapter(out)
    for name in a:
        assert torch.allclose(a[name], b[name], atol=1e-6), (strategy, name)


def test_fallback_detection():
    with pytest.raises(ConfigError, match="FSDP plugin is ignored on CPU"):
        check_launch_environment({"ACCELERATE_USE_FSDP": "true"}, cuda=False)
    with pytest.raises(ConfigError, match="started one"):
        check_launch_environment({"ACCELERATE_USE_CPU": "True", "MASTER_ADDR": "127.0.0.1"}, cuda=False)
    with pytest.raises(ConfigError, match="expected 2 processes"):
        check_launch_environment({"MFT_EXPECTED_WORLD_SIZE": "2", "WORLD_SIZE": "1"}, cuda=False)
    check_launch_environment({"WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "ACCELERATE_USE_CPU": "True"}, cuda=False)
    check_launch_environment({}, cuda=False)


def test_accelerate_cpu_fallback_is_refused_for_real(reference, tmp_path):
    """`accelerate launch --cpu --num_processes 2` really starts one process; the worker notices and refuses."""
    config, _ = reference
    accelerate = os.path.join(os.path.dirname(sys.executable), "accelerate")
    proc = subprocess.run(
        [
            accelerate,
            "launch",
            "--cpu",
            "--num_processes",
            "2",
            "--num_machines",
            "1",
            "--mixed_precision",
            "no",
            "--dynamo_backend",
            "no",
            "-m",
            "mft_train.worker",
            str(config),
            "--set",
            f"out={tmp_path / 'acc'}",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode != 0
    assert "started one" in proc.stderr + proc.stdout
    assert not (tmp_path / "acc" / "manifest.json").exists()


def test_dry_run_prints_torchrun_and_accelerate_lines(tmp_path):
    proc = subprocess.run(
        [
            EXE,
            "launch",
            "cfg.yaml",
            "--nproc",
            "8",
            "--nnodes",
            "2",
            "--node-rank",
            "1",
            "--master-addr",
            "10.0.0.1",
            "--strategy",
            "zero3",
            "--offload",
            "params",
            "--dry-run",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0
    assert "torch.distributed.run --nproc_per_node=8 --nnodes=2 --node_rank=1 --master_addr=10.0.0.1" in proc.stdout
    assert "MFT_STRATEGY=zero3" in proc.stdout and "accelerate launch --use_deepspeed --zero_stage 3" in proc.stdout
    # the workers get the strategy in their config, in both lines
    assert proc.stdout.count("--set strategy=zero3 --set offload=params") == 2
    bad = subprocess.run(
        [EXE, "launch", "cfg.yaml", "--strategy", "zero2", "--offload", "params", "--dry-run"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bad.returncode == 2 and "zero3" in bad.stderr


def test_coba_weights_are_the_same_on_every_rank_and_as_one_process(llama_base, tmp_path):
    """Valid losses are all-reduced, so two ranks compute the weights one process computes."""
    from helpers import tokenized_folder

    data = tokenized_folder(tmp_path / "data", llama_base, seq_len=96, split=0.3)
    config = write_config(tmp_path / "cfg.yaml", llama_base, data)
    sets = ("task_weighting=coba", "coba_warmup_steps=2", "coba_history_length=3", "max_steps=5")
    single = tmp_path / "single"
    run_single(config, single, *sets)
    run_launch(config, tmp_path / "ddp", "ddp", *sets)

    def weights(out):
        return [
            json.loads(l)["task_weights"] for l in (out / "metrics.jsonl").read_text().splitlines() if '"balance"' in l
        ]

    one, two = weights(single), weights(tmp_path / "ddp")
    assert len(one) == len(two) == 5 and one[-1] != pytest.approx(one[0])
    # five Adam steps amplify float rounding (the chunked head sums a row's gradient in another order than the
    # materialised logits' backward: 1.1e-6 apart here, under 1e-6 with lm_head_chunk=0), far below what a
    # missing all-reduce of the valid losses changes
    for a, b in zip(one, two):
        assert a == pytest.approx(b, abs=5e-6)


@pytest.mark.parametrize("strategy", ["fsdp", "zero3"])
def test_qlora_under_sharded_strategies(reference, strategy, tmp_path):
    """QLoRA (nf4 stored in bf16) with FSDP2 and ZeRO-3 on two CPU processes: trains, saves a plain adapter."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    config, _ = reference
    out = tmp_path / strategy
    run_launch(config, out, strategy, "peft=qlora", "max_steps=2")
    assert all(l == l for l in losses(out)) and len(losses(out)) == 2
    assert not list((out / "adapter").glob("model*.safetensors"))
    base = AutoModelForCausalLM.from_pretrained(yaml.safe_load(config.read_text())["model"])
    PeftModel.from_pretrained(base, out / "adapter")


def test_launch_any_command_kind(llama_base, tmp_path):
    """`launch --kind pretrain`: the pretrain command's defaults (full model, token loss) on raw files, 2 ranks."""
    from mft_core.manifest import read_manifest

    src = tmp_path / "src"
    src.mkdir()
    for i in range(4):
        (src / f"m{i}.py").write_text(f"def f{i}(x):\n    return x + {i}\n" * 20)
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({"model": str(llama_base), "data": str(src), "seq_len": 64, "max_steps": 2}))
    out = tmp_path / "pre"
    proc = subprocess.run(
        launch_cmd(config, out, "ddp", "micro_batch_size=2", "eval_every=0") + ["--kind", "pretrain"],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = read_manifest(out).summary
    assert summary["tasks"] == ["text"] and summary["loss"] == "token" and summary["peft"] == "none"
    assert (out / "model" / "model.safetensors").is_file()


@pytest.mark.parametrize(
    "preference, strategy",
    [
        ("dpo", "ddp"),
        ("dpo", "zero3"),  # parameters sharded: the reference pass (adapter disabled) gathers them as training does
        ("dpo", "fsdp"),
        pytest.param("orpo", "ddp", marks=pytest.mark.slow),
        pytest.param("dpo", "zero2", marks=pytest.mark.slow),
    ],
)
def test_preference_two_processes_equal_one(llama_base, preference, strategy, tmp_path):
    """Task-balanced DPO/ORPO on 2 ranks x 2 micro-batches = 1 x 4, under DDP, ZeRO and FSDP: one SGD step at lr 1,
    so the adapters differ by exactly the gradients (the LoRA B matrices start at 0: their change is the whole
    gradient)."""
    data = pair_folder(tmp_path, llama_base, seq_len=160, split=None)
    config = write_config(tmp_path / "cfg.yaml", llama_base, data, preference=preference, seq_len=160,
                          optimizer="sgd", lr=1.0, max_steps=1, task_weights={"gen": 1.0, "fix": 3.0})  # fmt: skip
    run_single(config, tmp_path / "single")
    run_launch(config, tmp_path / strategy, strategy)
    assert losses(tmp_path / strategy) == pytest.approx(losses(tmp_path / "single"), abs=1e-6)
    a, b = adapter(tmp_path / "single"), adapter(tmp_path / strategy)
    moved = [n for n in a if "lora_B" in n and a[n].abs().max() > 1e-4]
    assert moved, "the step changed the adapter"
    for name in a:
        assert torch.allclose(a[name], b[name], atol=1e-6, rtol=0), name
