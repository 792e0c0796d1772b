"""Checkpoints that resume exactly, in one layout for every engine:

    checkpoint-N/
      weights.safetensors   every trainable tensor, whole (gathered from the shards), by parameter name
      optimizer/            the engine's optimizer state (optimizer.pt, or DeepSpeed's partitioned files)
      scheduler.pt
      rng-rank{R}.pt        each rank's Python, numpy, torch (and CUDA) RNG states
      state.json            step, counters, early stopping, balancing; the resolved config; written last

Every rank writes into one hidden temp folder, renamed to ``checkpoint-N`` by the main rank after all are done,
so a folder with that name is always whole. On resume the config must be the same run's (the differing keys
are shown), and the saved weights' names and shapes must be the model's trainable parameters'.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import uuid
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from mft_core.errors import ConfigError
from mft_core.manifest import remove_stale_staging

from . import dist
from .config import result_keys

LAYOUT = 2  # 1: the layouts before this one (trainable.safetensors + optim.pt, or per-engine files)
WEIGHTS = "weights.safetensors"
OPTIMIZER = "optimizer"
SCHEDULER = "scheduler.pt"
STATE = "state.json"
_NAME = re.compile(r"^checkpoint-(\d+)$")


@dataclass
class TrainState:
    """Everything besides tensors that the loop needs to continue exactly where it stopped."""

    step: int = 0
    tokens_seen: int = 0
    task_tokens: dict[str, int] = field(default_factory=dict)
    best_valid: float | None = None  # lowest mean valid loss so far
    best_score: float | None = None  # best select_by value so far, lower is better (pass@1 negated)
    best_step: int | None = None  # the step best/ holds
    bad_evals: int = 0
    stopped_early: bool = False
    balance: dict | None = None  # convergence-balancing histories and weights (balance.BalanceState)
    # steps since the last metrics line (loss, task_loss, seconds, real_tokens, grad_norm): a resumed run's first
    # line then averages the same steps as an uninterrupted run's
    log_window: list[dict] = field(default_factory=list)


def rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def list_checkpoints(out: Path) -> list[Path]:
    """Complete checkpoints, oldest first."""
    found = []
    for path in out.glob("checkpoint-*"):
        match = _NAME.match(path.name)
        if match and path.is_dir() and (path / STATE).is_file():
            found.append((int(match.group(1)), path))
    return [p for _, p in sorted(found)]


def prune_checkpoints(out: Path, save_limit: int) -> None:
    if save_limit <= 0:
        return
    for path in list_checkpoints(out)[:-save_limit]:
        shutil.rmtree(path, ignore_errors=True)


def config_diff(saved: dict, current: dict) -> list[str]:
    """The settings that differ and would make a resume another run (``same_run=False`` ones may differ)."""
    keys = sorted((set(saved) | set(current)) & result_keys())
    return [
        f"{k}: checkpoint {saved.get(k)!r} != now {current.get(k)!r}" for k in keys if saved.get(k) != current.get(k)
    ]


def weight_mismatches(saved: Mapping[str, tuple[int, ...]], model: Mapping[str, tuple[int, ...]]) -> list[str]:
    """How a checkpoint's weights (name -> shape) differ from the model's trainable parameters; [] when they fit."""
    problems = [f"{n}: not a trainable parameter of this model" for n in sorted(set(saved) - set(model))]
    problems += [f"{n}: missing from the checkpoint" for n in sorted(set(model) - set(saved))]
    problems += [
        f"{n}: shape {list(saved[n])} in the checkpoint, {list(model[n])} in the model"
        for n in sorted(set(saved) & set(model))
        if tuple(saved[n]) != tuple(model[n])
    ]
    return problems


def saved_shapes(weights_file: Path) -> dict[str, tuple[int, ...]]:
    """Names and shapes from a safetensors header (no tensor is read)."""
    from safetensors import safe_open

    with safe_open(str(weights_file), framework="pt") as f:
        return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}


@dataclass(frozen=True, kw_only=True)
class Checkpointer:
    """Writes, finds and restores the checkpoints of one output folder. ``config`` is the resolved config every
    checkpoint stores and every resume is compared with. ``save`` and ``load`` are collective (every rank)."""

    out: Path
    save_limit: int
    config: dict

    def find_resume(self, resume: str) -> Path | None:
        """The checkpoint to resume from: ``auto`` -> newest complete one (or None), a path -> that one."""
        if resume == "none":
            return None
        if resume == "auto":
            checkpoints = list_checkpoints(self.out)
            return checkpoints[-1] if checkpoints else None
        path = Path(resume)
        if not (path / STATE).is_file():
            raise ConfigError(
                f"resume: {path} is not a complete checkpoint (no {STATE})",
                fix=f"use resume=auto, or one of: {', '.join(p.name for p in list_checkpoints(self.out))}",
            )
        return path

    def save(self, engine, state: TrainState) -> Path:
        """Write ``checkpoint-<step>`` atomically, then delete the oldest beyond ``save_limit``."""
        final = self.out / f"checkpoint-{state.step}"
        tmp = self.out / dist.broadcast_object(self._temp_name(final) if dist.is_main() else None)
        if dist.is_main():
            remove_stale_staging(final)  # temp folders of killed runs
            (tmp / OPTIMIZER).mkdir(parents=True)
        dist.barrier()
        weights = engine.trainable_state()
        if weights is not None:
            from safetensors.torch import save_file

            save_file({k: v.contiguous() for k, v in weights.items()}, str(tmp / WEIGHTS))
        engine.save_optimizer(tmp / OPTIMIZER)
        if dist.is_main():
            torch.save(engine.scheduler.state_dict(), tmp / SCHEDULER)
        torch.save(rng_state(), tmp / f"rng-rank{dist.rank()}.pt")
        dist.barrier()
        if dist.is_main():
            record = {"layout": LAYOUT, "world_size": dist.world_size(), "state": asdict(state), "config": self.config}
            (tmp / STATE).write_text(json.dumps(record, indent=2) + "\n")
            if final.exists():
                shutil.rmtree(final)
            os.replace(tmp, final)
            prune_checkpoints(self.out, self.save_limit)
        dist.barrier()
        return final

    def load(self, engine, path: Path) -> TrainState:
        """Restore everything after checking the checkpoint belongs to this run and fits this model."""
        saved = json.loads((path / STATE).read_text())
        if saved.get("layout") != LAYOUT:
            raise ConfigError(
                f"{path} was written in an older checkpoint layout", fix="start again in a new out (resume=none)"
            )
        diff = config_diff(saved["config"], self.config)
        if diff:
            raise ConfigError(
                f"{path} was made with a different config:\n  " + "\n  ".join(diff),
                fix="resume with the same config, or start a new out (resume=none)",
            )
        if saved["world_size"] != dist.world_size():
            raise ConfigError(
                f"{path} was written by {saved['world_size']} processes, this run has {dist.world_size()}",
                fix=f"resume with --nproc {saved['world_size']} (ranks see other rows with another count)",
            )
        problems = weight_mismatches(saved_shapes(path / WEIGHTS), engine.trainable_shapes())
        if problems:
            shown = problems[:8] + ([f"... {len(problems) - 8} more"] if len(problems) > 8 else [])
            raise ConfigError(f"{path}: its weights do not fit this model:\n  " + "\n  ".join(shown))
        engine.load_trainable(path / WEIGHTS)
        engine.load_optimizer(path / OPTIMIZER)
        engine.scheduler.load_state_dict(torch.load(path / SCHEDULER, weights_only=False))
        set_rng_state(torch.load(path / f"rng-rank{dist.rank()}.pt", weights_only=False))
        return TrainState(**saved["state"])

    @staticmethod
    def _temp_name(final: Path) -> str:
        # the pid lets mft_core's remove_stale_staging tell a killed run's temp folder from a live one
        return f".{final.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
