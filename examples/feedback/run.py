"""A feedback round on the built-in demo: sample, keep what the sandbox passes, train on it, measure held-out.

From the fine-tuned demo model (`make pipeline` -> runs/pipeline/merged), for each seed:
 1. fresh *training-family* problems (constants from the training ranges, names never in training, held-out or
    dev: demo_data.write_fresh_problems);
 2. `mft-eval humaneval --n-samples 8 --temperature 0.8` on them: every sample with its sandbox verdict;
 3. `mft-data from-eval --mode sft` (distinct passing samples) and `--mode pairs` ((pass, fail) of one problem);
 4. four arms, each a fresh LoRA merged back with `mft-merge`: RFT (SFT on the passing samples), DPO and RPO (on
    the pairs, from the demo model: on-policy; RPO adds the chosen answer's NLL) and RFT then DPO (the pairs
    again, on the RFT model);
 5. greedy pass@1 of every model on the untouched held-out problems and on the dev sets (training family, names
    never trained on), the same commands `make pipeline` scores with, and passes per demo family.
Writes runs/feedback/results.json and examples/feedback/results.json, and prints the README table.

    make feedback                              # after make pipeline
    python examples/feedback/run.py --quick --pipeline runs/quick --seeds 0   # smoke run on a --quick pipeline
    python examples/feedback/run.py --pipeline runs/pipeline --run-dir runs/feedback --seeds 0,1,2
"""

from __future__ import annotations

import argparse
import functools
import json
import shutil
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(REPO / "examples" / "pipeline"))

from demo_data import DEV_GROUPS, family_of, names_in, write_fresh_problems  # noqa: E402
from run import FULL, QUICK, Pipeline, sets  # noqa: E402  (the demo pipeline's stage runner)

CONFIGS = REPO / "examples" / "configs"
ARMS = {  # arm -> (model it starts from, data, config)
    "rft": ("before", "sft", "feedback-rft.yaml"),
    "dpo": ("before", "pairs", "feedback-dpo.yaml"),
    "rpo": ("before", "pairs", "feedback-rpo.yaml"),
    "rft+dpo": ("rft", "pairs", "feedback-dpo.yaml"),
}
MODELS = ["before", *ARMS]  # every model a round scores: the demo model, then each arm's
SAMPLING = dict(temperature=0.8, top_p=0.95)
FRESH = dict(full=dict(problems=256, samples=8, per_problem=2, pairs=4, **SAMPLING),
             quick=dict(problems=6, samples=4, per_problem=2, pairs=2, **SAMPLING))  # fmt: skip


class Round:
    """One seed's round: every folder under RUN/seed-N, each stage a CLI call (done stages are skipped)."""

    def __init__(self, pipeline_dir: Path, run_dir: Path, seed: int, quick: bool):
        self.src = pipeline_dir
        self.dir = run_dir / f"seed-{seed}"
        self.seed = seed
        self.fresh = FRESH["quick" if quick else "full"]
        self.sh = Pipeline(self.dir, QUICK if quick else FULL)
        self.new_tokens = self.sh.s["new_tokens"]
        self.models = {"before": self.src / "merged"}

    def run_tool(self, stage: str, done: Path, *args) -> None:
        if not done.is_file():
            self.sh.sh(stage, *args)

    def sample(self) -> Path:
        problems = self.dir / "fresh.jsonl"
        if not problems.is_file():
            write_fresh_problems(problems, self.fresh["problems"], self.seed, names_in(self.src / "raw"))
        out = self.dir / "samples"
        f = self.fresh
        self.run_tool("sample", out / "manifest.json", self.sh.tool("mft-eval"), "humaneval", self.models["before"],
                      "--problems", problems, "--out", out, "--n-samples", f["samples"], "--temperature",
                      f["temperature"], "--top-p", f["top_p"], "--seed", self.seed, "--prompt", "chat",
                      "--max-new-tokens", self.new_tokens, "--batch-size", "16", "--overwrite")  # fmt: skip
        return out

    def build_data(self, samples: Path) -> dict[str, Path]:
        mft_data = self.sh.tool("mft-data")
        data = {}
        for kind, task, mode, k in (("sft", "rft", "sft", "per_problem"), ("pairs", "prefs", "pairs", "pairs")):
            folder = self.dir / f"data-{kind}"
            self.run_tool(f"from-eval-{kind}", folder / "manifest.json", mft_data, "from-eval", samples,
                          "--task", task, "--mode", mode, "--per-problem", self.fresh[k], "--seed", self.seed,
                          "--out", folder, "--overwrite")  # fmt: skip
            self.sh.sh(f"validate-{kind}", mft_data, "validate", folder, "--strict")  # cheap: every run
            data[kind] = folder
        return data

    def train_arm(self, arm: str, data: dict[str, Path]) -> Path:
        start, kind, config = ARMS[arm]
        base = self.models[start]
        tok = self.dir / f"tok-{arm}"
        seq_len = Pipeline(self.dir, self.sh.s, config=CONFIGS / config).seq_len  # the arm's YAML declares it
        self.run_tool(f"tokenize-{arm}", tok / "manifest.json", self.sh.tool("mft-data"), "tokenize", data[kind],
                      "--tokenizer", base, "--out", tok, "--seq-len", seq_len, "--overwrite")  # fmt: skip
        train = self.dir / f"train-{arm}"
        keys = [f"model={base}", f"data={tok}", f"out={train}", f"seed={self.seed}"]
        self.run_tool(f"train-{arm}", train / "manifest.json", self.sh.tool("mft-train"), "run", CONFIGS / config,
                      *sets(*keys))  # fmt: skip
        merged = self.dir / f"merged-{arm}"
        self.run_tool(f"merge-{arm}", merged / "manifest.json", self.sh.tool("mft-merge"), train, "--out", merged,
                      "--overwrite")  # fmt: skip
        self.models[arm] = merged
        return train

    def score(self, name: str, model: Path, problems: Path, label: str) -> dict:
        # the demo model is the same for every seed (and greedy decoding is deterministic): scored once
        out = (self.dir.parent if name == "before" else self.dir) / f"eval-{label}-{name}"
        self.run_tool(f"eval-{label}-{name}", out / "manifest.json", self.sh.tool("mft-eval"), "humaneval", model,
                      "--problems", problems, "--out", out, "--prompt", "chat", "--max-new-tokens", self.new_tokens,
                      "--batch-size", "8", "--overwrite")  # fmt: skip
        summary = json.loads((out / "summary.json").read_text())
        return {"pass@1": summary["pass_at_k"]["pass@1"], "problems": summary["tasks"], **by_family(out, problems)}

    def dev_file(self) -> Path:
        """The three dev sets as one problem file (training family, names never trained on)."""
        path = self.dir / "dev.jsonl"
        if not path.is_file():
            path.write_text("".join((self.src / "raw" / f"dev_{g}.jsonl").read_text() for g in DEV_GROUPS))
        return path

    def settings(self) -> dict:
        """What this round ran with: problem and sample counts, and each arm's training YAML as written."""
        configs = {arm: (CONFIGS / config).read_text() for arm, (_, _, config) in ARMS.items()}
        return {**self.fresh, "configs": configs}

    def go(self) -> dict:
        self.dir.mkdir(parents=True, exist_ok=True)
        samples = self.sample()
        data = self.build_data(samples)
        result = {"seed": self.seed, "settings": self.settings(), "sampling": sampling_stats(samples),
                  "data": data_stats(data), "arms": {}}  # fmt: skip
        for arm in ARMS:
            train = self.train_arm(arm, data)
            result["arms"][arm] = {"train": train_stats(train)}
        for name, model in self.models.items():
            entry = result["arms"].setdefault(name, {})
            entry["heldout"] = self.score(name, model, self.src / "raw" / "heldout.jsonl", "heldout")
            entry["dev"] = self.score(name, model, self.dev_file(), "dev")
        result["seconds"] = self.sh.timings
        return result


def sampling_stats(samples: Path) -> dict:
    summary = json.loads((samples / "summary.json").read_text())
    per_task = summary.get("per_task", {})
    solved = [t for t, v in per_task.items() if v["correct"] > 0]
    return {"pass@1": summary["pass_at_k"]["pass@1"], "problems": summary["tasks"], "problems_with_a_pass": len(solved)}


@functools.cache
def families(problems: Path) -> dict[str, str]:
    """task_id -> demo family of a problem file (read once: every model of a round is scored on the same files)."""
    rows = [json.loads(line) for line in problems.read_text().splitlines()]
    return {row["task_id"]: family_of(row["prompt"]) for row in rows}


def by_family(eval_dir: Path, problems: Path) -> dict:
    """Passes per demo family ("Return the last N characters of s.": [passed, problems]): which mistakes moved."""
    family = families(problems)
    counts: dict[str, list[int]] = {}
    for line in (eval_dir / "results.jsonl").read_text().splitlines():
        row = json.loads(line)
        entry = counts.setdefault(family[row["task_id"]], [0, 0])
        entry[0] += bool(row["passed"])
        entry[1] += 1
    return {"by_family": dict(sorted(counts.items()))}


def data_stats(data: dict[str, Path]) -> dict:
    """Records and from-eval counts of each data folder's one task (its manifest's summary)."""
    out = {}
    for kind, folder in data.items():
        (task,) = json.loads((folder / "manifest.json").read_text())["summary"]["tasks"].values()
        out[kind] = {"records": task["records"], **task["from_eval"]}
    return out


def train_stats(train: Path) -> dict:
    rows = [json.loads(l) for l in (train / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if r.get("kind") == "train"]
    keep = ("step", "loss", "rewards")
    return {"first": {k: steps[0].get(k) for k in keep}, "last": {k: steps[-1].get(k) for k in keep}}


def table(results: list[dict]) -> str:
    """Mean (min-max over seeds) pass@1 per model: the README table."""
    lines = ["| model | held-out pass@1 | dev pass@1 (training family) | per seed held-out |", "|---|---|---|---|"]
    for name in MODELS:
        held = [r["arms"][name]["heldout"]["pass@1"] for r in results]
        dev = [r["arms"][name]["dev"]["pass@1"] for r in results]
        lines.append(f"| {name} | {pct(held)} | {pct(dev)} | " + ", ".join(f"{100 * v:.1f}" for v in held) + " |")
    return "\n".join(lines)


def family_table(results: list[dict]) -> str:
    """Held-out passes per demo family the model before the round gets wrong, summed over seeds (passed/problems)."""
    before = results[0]["arms"]["before"]["heldout"]["by_family"]
    wrong = [f for f, (passed, n) in before.items() if passed < n]
    lines = ["| held-out family | " + " | ".join(MODELS) + " |", "|---" * (len(MODELS) + 1) + "|"]
    for fam in wrong:
        cells = []
        for name in MODELS:
            counts = [r["arms"][name]["heldout"]["by_family"][fam] for r in results]
            cells.append(f"{sum(c[0] for c in counts)}/{sum(c[1] for c in counts)}")
        lines.append(f"| {fam} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def pct(values: list[float]) -> str:
    mean = 100 * statistics.mean(values)
    return f"{mean:.1f} % ({100 * min(values):.1f}-{100 * max(values):.1f})" if len(values) > 1 else f"{mean:.1f} %"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pipeline", type=Path, default=REPO / "runs" / "pipeline", help="a finished make pipeline")
    parser.add_argument("--run-dir", type=Path, default=REPO / "runs" / "feedback")
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated; each seed is a whole round")
    parser.add_argument("--quick", action="store_true", help="tiny settings (with a --quick pipeline; for tests)")
    parser.add_argument("--fresh", action="store_true", help="delete the run folder first")
    args = parser.parse_args()
    if not (args.pipeline / "merged" / "manifest.json").is_file():
        raise SystemExit(f"{args.pipeline / 'merged'}: no merged demo model; run `make pipeline` first")
    if args.fresh:
        shutil.rmtree(args.run_dir, ignore_errors=True)
    started = time.time()
    results = [Round(args.pipeline, args.run_dir, int(s), args.quick).go() for s in args.seeds.split(",")]
    report = {"pipeline": str(args.pipeline), "seconds": round(time.time() - started, 1), "rounds": results}
    text = json.dumps(report, indent=2) + "\n"
    (args.run_dir / "results.json").write_text(text)
    if not args.quick:  # the committed record of the measured run
        (HERE / "results.json").write_text(text)
    print("\n" + table(results) + "\n\n" + family_table(results))


if __name__ == "__main__":
    main()
