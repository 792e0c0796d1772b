"""Benchmark: `mft-data tokenize` (render + mask + pack) vs TRL's SFTTrainer dataset preparation.

Same 50k synthetic multi-turn records, same tokenizer and chat template, same process count, one run.
TRL is given the same template with `{% generation %}` tags and `assistant_only_loss=True`, so both sides
produce assistant-only masks and BFD-packed rows of `seq_len`.
Writes bench/results/data_tokenize.json. Exits non-zero only if something fails to run.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, os.path.dirname(__file__))
from common import WORK, timer, write_result  # noqa: E402

WORDS = "def return if else for while in range len list dict str int value result item index total count".split()


def synthetic_records(n: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        rounds = []
        for _ in range(rng.choice([1, 1, 1, 2, 3])):
            q = " ".join(rng.choice(WORDS) for _ in range(rng.randint(8, 60)))
            lines = [
                f"    {rng.choice(WORDS)} = {rng.choice(WORDS)}({rng.randint(0, 99)})"
                for _ in range(rng.randint(2, 40))
            ]
            rounds += [
                {"role": "user", "content": f"Write a function: {q}"},
                {"role": "assistant", "content": f"def f{i}(x):\n" + "\n".join(lines) + "\n    return x"},
            ]
        out.append({"messages": rounds})
    return out


def generation_template() -> str:
    """MFTCoder's template with `{% generation %}` around what is trained, for TRL's assistant masks."""
    from mft_core.templates import DEFAULT_CHAT_TEMPLATE

    # the trained span is the answer, its newline and EOS (what mft-data supervises)
    old = "{{- '<s>bot\\n' + message['content'] + '\\n' + eos_token -}}"
    assert old in DEFAULT_CHAT_TEMPLATE, "MFTCoder's assistant turn changed in mft_core.templates: update this"
    new = "{{- '<s>bot\\n' -}}{% generation %}{{- message['content'] + '\\n' + eos_token -}}{% endgeneration %}"
    return DEFAULT_CHAT_TEMPLATE.replace(old, new)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--records", type=int, default=50_000)
    parser.add_argument("--seq-len", type=int, default=2048)
    parser.add_argument("--num-proc", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()

    from mft_data.api import FormatConfig, TokenizeConfig, format_task, tokenize_folder
    from mft_train.base_init import InitBaseConfig, init_base

    work = WORK / "data_tokenize"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    base = init_base(InitBaseConfig(family="qwen2", preset="tiny", out=str(work / "base")))
    records = synthetic_records(args.records)
    import json

    src = work / "records.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in records))
    format_task(FormatConfig(inputs=(str(src),), task="t", out=str(work / "data")))

    with timer() as ours:
        result = tokenize_folder(
            TokenizeConfig(
                folder=str(work / "data"),
                tokenizer=str(base),
                out=str(work / "tok"),
                seq_len=args.seq_len,
                num_proc=args.num_proc,
            )
        )
    ours_rps = args.records / ours["seconds"]

    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    tok = AutoTokenizer.from_pretrained(base)
    tok.chat_template = generation_template()
    model = AutoModelForCausalLM.from_pretrained(base)
    cfg = SFTConfig(
        output_dir=str(work / "trl"),
        packing=True,
        max_length=args.seq_len,
        assistant_only_loss=True,
        dataset_num_proc=args.num_proc,
        report_to=[],
        use_cpu=True,
    )
    trainer = SFTTrainer(model=model, args=cfg, train_dataset=Dataset.from_list(records[:8]), processing_class=tok)
    dataset = Dataset.from_list(records)
    with timer() as peer:
        packed = trainer._prepare_dataset(dataset, tok, cfg, True, None, "train")
    peer_rps = args.records / peer["seconds"]
    write_result(
        "data_tokenize",
        {
            "measure": "records/s, render + assistant mask + tokenize + BFD pack",
            "records": args.records,
            "seq_len": args.seq_len,
            "num_proc": args.num_proc,
            "ours": {
                "tool": "mft-data tokenize --pack",
                "records_per_s": round(ours_rps, 1),
                "seconds": round(ours["seconds"], 2),
                "rows": result.summary["splits"]["train"]["rows"],
                "fill_rate": result.summary["splits"]["train"]["fill_rate"],
            },
            "peer": {
                "tool": "TRL 1.16 SFTTrainer dataset prep (packing=True, bfd, assistant_only_loss=True)",
                "records_per_s": round(peer_rps, 1),
                "seconds": round(peer["seconds"], 2),
                "rows": len(packed),
            },
            "ratio": round(ours_rps / peer_rps, 2),
            "goal": ">= 2x",
        },
    )


if __name__ == "__main__":
    main()
