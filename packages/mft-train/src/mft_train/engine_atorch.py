"""ATorch (Ant Group's dlrover/atorch, MFTCoder's second framework) as a training engine: ``auto_accelerate`` with
its ``parallel_mode`` strategy wraps the model for data parallelism over the process group MFT already started.

What was found (atorch 0.2.5, torch 2.13, transformers 5.24, safetensors 0.8; README "ATorch"):
- ``from atorch.auto import auto_accelerate`` fails: ``atorch/utils/fsdp_save_util.py`` imports the private
  ``safetensors.torch._tobytes``, removed in safetensors 0.8, which transformers 5 requires (no pin satisfies
  both). :func:`auto_accelerate` below supplies it before the import; nothing else of ATorch is patched.
- ``parallel_mode`` works on CPU (gloo): it wraps the model in torch's ``DistributedDataParallel`` over ATorch's
  data group, so its gradients, and MFT's exactness, are DDP's.
- ATorch's sharding (``fsdp``, ``zero1``/``zero2``) raises ``ValueError("FSDP only support GPU !")`` on CPU
  (``atorch/auto/opt_lib/zero_optimization.py``); it is not offered here until it has run somewhere.
"""

from __future__ import annotations

import contextlib
import io
import logging

import torch
from mft_core.errors import ConfigError
from mft_core.ui import info

from . import dist
from .engine import LocalEngine


def _tobytes(tensor: torch.Tensor, name: str) -> bytes:
    """safetensors < 0.8's private helper, as ATorch's FSDP checkpoint code calls it: the raw little-endian bytes."""
    data = tensor.detach().contiguous().cpu()
    if data.dtype == torch.bfloat16:  # numpy has no bf16: its raw 16-bit pattern
        data = data.view(torch.int16)
    return data.numpy().tobytes()


def auto_accelerate():
    try:
        import safetensors.torch as safetensors_torch

        if not hasattr(safetensors_torch, "_tobytes"):
            safetensors_torch._tobytes = _tobytes  # type: ignore[attr-defined]
        with contextlib.redirect_stdout(io.StringIO()):  # its import prints banners on every rank
            from atorch.auto import auto_accelerate as found
    except ImportError as exc:
        raise ConfigError(
            f"strategy atorch needs ATorch, which does not import here ({exc})",
            fix="pip install 'mft-train[atorch]' (or `make install-atorch`: a separate .venv-atorch)",
        ) from exc
    return found


def _version() -> str:
    from importlib.metadata import version

    return version("atorch")


def atorch_engine(model, optimizer_factory, scheduler_factory) -> LocalEngine:
    """ATorch's data parallelism: the model it wraps (a DDP) under a :class:`LocalEngine`, as for ``ddp``."""
    accelerate = auto_accelerate()
    logging.getLogger("atorch").setLevel(logging.WARNING)
    ok, result, _ = accelerate(
        model,
        optim_func=lambda params, **_: optimizer_factory(params),
        load_strategy=["parallel_mode"],
        ignore_dryrun_on_load_strategy=True,  # the dry run needs a dataset and a loss: MFT's loop has its own
    )
    if not ok or result is None:
        raise ConfigError("ATorch's auto_accelerate could not apply parallel_mode", fix="use --strategy ddp")
    wrapped = result.model
    if dist.world_size() > 1 and not isinstance(wrapped, torch.nn.parallel.DistributedDataParallel):
        raise ConfigError(
            f"ATorch returned a {type(wrapped).__name__}, not the DistributedDataParallel its parallel_mode makes",
            fix="use --strategy ddp",
        )
    inner = wrapped.module if isinstance(wrapped, torch.nn.parallel.DistributedDataParallel) else wrapped
    if inner is not model:
        raise ConfigError("ATorch replaced the model instead of wrapping it", fix="use --strategy ddp")
    ddp = wrapped if inner is not wrapped else None
    if dist.is_main():
        info(f"ATorch {_version()} auto_accelerate: parallel_mode wrapped the model in {type(wrapped).__name__}")
    return LocalEngine(model, result.optim, scheduler_factory(result.optim), ddp=ddp)
