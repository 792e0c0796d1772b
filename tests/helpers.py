"""Small helpers shared by tests (importable as `helpers`, tests/ is on pythonpath)."""

import json
from pathlib import Path

MULTI_TURN = [
    {"role": "system", "content": "You write Python."},
    {"role": "user", "content": "Write add."},
    {"role": "assistant", "content": "def add(a, b):\n    return a + b"},
    {"role": "user", "content": "Now with three args, please"},
    {"role": "assistant", "content": " def add3(a, b, c):\n\treturn a + b + c\n\n"},
]


def write_jsonl(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def format_folder(out: Path, tasks: dict[str, list[dict]], split: float | None = None) -> Path:
    """A formatted folder made through the real `format` (and `split`) code path."""
    from mft_data.api import FormatConfig, SplitConfig, format_task, split_folder

    out.parent.mkdir(parents=True, exist_ok=True)
    for task, rows in tasks.items():
        f = write_jsonl(out.parent / f"{out.name}-{task}.jsonl", rows)
        format_task(FormatConfig(inputs=(str(f),), task=task, out=str(out)))
    if split is not None:
        split_folder(SplitConfig(folder=str(out), valid_ratio=split, seed=0))
    return out


def demo_tasks(n_gen: int = 24, n_explain: int = 16, n_fix: int = 10) -> dict[str, list[dict]]:
    """Three small tasks of different sizes and lengths (source formats: alpaca, sharegpt, openai)."""
    gen = [
        {
            "instruction": f"Write a function f{i} that multiplies x by {i}.",
            "output": f"def f{i}(x):\n    return x * {i}" + "  # times" * (i % 4),
        }
        for i in range(n_gen)
    ]
    explain = [
        {
            "conversations": [
                {"from": "human", "value": f"What does `x + {i}` do?"},
                {"from": "gpt", "value": f"It adds {i} to x." + " Indeed." * (i % 3)},
            ]
        }
        for i in range(n_explain)
    ]
    fix = [
        {
            "messages": [
                {"role": "user", "content": f"Fix: def g(x): return x - {i}"},
                {"role": "assistant", "content": f"def g(x):\n    return x + {i}"},
                {"role": "user", "content": "Shorter?"},
                {"role": "assistant", "content": f"g = lambda x: x + {i}"},
            ]
        }
        for i in range(n_fix)
    ]
    return {"gen": gen, "explain": explain, "fix": fix}


def tokenized_folder(tmp: Path, base: Path, seq_len: int = 96, split: float | None = 0.2, tasks=None) -> Path:
    from mft_data.api import TokenizeConfig, tokenize_folder

    folder = format_folder(tmp / "data", tasks or demo_tasks(), split=split)
    out = tmp / "tok"
    tokenize_folder(TokenizeConfig(folder=str(folder), tokenizer=str(base), out=str(out), seq_len=seq_len))
    return out


def train_config(base, data, out, **kw):
    from mft_train.config import TrainConfig

    defaults = dict(
        model=str(base),
        data=str(data),
        out=str(out),
        lr=3e-3,
        max_steps=12,
        micro_batch_size=2,
        grad_accum=2,
        seq_len=96,
        log_every=1,
        eval_every=4,
        lora_r=8,
        lora_alpha=16,
        lora_dropout=0.1,
        warmup_steps=2,
    )
    defaults.update(kw)
    return TrainConfig(**defaults)


def grad_capture_engine(model):
    """A one-process engine that records the accumulated gradient (``engine.grads``) instead of stepping."""
    import torch
    from mft_train.engine import LocalEngine

    class GradCapture(LocalEngine):
        def step(self, max_grad_norm):
            self.grads = {n: p.grad.detach().clone() for n, p in self.model.named_parameters() if p.grad is not None}
            self.optimizer.zero_grad(set_to_none=True)
            return 0.0

    return GradCapture(model, torch.optim.SGD(model.parameters(), lr=0.0), None)


# A `mft-train run` that SIGKILLs itself at step KILL_AT_STEP, or right after torch.save writes a file whose path
# contains KILL_IN_SAVE (a checkpoint half written).
KILLER = """
import os, signal, sys
import torch
import mft_train.loop as loop
kill_step = int(os.environ.get("KILL_AT_STEP", "-1"))
kill_save = os.environ.get("KILL_IN_SAVE", "")
original_step, original_save = loop.train_step, torch.save
def train_step(parts, step):
    if step == kill_step:
        os.kill(os.getpid(), signal.SIGKILL)
    return original_step(parts, step)
def save(obj, path, *a, **k):
    original_save(obj, path, *a, **k)
    if kill_save and kill_save in str(path):
        os.kill(os.getpid(), signal.SIGKILL)
loop.train_step, torch.save = train_step, save
from mft_train.cli import main
sys.argv = ["mft-train", "run"] + sys.argv[1:]
main()
"""


def run_killable(config_path, *sets, **env):
    """`mft-train run CONFIG --set ...` in a subprocess that kills itself where ``env`` says (see KILLER)."""
    import os
    import subprocess
    import sys

    full_env = {**os.environ, **{k: str(v) for k, v in env.items()}}
    args = [sys.executable, "-c", KILLER, str(config_path)] + [a for s in sets for a in ("--set", s)]
    return subprocess.run(args, env=full_env, capture_output=True, text=True, timeout=900)


def add_k_problem(k: int, expect: int | None = None, task_id: str | None = None) -> dict:
    """A HumanEval-format problem ``solve(x) = x + k``; its test expects ``x + expect`` (default k)."""
    expect = k if expect is None else expect
    return {
        "task_id": task_id or f"Demo/add_{k}_expect_{expect}",
        "prompt": f'def solve(x):\n    """Return x plus {k}."""\n',
        "entry_point": "solve",
        "canonical_solution": f"    return x + {expect}\n",
        "test": f"def check(candidate):\n    assert candidate(1) == {1 + expect}\n"
        f"    assert candidate(-4) == {expect - 4}\n",
    }


def memorise_folder(tmp: Path, base: Path, k: int = 3, seq_len: int = 128) -> dict[str, Path]:
    """A tokenized folder teaching a tiny model one answer, ``solve(x) = x + k``, to the chat turn mft-eval's
    chat prompt renders for ``add_k_problem(k)``; and problem files whose tests that answer passes or fails:
    ``gen`` (4 problems: 2 pass once learned) and ``other`` (2 problems: 1 passes). Before training none pass."""
    from mft_data.api import TokenizeConfig, tokenize_folder

    prompt = add_k_problem(k)["prompt"]
    rows = [{"prompt": f"# language: Python\n{prompt}", "answer": f"def solve(x):\n    return x + {k}\n"}] * 12
    folder = format_folder(tmp / "data", {"gen": rows, "chat": [{"prompt": "Hi", "answer": "Hello."}] * 4}, split=0.2)
    out = tmp / "tok"
    tokenize_folder(TokenizeConfig(folder=str(folder), tokenizer=str(base), out=str(out), seq_len=seq_len))
    gen = [add_k_problem(k), add_k_problem(k, task_id="Demo/again"), add_k_problem(k, k + 1), add_k_problem(k, k + 2)]
    other = [add_k_problem(k, k - 1), add_k_problem(k, task_id="Demo/other")]
    return {"tok": out, "gen": write_jsonl(tmp / "gen.jsonl", gen), "other": write_jsonl(tmp / "other.jsonl", other)}


def pair_rows(n: int = 12, multi_turn_every: int = 4) -> list[dict]:
    """Preference rows in MFTCoder's xxpo layout: a right and a wrong answer to the same prompt (some multi-turn)."""
    rows = []
    for i in range(n):
        prompt = [{"role": "user", "content": f"Write solve(x) returning x plus {i}."}]
        if i % multi_turn_every == 0:  # an earlier exchange both sides share (context, never supervised)
            prompt = [
                {"role": "user", "content": "Say hi."},
                {"role": "assistant", "content": "hi"},
                *prompt,
            ]
        good = f"def solve(x):\n    return x + {i}" + "  # plus" * (i % 3)
        bad = f"def solve(x):\n    return x - {i}" + " * 1" * (i % 5)
        rows.append(
            {
                "id": f"p{i}",
                "chosen": [*prompt, {"role": "assistant", "content": good}],
                "rejected": [*prompt, {"role": "assistant", "content": bad}],
            }
        )
    return rows


def pair_folder(tmp: Path, base: Path, seq_len: int = 192, split: float | None = 0.25, **tasks) -> Path:
    """A tokenized preference folder (real format -> split -> tokenize); tasks default to two of pair_rows."""
    from mft_data.api import TokenizeConfig, tokenize_folder

    tasks = tasks or {"gen": pair_rows(12), "fix": pair_rows(8, 3)}
    folder = format_folder(tmp / "pairs-data", tasks, split=split)
    out = tmp / "pairs-tok"
    tokenize_folder(TokenizeConfig(folder=str(folder), tokenizer=str(base), out=str(out), seq_len=seq_len))
    return out
