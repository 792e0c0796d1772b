"""Checkpoints that resume exactly: trainable weights, optimizer, scheduler, RNG, step, counters, early stopping.

A checkpoint is written into a hidden temp folder and renamed to ``checkpoint-<step>`` only when complete,
so a folder with that name is always whole; ``state.json`` inside is written last as a second guard.
"""

from __future__ import annotations

import json
import random
import re
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from mft_core.errors import ConfigError
from mft_core.manifest import staged_dir

from .config import RESUME_SAFE_KEYS

_NAME = re.compile(r"^checkpoint-(\d+)$")


@dataclass
class TrainState:
    """Everything besides tensors that the loop needs to continue exactly where it stopped."""

    step: int = 0
    tokens_seen: int = 0
    task_tokens: dict[str, int] = field(default_factory=dict)
    best_valid: float | None = None
    best_step: int | None = None
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


def trainable_state(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def save_checkpoint(
    output_dir: Path,
    model,
    optimizer,
    scheduler,
    state: TrainState,
    config: dict,
    save_limit: int,
    protect: set[int] = frozenset(),
) -> Path:
    """Write ``checkpoint-<step>`` atomically, then delete the oldest beyond ``save_limit``."""
    from safetensors.torch import save_file

    final = output_dir / f"checkpoint-{state.step}"
    with staged_dir(final, overwrite=True) as tmp:
        save_file({k: v.contiguous() for k, v in trainable_state(model).items()}, str(tmp / "trainable.safetensors"))
        torch.save(
            {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "rng": rng_state()},
            tmp / "optim.pt",
        )
        (tmp / "state.json").write_text(json.dumps({"state": asdict(state), "config": config}, indent=2) + "\n")
    prune_checkpoints(output_dir, save_limit, protect)
    return final


def list_checkpoints(output_dir: Path) -> list[Path]:
    """Complete checkpoints, oldest first."""
    found = []
    for path in output_dir.glob("checkpoint-*"):
        match = _NAME.match(path.name)
        if match and path.is_dir() and (path / "state.json").is_file():
            found.append((int(match.group(1)), path))
    return [p for _, p in sorted(found)]


def prune_checkpoints(output_dir: Path, save_limit: int, protect: set[int] = frozenset()) -> None:
    if save_limit <= 0:
        return
    checkpoints = list_checkpoints(output_dir)
    for path in checkpoints[:-save_limit]:
        if int(path.name.split("-")[1]) not in protect:
            shutil.rmtree(path, ignore_errors=True)


def find_resume(output_dir: Path, resume: str) -> Path | None:
    """The checkpoint to resume from: ``auto`` -> newest complete one (or None), a path -> that one."""
    if resume == "none":
        return None
    if resume == "auto":
        checkpoints = list_checkpoints(output_dir)
        return checkpoints[-1] if checkpoints else None
    path = Path(resume)
    if not (path / "state.json").is_file():
        raise ConfigError(
            f"resume: {path} is not a complete checkpoint (no state.json)",
            fix=f"use resume=auto, or one of: {', '.join(p.name for p in list_checkpoints(output_dir))}",
        )
    return path


def config_diff(saved: dict, current: dict) -> list[str]:
    keys = sorted((set(saved) | set(current)) - RESUME_SAFE_KEYS)
    return [
        f"{k}: checkpoint {saved.get(k)!r} != now {current.get(k)!r}" for k in keys if saved.get(k) != current.get(k)
    ]


def load_checkpoint(path: Path, model, optimizer, scheduler, config: dict) -> TrainState:
    """Restore everything; refuse a checkpoint made with a different config (and show the difference)."""
    from safetensors.torch import load_file

    saved = json.loads((path / "state.json").read_text())
    diff = config_diff(saved["config"], config)
    if diff:
        raise ConfigError(
            f"{path} was made with a different config:\n  " + "\n  ".join(diff),
            fix="resume with the same config, or start a new output_dir (resume=none)",
        )
    weights = load_file(str(path / "trainable.safetensors"))
    params = dict(model.named_parameters())
    missing = [k for k in weights if k not in params]
    if missing or len(weights) != sum(p.requires_grad for p in params.values()):
        raise ConfigError(f"{path}: its weights do not match this model ({len(missing)} unknown names)")
    with torch.no_grad():
        for name, tensor in weights.items():
            params[name].copy_(tensor)
    blob = torch.load(path / "optim.pt", weights_only=False)
    optimizer.load_state_dict(blob["optimizer"])
    scheduler.load_state_dict(blob["scheduler"])
    set_rng_state(blob["rng"])
    return TrainState(**saved["state"])
