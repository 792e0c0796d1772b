"""Read a PEFT LoRA adapter and say, by name, anything this merger does not support."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch
from mft_core.errors import ContractError, InputError

from .ops import lora_scale

PREFIX = "base_model.model."
# adapter_config keys whose non-default value changes the maths in ways a plain W + ΔW merge does not cover
UNSUPPORTED = {
    "use_qalora": False,
    "use_bdlora": False,
    "alora_invocation_tokens": None,
    "layer_replication": None,
    "target_parameters": None,
    "lora_bias": False,
    "trainable_token_indices": None,
    "velora_config": None,
    "kasa_config": None,
    "monteclora_config": None,
    "arrow_config": None,
    "megatron_config": None,
}


@dataclass
class ModuleLoRA:
    """The LoRA of one module: ``A``, ``B``, its scale, and DoRA's magnitude when present."""

    module: str
    a: torch.Tensor
    b: torch.Tensor
    scale: float
    embedding: bool = False
    magnitude: torch.Tensor | None = None


@dataclass
class Adapter:
    path: Path
    config: dict
    modules: dict[str, ModuleLoRA] = field(default_factory=dict)  # module path -> LoRA
    replaced: dict[str, torch.Tensor] = field(default_factory=dict)  # base tensor name -> full trained copy
    # base tensor name -> the copy of the base weight PEFT saved with a LoRA'd embedding or lm_head
    # (``X.base_layer.weight``, save_embedding_layers): loading puts it in place of the base's, the LoRA goes on top
    base_weights: dict[str, torch.Tensor] = field(default_factory=dict)

    @property
    def fan_in_fan_out(self) -> bool:
        """The saved flag. PEFT decides it per module (Conv1D: True, nn.Linear: False, whatever the config says,
        which keeps the value the last wrapped module left): the merge asks the architecture, this is a fallback."""
        return bool(self.config.get("fan_in_fan_out"))


def pattern_value(patterns: dict, module: str, default):
    r"""A ``rank_pattern`` / ``alpha_pattern`` lookup as PEFT's ``get_pattern_key`` does it: the first key that
    matches ``(.*\.)?(KEY)$`` (a key is a regex; the group keeps an alternation ``a|b`` anchored at both ends)."""
    for key, value in patterns.items():
        if re.match(rf"(.*\.)?({key})$", module):
            return value
    return default


def load_adapter(path: Path) -> Adapter:
    """Parse ``adapter_config.json`` and the adapter weights; refuse unsupported PEFT features by name."""
    config_path = path / "adapter_config.json"
    try:
        config = json.loads(config_path.read_text())
    except (OSError, ValueError) as exc:
        raise ContractError(f"{config_path}: unreadable ({exc})") from exc
    if config.get("peft_type") != "LORA":
        raise ContractError(f"{path}: PEFT type {config.get('peft_type')!r} is not supported; mft-merge merges LORA")
    bad = [k for k, default in UNSUPPORTED.items() if config.get(k) not in (default, None, False, [], {})]
    if config.get("bias", "none") != "none":
        bad.append("bias")
    if bad:
        raise ContractError(
            f"{path}: adapter uses {', '.join(bad)}, which mft-merge does not merge",
            fix="merge it with PEFT's merge_and_unload, or train without those options",
        )
    weights_path = path / "adapter_model.safetensors"
    if not weights_path.is_file():
        raise ContractError(f"{path}: adapter_model.safetensors is missing")
    from safetensors.torch import load_file

    tensors = load_file(str(weights_path))
    adapter = Adapter(path, config)
    parts: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in tensors.items():
        if not key.startswith(PREFIX):
            raise InputError(f"{weights_path}: unexpected tensor name {key!r}")
        name = key[len(PREFIX) :]
        match = re.match(r"(.+)\.(lora_A|lora_B|lora_embedding_A|lora_embedding_B)(\.weight)?$", name)
        if match:
            parts.setdefault(match.group(1), {})[match.group(2)] = tensor
        elif name.endswith(".lora_magnitude_vector"):
            parts.setdefault(name[: -len(".lora_magnitude_vector")], {})["magnitude"] = tensor
        elif "lora_" in name:
            raise ContractError(f"{weights_path}: tensor {key} is a LoRA part mft-merge does not know")
        elif ".base_layer." in name:
            base_name = name.replace(".base_layer.", ".")
            if name.endswith(".base_layer.weight"):
                adapter.base_weights[base_name] = tensor
            else:  # e.g. the bias of a saved lm_head: PEFT loads it in place of the base's too
                adapter.replaced[base_name] = tensor
        elif ".original_module." in name:
            continue  # PEFT also saves the (resized) base copy of a modules_to_save layer; the trained copy wins
        elif ".modules_to_save." in name:
            adapter.replaced.setdefault(name.replace(".modules_to_save.", "."), tensor)
        else:
            adapter.replaced[name] = tensor  # modules_to_save: a full trained copy of a base tensor
    alpha, rank, rslora = config["lora_alpha"], config.get("r"), bool(config.get("use_rslora"))
    for module, p in parts.items():
        embedding = "lora_embedding_A" in p
        a, b = (
            (p.get("lora_embedding_A"), p.get("lora_embedding_B")) if embedding else (p.get("lora_A"), p.get("lora_B"))
        )
        if a is None or b is None:
            raise ContractError(f"{weights_path}: module {module} has only half of its LoRA (A or B missing)")
        r = pattern_value(config.get("rank_pattern") or {}, module, rank or a.shape[0])
        if a.shape[0] != r or b.shape[1] != r:
            raise ContractError(
                f"{weights_path}: module {module} has LoRA rank {a.shape[0]} (A) / {b.shape[1]} (B), but "
                f"adapter_config.json gives it r={r} (r / rank_pattern): the config and the weights disagree"
            )
        module_alpha = pattern_value(config.get("alpha_pattern") or {}, module, alpha)
        adapter.modules[module] = ModuleLoRA(
            module, a, b, lora_scale(module_alpha, r, rslora), embedding, p.get("magnitude")
        )
    for name in adapter.base_weights:
        if name[: -len(".weight")] not in adapter.modules:
            raise ContractError(f"{weights_path}: a saved base copy of {name} but no LoRA on that module")
    return adapter
