"""The accumulated gradient equals the full-batch gradient for every loss mode; packed records are isolated."""

import pytest
import torch
from helpers import grad_capture_engine, tokenized_folder
from mft_core.families import FAMILIES, PRESETS
from mft_train import attention
from mft_train.batches import Rows, collate
from mft_train.loop import LoopParts, forward_logits, train_step
from mft_train.loss import MODES, per_target_loss
from mft_train.objective import Objective

pytestmark = pytest.mark.fast  # unit/contract tier: `make test-fast`


@pytest.fixture(scope="module")
def setup(llama_base, tmp_path_factory):
    from mft_data.api import load_tokenized

    tok = tokenized_folder(tmp_path_factory.mktemp("exact"), llama_base, seq_len=128, split=None)
    data = load_tokenized(tok)
    return llama_base, Rows(data.train), data.tasks


def load(base, attn):
    from transformers import AutoModelForCausalLM

    if attn == attention.NAME:
        attention.register()
    return AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32, attn_implementation=attn)


def fresh_model(base, attn):
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    model = load(base, attn)
    model = get_peft_model(
        model,
        LoraConfig(
            r=4,
            lora_alpha=8,
            lora_dropout=0.0,
            init_lora_weights=False,
            target_modules=["q_proj", "v_proj", "down_proj"],
        ),
    )
    return model


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("attn", ["sdpa", attention.NAME])
def test_one_batch_of_8_equals_4_micro_batches_of_2(setup, mode, attn):
    base, rows, tasks = setup
    assert len(rows) >= 8
    model = fresh_model(base, attn)
    results = {}
    for mbs, accum in ((8, 1), (2, 4)):
        engine = grad_capture_engine(model)
        parts = LoopParts(
            engine=engine,
            rows=rows,
            tasks=tasks,
            objective=Objective(loss=mode, weighting="static", weights=(1.0, 2.0, 0.5)),
            micro_batch_size=mbs,
            grad_accum=accum,
            seed=3,
            pad_id=0,
            bf16=False,
            max_grad_norm=0.0,
            total_steps=1,
        )
        result = train_step(parts, step=0)
        results[(mbs, accum)] = (result, engine.grads)
    (r1, g1), (r2, g2) = results[(8, 1)], results[(2, 4)]
    assert r1.loss == pytest.approx(r2.loss, rel=1e-6)  # fp32 sums in another order
    assert g1.keys() == g2.keys() and len(g1) > 0
    for name in g1:
        assert torch.allclose(g1[name], g2[name], atol=1e-6, rtol=0), name
    assert sum(r1.task_tokens.values()) > 0


@pytest.mark.parametrize("attn", ["sdpa", "eager", attention.NAME])
def test_packed_records_equal_records_alone(setup, attn):
    base, rows, _ = setup
    model = load(base, attn)
    assert model.config.use_cache  # the saved default: forward_logits must turn the cache off itself
    packed_row = max(range(len(rows)), key=lambda i: len(rows.get("seq_lens", i)))
    seq_lens = rows.get("seq_lens", packed_row).tolist()
    assert len(seq_lens) >= 3
    packed = collate(rows, [packed_row], pad_id=0)
    with torch.no_grad():
        packed_logits = forward_logits(model, packed, bf16=False)[0]
        start = 0
        for n in seq_lens:
            ids = packed.input_ids[:, start : start + n]
            alone = model(input_ids=ids, use_cache=False).logits[0]
            assert torch.allclose(packed_logits[start : start + n], alone, atol=1e-5), f"record at {start} leaks"
            start += n
        # with the cache on, transformers skips packed-sequence detection: records see each other
        if attn != attention.NAME:
            leaky = model(input_ids=packed.input_ids, position_ids=packed.position_ids, use_cache=True).logits[0]
            assert not torch.allclose(leaky, packed_logits, atol=1e-3)
        # only the supervised positions' logits, same values
        kept = forward_logits(model, packed, bf16=False, supervised_only=True)
        assert torch.allclose(kept, packed_logits[packed.targets.mask[0]], atol=1e-5)


@pytest.mark.parametrize("model_type", sorted(FAMILIES))
def test_varlen_attention_isolates_records_in_every_family(model_type):
    """Per-record SDPA gives each record exactly the logits it gets alone, for every family that allows it."""
    from transformers import AutoConfig, AutoModelForCausalLM

    family = FAMILIES[model_type]
    if not family.packed_sdpa:
        pytest.skip(f"{model_type}: attention has soft-capping, packed rows use the masked path")
    attention.register()
    sizes = {k: v for k, v in PRESETS["tiny"].items() if k != "vocab"}
    config = AutoConfig.for_model(
        model_type, vocab_size=256, pad_token_id=0, bos_token_id=1, eos_token_id=2, **family.config_kwargs(sizes)
    )
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, attn_implementation=attention.NAME).eval()
    lens = [7, 12, 5]
    ids = torch.randint(3, 256, (1, sum(lens)))
    positions = torch.cat([torch.arange(n) for n in lens]).unsqueeze(0)
    with torch.no_grad():
        packed = model(
            input_ids=ids,
            position_ids=positions,
            use_cache=False,
            **{attention.SEGMENTS_KWARG: attention.plan_segments(positions)},
        ).logits[0]
        start = 0
        for n in lens:
            alone = model(input_ids=ids[:, start : start + n], use_cache=False).logits[0]
            assert torch.allclose(packed[start : start + n], alone, atol=1e-5), (model_type, start)
            start += n


def test_per_record_losses_from_packed_batch(setup):
    base, rows, _ = setup
    model = load(base, "sdpa")
    batch = collate(rows, [0, 1], pad_id=0)
    with torch.no_grad():
        losses = per_target_loss(forward_logits(model, batch, False), batch.targets)
    singles = []
    for i in (0, 1):
        mb = collate(rows, [i], pad_id=0)
        with torch.no_grad():
            singles.append(per_target_loss(forward_logits(model, mb, False), mb.targets))
    assert torch.allclose(losses, torch.cat(singles), atol=1e-5)


def test_varlen_attention_without_a_plan_uses_the_position_ids(setup):
    """Called like any HF model (no plan passed), it still isolates records, from the position ids."""
    base, rows, _ = setup
    model = load(base, attention.NAME)
    packed_row = max(range(len(rows)), key=lambda i: len(rows.get("seq_lens", i)))
    batch = collate(rows, [packed_row], pad_id=0)
    with torch.no_grad():
        planned = forward_logits(model, batch, bf16=False)
        unplanned = model(input_ids=batch.input_ids, position_ids=batch.position_ids, use_cache=False).logits
    assert torch.allclose(planned, unplanned, atol=1e-6)
