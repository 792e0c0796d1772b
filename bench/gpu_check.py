"""One-GPU check, prepared to run whenever a GPU is lent (about 5 minutes on an H100/H200).

A ~0.5B random-init Qwen2-architecture model (Qwen2.5-0.5B's shape) in bf16, packed multi-task data, seq 2048:
`mft-train` LoRA and QLoRA (sdpa; flash_attention_2 too when importable) and TRL SFTTrainer with packing +
padding_free for the ratio. Records real tokens/s, peak GPU memory and MFU (4N FLOPs per token for LoRA)
against the device's measured bf16 matmul peak, into OUT/gpu_check.json.
`--smoke` runs the same code tiny on CPU, so the script is tested here even without a GPU.

    bash bench/gpu_check.sh OUT_DIR           # on the GPU machine
    python bench/gpu_check.py --smoke OUT     # anywhere
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, os.path.dirname(__file__))

HALF_B = dict(
    hidden_size=896,
    num_hidden_layers=24,
    num_attention_heads=14,
    num_key_value_heads=2,
    intermediate_size=4864,
    max_position_embeddings=4096,
    vocab_size=32768,
)
TINY = dict(
    hidden_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    intermediate_size=256,
    max_position_embeddings=1024,
    vocab_size=8192,
)


def build(work: str, shape: dict) -> str:
    import torch
    from mft_train.base_init import train_tokenizer
    from transformers import AutoModelForCausalLM, Qwen2Config

    tok = train_tokenizer(8192, 2.0, False)
    config = Qwen2Config(
        **shape,
        tie_word_embeddings=True,
        use_sliding_window=False,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.eos_token_id,
    )
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    path = os.path.join(work, "base")
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


def data(work: str, base: str, seq: int, scale: float) -> str:
    from mft_data.api import FormatConfig, TokenizeConfig, format_task, tokenize_folder
    from train_throughput import synthetic_tasks

    for name, rows in synthetic_tasks().items():
        rows = rows[: max(16, int(len(rows) * scale))]
        path = os.path.join(work, f"{name}.jsonl")
        with open(path, "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)
        format_task(FormatConfig(inputs=(path,), task=name, out=os.path.join(work, "data")))
    out = os.path.join(work, "tok")
    tokenize_folder(
        TokenizeConfig(
            folder=os.path.join(work, "data"),
            tokenizer=base,
            out=out,
            seq_len=seq,
            num_proc=min(8, os.cpu_count() or 1),
        )
    )
    return out


def matmul_peak(device: str) -> float:
    import torch

    n = 8192 if device == "cuda" else 1024
    a = torch.randn(n, n, dtype=torch.bfloat16, device=device)
    b = torch.randn(n, n, dtype=torch.bfloat16, device=device)
    for _ in range(3):
        a @ b
    if device == "cuda":
        torch.cuda.synchronize()
    reps, start = 10, time.perf_counter()
    for _ in range(reps):
        a @ b
    if device == "cuda":
        torch.cuda.synchronize()
    return 2 * n**3 * reps / (time.perf_counter() - start)


def run_settings(base: str, tok: str, out: str, peft: str, steps: int, seq: int, micro: int) -> dict:
    """The mft-train settings every variant of this check shares (LoRA r16, bf16, token loss, no eval)."""
    return dict(
        model=base,
        data=tok,
        out=out,
        peft=peft,
        lora_r=16,
        lora_alpha=32,
        lora_dropout=0.0,
        lr=2e-4,
        max_steps=steps,
        micro_batch_size=micro,
        grad_accum=1,
        seq_len=seq,
        bf16=True,
        loss="token",
        log_every=1,
        eval_every=0,
    )


def run_ours(work: str, base: str, tok: str, peft: str, attn: str, steps: int, seq: int, micro: int) -> dict:
    import torch
    from mft_train.api import train
    from mft_train.config import TrainConfig

    out = os.path.join(work, f"ours-{peft}-{attn}")
    shutil.rmtree(out, ignore_errors=True)
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    train(
        TrainConfig(
            **run_settings(base, tok, out, peft, steps, seq, micro),
            attn_implementation=attn,
            warmup_steps=0,
            target_modules=("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"),
        )
    )
    rows = [json.loads(l) for l in open(os.path.join(out, "metrics.jsonl")) if '"train"' in l]
    steady = rows[2:] or rows
    return {
        "tokens_per_s": sum(r["tokens_per_s"] for r in steady) / len(steady),
        "wall_s": time.perf_counter() - start,
        "peak_mem_gib": torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None,
        "loss_last": rows[-1]["loss"],
    }


def run_launched(work: str, base: str, tok: str, strategy: str, steps: int, seq: int, micro: int) -> dict:
    """QLoRA under a sharded strategy through `mft-train launch` (one process: FSDP2 / ZeRO-3 on one GPU)."""
    import subprocess

    import yaml

    out = os.path.join(work, f"ours-qlora-{strategy}")
    cfg = run_settings(base, tok, out, "qlora", steps, seq, micro)
    path = os.path.join(work, f"{strategy}.yaml")
    with open(path, "w") as f:
        yaml.safe_dump(cfg, f)
    exe = os.path.join(os.path.dirname(sys.executable), "mft-train")
    proc = subprocess.run([exe, "launch", path, "--nproc", "1", "--strategy", strategy], capture_output=True, text=True)
    if proc.returncode != 0:
        return {"error": proc.stderr[-2000:]}
    rows = [json.loads(l) for l in open(os.path.join(out, "metrics.jsonl")) if '"train"' in l]
    steady = rows[2:] or rows
    return {"tokens_per_s": sum(r["tokens_per_s"] for r in steady) / len(steady), "loss_last": rows[-1]["loss"]}


def run_trl(work: str, base: str, steps: int, seq: int, micro: int, attn: str) -> dict:
    import torch
    from datasets import Dataset
    from mft_data.api import read_formatted_records
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import SFTConfig, SFTTrainer

    records = [
        {"messages": r["chat_rounds"]} for rs in read_formatted_records(os.path.join(work, "data")).values() for r in rs
    ]
    tok = AutoTokenizer.from_pretrained(base)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.bfloat16, attn_implementation=attn)
    times: list[float] = []
    tokens: list[int] = []

    class Timer(TrainerCallback):
        def on_step_begin(self, *a, **k):
            self.t = time.perf_counter()

        def on_step_end(self, *a, **k):
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            times.append(time.perf_counter() - self.t)

    cfg = SFTConfig(
        output_dir=os.path.join(work, "trl"),
        max_steps=steps,
        per_device_train_batch_size=micro,
        learning_rate=2e-4,
        bf16=True,
        max_length=seq,
        packing=True,
        padding_free=True,
        report_to=[],
        save_strategy="no",
        logging_steps=1,
        use_cpu=not torch.cuda.is_available(),
    )
    trainer = SFTTrainer(
        model=model,
        args=cfg,
        train_dataset=Dataset.from_list(records),
        processing_class=tok,
        peft_config=LoraConfig(
            r=16,
            lora_alpha=32,
            lora_dropout=0.0,
            task_type="CAUSAL_LM",
            target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        ),
        callbacks=[Timer()],
    )
    original = trainer.compute_loss

    def compute_loss(model, inputs, *a, **k):
        tokens.append(int(inputs["input_ids"].numel()))
        return original(model, inputs, *a, **k)

    trainer.compute_loss = compute_loss
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    trainer.train()
    steady = list(zip(tokens, times))[2:] or list(zip(tokens, times))
    return {
        "tokens_per_s": sum(n for n, _ in steady) / sum(t for _, t in steady),
        "peak_mem_gib": torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out")
    parser.add_argument("--smoke", action="store_true", help="tiny, on CPU: checks the script itself")
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args()
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    smoke = args.smoke or device == "cpu"
    seq, micro, steps = (256, 2, 3) if smoke else (2048, 4, args.steps)
    work = os.path.join(args.out, "work")
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(work)
    base = build(work, TINY if smoke else HALF_B)
    tok = data(work, base, seq, 0.02 if smoke else 1.0)
    n_params = _count_params(base)
    attns = ["sdpa"]
    try:
        import flash_attn  # noqa: F401

        attns.append("flash_attention_2")
    except ImportError:
        pass
    results: dict = {
        "device": torch.cuda.get_device_name(0) if device == "cuda" else "cpu (smoke)",
        "date": time.strftime("%Y-%m-%d"),
        "seq_len": seq,
        "micro_batch": micro,
        "steps": steps,
        "params_N": n_params,
        "bf16_matmul_peak_tflops": matmul_peak(device) / 1e12,
        "runs": {},
    }
    for attn in attns:
        results["runs"][f"mft-lora-{attn}"] = run_ours(work, base, tok, "lora", attn, steps, seq, micro)
    if device == "cuda":
        results["runs"]["mft-qlora-sdpa"] = run_ours(work, base, tok, "qlora", "sdpa", steps, seq, micro)
        for strategy in ("fsdp", "zero3"):  # QLoRA with bf16 quant storage under the sharded strategies
            results["runs"][f"mft-qlora-{strategy}"] = run_launched(work, base, tok, strategy, steps, seq, micro)
    results["runs"][f"trl-packing-padding_free-{attns[-1]}"] = run_trl(work, base, steps, seq, micro, attns[-1])
    peak = results["bf16_matmul_peak_tflops"] * 1e12
    for r in results["runs"].values():
        if "tokens_per_s" in r:
            r["mfu"] = 4 * n_params * r["tokens_per_s"] / peak
    ours = results["runs"][f"mft-lora-{attns[-1]}"]["tokens_per_s"]
    results["ratio_vs_trl"] = ours / results["runs"][f"trl-packing-padding_free-{attns[-1]}"]["tokens_per_s"]
    with open(os.path.join(args.out, "gpu_check.json"), "w") as f:
        json.dump(results, f, indent=2)
    print(json.dumps(results, indent=2))
    shutil.rmtree(work, ignore_errors=True)


def _count_params(base: str) -> int:
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModelForCausalLM

    with init_empty_weights():
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(base))
    return sum(p.numel() for n, p in model.named_parameters() if "embed_tokens" not in n)


if __name__ == "__main__":
    main()
