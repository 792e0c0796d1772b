"""The output folder of a run: is it already done (or another run's), the weights it publishes, its manifest."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from mft_core.errors import ConfigError
from mft_core.manifest import InputRef, Manifest, has_manifest, new_manifest, read_manifest, staged_dir

from . import __version__, dist
from .checkpoint import list_checkpoints
from .config import TrainConfig, fingerprint_config
from .modeling import base_model_dir


@dataclass(frozen=True, kw_only=True)
class OutputPlan:
    out: Path
    model_dir: Path
    inputs: tuple[InputRef, ...]
    manifest_kind: str  # "adapter" or "model"
    recorded: dict  # the settings the manifest records and is fingerprinted by (config.fingerprint_config)

    @property
    def final_dir(self) -> str:
        return self.manifest_kind

    def manifest(self, summary: dict | None = None) -> Manifest:
        return new_manifest(self.manifest_kind, "mft-train", __version__, self.recorded, self.inputs, summary)

    def finished(self, resume: str) -> Manifest | None:
        """The manifest of this very run when ``out`` already holds it; errors when ``out`` holds another run
        (finished, or unfinished without ``resume``)."""
        if has_manifest(self.out):
            manifest = read_manifest(self.out)
            if manifest.fingerprint == self.manifest().fingerprint:
                return manifest
            raise ConfigError(
                f"{self.out} holds a finished run made with another config or inputs",
                fix="choose another out, or delete that folder",
            )
        if resume == "none" and list_checkpoints(self.out):
            raise ConfigError(
                f"{self.out} has checkpoints of an unfinished run",
                fix="--set resume=auto to continue it, or choose another out",
            )
        return None


def plan_output(cfg: TrainConfig, kind: str) -> OutputPlan:
    model_dir = base_model_dir(cfg)
    inputs = [InputRef.of(model_dir)]
    if kind != "pretrain":
        inputs.append(InputRef.of(cfg.data))
    else:  # raw files have no manifest: their listing (names, sizes, times) stands for them
        from mft_data.api import text_files_ref

        inputs.append(text_files_ref(cfg.data.split(","), max_mb=cfg.text_max_mb))
    return OutputPlan(
        out=Path(cfg.out),
        model_dir=model_dir,
        inputs=tuple(inputs),
        manifest_kind="model" if cfg.peft == "none" else "adapter",
        recorded=fingerprint_config(cfg),
    )


def save_weights(engine, tokenizer, target: Path) -> None:
    """Adapter (PEFT format) or full model (safetensors) plus tokenizer, atomically; never a 4-bit base.
    Collective: sharded engines gather the state on the main rank, which writes."""
    state = engine.final_state()
    if not dist.is_main():
        return
    with staged_dir(target, overwrite=True) as tmp:
        kwargs = {"state_dict": state} if state is not None else {}
        engine.unwrapped.save_pretrained(tmp, **kwargs)
        tokenizer.save_pretrained(tmp)
