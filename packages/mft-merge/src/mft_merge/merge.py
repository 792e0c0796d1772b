"""Stream a base model's shards through the LoRA merge into new shards, one tensor in memory at a time."""

from __future__ import annotations

import json
import re
import shutil
import threading
from dataclasses import dataclass, field
from pathlib import Path

import torch
from mft_core.artifacts import load_tokenizer
from mft_core.errors import ConfigError, ContractError

from .adapter import Adapter, ModuleLoRA
from .safetensors_io import Entry, read_header, tensor_nbytes

OUT_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
    "tokenizer.model",
    "vocab.json",
    "merges.txt",
    "added_tokens.json",
)


@dataclass(frozen=True)
class Source:
    """One base tensor: which shard file and where in it."""

    path: Path
    entry: Entry


@dataclass
class Plan:
    sources: dict[str, Source | None]  # output name -> base tensor (None: taken whole from the adapter)
    shapes: dict[str, tuple[int, ...]]
    dtypes: dict[str, torch.dtype]
    shards: list[list[str]]
    config_updates: dict = field(default_factory=dict)
    merged: list[str] = field(default_factory=list)
    replaced: list[str] = field(default_factory=list)
    quantized: set[str] = field(default_factory=set)  # tensors rounded through nf4 (--simulate-nf4)
    fan_in_fan_out: set[str] = field(default_factory=set)  # LoRA'd modules whose weight is stored [in, out]


def parse_size(text: str) -> int:
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?I?B)?\s*", text.upper())
    if not match:
        raise ConfigError(f"--max-shard-size {text!r}: expected e.g. 5GB, 500MB, 2GiB")
    value, unit = float(match.group(1)), (match.group(2) or "B").replace("IB", "B")
    return int(value * {"B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12}[unit])


def base_entries(model_dir: Path) -> list[Source]:
    """All tensors of a safetensors model, in shard and file order."""
    index = model_dir / "model.safetensors.index.json"
    if index.is_file():
        files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    elif (model_dir / "model.safetensors").is_file():
        files = ["model.safetensors"]
    else:
        raise ContractError(
            f"{model_dir}: no safetensors weights (model.safetensors or an index)",
            fix="re-save the base with save_pretrained(safe_serialization=True)",
        )
    out: list[Source] = []
    for name in files:
        entries, _ = read_header(model_dir / name)
        out.extend(Source(model_dir / name, e) for e in entries)
    return out


def output_dtype(choice: str, base_config: dict, entries: list[Source]) -> torch.dtype:
    if choice != "auto":
        return OUT_DTYPES[choice]
    named = base_config.get("dtype") or base_config.get("torch_dtype")
    mapping = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
    if named in mapping:
        return mapping[named]
    for s in entries:
        if s.entry.dtype in ("F32", "BF16", "F16"):
            return {"F32": torch.float32, "BF16": torch.bfloat16, "F16": torch.float16}[s.entry.dtype]
    return torch.float32


def _fits(lora: ModuleLoRA, shape: tuple[int, ...], fan_in_fan_out: bool) -> bool:
    if lora.embedding:
        expected_a, expected_b = (lora.a.shape[0], shape[0]), (shape[1], lora.a.shape[0])
    else:
        out_f, in_f = (shape[1], shape[0]) if fan_in_fan_out else shape
        expected_a, expected_b = (lora.a.shape[0], in_f), (out_f, lora.a.shape[0])
    return tuple(lora.a.shape) == expected_a and tuple(lora.b.shape) == expected_b


def _check_lora_shape(lora: ModuleLoRA, shape: tuple[int, ...], fan_in_fan_out: bool) -> None:
    if len(shape) != 2 or not _fits(lora, shape, fan_in_fan_out):
        raise ContractError(
            f"adapter module {lora.module}: LoRA shapes A{tuple(lora.a.shape)} B{tuple(lora.b.shape)} do not fit the "
            f"base weight {shape}: the adapter was trained on another architecture or hidden size",
            fix="pass the base the adapter was trained on with --base",
        )


def conv1d_modules(model_dir: Path) -> set[str] | None:
    """Names of the transformers ``Conv1D`` modules (GPT-2 style, weight stored ``[in, out]``) of the architecture;
    None when transformers cannot build it. PEFT merges exactly these with fan_in_fan_out, and every nn.Linear
    without, whatever the adapter's saved ``fan_in_fan_out`` says."""
    from transformers.pytorch_utils import Conv1D

    try:
        meta = _meta_model(model_dir)
    except Exception:  # noqa: BLE001 - custom code or an unknown architecture: the caller falls back to shapes
        return None
    return {n for n, m in meta.named_modules() if isinstance(m, Conv1D)}


# init_empty_weights patches nn.Module for the whole process while it is open: two threads in it at once (the
# layers check builds its model on its own thread) would leave the patch in place for good
_META_LOCK = threading.Lock()


def _meta_model(model_dir: Path):
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModelForCausalLM

    with _META_LOCK, init_empty_weights():
        return AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(model_dir))


def _is_fan_in_fan_out(lora: ModuleLoRA, shape: tuple[int, ...], conv1d: set[str] | None, saved: bool) -> bool:
    if lora.embedding:
        return False
    if conv1d is not None:
        return lora.module in conv1d
    fits = [f for f in (False, True) if _fits(lora, shape, f)]
    return fits[0] if len(fits) == 1 else saved  # a square weight: only the saved flag can tell


def plan_merge(adapter: Adapter, model_dir: Path, dtype: torch.dtype, max_shard: int, simulate_nf4: bool) -> Plan:
    """Decide every output tensor, its source, shape, dtype and shard, before reading any weight."""
    base_config = json.loads((model_dir / "config.json").read_text())
    entries = base_entries(model_dir)
    by_name = {s.entry.name: s for s in entries}
    plan = Plan({}, {}, {}, [])
    conv1d = conv1d_modules(model_dir) if any(not lora.embedding for lora in adapter.modules.values()) else set()
    for module, lora in adapter.modules.items():
        name = f"{module}.weight"
        if name not in by_name:
            raise ContractError(
                f"adapter targets {module}, but the base has no tensor {name}",
                fix="check --base: the adapter was trained on another model",
            )
        shape = by_name[name].entry.shape
        if name in adapter.base_weights and tuple(adapter.base_weights[name].shape) != shape:
            raise ContractError(
                f"the adapter's saved copy of {name} has shape {tuple(adapter.base_weights[name].shape)} but the "
                f"base has {shape}: the embeddings were resized before training, and PEFT did not save every "
                "resized layer with them",
                fix="train with modules_to_save=[embed_tokens, lm_head] instead, or merge with PEFT's merge_and_unload",
            )
        fan_in_fan_out = _is_fan_in_fan_out(lora, shape, conv1d, adapter.fan_in_fan_out)
        _check_lora_shape(lora, shape, fan_in_fan_out)
        if fan_in_fan_out:
            plan.fan_in_fan_out.add(module)
        plan.merged.append(name)
    tied = bool(base_config.get("tie_word_embeddings", False))
    for name in adapter.replaced:
        if name in plan.merged:
            raise ContractError(f"adapter both replaces and adapts {name}")
        if name not in by_name and not (name.startswith("lm_head") and tied):
            raise ContractError(f"adapter's modules_to_save tensor {name} has no counterpart in the base")
        plan.replaced.append(name)
    for s in entries:
        name = s.entry.name
        plan.sources[name] = s
        plan.shapes[name] = tuple(adapter.replaced[name].shape) if name in adapter.replaced else s.entry.shape
    for name in adapter.replaced:
        if name not in plan.sources:  # e.g. a trained lm_head on a model that tied it to the embeddings
            plan.sources[name] = None
            plan.shapes[name] = tuple(adapter.replaced[name].shape)
            plan.config_updates["tie_word_embeddings"] = False
    for name, source in plan.sources.items():
        source_dtype = adapter.replaced[name].dtype if source is None else _entry_dtype(source.entry)
        plan.dtypes[name] = dtype if source_dtype.is_floating_point else source_dtype
    _resized_vocab(plan, base_config)
    if simulate_nf4:
        import importlib.util

        if importlib.util.find_spec("bitsandbytes") is None:
            raise ConfigError(
                "--simulate-nf4 rounds the base through bitsandbytes' nf4, which is not installed",
                fix="pip install bitsandbytes (or pip install 'mft-merge[nf4]')",
            )
        plan.quantized = quantized_linear_weights(model_dir) & set(plan.sources)
    plan.shards = _shards(plan, max_shard)
    return plan


def _entry_dtype(entry: Entry) -> torch.dtype:
    from .safetensors_io import DTYPES

    return DTYPES[entry.dtype]


def _resized_vocab(plan: Plan, base_config: dict) -> None:
    """A trained embedding with more rows (added tokens) changes ``vocab_size``."""
    vocab = base_config.get("vocab_size")
    for name in plan.replaced:
        shape = plan.shapes[name]
        if vocab and len(shape) == 2 and ("embed" in name or "lm_head" in name or "wte" in name) and shape[0] != vocab:
            plan.config_updates["vocab_size"] = shape[0]


def quantized_linear_weights(model_dir: Path) -> set[str]:
    """Weights QLoRA stored in nf4: every nn.Linear except the output layer (bitsandbytes' default skip)."""
    meta = _meta_model(model_dir)
    output = meta.get_output_embeddings()
    return {f"{n}.weight" for n, m in meta.named_modules() if isinstance(m, torch.nn.Linear) and m is not output}


def _shards(plan: Plan, max_shard: int) -> list[list[str]]:
    shards: list[list[str]] = []
    current: list[str] = []
    size = 0
    for name in plan.sources:
        nbytes = tensor_nbytes(plan.shapes[name], plan.dtypes[name])
        if current and size + nbytes > max_shard:
            shards.append(current)
            current, size = [], 0
        current.append(name)
        size += nbytes
    if current:
        shards.append(current)
    return shards


def shard_names(count: int) -> list[str]:
    if count == 1:
        return ["model.safetensors"]
    return [f"model-{i + 1:05d}-of-{count:05d}.safetensors" for i in range(count)]


def write_side_files(plan: Plan, model_dir: Path, adapter: Adapter, out: Path, dtype: torch.dtype) -> None:
    """config.json (dtype, vocab, tying; no quantization), tokenizer + chat template, generation_config.json."""
    config = json.loads((model_dir / "config.json").read_text())
    config.pop("quantization_config", None)
    config.pop("torch_dtype", None)
    config["dtype"] = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}[dtype]
    config.update(plan.config_updates)
    (out / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    tokenizer_source = adapter.path if (adapter.path / "tokenizer_config.json").is_file() else model_dir
    for name in TOKENIZER_FILES:
        if (tokenizer_source / name).is_file():
            shutil.copy2(tokenizer_source / name, out / name)
    from transformers import GenerationConfig

    tokenizer = load_tokenizer(out)
    generation = (
        GenerationConfig.from_pretrained(model_dir)
        if (model_dir / "generation_config.json").is_file()
        else GenerationConfig()
    )
    generation.eos_token_id = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else generation.eos_token_id
    generation.pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else generation.eos_token_id
    generation.save_pretrained(out)
