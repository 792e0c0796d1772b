"""The little of torch.distributed the loop needs; every function is a no-op in a single process."""

from __future__ import annotations

import torch
import torch.distributed as tdist


def initialized() -> bool:
    return tdist.is_available() and tdist.is_initialized()


def rank() -> int:
    return tdist.get_rank() if initialized() else 0


def world_size() -> int:
    return tdist.get_world_size() if initialized() else 1


def is_main() -> bool:
    return rank() == 0


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum over ranks (in place, returned). Counts are float64 so the sum is exact for any realistic size."""
    if initialized():
        tdist.all_reduce(tensor, op=tdist.ReduceOp.SUM)
    return tensor


def barrier() -> None:
    if initialized():
        tdist.barrier()


def broadcast_object(obj):
    if not initialized():
        return obj
    box = [obj]
    tdist.broadcast_object_list(box, src=0)
    return box[0]
