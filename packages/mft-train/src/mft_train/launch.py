"""Choosing the engine for the process we are in (single process here; distributed strategies in scale-out)."""

from __future__ import annotations

from .engine import LocalEngine


def make_engine(model, optimizer_factory, scheduler_factory, cfg):
    optimizer = optimizer_factory(model.parameters())
    return LocalEngine(model, optimizer, scheduler_factory(optimizer), cfg.save_limit)
