"""``mft-merge``: a thin Typer command over :func:`mft_merge.api.merge`, its flags generated from
:class:`mft_merge.config.MergeConfig`."""

from __future__ import annotations

from mft_core.cli_config import config_command
from mft_core.ui import console, make_app

from .config import MergeConfig

app = make_app("Merge a LoRA adapter into its base: a standalone Hugging Face model, streamed and verified.")


@config_command(app, MergeConfig)
def main_cmd(cfg: MergeConfig) -> None:
    """Merge ADAPTER into its base model and check the result against base + adapter."""
    from .api import merge

    result = merge(cfg)
    if result.up_to_date:
        console.print(f"[green]up to date[/]: {result.out} (same adapter, base and settings)")
        return
    v = result.summary["verification"]
    check = (
        "not verified"
        if v["check"] == "none"
        else (
            f"verified by {v['check']}: max diff {v['max_abs_diff']:.2e} (tolerance {v['tolerance']:g})"
            + (f", greedy agreement {v['token_agreement']:.0%}" if v.get("token_agreement") is not None else "")
        )
    )
    console.print(
        f"[green]wrote[/] {result.out}: {result.summary['merged_tensors']} tensors merged, "
        f"{result.summary['shards']} shard(s), {result.summary['dtype']}; {check}"
    )


def main() -> None:
    app()
