"""Benchmark: training memory on a real vocabulary and long rows, chunked LM head vs materialised logits vs TRL.

Model: Qwen2-shaped (preset `small`: hidden 256, 4 layers, tied embeddings) with Qwen2.5's vocabulary size,
151,936 rows (the embedding resized after `mft-train init-base`), LoRA r16 on all projections, fp32: on this
CPU bf16 GEMMs with a vocabulary-sized dimension leave oneDNN's fast path (measured: `dlogits @ W` for 512 tokens
193 s in bf16, 0.29 s in fp32), so a bf16 run would time that fallback in the unchunked and TRL variants, not the
methods; fp32 logits are what every variant holds anyway (the loss is fp32).
Rows: one record per row, micro-batch 1, half its tokens supervised (a prompt and an answer of equal length).

Variants, each in its own process (its own peak RSS), 2 optimizer steps (the second one timed):
- `mft-chunk-off`:  mft-train with `lm_head_chunk: 0` (logits of the supervised positions materialised, fp32 CE);
- `mft`:            mft-train defaults (`lm_head_chunk: auto`);
- `mft-ckpt`:       mft-train defaults plus `grad_checkpointing: full` (the lowest-memory setting);
- `trl`:            TRL SFTTrainer with its defaults (its fused LM head, `loss_type: nll`, gradient checkpointing
                    on), `assistant_only_loss` on the same rows.
Measured at seq 4,096 and 16,384: peak RSS (whole process) and tokens/s of the second step. Then the longest
row within 8 GiB for each: predicted from the two points (memory is linear in the row length: flash SDPA on
CPU, logits linear in tokens), then one step run at that length inside an 8 GiB memory cgroup to confirm it
(stepping down by 1,024 tokens until it does; at most 32,768: attention time grows with its
square). Writes bench/results/train_memory.json.
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
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, os.path.dirname(__file__))
from common import WORK, lora_train_config, trl_lora, write_result  # noqa: E402

VOCAB = 151_936
SEQS = (4096, 16384)
BUDGET_MIB = 8192
VARIANTS = ("mft-chunk-off", "mft", "mft-ckpt", "trl")
CGROUP = Path("/sys/fs/cgroup/memory/mft-bench-train-memory")


def build_base(work: Path) -> Path:
    """init-base qwen2 small, then the embedding (tied head) resized to the real vocabulary."""
    import torch
    from mft_train.base_init import InitBaseConfig, init_base
    from transformers import AutoModelForCausalLM, AutoTokenizer

    small = work / "small"
    init_base(InitBaseConfig(family="qwen2", preset="small", out=str(small), overwrite=True))
    model = AutoModelForCausalLM.from_pretrained(small, dtype=torch.float32)
    torch.manual_seed(0)
    model.resize_token_embeddings(VOCAB, mean_resizing=False)
    model.config.max_position_embeddings = 131_072  # rows up to the 8 GiB search's cap (RoPE has no table)
    base = work / "base"
    model.save_pretrained(base)
    AutoTokenizer.from_pretrained(small).save_pretrained(base)
    return base


def records(base: Path, seq: int, n: int = 4) -> list[dict]:
    """``n`` chat records whose prompt and answer are each ~seq/2 tokens (measured with the base's tokenizer)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(base)
    rng = random.Random(seq)
    words = "value total index result items count name data key left right node path size".split()

    def text(tokens):
        out = []
        while True:
            out.append(f"{rng.choice(words)}_{rng.randint(0, 999)} = {rng.choice(words)}({rng.randint(0, 99)})")
            if len(out) % 16 == 0 and len(tok("\n".join(out))["input_ids"]) >= tokens:
                ids = tok("\n".join(out))["input_ids"][:tokens]
                return tok.decode(ids)

    half = seq // 2 - 48  # room for the template's markers and EOS
    return [
        {"messages": [{"role": "user", "content": text(half)}, {"role": "assistant", "content": text(half)}]}
        for _ in range(n)
    ]


def prepare(work: Path, base: Path, seq: int) -> Path:
    from mft_data.api import FormatConfig, TokenizeConfig, format_task, tokenize_folder

    folder = work / f"seq{seq}"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    rows = records(base, seq)
    (folder / "messages.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    format_task(FormatConfig(inputs=(str(folder / "messages.jsonl"),), task="long", out=str(folder / "data")))
    tokenize_folder(
        TokenizeConfig(folder=str(folder / "data"), tokenizer=str(base), out=str(folder / "tok"), seq_len=seq)
    )
    return folder


# --- one variant, in a child process -----------------------------------------------------------------------------
def run_mft(work: Path, folder: Path, seq: int, variant: str, steps: int) -> list[float]:
    from mft_train.api import train

    out = folder / variant
    shutil.rmtree(out, ignore_errors=True)
    cfg = lora_train_config(
        work / "base",
        folder / "tok",
        out,
        max_steps=steps,
        micro_batch_size=1,
        grad_accum=1,
        seq_len=seq,
        bf16=False,
        lm_head_chunk=0 if variant == "mft-chunk-off" else "auto",
        grad_checkpointing="full" if variant == "mft-ckpt" else "none",
    )
    train(cfg)
    rows = [json.loads(line) for line in open(out / "metrics.jsonl") if '"train"' in line]
    return [r["tokens_per_s"] for r in rows]


def run_trl(work: Path, folder: Path, seq: int, steps: int) -> list[float]:
    import torch
    from data_tokenize import generation_template
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import SFTConfig, SFTTrainer

    base = work / "base"
    tok = AutoTokenizer.from_pretrained(base)
    tok.chat_template = generation_template()
    dataset = Dataset.from_list([json.loads(line) for line in open(folder / "messages.jsonl")])
    times: list[float] = []
    tokens: list[int] = []

    class Timer(TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            self.start = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            times.append(time.perf_counter() - self.start)

    cfg = SFTConfig(
        output_dir=str(folder / "trl"),
        max_steps=steps,
        per_device_train_batch_size=1,
        gradient_accumulation_steps=1,
        learning_rate=2e-4,
        lr_scheduler_type="constant",
        bf16=False,
        use_cpu=True,
        max_length=seq,
        assistant_only_loss=True,
        logging_steps=1,
        report_to=[],
        save_strategy="no",
        dataloader_num_workers=0,
        seed=0,
    )
    trainer = SFTTrainer(
        model=AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32),
        args=cfg,
        train_dataset=dataset,
        processing_class=tok,
        peft_config=trl_lora(),
        callbacks=[Timer()],
    )
    original = trainer.compute_loss

    def compute_loss(model, inputs, *a, **k):
        tokens.append(int(inputs["input_ids"].numel()))
        return original(model, inputs, *a, **k)

    trainer.compute_loss = compute_loss
    trainer.train()
    return [n / t for n, t in zip(tokens, times)]


def child(args) -> None:
    import torch

    torch.manual_seed(0)
    work, folder = Path(args.work), Path(args.work) / f"seq{args.seq}"
    if args.variant == "trl":
        curve = run_trl(work, folder, args.seq, args.steps)
    else:
        curve = run_mft(work, folder, args.seq, args.variant, args.steps)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print("RESULT " + json.dumps({"tokens_per_s": curve, "peak_rss_mib": rss}), flush=True)


# --- the parent: every variant and length, then the 8 GiB search ---------------------------------------------------
def run_variant(work: Path, variant: str, seq: int, steps: int, limit_mib: int | None = None) -> dict | None:
    cmd = [sys.executable, __file__, "--child", "--work", str(work), "--variant", variant, "--seq", str(seq)]
    cmd += ["--steps", str(steps)]
    preexec = None
    if limit_mib is not None:
        CGROUP.mkdir(exist_ok=True)
        (CGROUP / "memory.limit_in_bytes").write_text(str(limit_mib * 2**20))
        swap = CGROUP / "memory.memsw.limit_in_bytes"  # no swapping around the limit, where the kernel has it
        if swap.exists():
            swap.write_text(str(limit_mib * 2**20))

        def preexec():
            (CGROUP / "cgroup.procs").write_text(str(os.getpid()))

    proc = subprocess.run(cmd, capture_output=True, text=True, preexec_fn=preexec)
    line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
    if proc.returncode != 0 or not line:
        if limit_mib is None:
            print(proc.stdout[-3000:], proc.stderr[-5000:])
            raise SystemExit(f"{variant} at seq {seq} failed")
        return None
    return json.loads(line[0][7:])


def longest_within(work: Path, variant: str, points: dict[int, dict], cap: int) -> dict:
    (s1, r1), (s2, r2) = [(s, points[s]["peak_rss_mib"]) for s in (min(points), max(points))]
    slope = (r2 - r1) / (s2 - s1)
    predicted = int(s2 + (BUDGET_MIB - r2) / slope) if slope > 0 else cap
    seq = min(cap, predicted // 1024 * 1024)
    tried = []
    while seq >= min(points):
        prepare(work, work / "base", seq)
        ok = run_variant(work, variant, seq, steps=1, limit_mib=BUDGET_MIB) is not None
        tried.append({"seq": seq, "trained": ok})
        print(f"  {variant} seq {seq} within {BUDGET_MIB} MiB: {ok}", flush=True)
        shutil.rmtree(work / f"seq{seq}", ignore_errors=True)
        if ok:
            break
        seq -= 1024
    longest = next((t["seq"] for t in tried if t["trained"]), None)
    return {
        "predicted": predicted,
        "confirmed": longest,
        "capped_at": cap if longest == cap else None,
        "mib_per_1k_tokens": round(slope * 1024, 1),
        "tried": tried,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--child", action="store_true")
    parser.add_argument("--work", default=str(WORK / "train_memory"))
    parser.add_argument("--variant")
    parser.add_argument("--seq", type=int, default=4096)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--cap", type=int, default=32768, help="longest row tried in the 8 GiB search")
    parser.add_argument("--no-search", action="store_true", help="skip the 8 GiB search")
    parser.add_argument(
        "--seqs", default=",".join(map(str, SEQS)), help="row lengths measured (the search fits the first and last)"
    )
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    work = Path(args.work)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    build_base(work)
    variants = args.variants.split(",")
    results: dict[str, dict] = {v: {} for v in variants}
    seqs = [int(x) for x in args.seqs.split(",")]
    for seq in seqs:
        prepare(work, work / "base", seq)
        for variant in variants:
            data = run_variant(work, variant, seq, args.steps)
            steady = data["tokens_per_s"][1:] or data["tokens_per_s"]
            results[variant][seq] = {
                "peak_rss_mib": round(data["peak_rss_mib"]),
                "tokens_per_s": round(sum(steady) / len(steady), 1),
                "curve": [round(x, 1) for x in data["tokens_per_s"]],
            }
            print(variant, seq, results[variant][seq], flush=True)
    search = {}
    if not args.no_search:
        for variant in variants:
            search[variant] = longest_within(work, variant, results[variant], args.cap)
        if CGROUP.exists():
            CGROUP.rmdir()
    long = max(seqs)

    def ratio(a, b, key):
        return round(results[a][long][key] / results[b][long][key], 2) if a in results and b in results else None

    write_result(
        "train_memory",
        {
            "measure": (
                f"peak RSS and tokens/s, LoRA r16, fp32, Qwen2-shaped h256x4 with vocab {VOCAB}, micro-batch 1, "
                "half of each row supervised; longest row within 8 GiB"
            ),
            "variants": {v: {str(s): r for s, r in res.items()} for v, res in results.items()},
            "longest_row_within_8GiB": search,
            f"at_{long}": {
                "rss_mft_vs_trl": ratio("mft", "trl", "peak_rss_mib"),
                "rss_mft_ckpt_vs_trl": ratio("mft-ckpt", "trl", "peak_rss_mib"),
                "rss_mft_vs_chunk_off": ratio("mft", "mft-chunk-off", "peak_rss_mib"),
                "tokens_per_s_mft_vs_chunk_off": ratio("mft", "mft-chunk-off", "tokens_per_s"),
                "tokens_per_s_mft_vs_trl": ratio("mft", "trl", "tokens_per_s"),
                "tokens_per_s_mft_ckpt_vs_trl": ratio("mft-ckpt", "trl", "tokens_per_s"),
            },
            "goals_at_16384": {
                "rss_vs_trl": "<= 0.8",
                "rss_vs_chunk_off": "<= 0.5",
                "tokens_per_s_vs_chunk_off": ">= 0.95",
                "tokens_per_s_vs_trl": "> 1",
            },
        },
    )


if __name__ == "__main__":
    main()
