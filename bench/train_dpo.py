"""Benchmark: DPO training throughput of `mft-train` (preference: dpo) vs TRL's DPOTrainer, same model and pairs.

Model: llama h256 x 4 layers (preset `small`), LoRA r16 on all linear projections, bf16 autocast, beta 0.1; the
reference is the base with the adapter disabled on both sides (TRL: ``peft_config`` with ``ref_model=None``).
Data: 600 synthetic (chosen, rejected) pairs of code answers with a heavy-tailed length mix, one task.
Each variant runs in its own process, the same number of optimizer steps and about the same pairs per step
(ours: packed rows of whole pairs; TRL: pairs padded per batch). Measured: real (non-pad) tokens/s of both sides
after the first steps, peak RSS, and the DPO loss curve.

Peers: TRL (a) DPOConfig defaults (gradient checkpointing on); (b) gradient checkpointing off (its faster CPU
setting; DPOConfig's padding_free currently falls back to padding).
Writes bench/results/train_dpo.json. Exits non-zero only if a variant fails to run.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import shutil
import subprocess
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, os.path.dirname(__file__))
from common import WORK, write_result  # noqa: E402
from train_throughput import TARGETS, _Timer, summarize  # noqa: E402

SEQ = 512
PAIRS = 600


def synthetic_pairs(seed: int = 0) -> list[dict]:
    """Pairs sharing a prompt; answers of lognormal length (median ~60 tokens, tail to ~400)."""
    rng = random.Random(seed)
    words = "value total index result items count name data key left right node path size".split()

    def body(n, sign):
        return "\n".join(f"    {rng.choice(words)}_{i} = x {sign} {rng.randint(0, 99)}" for i in range(n))

    def length():
        return min(30, max(1, int(rng.lognormvariate(1.4, 0.8))))

    rows = []
    for i in range(PAIRS):
        prompt = [{"role": "user", "content": f"Write f{i}(x) using {' '.join(rng.choices(words, k=6))}"}]
        good = f"def f{i}(x):\n{body(length(), '+')}\n    return x"
        bad = f"def f{i}(x):\n{body(length(), '-')}\n    return 0"
        answer = [{"role": "assistant", "content": good}], [{"role": "assistant", "content": bad}]
        rows.append({"id": f"pair-{i}", "chosen": [*prompt, *answer[0]], "rejected": [*prompt, *answer[1]]})
    return rows


def run_ours(work, steps, rows_per_step, micro):
    from mft_train.api import train
    from mft_train.config import TrainConfig

    out = os.path.join(work, "ours")
    shutil.rmtree(out, ignore_errors=True)
    cfg = TrainConfig(
        model=os.path.join(work, "base"),
        data=os.path.join(work, "tok"),
        out=out,
        preference="dpo",
        beta=0.1,
        lr=2e-4,
        max_steps=steps,
        micro_batch_size=micro,
        grad_accum=rows_per_step // micro,
        seq_len=SEQ,
        bf16=True,
        loss="token",
        lora_r=16,
        lora_alpha=32,
        lora_dropout=0.0,
        target_modules=tuple(TARGETS),
        log_every=1,
        eval_every=0,
        warmup_steps=0,
        lr_schedule="constant",
    )
    train(cfg)
    rows = [json.loads(l) for l in open(os.path.join(out, "metrics.jsonl")) if '"train"' in l]
    return [(r["loss"], r["tokens_per_s"]) for r in rows]


def run_trl(work, steps, pairs_per_step, micro, variant):
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    base = os.path.join(work, "base")
    rows = [json.loads(l) for l in open(os.path.join(work, "trl_pairs.jsonl"))]
    cfg = DPOConfig(
        output_dir=os.path.join(work, variant),
        max_steps=steps,
        per_device_train_batch_size=micro,
        gradient_accumulation_steps=pairs_per_step // micro,
        learning_rate=2e-4,
        lr_scheduler_type="constant",
        warmup_steps=0,
        beta=0.1,
        bf16=True,
        use_cpu=True,
        max_length=SEQ,
        gradient_checkpointing=variant == "trl-a",
        logging_steps=1,
        report_to=[],
        save_strategy="no",
        dataloader_num_workers=0,
        seed=0,
    )
    timer = _Timer()
    trainer = DPOTrainer(
        model=AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32),
        ref_model=None,
        args=cfg,
        train_dataset=Dataset.from_list(rows),
        processing_class=AutoTokenizer.from_pretrained(base),
        peft_config=LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules=TARGETS, task_type="CAUSAL_LM"),
        callbacks=[timer.callback],
    )
    real_tokens: list[int] = []
    original = trainer.compute_loss

    def compute_loss(model, inputs, *a, **k):
        real_tokens.append(int(inputs["attention_mask"].sum()))
        return original(model, inputs, *a, **k)

    trainer.compute_loss = compute_loss
    trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    accum = pairs_per_step // micro
    per_step = [sum(real_tokens[i * accum : (i + 1) * accum]) for i in range(len(timer.times))]
    return [(l, n / t) for l, n, t in zip(losses, per_step, timer.times)]


def prepare(work) -> float:
    """Base, formatted + tokenized pairs for us, the same pairs (shuffled alike) for TRL; returns pairs per row."""
    from mft_data.api import FormatConfig, TokenizeConfig, format_task, load_tokenized, tokenize_folder
    from mft_train.base_init import InitBaseConfig, init_base

    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(work)
    init_base(InitBaseConfig(family="llama", preset="small", out=os.path.join(work, "base")))
    rows = synthetic_pairs()
    path = os.path.join(work, "pairs.jsonl")
    with open(path, "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    format_task(FormatConfig(inputs=(path,), task="codegen", out=os.path.join(work, "data")))
    tok = os.path.join(work, "tok")
    tokenize_folder(TokenizeConfig(folder=os.path.join(work, "data"), tokenizer=os.path.join(work, "base"), out=tok,
                                   seq_len=SEQ))  # fmt: skip
    train = load_tokenized(tok).train
    trl_rows = [{"prompt": r["chosen"][:-1], "chosen": r["chosen"][-1:], "rejected": r["rejected"][-1:]} for r in rows]
    random.Random(0).shuffle(trl_rows)
    with open(os.path.join(work, "trl_pairs.jsonl"), "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in trl_rows)
    return sum(len(s) for s in train["seq_lens"]) / 2 / len(train)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--variant")
    parser.add_argument("--steps", type=int, default=15)
    parser.add_argument("--rows-per-step", type=int, default=4, help="packed rows per optimizer step (ours)")
    parser.add_argument("--micro", type=int, default=2)
    args = parser.parse_args()
    work = str(WORK / "train_dpo")
    if args.variant:  # child process: one variant
        import torch

        torch.manual_seed(0)
        if args.variant == "ours":
            curve = run_ours(work, args.steps, args.rows_per_step, args.micro)
        else:
            curve = run_trl(work, args.steps, args.rows_per_step, args.micro, args.variant)
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print("RESULT " + json.dumps({"curve": curve, "peak_rss_mib": rss}))
        return
    pairs_per_row = prepare(work)
    # TRL batches pairs, we batch packed rows of pairs: give TRL as many pairs per step as our rows hold
    trl_pairs = max(2, round(args.rows_per_step * pairs_per_row / 2) * 2)
    plans = {"ours": (args.rows_per_step, args.micro), "trl-a": (trl_pairs, 2), "trl-b": (trl_pairs, 2)}
    results = {}
    for variant, (per_step, micro) in plans.items():
        cmd = [sys.executable, __file__, "--variant", variant, "--steps", str(args.steps),
               "--rows-per-step", str(per_step), "--micro", str(micro)]  # fmt: skip
        proc = subprocess.run(cmd, capture_output=True, text=True)
        line = [l for l in proc.stdout.splitlines() if l.startswith("RESULT ")]
        if proc.returncode != 0 or not line:
            print(proc.stdout[-3000:], proc.stderr[-5000:])
            raise SystemExit(f"variant {variant} failed")
        data = json.loads(line[0][7:])
        results[variant] = {
            **summarize(data["curve"], skip=2),
            "peak_rss_mib": round(data["peak_rss_mib"]),
            "curve": [[round(l, 4), round(t, 1)] for l, t in data["curve"]],
        }
        print(variant, {k: v for k, v in results[variant].items() if k != "curve"}, flush=True)
    ours = results["ours"]["tokens_per_s"]
    write_result(
        "train_dpo",
        {
            "measure": "real (non-pad) tokens/s of LoRA DPO training (both sides), llama h256x4, seq 512, bf16",
            "peer": "TRL 1.16 DPOTrainer, peft_config + ref_model=None (reference = adapter disabled)",
            "steps": args.steps,
            "pairs_per_step": {"ours": round(args.rows_per_step * pairs_per_row, 1), "trl": trl_pairs},
            "variants": results,
            "ratio_vs_trl_a": round(ours / results["trl-a"]["tokens_per_s"], 2),
            "ratio_vs_trl_b": round(ours / results["trl-b"]["tokens_per_s"], 2),
            "rss_ratio_vs_trl_b": round(results["ours"]["peak_rss_mib"] / results["trl-b"]["peak_rss_mib"], 2),
            "goal": ">= 2x vs TRL DPOTrainer",
        },
    )


if __name__ == "__main__":
    main()
