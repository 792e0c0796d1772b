"""The little of torch.distributed training needs: joining the group torchrun describes, this process's device,
and collectives that are no-ops in a single process."""

from __future__ import annotations

import os

import torch
import torch.distributed as tdist


def init_distributed() -> None:
    """Join the process group torchrun describes (gloo on CPU, nccl on GPU); also for one process, so a sharded
    strategy (FSDP, ZeRO) can run on a single GPU."""
    if "RANK" not in os.environ or initialized():
        return
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    tdist.init_process_group(backend="nccl" if torch.cuda.is_available() else "gloo")


def device() -> torch.device:
    """This process's device: its GPU (torchrun's LOCAL_RANK), else the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")


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
