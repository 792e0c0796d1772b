"""Benchmark: does calibrating GPTQ on the team's own chat data beat a generic-text calibration?

One tiny model fine-tuned here (llama preset `small`, full fine-tuning on three synthetic coding tasks), then
quantized twice with the same settings (4-bit, group 128): calibrated on its own chat data (mft-quant's
default when --calib is given) and on generic English prose (GPTQModel's examples use C4/wikitext; no download
is possible here, so Debian's license texts stand in). Both are measured on the same held-out valid split,
per task. Writes bench/results/quant_quality.json. Exits non-zero only if something fails to run.
"""

from __future__ import annotations

import json
import os
import shutil
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, os.path.dirname(__file__))
from common import WORK, write_result  # noqa: E402
from train_throughput import synthetic_tasks  # noqa: E402


def main() -> None:
    from mft_data.api import FormatConfig, SplitConfig, format_task, split_folder
    from mft_quant.api import quantize_gptq
    from mft_quant.calibration import chat_samples
    from mft_quant.config import GPTQConfig
    from mft_quant.quality import measure
    from mft_train.api import train
    from mft_train.base_init import InitBaseConfig, init_base
    from mft_train.config import TrainConfig
    from transformers import AutoTokenizer

    work = WORK / "quant_quality"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    base = init_base(InitBaseConfig(family="llama", preset="small", out=str(work / "base")))
    for name, rows in synthetic_tasks().items():
        path = work / f"{name}.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        format_task(FormatConfig(inputs=(str(path),), task=name, out=str(work / "data")))
    split_folder(SplitConfig(folder=str(work / "data"), valid_ratio=0.05, seed=0))
    train(
        TrainConfig(
            model=str(base),
            data=str(work / "data"),
            output_dir=str(work / "ft"),
            peft="none",
            lr=1e-3,
            max_steps=150,
            micro_batch_size=4,
            grad_accum=2,
            seq_len=512,
            bf16=True,
            warmup_steps=10,
            eval_every=0,
            log_every=10,
        )
    )
    model = work / "ft" / "model"
    tokenizer = AutoTokenizer.from_pretrained(model)
    held_out = chat_samples(str(work / "data"), tokenizer, "valid", 150, seed=1)
    common = dict(
        model=str(model), group_size=128, calib_samples=128, calib_seq_len=512, max_ppl_increase=10.0, eval_samples=8
    )
    quantize_gptq(GPTQConfig(out=str(work / "q-chat"), calib=str(work / "data"), **common))
    quantize_gptq(GPTQConfig(out=str(work / "q-generic"), calib_source="generic-text", **common))
    ppl = {
        name: measure(path, tokenizer, held_out, 512, "cpu")
        for name, path in (("fp", model), ("chat", work / "q-chat"), ("generic", work / "q-generic"))
    }
    increase = {
        name: {task: round(ppl[name][task] / ppl["fp"][task] - 1, 4) for task in ppl["fp"]}
        for name in ("chat", "generic")
    }
    better = increase["chat"]["overall"] < increase["generic"]["overall"]
    write_result(
        "quant_quality",
        {
            "measure": "held-out perplexity per task: fp vs 4-bit GPTQ (g128) calibrated on own chat data vs "
            "generic text",
            "model": "llama preset small (h256 x 4), full fine-tuning 150 steps on 3 synthetic coding tasks",
            "peer": "generic-text calibration (English prose standing in for GPTQModel's C4/wikitext examples)",
            "held_out_records": len(held_out),
            "calibration_samples": 128,
            "perplexity": {k: {t: round(v, 4) for t, v in d.items()} for k, d in ppl.items()},
            "relative_increase": increase,
            "chat_calibration_helps": better,
            "conclusion": (
                "calibrating on the team's chat data gives the smaller perplexity increase"
                if better
                else "calibrating on chat data did not beat generic text on this model"
            ),
        },
    )


if __name__ == "__main__":
    main()
