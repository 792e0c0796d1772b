"""Prove a merged folder equals base + adapter: by logits (load both) or, for models too big to load twice,
weight by weight against PEFT's own merge of each layer, recomputed in float64."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from mft_core.errors import ContractError

from .adapter import Adapter
from .merge import Plan
from .ops import nf4_roundtrip
from .safetensors_io import read_header, read_tensor

# max |Δlogit| and minimum greedy-token agreement per output dtype. fp32 merges should be exact to rounding;
# bf16/fp16 store every weight with 8/11 mantissa bits, which moves logits by up to a few tenths on real models.
TOLERANCE = {torch.float32: (1e-4, 0.95), torch.float16: (0.1, 0.8), torch.bfloat16: (0.5, 0.8)}
BUILTIN_PROMPTS = (
    'def fibonacci(n):\n    """Return the n-th Fibonacci number."""\n',
    "import os\n\n\ndef list_python_files(root):\n",
    "class Stack:\n    def __init__(self):\n",
    "# Sort a list of dictionaries by the key 'age'\n",
)


@dataclass
class Verification:
    check: str  # "logits" or "layers"
    passed: bool
    tolerance: float
    max_abs_diff: float
    token_agreement: float | None = None
    min_agreement: float | None = None
    prompts: int = 0
    prompt_source: str = ""
    tensors_checked: int = 0
    detail: str = ""  # what did not match, by name

    def to_dict(self) -> dict:
        return asdict(self)


def reference_model(base_dir: Path, adapter: Adapter, simulate_nf4: bool, quantized: set[str]):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    if simulate_nf4:
        params = dict(base.named_parameters())
        with torch.no_grad():
            for name in quantized:
                if name in params:
                    params[name].copy_(nf4_roundtrip(params[name]))
    return PeftModel.from_pretrained(base, adapter.path).eval()


def verify_logits(
    base_dir: Path,
    adapter: Adapter,
    out: Path,
    dtype: torch.dtype,
    prompts: list[list[int]],
    prompt_source: str,
    new_tokens: int,
    plan: Plan,
) -> Verification:
    from transformers import AutoModelForCausalLM

    reference = reference_model(base_dir, adapter, bool(plan.quantized), plan.quantized)
    merged = AutoModelForCausalLM.from_pretrained(out, dtype=dtype).eval()
    tol, min_agree = TOLERANCE[dtype]
    max_diff, agree, total = 0.0, 0, 0
    with torch.no_grad():
        for ids in prompts:
            # both models read the same text, the prompt plus the reference's greedy continuation (teacher
            # forcing): one early flip then counts once, instead of derailing every later token of a free run
            kwargs = dict(max_new_tokens=new_tokens, do_sample=False, pad_token_id=0)
            seq = reference.generate(input_ids=torch.tensor([ids]), **kwargs)
            ref_logits = reference(input_ids=seq).logits.float()[0]
            out_logits = merged(input_ids=seq).logits.float()[0]
            max_diff = max(max_diff, (ref_logits - out_logits).abs().max().item())
            scored = slice(len(ids) - 1, seq.shape[1] - 1)  # the positions that chose the continuation
            agree += int((ref_logits[scored].argmax(-1) == out_logits[scored].argmax(-1)).sum())
            total += seq.shape[1] - len(ids)
    agreement = agree / total if total else 1.0
    return Verification(
        "logits",
        max_diff <= tol and agreement >= min_agree,
        tol,
        max_diff,
        agreement,
        min_agree,
        len(prompts),
        prompt_source,
    )


def verify_layers(base_dir: Path, adapter: Adapter, out: Path, plan: Plan) -> Verification:
    """Re-read every tensor the adapter changes from the written shards and compare it with PEFT's own merge of
    that module, recomputed one module at a time in float64 (:func:`peft_reference`). Nothing of the merge's
    reading of the adapter is reused, so a wrong scale, magnitude or layout there cannot cancel out here; and the
    set of changed tensors must be PEFT's too."""
    written = {}
    for f in sorted(out.glob("model*.safetensors")):
        for entry in read_header(f)[0]:
            written[entry.name] = (f, entry)
    vocab = json.loads((out / "config.json").read_text()).get("vocab_size")
    max_diff, checked, problems = 0.0, 0, []
    ours = set(plan.merged) | set(plan.replaced)
    for name, expected in peft_reference(base_dir, adapter.path, plan.quantized, vocab):
        if name not in ours:
            problems.append(f"PEFT changes {name}, the merge did not")
        ours.discard(name)
        if name not in written:
            problems.append(f"{name} is missing from the merged shards")
            continue
        path, entry = written[name]
        with open(path, "rb") as h:
            got = read_tensor(h, entry).double()
        dtype = plan.dtypes.get(name, got.dtype)
        if tuple(got.shape) != tuple(expected.shape):
            problems.append(f"{name}: shape {tuple(got.shape)}, PEFT's {tuple(expected.shape)}")
            continue
        expected = expected.to(dtype).double()
        scale = expected.abs().max().item() or 1.0
        max_diff = max(max_diff, (got - expected).abs().max().item() / scale / torch.finfo(dtype).eps)  # in eps
        checked += 1
        del got, expected
    problems += [f"the merge changed {name}, PEFT does not" for name in sorted(ours)]
    tolerance = 8.0  # rounding of an fp32 matmul or a final cast, relative to the tensor's largest value
    return Verification(
        "layers",
        max_diff <= tolerance and not problems,
        tolerance,
        max_diff if not problems else float("inf"),
        tensors_checked=checked,
        detail="; ".join(problems[:5]),
    )


def peft_reference(base_dir: Path, adapter_dir: Path, quantized: set[str], vocab_size: int | None = None):
    """Yield ``(tensor name, merged value)`` for every tensor PEFT's ``merge_and_unload`` changes, computed by PEFT
    itself: its config parse (``r``, ``lora_alpha``, ``rank_pattern``, ``alpha_pattern``, rsLoRA, DoRA), its module
    matching and per-module ``fan_in_fan_out``, its state-dict loading and each layer's own ``merge()`` (DoRA's
    weight norms included), in float64.

    The model is built on the meta device; only its adapted layers get CPU stand-ins that take no memory (a zero
    expanded to the weight's shape), so PEFT loads the adapter's tensors next to them. Then one module at a time
    gets its real base weight (``quantized`` ones rounded through nf4 first, as the merge was told to), merges,
    is yielded and dropped: about one weight's memory (a few float64 copies of it), never the model.
    """
    from peft import PeftConfig, PeftModel, load_peft_weights, set_peft_model_state_dict
    from peft.tuners.lora import LoraLayer
    from peft.utils import ModulesToSaveWrapper
    from transformers import AutoConfig

    from .merge import _meta_model, base_entries

    try:
        meta = _meta_model(base_dir)
    except Exception as exc:  # noqa: BLE001 - any failure to build the architecture
        raise ContractError(
            f"--verify layers recomputes the merge with PEFT on the base's architecture, which transformers cannot "
            f"build here ({exc})",
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
    stand_ins: set[int] = set()

    def stand_in(module: torch.nn.Module) -> None:
        for sub in module.modules():
            for pname, p in list(sub.named_parameters(recurse=False)):
                empty = torch.nn.Parameter(torch.zeros((), dtype=p.dtype).expand(p.shape), requires_grad=False)
                setattr(sub, pname, empty)
                stand_ins.add(id(empty))

    for module in model.modules():
        if isinstance(module, LoraLayer):
            stand_in(module.get_base_layer())
        elif isinstance(module, ModulesToSaveWrapper):
            stand_in(module.original_module)
    try:
        set_peft_model_state_dict(peft_model, load_peft_weights(str(adapter_dir), device="cpu"), low_cpu_mem_usage=True)
    except (ValueError, KeyError, RuntimeError) as exc:  # e.g. a size mismatch
        raise ContractError(f"PEFT itself cannot load {adapter_dir} onto the base ({exc})") from exc

    sources = {s.entry.name: s for s in base_entries(base_dir)}
    for name, module in list(model.named_modules()):
        if isinstance(module, ModulesToSaveWrapper):
            for pname, p in module.modules_to_save["default"].named_parameters():
                _require_loaded(p, f"{name}.{pname}", adapter_dir)
                yield f"{name}.{pname}", p.detach().double()
        if not isinstance(module, LoraLayer):
            continue
        base = module.get_base_layer()
        for pname, p in base.named_parameters(recurse=False):
            if pname != "weight" and id(p) not in stand_ins:  # saved with the base copy: loaded over the base's
                yield f"{name}.{pname}", p.detach().double()
        tensor = f"{name}.weight"
        if id(base.weight) in stand_ins:
            if tensor not in sources:
                raise ContractError(f"PEFT adapts {name}, but the base {base_dir} has no tensor {tensor}")
            with open(sources[tensor].path, "rb") as h:
                weight = read_tensor(h, sources[tensor].entry)
        else:  # the adapter saved a copy of the base weight (save_embedding_layers): PEFT loaded it over the base's
            weight = base.weight.detach()
        if tensor in quantized:
            weight = nf4_roundtrip(weight.float())
        held = base.weight
        base.weight = torch.nn.Parameter(weight.double(), requires_grad=False)
        for pname, p in module.named_parameters():
            if not pname.startswith("base_layer."):
                _require_loaded(p, f"{name}.{pname}", adapter_dir)
                p.data = p.data.double()
        module.merge(adapter_names=["default"])
        merged = base.weight.detach()
        base.weight = held
        module.merged_adapters.clear()
        getattr(module, "_caches", {}).clear()  # DoRA's weight norms of this merge
        yield tensor, merged
        del merged, weight


def _require_loaded(p: torch.Tensor, name: str, adapter_dir: Path) -> None:
    if p.device.type == "meta":
        raise ContractError(f"{adapter_dir}: PEFT finds no saved value for {name}")


def prompts_from_data(train_output: Path | None, tokenizer, count: int) -> tuple[list[list[int]], str]:
    """Prompt token ids from the training data's valid split (what the model was tuned for), else built-ins."""
    from mft_core.manifest import has_manifest, read_manifest

    if train_output is not None and has_manifest(train_output):
        data = read_manifest(train_output).config.get("data")
        tokenized = train_output / "tokenized" if (train_output / "tokenized").is_dir() else Path(data or "")
        try:
            prompts = _valid_prompts(tokenized, count)
            if prompts:
                return prompts, f"valid split of {tokenized}"
        except Exception:  # noqa: BLE001 - data moved or not tokenized: fall back to built-in prompts
            pass
    ids = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in BUILTIN_PROMPTS[:count]]
    return ids, "built-in code prompts"


def _valid_prompts(tokenized: Path, count: int) -> list[list[int]]:
    from datasets import load_from_disk

    split = tokenized / "valid" if (tokenized / "valid").is_dir() else tokenized / "train"
    ds = load_from_disk(str(split))
    prompts = []
    for row in ds.select(range(min(len(ds), count))):
        first = row["seq_lens"][0]
        labels = row["labels"][:first]
        end = next((i for i, lab in enumerate(labels) if lab != -100), first)
        if end > 0:
            prompts.append(row["input_ids"][:end])
    return prompts
