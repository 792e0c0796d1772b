"""Benchmark: peak memory and wall time of `mft-merge` vs PEFT `merge_and_unload` + `save_pretrained`.

A ~2 GB random-init llama (fp32, several shards) and a LoRA adapter (r 16, all linear projections). Each side
runs in its own process so its peak RSS is its own; outputs are then compared tensor by tensor with PEFT's.
`mft-merge` runs as a user runs it (`--verify auto`: the layers check, each changed weight against PEFT's own
merge of it), with `--no-verify`, and with `--verify logits` (both models loaded). PEFT and the default run
twice, interleaved, and each reports its faster run: on this VM, memory the host has reclaimed faults back in slowly,
so one run alone can be off by half. Writes bench/results/merge_memory.json. Exits non-zero only if something fails
to run.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, os.path.dirname(__file__))
from common import WORK, write_result  # noqa: E402

SHAPE = dict(
    hidden_size=2048,
    intermediate_size=5504,
    num_hidden_layers=8,
    num_attention_heads=16,
    num_key_value_heads=16,
    vocab_size=32000,
    max_position_embeddings=2048,
)


def build(work: str) -> None:
    import torch
    from mft_train.base_init import train_tokenizer
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, LlamaConfig

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(LlamaConfig(**SHAPE), dtype=torch.float32)
    model.save_pretrained(os.path.join(work, "base"), max_shard_size="500MB")
    train_tokenizer(4096, 0.5, True).save_pretrained(os.path.join(work, "base"))
    peft_model = get_peft_model(
        model,
        LoraConfig(
            r=16,
            lora_alpha=32,
            init_lora_weights=False,
            target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        ),
    )
    peft_model.save_pretrained(os.path.join(work, "adapter"))


def peft_merge(work: str) -> None:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(os.path.join(work, "base"), dtype=torch.float32)
    merged = PeftModel.from_pretrained(base, os.path.join(work, "adapter")).merge_and_unload()
    merged.save_pretrained(os.path.join(work, "peft-out"), max_shard_size="500MB")


def ours(work: str, verify: str) -> None:
    from mft_merge.api import merge
    from mft_merge.config import MergeConfig

    out = os.path.join(work, f"mft-out-{verify}")
    merge(
        MergeConfig(
            adapter=os.path.join(work, "adapter"),
            base=os.path.join(work, "base"),
            out=out,
            dtype="fp32",
            max_shard_size="500MB",
            verify=verify,
            overwrite=True,
        )
    )


def compare(a: str, b: str) -> float:
    """Max |difference| over every tensor of two saved models (read one tensor at a time)."""
    from mft_merge.merge import base_entries
    from mft_merge.safetensors_io import read_tensor

    right = {s.entry.name: s for s in base_entries(__import__("pathlib").Path(b))}
    worst = 0.0
    for s in base_entries(__import__("pathlib").Path(a)):
        with open(s.path, "rb") as fa, open(right[s.entry.name].path, "rb") as fb:
            x, y = read_tensor(fa, s.entry), read_tensor(fb, right[s.entry.name].entry)
        worst = max(worst, (x.float() - y.float()).abs().max().item())
    return worst


def child(kind: str, work: str) -> None:
    start = time.perf_counter()
    if kind == "build":
        build(work)
    elif kind == "peft":
        peft_merge(work)
    else:
        ours(work, kind.split(":", 1)[1])
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print("RESULT " + json.dumps({"seconds": time.perf_counter() - start, "peak_rss_mib": rss}))


def run(kind: str, work: str) -> dict:
    proc = subprocess.run([sys.executable, __file__, kind, work], capture_output=True, text=True)
    line = [l for l in proc.stdout.splitlines() if l.startswith("RESULT ")]
    if proc.returncode != 0 or not line:
        print(proc.stdout[-2000:], proc.stderr[-4000:])
        raise SystemExit(f"{kind} failed")
    return json.loads(line[0][7:])


def main() -> None:
    if len(sys.argv) == 3:
        child(sys.argv[1], sys.argv[2])
        return
    work = str(WORK / "merge_memory")
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(work)
    run("build", work)
    size = sum(
        os.path.getsize(os.path.join(work, "base", f))
        for f in os.listdir(os.path.join(work, "base"))
        if f.endswith(".safetensors")
    )
    runs: dict[str, list[dict]] = {"peft": [], "mft:auto": [], "mft:none": [], "mft:logits": []}
    for kind in ["peft", "mft:auto", "mft:none", "peft", "mft:auto", "mft:logits"]:
        shutil.rmtree(os.path.join(work, f"mft-out-{kind.split(':')[-1]}"), ignore_errors=True)  # no up-to-date skip
        runs[kind].append(run(kind, work))
    best = {k: min(v, key=lambda r: r["seconds"]) for k, v in runs.items()}
    from mft_core.manifest import read_manifest

    auto_check = read_manifest(os.path.join(work, "mft-out-auto")).summary["verification"]
    diffs = {v: compare(os.path.join(work, "peft-out"), os.path.join(work, f"mft-out-{v}")) for v in ("auto", "none")}
    peft = best["peft"]

    def row(kind: str) -> dict:
        r = best[kind]
        return {
            "seconds": round(r["seconds"], 1),
            "peak_rss_mib": round(r["peak_rss_mib"], 1),
            "runs_seconds": [round(x["seconds"], 1) for x in runs[kind]],
            "speedup_vs_peft": round(peft["seconds"] / r["seconds"], 2),
            "rss_ratio_vs_peft": round(r["peak_rss_mib"] / peft["peak_rss_mib"], 3),
        }

    write_result(
        "merge_memory",
        {
            "measure": "peak RSS and wall time of a LoRA merge of a ~2 GB fp32 model in 500 MB shards",
            "base_bytes": size,
            "shards": len([f for f in os.listdir(os.path.join(work, "base")) if f.endswith(".safetensors")]),
            "peer": "PEFT 0.21.2 merge_and_unload + save_pretrained",
            "peft": row("peft"),
            "mft_merge_default": {
                **row("mft:auto"),
                "check": auto_check["check"],
                "max_diff_eps": auto_check["max_abs_diff"],
            },
            "mft_merge_no_verify": row("mft:none"),
            "mft_merge_verify_logits": row("mft:logits"),
            "max_abs_diff_vs_peft": diffs,
            "goal": "default mft-merge (with its check) >= 1.5x faster than PEFT merge + save, peak RSS <= 0.35x, "
            "output identical",
            "goal_met": best["mft:auto"]["seconds"] * 1.5 <= peft["seconds"]
            and best["mft:auto"]["peak_rss_mib"] <= 0.35 * peft["peak_rss_mib"]
            and max(diffs.values()) == 0.0,
        },
    )
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
