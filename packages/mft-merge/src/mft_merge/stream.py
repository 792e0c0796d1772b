"""Write the merged shards: every tensor read once, merged in reused buffers and handed to a writer thread, which
writes it (and finishes each shard: fsync, then the layers check) while the next tensor is merged.

Why buffers are reused: each fresh weight-sized allocation is page-faulted in by the kernel (measured here: 8x the
cost of refilling a buffer), and a merge makes three per layer. Why tensors the merge leaves as they are never
enter Python: ``copy_file_range`` copies their bytes file to file in the kernel.
"""

from __future__ import annotations

import json
import math
import os
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import torch

from .adapter import Adapter
from .merge import Plan, Source, shard_names
from .ops import add_lora_, merge_embedding, merge_linear, nf4_roundtrip
from .safetensors_io import DTYPES, StreamingWriter, read_tensor, tensor_nbytes


def is_copy(name: str, plan: Plan, adapter: Adapter) -> bool:
    """A tensor written as the base stores it: its bytes are copied by the kernel."""
    source = plan.sources[name]
    return (
        source is not None
        and name not in adapter.replaced
        and name not in adapter.base_weights
        and name not in plan.quantized
        and name not in plan.merged
        and DTYPES[source.entry.dtype] == plan.dtypes[name]
    )


def is_plain_lora(name: str, plan: Plan, adapter: Adapter) -> bool:
    """A Linear's LoRA (no DoRA) on a base weight read from the base: merged in place in reused buffers."""
    lora = adapter.modules.get(name[: -len(".weight")]) if name.endswith(".weight") else None
    return (
        lora is not None
        and not lora.embedding
        and lora.magnitude is None
        and plan.sources[name] is not None
        and name not in adapter.base_weights
        and name not in plan.quantized
        and name not in adapter.replaced
    )


class Buffers:
    """Two output buffers (one being written while the other is filled) and float32 scratch, sized once."""

    def __init__(self, plan: Plan, adapter: Adapter):
        fast = [n for n in plan.sources if is_plain_lora(n, plan, adapter)]
        numel = max((math.prod(plan.shapes[n]) for n in fast), default=0)
        out_bytes = max((tensor_nbytes(plan.shapes[n], plan.dtypes[n]) for n in fast), default=0)
        self.outputs = [torch.empty(out_bytes, dtype=torch.uint8) for _ in range(2)]
        self.work = torch.empty(numel, dtype=torch.float32)  # the merged value, when the output is not float32
        self.delta = torch.empty(numel, dtype=torch.float32)
        raw = max((tensor_nbytes(plan.shapes[n], _base_dtype(plan, n)) for n in fast), default=0)
        self.raw = torch.empty(raw, dtype=torch.uint8)  # a non-float32 base weight as read
        self.turn = 0

    def next_output(self, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        buffer = self.outputs[self.turn]
        self.turn ^= 1
        return buffer[: tensor_nbytes(shape, dtype)].view(dtype).view(shape)


class SourceFiles:
    """The base's shard files, opened once, read with ``pread`` (no file position shared between threads)."""

    def __init__(self):
        self.fds: dict[Path, int] = {}
        self.handles: dict = {}

    def fd(self, path: Path) -> int:
        if path not in self.fds:
            self.fds[path] = os.open(path, os.O_RDONLY)
        return self.fds[path]

    def read_into(self, source: Source, into: torch.Tensor) -> None:
        view, done = memoryview(into.numpy()).cast("B"), 0
        while done < source.entry.nbytes:
            got = os.preadv(self.fd(source.path), [view[done:]], source.entry.start + done)
            if got <= 0:
                raise OSError(f"{source.path}: short read of {source.entry.name}")
            done += got

    def handle(self, path: Path):
        if path not in self.handles:
            self.handles[path] = open(path, "rb")
        return self.handles[path]

    def close(self) -> None:
        for fd in self.fds.values():
            os.close(fd)
        for handle in self.handles.values():
            handle.close()


def merged_in_place(name: str, plan: Plan, adapter: Adapter, files: SourceFiles, buffers: Buffers) -> torch.Tensor:
    """A plain LoRA's merged weight in the next output buffer: read, ``W += scale · B A`` in float32, cast."""
    source, shape, out_dtype = plan.sources[name], plan.shapes[name], plan.dtypes[name]
    assert source is not None
    lora = adapter.modules[name[: -len(".weight")]]
    out = buffers.next_output(shape, out_dtype)
    work = out if out_dtype == torch.float32 else buffers.work[: math.prod(shape)].view(shape)
    base_dtype = DTYPES[source.entry.dtype]
    if base_dtype == torch.float32:
        files.read_into(source, work)
    else:
        raw = buffers.raw[: source.entry.nbytes].view(base_dtype).view(shape)
        files.read_into(source, raw)
        work.copy_(raw)
    add_lora_(work, lora.a, lora.b, lora.scale, lora.module in plan.fan_in_fan_out, buffers.delta)
    if work is not out:
        out.copy_(work)
    return out


def merged_tensor(name: str, plan: Plan, adapter: Adapter, files: SourceFiles) -> torch.Tensor:
    """The output value of one tensor: base, base + LoRA, or the adapter's trained copy (fp32 maths, then cast)."""
    source = plan.sources[name]
    if name in adapter.replaced:
        value = adapter.replaced[name]
    else:
        if name in adapter.base_weights:  # PEFT loads this copy over the base's before the LoRA goes on top
            value = adapter.base_weights[name]
        else:
            assert source is not None  # only tensors taken whole from the adapter have no base source
            value = read_tensor(files.handle(source.path), source.entry)
        if name in plan.quantized:
            value = nf4_roundtrip(value)
        lora = adapter.modules.get(name[: -len(".weight")]) if name.endswith(".weight") else None
        if lora is not None:
            if lora.embedding:
                value = merge_embedding(value, lora.a, lora.b, lora.scale, lora.magnitude)
            else:
                fan_in_fan_out = lora.module in plan.fan_in_fan_out
                value = merge_linear(value, lora.a, lora.b, lora.scale, fan_in_fan_out, lora.magnitude)
    return value.to(plan.dtypes[name])


def write_shards(plan: Plan, adapter: Adapter, out: Path, on_shard=None) -> dict:
    """Write every shard (and the index when there are several); returns the weight map. ``on_shard(path, names)``
    runs on the writer thread as each shard is finished (the layers check reads it back then, from the page cache)."""
    names = shard_names(len(plan.shards))
    files, buffers = SourceFiles(), Buffers(plan, adapter)
    weight_map, total = {}, 0
    pending: deque[Future] = deque()  # writes not yet done; at most one while the next tensor is merged
    finished: list[Future] = []
    try:
        with ThreadPoolExecutor(1, thread_name_prefix="mft-merge-writer") as writer:
            for file_name, tensors in zip(names, plan.shards):
                path = out / file_name
                shard = StreamingWriter(path, [(n, plan.dtypes[n], plan.shapes[n]) for n in tensors])
                for name in tensors:
                    if is_copy(name, plan, adapter):
                        source = plan.sources[name]
                        assert source is not None
                        job = writer.submit(shard.copy, name, files.fd(source.path), source.entry)
                    else:
                        value = (
                            merged_in_place(name, plan, adapter, files, buffers)
                            if is_plain_lora(name, plan, adapter)
                            else merged_tensor(name, plan, adapter, files)
                        )
                        job = writer.submit(shard.write, name, value)
                    total += tensor_nbytes(plan.shapes[name], plan.dtypes[name])
                    weight_map[name] = file_name
                    pending.append(job)
                    while len(pending) > 1:  # an output buffer is free again only once its write is done
                        pending.popleft().result()
                finished.append(writer.submit(_finish, shard, path, tensors, on_shard))
            while pending:
                pending.popleft().result()
            for job in finished:
                job.result()
    finally:
        files.close()
    if len(names) > 1:
        index = {"metadata": {"total_size": total}, "weight_map": weight_map}
        (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
    return weight_map


def _finish(shard: StreamingWriter, path: Path, tensors: list[str], on_shard) -> None:
    shard.close()
    if on_shard:
        on_shard(path, tensors)


def _base_dtype(plan: Plan, name: str) -> torch.dtype:
    source = plan.sources[name]
    assert source is not None  # plain LoRAs are read from the base
    return DTYPES[source.entry.dtype]
