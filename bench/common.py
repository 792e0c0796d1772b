"""Helpers shared by the benchmarks: machine description, result files, timing, peak RSS."""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import resource
import time
from contextlib import contextmanager
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
# LoRA on every linear projection of a llama/qwen2 block: what the training benchmarks train, ours and TRL's alike
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
LORA_R, LORA_ALPHA = 16, 32
WORK = Path(__file__).resolve().parent / "work"


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{os.cpu_count()} cores ({cpu}), {mem:.0f} GiB, {platform.system()}"


def write_result(name: str, payload: dict) -> Path:
    """Write ``bench/results/<name>.json`` with date and machine added; prints it too."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    payload = {"benchmark": name, "date": dt.date.today().isoformat(), "machine": machine(), **payload}
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(payload, indent=2) + "\n")
    print(json.dumps(payload, indent=2))
    return path


@contextmanager
def timer():
    box = {}
    start = time.perf_counter()
    yield box
    box["seconds"] = time.perf_counter() - start


def peak_rss_mib_children() -> float:
    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024


def peak_rss_mib_self() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def lora_train_config(model, data, out, **settings):
    """The run every training benchmark measures: LoRA r16 (alpha 32, no dropout) on :data:`LORA_TARGETS`,
    token-mean loss, constant lr, a metrics line per step; ``settings`` are what the benchmark varies."""
    from mft_train.config import TrainConfig

    base = dict(model=str(model), data=str(data), out=str(out), loss="token", lora_r=LORA_R, lora_alpha=LORA_ALPHA,
                lora_dropout=0.0, target_modules=tuple(LORA_TARGETS), log_every=1, lr_schedule="constant")  # fmt: skip
    return TrainConfig(**{**base, **settings})


def trl_lora():
    """The same LoRA for a TRL peer, as the ``peft_config`` its trainers take."""
    from peft import LoraConfig

    return LoraConfig(r=LORA_R, lora_alpha=LORA_ALPHA, lora_dropout=0.0, target_modules=LORA_TARGETS,
                      task_type="CAUSAL_LM")  # fmt: skip
