"""pass@1 per problem set while training, through mft-eval's public API (``mft_eval.api.score_model``).

Greedy completions of each set's problems with the current weights, run in mft-eval's sandbox with the settings
``mft-eval humaneval`` would use on the saved model, so the logged pass@1 is the one that command reports on the
same checkpoint. Under several ranks each rank takes every ``world``-th problem and the pass counts are summed;
sharded models (ZeRO-3, FSDP) keep every rank generating in step (``synced_gpus``) on equal shares.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from mft_core.errors import ConfigError

from . import dist
from .config import TrainConfig
from .loop import autocast

EXTRA_FIX = "pip install 'mft-train[eval]' (it adds mft-eval), or remove eval_problems from the config"


def _api():
    try:
        from mft_eval import api
    except ImportError as exc:
        raise ConfigError(f"eval_problems needs mft-eval, which is not installed ({exc})", fix=EXTRA_FIX) from exc
    return api


def eval_settings(cfg: TrainConfig, model_dir: Path, out: Path):
    """The mft-eval ``humaneval`` config the in-training evaluation runs with (model/out only recorded)."""
    return _api().HumanEvalConfig(
        model=str(model_dir),
        out=str(out / "problems"),
        k=(1,),
        max_new_tokens=cfg.eval_problems_max_new_tokens,
        batch_size=cfg.eval_problems_batch_size,
        prompt=cfg.eval_problems_prompt,
        timeout=cfg.eval_problems_timeout,
        isolation=cfg.eval_problems_isolation,
        workers=cfg.eval_problems_workers or None,
        dtype="float32",
    )


@dataclass(kw_only=True)
class ProblemSets:
    """The named problem sets and how to run them; ``measure`` is collective (every rank calls it)."""

    sets: dict[str, list[dict]]  # name -> problems (limited), in file order
    settings: object  # mft_eval.config.HumanEvalConfig
    tokenizer: object
    sharded: bool  # ZeRO-3 / FSDP: ranks must generate in step
    out: Path
    # under bf16 training the weights may be mixed bf16/fp32 (PEFT adapters): generate under the same autocast as
    # the training forward (fp32 runs are what `mft-eval humaneval` computes on CPU, to the bit)
    bf16: bool = False

    @staticmethod
    def load(cfg: TrainConfig, model_dir: Path, tokenizer, out: Path) -> ProblemSets | None:
        if not cfg.eval_problems:
            return None
        api = _api()
        sets = {}
        for name, path in cfg.eval_problems.items():
            problems = list(api.load_problems(path).values())
            sets[name] = problems[: cfg.eval_problems_limit] if cfg.eval_problems_limit else problems
        sharded = cfg.strategy in ("zero3", "fsdp") and dist.world_size() > 1
        return ProblemSets(sets=sets, settings=eval_settings(cfg, model_dir, out), tokenizer=tokenizer,
                           sharded=sharded, out=out, bf16=cfg.bf16)  # fmt: skip

    def measure(self, model, step: int) -> dict:
        """``{"pass_at_1": {name: p}, "passed": {name: [c, n]}, "seconds": s}`` at ``step`` (same on every rank);
        the main rank writes every sample's completion and verdict to ``OUT/problems/step-N.jsonl``."""
        api = _api()
        start = time.perf_counter()
        rank, world = dist.rank(), dist.world_size()
        names = list(self.sets)
        counts = torch.zeros(len(names), 2, dtype=torch.float64)
        rows = []
        generator = _unwrap(model)
        for k, name in enumerate(names):
            problems = self.sets[name]
            mine = problems[rank::world]
            share = -(-len(problems) // world)
            if self.sharded and len(mine) < share:  # equal shares: a repeated problem, its verdict not counted
                mine = mine + problems[: share - len(mine)]
                counted = len(problems[rank::world])
            else:
                counted = len(mine)
            with autocast(self.bf16):
                score = api.score_model(generator, self.tokenizer, mine, self.settings, synced_gpus=self.sharded)
            verdicts = score.verdicts[:counted]
            counts[k, 0] = sum(v.passed for v in verdicts)
            counts[k, 1] = len(verdicts)
            rows += [{"set": name, "task_id": v.task_id, "status": v.status, "passed": v.passed,
                      "completion": v.completion, "exc_type": v.exc_type} for v in verdicts]  # fmt: skip
        dist.all_reduce_sum(counts)
        gathered = _gather(rows)
        seconds = time.perf_counter() - start
        if dist.is_main():
            folder = self.out / "problems"
            folder.mkdir(parents=True, exist_ok=True)
            with open(folder / f"step-{step}.jsonl", "w", encoding="utf-8") as handle:
                for row in gathered:
                    handle.write(json.dumps(row) + "\n")
        return {
            "pass_at_1": {
                n: (counts[k, 0] / counts[k, 1]).item() if counts[k, 1] else None for k, n in enumerate(names)
            },
            "passed": {n: [int(counts[k, 0]), int(counts[k, 1])] for k, n in enumerate(names)},
            "seconds": round(seconds, 3),
        }


def _unwrap(model):
    """The model ``generate`` runs on: under DDP/DeepSpeed wrappers (``.module``), the PEFT or HF model."""
    while hasattr(model, "module"):
        model = model.module
    return model


def _gather(rows: list[dict]) -> list[dict]:
    if not dist.initialized():
        return rows
    import torch.distributed as tdist

    boxes: list = [None] * dist.world_size()
    tdist.all_gather_object(boxes, rows)
    return [row for box in boxes for row in box]
