"""What each process started by ``mft-train launch`` (torchrun) runs: join the group, train, leave."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from mft_core.ui import cli_errors


@cli_errors
def run(
    config: Annotated[Path, typer.Argument()],
    kind: Annotated[str, typer.Option("--kind")] = "run",
    sets: Annotated[list[str] | None, typer.Option("--set")] = None,
):
    import torch.distributed as tdist
    from mft_core.config import build_config

    from .api import train
    from .config import KIND_DEFAULTS, TrainConfig
    from .dist import init_distributed
    from .launch import check_launch_environment

    check_launch_environment()
    init_distributed()
    try:
        train(build_config(TrainConfig, config, sets=sets or (), base=KIND_DEFAULTS[kind]), kind=kind)
    finally:
        if tdist.is_initialized():
            tdist.destroy_process_group()


def main() -> None:
    typer.run(run)


if __name__ == "__main__":
    main()
