"""mft-quant's library API: ``quantize_gptq(cfg)``: a model folder -> a GPTQ folder with a quality report."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from mft_core.artifacts import resolve_model_dir
from mft_core.config import fingerprint_config
from mft_core.errors import InputError, MFTError, QualityGateError
from mft_core.manifest import InputRef, atomic_output_dir, is_up_to_date, new_manifest, read_manifest
from mft_core.ui import info

from . import __version__
from .calibration import (
    Sample,
    builtin_code_samples,
    chat_records,
    chat_samples,
    chat_sequences,
    generic_text_samples,
    text_sequences,
    tokenize_samples,
)
from .config import GPTQConfig
from .gptq import check_model, quantize, resolve_device
from .quality import EvalSequence, compare, measure

SIDE_FILES = (
    "chat_template.jinja",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "generation_config.json",
)


@dataclass
class QuantResult:
    out: Path
    summary: dict
    up_to_date: bool = False


def pick_samples(cfg: GPTQConfig, tokenizer) -> tuple[list[Sample], list[EvalSequence], dict]:
    """(calibration, held-out sequences to gate on, description): disjoint, from the team's data when given."""
    if cfg.calib:
        calib = chat_samples(cfg.calib, tokenizer, "train", cfg.calib_samples, cfg.seed)
        # without a split both reads see every record: skip those calibrated on (no-op with a valid split)
        pool = chat_records(cfg.calib, "valid", cfg.eval_samples + len(calib), cfg.seed)
        used = {s.id for s in calib}
        records = [r for r in pool if str(r["id"]) not in used][: cfg.eval_samples]
        if not records:  # an unsplit folder whose every record went into calibration
            raise InputError(
                f"{cfg.calib}: no record is left to measure quality on after calibration",
                fix="run `mft-data split DATA_DIR` first (held-out = its valid split), or lower --calib-samples",
            )
        held_out, source = chat_sequences(records, tokenizer, cfg.calib_seq_len), "chat"
    elif cfg.calib_source == "generic-text":
        pool = generic_text_samples(cfg.calib_samples + cfg.eval_samples)
        calib, source = pool[: cfg.calib_samples], "generic-text"
    else:
        calib, source = builtin_code_samples(cfg.calib_samples), "builtin-code"
    if not cfg.calib:  # no chat data: held-out code, past the files calibration may have used
        code = builtin_code_samples(cfg.eval_samples, offset=cfg.calib_samples)
        held_out = text_sequences(code, tokenizer, cfg.calib_seq_len)
    if not calib or not held_out:
        raise InputError(
            "no calibration or held-out samples",
            fix="pass --calib DATA_DIR with records, or lower --calib-samples for the built-in corpus",
        )
    if not sum(s.answer_tokens for s in held_out):
        raise InputError(
            f"{cfg.calib}: no held-out record has an assistant token within --calib-seq-len {cfg.calib_seq_len}",
            fix="raise --calib-seq-len",
        )
    description = {
        "source": source,
        "folder": str(Path(cfg.calib).resolve()) if cfg.calib else None,
        "samples": len(calib),
        "ids": [s.id for s in calib],
        "tasks": dict(Counter(s.task for s in calib)),
        "eval_samples": len(held_out),
        "eval_ids": [s.id for s in held_out],
        # what the gate reads: assistant contents + EOS for chat data, every token for the built-in corpora
        "eval_answer_tokens": sum(s.answer_tokens for s in held_out),
    }
    return calib, held_out, description


def quantize_gptq(cfg: GPTQConfig) -> QuantResult:
    """Quantize, measure fp vs quantized on held-out answers, write everything atomically, then gate.

    The gate: answer-token NLL increase <= ``max_nll_increase`` and top-1 agreement >= ``min_agreement`` (and
    all-token perplexity increase <= ``max_ppl_increase`` when given); see :mod:`mft_quant.quality`.
    """
    from transformers import AutoTokenizer

    model_dir = resolve_model_dir(cfg.model)
    model_type = check_model(model_dir, cfg.group_size)  # before any heavy work
    device = resolve_device(cfg.device)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    calib, held_out, calibration = pick_samples(cfg, tokenizer)
    config = fingerprint_config(cfg)  # the settings that change the result (see mft_quant.config)
    inputs = [InputRef.of(cfg.model)] + ([InputRef.of(cfg.calib)] if cfg.calib else [])
    probe = new_manifest("quantized-model", "mft-quant", __version__, config, inputs)
    if is_up_to_date(cfg.out, probe.fingerprint):
        summary = read_manifest(cfg.out).summary
        _gate(summary["quality"])
        return QuantResult(Path(cfg.out), summary, up_to_date=True)
    tokens = tokenize_samples(calib, tokenizer, cfg.calib_seq_len)
    with atomic_output_dir(cfg.out, overwrite=cfg.overwrite) as staging:
        quantize(cfg, model_dir, tokens, staging.path, device)
        for name in SIDE_FILES:  # the source's own files: GPTQModel rewrites generation_config (do_sample: true)
            if (model_dir / name).is_file():
                shutil.copy2(model_dir / name, staging.path / name)
        info("measuring held-out answers (teacher-forced): full precision, then quantized")
        fp = measure(model_dir, held_out, device)
        quant = measure(staging.path, held_out, device)
        quality = compare(held_out, fp, quant, cfg.max_nll_increase, cfg.min_agreement, cfg.max_ppl_increase)
        if cfg.eval_humaneval:
            quality["humaneval"] = humaneval_delta(model_dir, staging.path, cfg.eval_humaneval_limit)
        (staging.path / "quality.json").write_text(json.dumps(quality, indent=2) + "\n")
        summary = {
            "source_model": str(model_dir.resolve()),
            "model_type": model_type,
            "device": device,
            "settings": {
                "bits": cfg.bits,
                "group_size": cfg.group_size,
                "desc_act": cfg.desc_act,
                "sym": cfg.sym,
                "damp": cfg.damp,
            },
            "calibration": calibration,
            "quality": quality,
        }
        staging.finish(new_manifest("quantized-model", "mft-quant", __version__, config, inputs, summary))
    _gate(quality)
    return QuantResult(Path(cfg.out), summary)


def _gate(quality: dict) -> None:
    if not quality["passed"]:
        raise QualityGateError(
            "; ".join(quality.get("failures") or ["the quality gate failed"]),
            fix="the folder is kept for inspection; try more or better calibration data, a smaller --group-size, "
            "--desc-act, or more bits",
        )


def humaneval_delta(fp_dir: Path, quant_dir: Path, limit: int | None = None) -> dict:
    """pass@1 of both models with `mft-eval humaneval` (run as a command: tools talk through folders)."""
    exe = Path(sys.executable).parent / "mft-eval"
    if not exe.exists():
        raise MFTError("--eval-humaneval needs mft-eval installed", fix="pip install -e packages/mft-eval")
    scores = {}
    for name, model in (("fp", fp_dir), ("quantized", quant_dir)):
        out = quant_dir / f"humaneval-{name}"
        extra = ["--limit", str(limit)] if limit else []
        proc = subprocess.run([str(exe), "humaneval", str(model), "--out", str(out), *extra])
        if proc.returncode != 0:
            raise MFTError(f"mft-eval humaneval failed on {model} (exit {proc.returncode})")
        scores[name] = json.loads((out / "summary.json").read_text())["pass_at_k"]["pass@1"]
    return {**scores, "delta_pass@1": scores["quantized"] - scores["fp"]}
