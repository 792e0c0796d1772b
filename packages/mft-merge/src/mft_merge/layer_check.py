"""The layers check, run while the merge streams: every tensor PEFT's ``merge_and_unload`` would change is
recomputed by PEFT itself, one module at a time, and compared with what the merge wrote, read back from each
finished shard by the ``safetensors`` library.

Nothing of the merge's own work is reused: PEFT parses the adapter's config and matches its modules, loads its
tensors and runs each layer's own ``merge()`` (DoRA's norms included); base weights come through
``safetensors.safe_open``, not our reader; the merged values are read back from the written file by the same
library, so a wrong offset or dtype in our writer is caught too. A LoRA layer's reference is computed in float32,
as ``merge_and_unload`` on a float32 model computes it; the merge does the same float32 operations, so the two are
bit for bit equal and the comparison is one ``torch.equal`` (no float64 copy of every weight, which made the old
check cost more than the merge). DoRA layers are recomputed in float64 (float32 norms drift by several eps). Where
the two are not bit-equal, the difference is measured in eps of the output dtype relative to the tensor's largest
value.
"""

from __future__ import annotations

import json
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import torch
from mft_core.errors import ContractError

from .merge import Plan
from .ops import nf4_roundtrip

# Rounding of an fp32 matmul or a final cast, relative to the tensor's largest value, in eps of the output dtype.
TOLERANCE_EPS = 8.0


class PeftReference:
    """PEFT's own merge of one tensor at a time, on a meta-device model.

    Only the adapted layers get CPU stand-ins that take no memory (a zero expanded to the weight's shape), so PEFT
    loads the adapter's tensors next to them. :meth:`value` then gives one module its real base weight (``quantized``
    ones rounded through nf4 first, as the merge was told to), merges it and takes the weight back: about one
    weight's memory, never the model's.
    """

    def __init__(self, base_dir: Path, adapter_dir: Path, quantized: set[str], vocab_size: int | None = None):
        from peft import PeftConfig, PeftModel, load_peft_weights, set_peft_model_state_dict
        from peft.tuners.lora import LoraLayer
        from peft.utils import ModulesToSaveWrapper
        from transformers import AutoConfig

        from .merge import _meta_model

        self.base_dir, self.adapter_dir, self.quantized = base_dir, adapter_dir, quantized
        try:
            meta = _meta_model(base_dir)
        except Exception as exc:  # noqa: BLE001 - any failure to build the architecture
            raise ContractError(
                f"--verify layers recomputes the merge with PEFT on the base's architecture, which transformers "
                f"cannot build here ({exc})",
                fix="use --verify logits, or --verify none",
            ) from exc
        if vocab_size and vocab_size != AutoConfig.from_pretrained(base_dir).vocab_size:
            meta.resize_token_embeddings(vocab_size, mean_resizing=False)  # as one does before loading such an adapter
        try:
            config = PeftConfig.from_pretrained(str(adapter_dir))
            config.inference_mode = True
            peft_model = PeftModel(meta, config, low_cpu_mem_usage=True)
        except (ValueError, TypeError, KeyError, RuntimeError) as exc:
            raise ContractError(f"PEFT itself cannot apply {adapter_dir} to the base's architecture ({exc})") from exc
        model = peft_model.base_model.model
        self._stand_ins: set[int] = set()
        for module in model.modules():
            if isinstance(module, LoraLayer):
                self._stand_in(module.get_base_layer())
            elif isinstance(module, ModulesToSaveWrapper):
                self._stand_in(module.original_module)
        try:
            state = load_peft_weights(str(adapter_dir), device="cpu")
            set_peft_model_state_dict(peft_model, state, low_cpu_mem_usage=True)
        except (ValueError, KeyError, RuntimeError) as exc:  # e.g. a size mismatch
            raise ContractError(f"PEFT itself cannot load {adapter_dir} onto the base ({exc})") from exc
        # name -> the LoRA module whose merge gives it, or the tensor PEFT puts there as it is
        self.layers: dict[str, torch.nn.Module] = {}
        self.copies: dict[str, torch.Tensor] = {}
        for name, module in model.named_modules():
            if isinstance(module, ModulesToSaveWrapper):
                for pname, p in module.modules_to_save["default"].named_parameters():
                    self.copies[f"{name}.{pname}"] = self._loaded(p, f"{name}.{pname}")
            if isinstance(module, LoraLayer):
                for pname, p in module.get_base_layer().named_parameters(recurse=False):
                    if pname != "weight" and id(p) not in self._stand_ins:  # saved with a base copy: loaded over it
                        self.copies[f"{name}.{pname}"] = p.detach()
                for pname, p in module.named_parameters():
                    if not pname.startswith("base_layer."):
                        self._loaded(p, f"{name}.{pname}")
                self.layers[f"{name}.weight"] = module
        self._files = _weight_files(base_dir)
        self._scratch = torch.empty(0, dtype=torch.float32)

    @property
    def changes(self) -> set[str]:
        return set(self.layers) | set(self.copies)

    def value(self, name: str) -> torch.Tensor:
        """The tensor ``merge_and_unload`` leaves at ``name``: float32 (float64 for DoRA), or the saved copy."""
        if name in self.copies:
            return self.copies[name]
        module = self.layers[name]
        base = module.get_base_layer()
        if id(base.weight) in self._stand_ins:
            if name not in self._files:
                raise ContractError(f"PEFT adapts {name[: -len('.weight')]}, but the base has no tensor {name}")
            from safetensors import safe_open

            with safe_open(str(self._files[name]), framework="pt") as f:
                source = f.get_tensor(name)
        else:  # the adapter saved a copy of the base weight (save_embedding_layers): PEFT loaded it over the base's
            source = base.weight.detach()
        # into a buffer of our own, reused: merging into the file's mapping would copy it page by page
        weight = self._buffer(source.shape).copy_(source)
        del source
        if name in self.quantized:
            weight = nf4_roundtrip(weight)
        # DoRA's float32 norms are themselves off by several eps: its layers are recomputed in float64
        precision = torch.float64 if module.use_dora.get("default") else torch.float32
        for pname, p in module.named_parameters():
            if not pname.startswith("base_layer."):
                p.data = p.data.to(precision)
        weight = weight.to(precision)
        held = base.weight
        base.weight = torch.nn.Parameter(weight, requires_grad=False)
        module.merge(adapter_names=["default"])
        merged = base.weight.detach()
        base.weight = held
        module.merged_adapters.clear()
        getattr(module, "_caches", {}).clear()  # DoRA's weight norms of this merge
        return merged

    def _buffer(self, shape: torch.Size) -> torch.Tensor:
        numel = shape.numel()
        if self._scratch.numel() < numel:
            self._scratch = torch.empty(numel, dtype=torch.float32)
        return self._scratch[:numel].view(shape)

    def _stand_in(self, module: torch.nn.Module) -> None:
        for sub in module.modules():
            for pname, p in list(sub.named_parameters(recurse=False)):
                empty = torch.nn.Parameter(torch.zeros((), dtype=p.dtype).expand(p.shape), requires_grad=False)
                setattr(sub, pname, empty)
                self._stand_ins.add(id(empty))

    def _loaded(self, p: torch.Tensor, name: str) -> torch.Tensor:
        if p.device.type == "meta":
            raise ContractError(f"{self.adapter_dir}: PEFT finds no saved value for {name}")
        return p.detach()


def _weight_files(model_dir: Path) -> dict[str, Path]:
    """Tensor name -> shard, from the index or the safetensors library: not :func:`merge.base_entries`, whose
    header parse is the merge's own and must not be what the check relies on."""
    index = model_dir / "model.safetensors.index.json"
    if index.is_file():
        return {k: model_dir / v for k, v in json.loads(index.read_text())["weight_map"].items()}
    from safetensors import safe_open

    single = model_dir / "model.safetensors"
    with safe_open(str(single), framework="pt") as f:
        return dict.fromkeys(f.keys(), single)


def structure_problems(out: Path) -> list[str]:
    """The written folder as transformers will load it: the model its config.json builds (on the meta device) must
    have exactly the tensors and shapes of the shards, a tied output layer being the one name that may be absent."""
    from safetensors import safe_open

    from .merge import _meta_model

    written: dict[str, tuple[int, ...]] = {}
    for shard in sorted(out.glob("model*.safetensors")):
        with safe_open(str(shard), framework="pt") as f:
            written.update({k: tuple(f.get_slice(k).get_shape()) for k in f.keys()})
    model = _meta_model(out)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    output = model.get_output_embeddings()
    tied_name = next((f"{n}.weight" for n, m in model.named_modules() if m is output), None)
    tied = bool(getattr(model.config.get_text_config(), "tie_word_embeddings", False))
    problems = [
        f"{out / 'config.json'} builds a model with {k} {v}, the shards have {written[k]}"
        for k, v in expected.items()
        if k in written and written[k] != v
    ]
    problems += [f"the shards have {k}, which config.json's model lacks" for k in sorted(set(written) - set(expected))]
    absent = sorted(set(expected) - set(written))
    problems += [f"config.json's model needs {k}, which no shard has" for k in absent if not (tied and k == tied_name)]
    return problems


def scaled_difference(got: torch.Tensor, expected: torch.Tensor) -> float:
    """``max |got - expected|`` over the tensor's largest value, in eps of ``got``'s dtype (0 when bit-equal)."""
    if torch.equal(got, expected):
        return 0.0
    eps = torch.finfo(got.dtype).eps
    scale = expected.abs().max().item() or 1.0
    worst = 0.0
    rows = max(1, (1 << 22) // max(1, got[0].numel())) if got.dim() else 1
    for i in range(0, max(1, got.shape[0] if got.dim() else 1), rows):  # blocks: no full-size float64 temporaries
        a, b = (got[i : i + rows], expected[i : i + rows]) if got.dim() else (got, expected)
        worst = max(worst, (a.double() - b.double()).abs().max().item())
    return worst / scale / eps


class LayerCheck:
    """Fed each shard as it is finished; :meth:`result` says whether every changed tensor is PEFT's."""

    def __init__(self, base_dir: Path, adapter_dir: Path, plan: Plan):
        # what the merge claims (its changed tensors, their dtypes) is only compared against, never used to compute
        vocab = plan.config_updates.get("vocab_size")
        self.reference = PeftReference(base_dir, adapter_dir, plan.quantized, vocab)
        self.expected = self.reference.changes
        self.ours, self.dtypes = set(plan.merged) | set(plan.replaced), plan.dtypes
        self.seen: set[str] = set()
        self.max_diff, self.checked = 0.0, 0
        self.problems: list[str] = []

    def shard_written(self, path: Path, names: list[str]) -> None:
        from safetensors import safe_open

        for name in names:
            if name not in self.expected and name not in self.ours:
                continue
            self.seen.add(name)
            if name not in self.expected:
                self.problems.append(f"the merge changed {name}, PEFT does not")
                continue
            if name not in self.ours:
                self.problems.append(f"PEFT changes {name}, the merge did not")
            with safe_open(str(path), framework="pt") as f:  # one tensor mapped at a time: no resident shard
                got = f.get_tensor(name)
            if got.dtype != self.dtypes.get(name, got.dtype):
                self.problems.append(f"{name} was written as {got.dtype}, not {self.dtypes[name]}")
                continue
            expected = self.reference.value(name).to(got.dtype)
            if tuple(got.shape) != tuple(expected.shape):
                self.problems.append(f"{name}: shape {tuple(got.shape)}, PEFT's {tuple(expected.shape)}")
                continue
            self.max_diff = max(self.max_diff, scaled_difference(got, expected))
            self.checked += 1
            del got, expected

    def result(self, out: Path):
        from .verify import Verification

        problems = self.problems + [f"{n} is missing from the merged shards" for n in sorted(self.expected - self.seen)]
        problems += structure_problems(out)
        problems += [f"the merge changed {n}, PEFT does not" for n in sorted(self.ours - self.expected - self.seen)]
        return Verification(
            "layers",
            self.max_diff <= TOLERANCE_EPS and not problems,
            TOLERANCE_EPS,
            self.max_diff if not problems else float("inf"),
            tensors_checked=self.checked,
            detail="; ".join(problems[:5]),
        )


class BackgroundCheck:
    """A :class:`LayerCheck` on a thread of its own: built (PEFT's import and model) while the first shard is
    merged, and fed each finished shard while the next is merged and written."""

    def __init__(self, base_dir: Path, adapter_dir: Path, plan: Plan):
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="mft-merge-check")
        self._check = self._pool.submit(LayerCheck, base_dir, adapter_dir, plan)
        self._jobs: list[Future] = [self._check]

    def shard_written(self, path: Path, names: list[str]) -> None:
        self._jobs.append(self._pool.submit(lambda: self._check.result().shard_written(path, names)))

    def result(self, out: Path):
        try:
            for job in self._jobs:
                job.result()  # the first failure (a ContractError from PEFT, say) is raised here
            return self._check.result().result(out)
        finally:
            self.close()

    def close(self) -> None:
        self._pool.shutdown(cancel_futures=True)
