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
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, os.path.dirname(__file__))
from common import WORK, lora_train_config, trl_lora, write_result  # noqa: E402
from train_throughput import measure_variant, timed_trl_curve, trl_args  # noqa: E402

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

    out = os.path.join(work, "ours")
    shutil.rmtree(out, ignore_errors=True)
    cfg = lora_train_config(os.path.join(work, "base"), os.path.join(work, "tok"), out, preference="dpo", beta=0.1,
                            lr=2e-4, max_steps=steps, micro_batch_size=micro, grad_accum=rows_per_step // micro,
                            seq_len=SEQ, bf16=True, eval_every=0, warmup_steps=0)  # fmt: skip
    train(cfg)
    rows = [json.loads(l) for l in open(os.path.join(out, "metrics.jsonl")) if '"train"' in l]
    return [(r["loss"], r["tokens_per_s"]) for r in rows]


def run_trl(work, steps, pairs_per_step, micro, variant):
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    base = os.path.join(work, "base")
    rows = [json.loads(l) for l in open(os.path.join(work, "trl_pairs.jsonl"))]
    cfg = DPOConfig(**trl_args(work, variant, steps, pairs_per_step, micro), beta=0.1)
    return timed_trl_curve(
        lambda callbacks: DPOTrainer(
            model=AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32),
            ref_model=None,
            args=cfg,
            train_dataset=Dataset.from_list(rows),
            processing_class=AutoTokenizer.from_pretrained(base),
            peft_config=trl_lora(),
            callbacks=callbacks,
        ),
        pairs_per_step // micro,
    )


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
        results[variant] = measure_variant(__file__, variant, args.steps, per_step, micro, skip=2)
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
