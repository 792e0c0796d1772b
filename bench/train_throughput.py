"""Benchmark: training throughput of `mft-train` vs TRL's SFTTrainer on the same tiny model and data.

Model: llama h256 x 4 layers (preset `small`), LoRA r16 on all linear projections, bf16 autocast, seq 512.
Data: three synthetic coding tasks with a realistic length mix (many short records, a long tail).
Each variant runs in its own process (for its own peak RSS), the same number of optimizer steps and the
same global batch in rows. Measured: real (non-pad) tokens/s after the first steps, peak RSS, MFU
(4N FLOPs per token for LoRA, N = parameters except the input embedding) against this CPU's measured
matmul peak, and the loss curve (token-mean loss per step, so both sides compute the same quantity).

Peers: TRL (a) defaults: padding, gradient checkpointing on; TRL (b) its best CPU setting, the faster of
packing + padding_free and padding without gradient checkpointing.
Writes bench/results/train_throughput.json. Exits non-zero only if a variant fails to run.
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
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, os.path.dirname(__file__))
from common import WORK, lora_train_config, trl_lora, write_result  # noqa: E402

SEQ = 512


def synthetic_tasks(seed: int = 0) -> dict[str, list[dict]]:
    """Three tasks; lengths from a heavy-tailed mix (median ~100 tokens, tail to ~500)."""
    rng = random.Random(seed)
    words = "value total index result items count name data key left right node path size".split()

    def body(n):
        return "\n".join(f"    {rng.choice(words)}_{i} = {rng.choice(words)}({rng.randint(0, 99)})" for i in range(n))

    def length():
        return min(45, max(1, int(rng.lognormvariate(1.6, 0.8))))

    gen = [
        {
            "instruction": f"Write function f{i} using {' '.join(rng.choices(words, k=8))}",
            "output": f"def f{i}(x):\n{body(length())}\n    return x",
        }
        for i in range(1500)
    ]
    explain = [
        {
            "conversations": [
                {"from": "human", "value": f"Explain:\ndef g{i}(x):\n{body(length())}"},
                {"from": "gpt", "value": " ".join(rng.choices(words, k=rng.randint(10, 80)))},
            ]
        }
        for i in range(1000)
    ]
    fix = [
        {
            "messages": [
                {"role": "user", "content": f"Fix:\ndef h{i}(x):\n{body(length())}"},
                {"role": "assistant", "content": f"def h{i}(x):\n{body(length())}"},
            ]
        }
        for i in range(800)
    ]
    return {"gen": gen, "explain": explain, "fix": fix}


def generation_template() -> str:
    from data_tokenize import generation_template as t

    return t()


def matmul_peak(dtype_name: str) -> float:
    import torch

    dtype = getattr(torch, dtype_name)
    a, b = torch.randn(1024, 1024, dtype=dtype), torch.randn(1024, 1024, dtype=dtype)
    for _ in range(3):
        a @ b
    n, start = 20, time.perf_counter()
    for _ in range(n):
        a @ b
    return 2 * 1024**3 * n / (time.perf_counter() - start) / 1e9


def flops_params(model_dir: str) -> int:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir)
    return sum(p.numel() for n, p in model.named_parameters() if "embed_tokens" not in n)


# ---------------------------------------------------------------------------------------------------------------
def run_ours(work, steps, rows_per_step, micro, compile=False):
    from mft_train.api import train

    out = os.path.join(work, "ours")
    shutil.rmtree(out, ignore_errors=True)
    cfg = lora_train_config(os.path.join(work, "base"), os.path.join(work, "tok"), out, lr=2e-4, max_steps=steps,
                            micro_batch_size=micro, grad_accum=rows_per_step // micro, seq_len=SEQ, bf16=True,
                            eval_every=0, warmup_steps=0, compile=compile)  # fmt: skip
    train(cfg)
    rows = [json.loads(l) for l in open(os.path.join(out, "metrics.jsonl")) if '"train"' in l]
    return [(r["loss"], r["tokens_per_s"]) for r in rows]


class _Timer:
    def __init__(self):
        from transformers import TrainerCallback

        outer = self

        class CB(TrainerCallback):
            def on_step_begin(self, args, state, control, **kw):
                outer.start = time.perf_counter()

            def on_step_end(self, args, state, control, **kw):
                outer.times.append(time.perf_counter() - outer.start)

        self.callback = CB()
        self.times: list[float] = []
        self.start = 0.0


def trl_args(work, variant, steps, rows_per_step, micro) -> dict:
    """The TrainingArguments every TRL peer gets: same steps, batch, lr schedule and bf16 as ours; variant (a)
    checkpoints gradients (TRL's default), the others do not."""
    return dict(
        output_dir=os.path.join(work, variant),
        max_steps=steps,
        per_device_train_batch_size=micro,
        gradient_accumulation_steps=rows_per_step // micro,
        learning_rate=2e-4,
        lr_scheduler_type="constant",
        warmup_steps=0,
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


def timed_trl_curve(make_trainer, accum: int) -> list[tuple[float, float]]:
    """Train a TRL trainer (``make_trainer(callbacks)``) and return (loss, real tokens/s) per optimizer step: real
    tokens from each micro-batch's attention mask, time from the step callbacks."""
    timer = _Timer()
    trainer = make_trainer([timer.callback])
    real_tokens: list[int] = []
    original = trainer.compute_loss

    def compute_loss(model, inputs, *a, **k):
        mask = inputs.get("attention_mask")
        real_tokens.append(int(mask.sum()) if mask is not None else int(inputs["input_ids"].numel()))
        return original(model, inputs, *a, **k)

    trainer.compute_loss = compute_loss
    trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    per_step_tokens = [sum(real_tokens[i * accum : (i + 1) * accum]) for i in range(len(timer.times))]
    return [(l, n / t) for l, n, t in zip(losses, per_step_tokens, timer.times)]


def run_trl(work, steps, rows_per_step, micro, variant):
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    base = os.path.join(work, "base")
    tok = AutoTokenizer.from_pretrained(base)
    tok.chat_template = generation_template()
    records = [json.loads(l) for l in open(os.path.join(work, "messages.jsonl"))]
    packing = variant == "trl-b-packing"
    cfg = SFTConfig(
        **trl_args(work, variant, steps, rows_per_step, micro),
        packing=packing,
        padding_free=packing,
        assistant_only_loss=True,
    )
    return timed_trl_curve(
        lambda callbacks: SFTTrainer(
            model=AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32),
            args=cfg,
            train_dataset=Dataset.from_list(records),
            processing_class=tok,
            peft_config=trl_lora(),
            callbacks=callbacks,
        ),
        rows_per_step // micro,
    )


# ---------------------------------------------------------------------------------------------------------------
def prepare(work):
    from mft_data.api import FormatConfig, TokenizeConfig, format_task, tokenize_folder
    from mft_train.base_init import InitBaseConfig, init_base

    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(work)
    init_base(InitBaseConfig(family="llama", preset="small", out=os.path.join(work, "base")))
    tasks = synthetic_tasks()
    for name, rows in tasks.items():
        path = os.path.join(work, f"{name}.jsonl")
        with open(path, "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)
        format_task(FormatConfig(inputs=(path,), task=name, out=os.path.join(work, "data")))
    tokenize_folder(
        TokenizeConfig(
            folder=os.path.join(work, "data"),
            tokenizer=os.path.join(work, "base"),
            out=os.path.join(work, "tok"),
            seq_len=SEQ,
        )
    )
    # the same records as chat messages for TRL, shuffled the same way for every peer
    from mft_data.api import read_formatted_records

    messages = [
        {"messages": r["chat_rounds"]} for rs in read_formatted_records(os.path.join(work, "data")).values() for r in rs
    ]
    random.Random(0).shuffle(messages)
    with open(os.path.join(work, "messages.jsonl"), "w") as f:
        f.writelines(json.dumps(m) + "\n" for m in messages)


def summarize(curve, skip):
    steady = curve[skip:] or curve
    tps = sum(t for _, t in steady) / len(steady)
    return {
        "tokens_per_s": round(tps, 1),
        "loss_first": round(curve[0][0], 4),
        "loss_last5": round(sum(l for l, _ in curve[-5:]) / len(curve[-5:]), 4),
    }


def measure_variant(script: str, variant: str, steps: int, rows: int, micro: int, skip: int) -> dict:
    """Run ``script --variant VARIANT`` in its own process (its own peak RSS) and summarise the curve it prints."""
    cmd = [sys.executable, script, "--variant", variant, "--steps", str(steps), "--rows-per-step", str(rows),
           "--micro", str(micro)]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True)
    line = [l for l in proc.stdout.splitlines() if l.startswith("RESULT ")]
    if proc.returncode != 0 or not line:
        print(proc.stdout[-3000:], proc.stderr[-5000:])
        raise SystemExit(f"variant {variant} failed")
    data = json.loads(line[0][7:])
    return {
        **summarize(data["curve"], skip=skip),
        "peak_rss_mib": round(data["peak_rss_mib"]),
        "curve": [[round(l, 4), round(t, 1)] for l, t in data["curve"]],
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--variant")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--rows-per-step", type=int, default=8, help="rows per optimizer step (packed rows for us)")
    parser.add_argument("--micro", type=int, default=4)
    args = parser.parse_args()
    work = str(WORK / "train_throughput")
    if args.variant:  # child process: run one variant, print its curve and peak RSS
        import torch

        torch.manual_seed(0)
        if args.variant in ("ours", "ours-compile"):
            curve = run_ours(work, args.steps, args.rows_per_step, args.micro, compile=args.variant == "ours-compile")
        else:
            curve = run_trl(work, args.steps, args.rows_per_step, args.micro, args.variant)
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print("RESULT " + json.dumps({"curve": curve, "peak_rss_mib": rss}))
        return
    prepare(work)
    results = {}
    # TRL rows are single records (padding) or packed rows; it gets 4x the rows per step when it pads so the
    # real tokens per step are comparable (our packed rows hold ~4 records of this mix)
    plans = {
        "ours": (args.rows_per_step, args.micro),
        "trl-a": (args.rows_per_step * 4, args.micro * 4),
        "trl-b-padding": (args.rows_per_step * 4, args.micro * 4),
        "trl-b-packing": (args.rows_per_step, args.micro),
    }
    for variant, (rows, micro) in plans.items():
        results[variant] = measure_variant(__file__, variant, args.steps, rows, micro, skip=3)
        print(variant, {k: v for k, v in results[variant].items() if k != "curve"}, flush=True)
    n = flops_params(os.path.join(work, "base"))
    peak_bf16, peak_fp32 = matmul_peak("bfloat16"), matmul_peak("float32")
    for r in results.values():
        r["mfu_vs_bf16_peak"] = round(4 * n * r["tokens_per_s"] / (peak_bf16 * 1e9), 3)
    best_b = max(("trl-b-padding", "trl-b-packing"), key=lambda k: results[k]["tokens_per_s"])
    ours = results["ours"]
    write_result(
        "train_throughput",
        {
            "measure": "real (non-pad) tokens/s of LoRA training, llama h256x4 (preset small), seq 512, bf16 autocast",
            "steps": args.steps,
            "flops_params_N": n,
            "matmul_peak_gflops": {"bf16": round(peak_bf16), "fp32": round(peak_fp32)},
            "variants": results,
            "ratio_vs_trl_a": round(ours["tokens_per_s"] / results["trl-a"]["tokens_per_s"], 2),
            "ratio_vs_trl_b": round(ours["tokens_per_s"] / results[best_b]["tokens_per_s"], 2),
            "trl_b_is": best_b,
            "rss_ratio_vs_trl_a": round(ours["peak_rss_mib"] / results["trl-a"]["peak_rss_mib"], 2),
            "goals": {"vs_trl_a": ">= 3x", "vs_trl_b": ">= 1.5x", "mfu": ">= 0.5 of bf16 peak"},
        },
    )


if __name__ == "__main__":
    main()
