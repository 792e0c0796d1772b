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
