"""mft-merge's library API: ``merge(cfg)``: adapter + base -> a standalone, verified HF model folder."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from mft_core.artifacts import (
    load_tokenizer,
    model_fingerprint,
    model_type_of,
    resolve_adapter_dir,
    resolve_model_dir,
)
from mft_core.config import fingerprint_config
from mft_core.errors import ConfigError, ContractError, QualityGateError
from mft_core.manifest import InputRef, atomic_output_dir, has_manifest, is_up_to_date, new_manifest, read_manifest
from mft_core.ui import info

from . import __version__
from .adapter import load_adapter
from .config import MergeConfig
from .layer_check import BackgroundCheck
from .merge import base_entries, output_dtype, parse_size, plan_merge, write_side_files
from .stream import write_shards
from .verify import prompts_from_data, verify_logits


@dataclass
class MergeResult:
    out: Path
    summary: dict
    up_to_date: bool = False


def resolve_base(cfg: MergeConfig, adapter_arg: Path, adapter_config: dict) -> tuple[Path, Path | None]:
    """The base model folder, and the mft-train output the adapter came from (if any).

    The adapter's manifest and its adapter_config.json must agree; ``--base`` overrides both (and says so).
    """
    train_output = adapter_arg if has_manifest(adapter_arg) else None
    from_manifest = None
    if train_output is not None:
        manifest = read_manifest(train_output, ("adapter",), made_by="mft-train run CONFIG")
        from_manifest = manifest.summary.get("base_model")
    from_config = adapter_config.get("base_model_name_or_path")
    if (
        from_manifest
        and from_config
        and Path(from_config).exists()
        and Path(from_config).resolve() != Path(from_manifest).resolve()
    ):
        raise ContractError(
            f"the adapter's manifest names base {from_manifest} but its adapter_config.json names {from_config}",
            fix="pass the right one with --base",
        )
    chosen: str | None
    if cfg.base:
        chosen = cfg.base
        if from_manifest or from_config:
            info(f"using --base {cfg.base} (the adapter names {from_manifest or from_config})")
    else:
        chosen = from_manifest or from_config
        if not chosen:
            raise ConfigError("the adapter names no base model", fix="pass --base MODEL_DIR")
    try:
        base = resolve_model_dir(chosen)
    except ContractError as exc:
        raise ContractError(f"base model {chosen}: {exc.message}", fix="pass --base MODEL_DIR") from exc
    _check_same_architecture(base, [n for n in (from_manifest, from_config) if n])
    if train_output is not None and not cfg.base:
        expected = read_manifest(train_output).summary.get("base_model_sha256")
        if expected and model_fingerprint(base) != expected:
            raise ContractError(
                f"{base} changed since the adapter was trained (config or weights differ)",
                fix="pass the exact base with --base, or retrain",
            )
    return base, train_output


def _check_same_architecture(base: Path, named: list[str]) -> None:
    """The base must be of the architecture the adapter was trained on, wherever that base can still be read.

    Shapes alone do not tell: a llama adapter fits a qwen2 base of the same sizes and would merge silently.
    """
    actual = model_type_of(base)
    for name in named:
        trained_on = model_type_of(Path(name)) if Path(name).is_dir() else None
        if actual and trained_on and trained_on != actual:
            raise ContractError(
                f"the adapter was trained on a {trained_on} model ({name}) but the base {base} is {actual}",
                fix="pass the base the adapter was trained on with --base",
            )


def merge(cfg: MergeConfig) -> MergeResult:
    """Merge, write atomically, verify; raises QualityGateError (exit 1) when the check fails."""
    adapter_arg = Path(cfg.adapter)
    adapter_dir = resolve_adapter_dir(adapter_arg)
    adapter = load_adapter(adapter_dir)
    base, train_output = resolve_base(cfg, adapter_arg, adapter.config)
    config = fingerprint_config(cfg)  # adapter and base are inputs, identified by their manifests and hashes
    inputs = (InputRef.of(adapter_arg), InputRef.of(base))
    probe = new_manifest("merged-model", "mft-merge", __version__, config, inputs)
    if is_up_to_date(cfg.out, probe.fingerprint):
        return MergeResult(Path(cfg.out), read_manifest(cfg.out).summary, up_to_date=True)
    if train_output is not None and read_manifest(train_output).summary.get("peft") == "qlora" and not cfg.simulate_nf4:
        info("this adapter was trained with QLoRA (against an nf4 base): --simulate-nf4 reproduces that base exactly")
    import json

    dtype = output_dtype(cfg.dtype, json.loads((base / "config.json").read_text()), base_entries(base))
    plan = plan_merge(adapter, base, dtype, parse_size(cfg.max_shard_size), cfg.simulate_nf4)
    check = choose_check(cfg.verify, base)
    with atomic_output_dir(cfg.out, overwrite=cfg.overwrite) as staging:
        # checked shard by shard, on a thread of its own, as the merge writes them. That thread builds PEFT's model
        # (which patches nn.Module process-wide for a moment): nothing here builds a module until it is joined.
        layers = BackgroundCheck(base, adapter.path, plan) if check == "layers" else None
        try:
            write_shards(plan, adapter, staging.path, on_shard=layers and layers.shard_written)
            write_side_files(plan, base, adapter, staging.path, dtype)
            verification = layers.result(staging.path) if layers else None
        finally:
            if layers:
                layers.close()
        if check == "logits":
            prompts, source = prompts_from_data(train_output, load_tokenizer(staging.path), cfg.prompts)
            verification = verify_logits(base, adapter, staging.path, dtype, prompts, source, cfg.new_tokens, plan)
        summary = {
            "base_model": str(base.resolve()),
            "adapter": str(adapter_dir.resolve()),
            "dtype": str(dtype).replace("torch.", ""),
            "shards": len(plan.shards),
            "merged_tensors": len(plan.merged),
            "replaced_tensors": plan.replaced,
            "simulate_nf4": cfg.simulate_nf4,
            "config_updates": plan.config_updates,
            "verification": verification.to_dict() if verification else {"check": "none"},
        }
        if verification is not None and not verification.passed:
            raise QualityGateError(
                f"merge verification ({verification.check}) failed: max diff {verification.max_abs_diff:.3g} > "
                f"{verification.tolerance:g}"
                + (
                    f" or token agreement {verification.token_agreement:.2f} < {verification.min_agreement}"
                    if verification.check == "logits"
                    else ""
                )
                + (f" ({verification.detail})" if verification.detail else ""),
                fix="nothing was written; report this with the adapter, or use --dtype fp32",
            )
        staging.finish(new_manifest("merged-model", "mft-merge", __version__, config, inputs, summary))
    return MergeResult(Path(cfg.out), summary)


def choose_check(verify: str, base: Path) -> str | None:
    """``auto`` is the layers check: every changed weight equal to PEFT's own merge of it (bit for bit for LoRA) and
    the folder's config building a model with exactly its tensors, at a fraction of the merge's cost and in about
    one tensor's memory. The logits check (both models loaded) is there on request."""
    if verify == "none":
        return None
    return "layers" if verify == "auto" else verify
