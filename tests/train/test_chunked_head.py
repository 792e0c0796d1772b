"""The chunked LM head + cross-entropy (head_loss.py, chunked_head.py) equals the unchunked path: losses and
gradients to 1e-5 in fp32, for plain, tied, soft-capped and LoRA / modules_to_save heads, every family of the
table, every loss mode, and under gradient accumulation."""

import pytest
import torch
from helpers import grad_capture_engine, tokenized_folder
from mft_core.families import FAMILIES, PRESETS
from mft_train import chunked_head
from mft_train.batches import Rows
from mft_train.head_loss import chunk_tokens_for, chunked_head_loss
from mft_train.loop import LoopParts, forward_logits, forward_losses, train_step
from mft_train.loss import MODES, per_target_loss
from mft_train.objective import Objective

pytestmark = pytest.mark.fast


def reference(hidden, weight, labels, bias=None, lowrank=None, softcap=None):
    """The textbook formula, unchunked, with autograd."""
    z = hidden @ weight.T
    if lowrank is not None:
        z = z + lowrank[0] @ lowrank[1].T
    if bias is not None:
        z = z + bias
    if softcap is not None:
        z = torch.tanh(z / softcap) * softcap
    return torch.nn.functional.cross_entropy(z, labels, reduction="none")


def grads_of(fn, tensors, coef):
    for t in tensors:
        t.grad = None
    losses = fn()
    # a non-linear function of the per-token losses (as a preference loss is): row gradients must be scaled
    # by dL/dl_i, not assumed to be the loss's coefficients
    (torch.sigmoid(losses) * coef).sum().backward()
    return losses.detach(), [t.grad.clone() for t in tensors]


@pytest.mark.parametrize("case", ["plain", "bias", "lowrank", "softcap", "trained-weight", "everything"])
@pytest.mark.parametrize("chunk", [1, 7, 64, 1000])
def test_chunked_loss_and_gradients_equal_the_formula(case, chunk):
    torch.manual_seed(0)
    n, h, v, r = 53, 24, 301, 4
    everything = case == "everything"
    hidden = torch.randn(n, h, requires_grad=True)
    weight = torch.randn(v, h, requires_grad=case == "trained-weight" or everything)
    bias = torch.randn(v, requires_grad=True) if case == "bias" or everything else None
    lowrank = (torch.randn(n, r, requires_grad=True), torch.randn(v, r, requires_grad=True))
    lowrank = lowrank if case == "lowrank" or everything else None
    softcap = 3.0 if case == "softcap" or everything else None
    labels = torch.randint(0, v, (n,))
    coef = torch.rand(n)
    tensors = [t for t in (hidden, weight, bias, *(lowrank or ())) if t is not None and t.requires_grad]
    kw = dict(bias=bias, lowrank=lowrank, softcap=softcap)
    ref_l, ref_g = grads_of(lambda: reference(hidden, weight, labels, **kw), tensors, coef)
    got_l, got_g = grads_of(lambda: chunked_head_loss(hidden, weight, labels, chunk=chunk, **kw), tensors, coef)
    assert torch.allclose(got_l, ref_l, atol=1e-5, rtol=0)
    for a, b in zip(got_g, ref_g):
        assert torch.allclose(a, b, atol=1e-5, rtol=0)


def test_hand_computed_case():
    """Two tokens, vocabulary of 2, identity head: l = log(1 + e^(z_other - z_label))."""
    hidden = torch.tensor([[2.0, 0.0], [0.0, 1.0]], requires_grad=True)
    losses = chunked_head_loss(hidden, torch.eye(2), torch.tensor([0, 0]), chunk=1)
    expected = torch.log1p(torch.exp(torch.tensor([-2.0, 1.0])))
    assert torch.allclose(losses, expected, atol=1e-6)
    losses.sum().backward()
    p = torch.softmax(hidden.detach(), -1)
    assert torch.allclose(hidden.grad, p - torch.tensor([[1.0, 0.0], [1.0, 0.0]]), atol=1e-6)


def test_bf16_compute_matches_bf16_unchunked():
    torch.manual_seed(0)
    hidden = torch.randn(40, 32, requires_grad=True)
    weight = torch.randn(500, 32) * 0.1
    labels = torch.randint(0, 500, (40,))
    got = chunked_head_loss(hidden, weight, labels, chunk=9, dtype=torch.bfloat16)
    ref = torch.nn.functional.cross_entropy((hidden.bfloat16() @ weight.bfloat16().T).float(), labels, reduction="none")
    assert torch.allclose(got, ref, atol=1e-3)


def test_cpu_computes_the_head_in_fp32_even_under_bf16_autocast():
    from mft_train.head_loss import compute_dtype

    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert compute_dtype("cpu", torch.bfloat16) == torch.float32
        hidden = torch.randn(6, 8)
        weight = torch.randn(11, 8).bfloat16()
        labels = torch.randint(0, 11, (6,))
        got = chunked_head_loss(hidden, weight, labels, chunk=4)
    assert torch.allclose(got, reference(hidden, weight.float(), labels), atol=1e-5)


def test_evaluation_under_no_grad_keeps_no_gradients():
    hidden = torch.randn(5, 8, requires_grad=True)
    with torch.no_grad():
        losses = chunked_head_loss(hidden, torch.randn(11, 8), torch.randint(0, 11, (5,)), chunk=2)
    assert not losses.requires_grad


def test_chunk_size_from_the_budget():
    assert chunk_tokens_for(151_936, 256 * 2**20) == 256 * 2**20 // (151_936 * 14)
    assert chunk_tokens_for(10**9, 1) == 16  # never below the minimum


# --- the model path: the head looked up under transformers and PEFT -----------------------------------------
def tiny_model(model_type: str, tied: bool | None = None):
    from transformers import AutoConfig, AutoModelForCausalLM

    family = FAMILIES[model_type]
    sizes = {k: v for k, v in PRESETS["tiny"].items() if k != "vocab"}
    config = AutoConfig.for_model(
        model_type,
        vocab_size=320,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        tie_word_embeddings=family.tied_embeddings if tied is None else tied,
        **family.config_kwargs(sizes),
    )
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, attn_implementation="eager")
    model.config.use_cache = False
    return model.eval()  # no dropout (gpt_bigcode's config has some): both paths must see the same network


def batch(vocab: int = 320):
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(3, vocab, (2, 24), generator=g)
    positions = torch.arange(24).repeat(2, 1)  # packing is proven elsewhere; this is about the head
    mask = torch.rand(2, 24, generator=g) > 0.4
    labels = torch.randint(3, vocab, (2, 24), generator=g)[mask]
    return ids, positions, mask, labels


def losses_and_grads(model, chunked: bool, chunk: int = 5):
    ids, positions, mask, labels = batch()
    model.zero_grad(set_to_none=True)
    if chunked:
        losses = model(input_ids=ids, position_ids=positions, mft_targets=(mask, labels))
    else:
        logits = model(input_ids=ids, position_ids=positions, use_cache=False).logits[mask]
        losses = torch.nn.functional.cross_entropy(logits.float(), labels, reduction="none")
    weights = torch.linspace(0.1, 1.0, losses.numel())
    (losses * weights).sum().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return losses.detach(), grads


def assert_same(model, chunk=5):
    plain_l, plain_g = losses_and_grads(model, chunked=False)
    chunked_head.install(model, chunked_head.HeadPlan(chunk, _softcap(model)), log=pytest.fail)
    got_l, got_g = losses_and_grads(model, chunked=True)
    assert torch.allclose(got_l, plain_l, atol=1e-5, rtol=0)
    assert got_g.keys() == plain_g.keys() and got_g
    for name in plain_g:
        assert torch.allclose(got_g[name], plain_g[name], atol=1e-5, rtol=1e-5), name


def _softcap(model):
    return getattr(model.config, "final_logit_softcapping", None) or None


@pytest.mark.parametrize("model_type", sorted(FAMILIES))
def test_every_family_full_fine_tuning_equals_unchunked(model_type):
    """Full fine-tuning: the head's (or the tied embedding's) gradient too; gemma2 with its soft-cap."""
    model = tiny_model(model_type)
    plan, note = chunked_head.plan_for("auto", model.config, "local")
    assert plan is not None, note
    assert_same(model)


def test_tied_and_untied_embeddings():
    for tied in (True, False):
        model = tiny_model("qwen2", tied=tied)
        assert (model.get_output_embeddings().weight is model.get_input_embeddings().weight) == tied
        assert_same(model)


def test_gemma2_softcap_is_applied():
    model = tiny_model("gemma2")
    assert _softcap(model)
    plan, note = chunked_head.plan_for("auto", model.config, "local")
    assert plan.softcap == model.config.final_logit_softcapping and "soft-cap" in note


@pytest.mark.parametrize(
    "peft_kw",
    [
        {"target_modules": ["q_proj", "v_proj"]},
        {"target_modules": ["q_proj", "lm_head"]},
        {"target_modules": ["q_proj"], "modules_to_save": ["lm_head"]},
    ],
    ids=["lora-body", "lora-on-lm_head", "modules_to_save-lm_head"],
)
def test_lora_heads_equal_unchunked(peft_kw):
    from peft import LoraConfig, get_peft_model

    model = tiny_model("llama", tied=False)
    chunked = tiny_model("llama", tied=False)
    chunked_head.install(chunked, chunked_head.HeadPlan(5, None), log=pytest.fail)  # before PEFT, as mft-train
    results = []
    for m, flag in ((model, False), (chunked, True)):
        torch.manual_seed(3)
        peft = get_peft_model(m, LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, init_lora_weights=False, **peft_kw))
        results.append(losses_and_grads(peft, chunked=flag))
    (l0, g0), (l1, g1) = results
    assert torch.allclose(l0, l1, atol=1e-5, rtol=0)
    assert g0.keys() == g1.keys() and g0
    if "lm_head" in str(peft_kw):
        assert any("lm_head" in n for n in g0)
    for name in g0:
        assert torch.allclose(g0[name], g1[name], atol=1e-5, rtol=1e-5), name


def test_dora_on_the_head_falls_back_with_a_note():
    from peft import LoraConfig, get_peft_model

    model = tiny_model("llama", tied=False)
    notes = []
    chunked_head.install(model, chunked_head.HeadPlan(5, None), log=notes.append)
    peft = get_peft_model(model, LoraConfig(r=4, target_modules=["lm_head"], use_dora=True, lora_dropout=0.0))
    ids, positions, mask, labels = batch()
    losses = peft(input_ids=ids, position_ids=positions, mft_targets=(mask, labels))
    logits = peft(input_ids=ids, position_ids=positions, use_cache=False).logits[mask]
    assert torch.allclose(losses, torch.nn.functional.cross_entropy(logits, labels, reduction="none"), atol=1e-5)
    assert len(notes) == 1 and "unchunked" in notes[0]


def test_plans_that_fall_back():
    config = tiny_model("llama").config
    assert chunked_head.plan_for(0, config, "local")[0] is None
    plan, note = chunked_head.plan_for("auto", config, "zero3")
    assert plan is None and "ZeRO-3" in note
    config.logit_scale = 0.5
    plan, note = chunked_head.plan_for("auto", config, "local")
    assert plan is None and "logit_scale" in note
    assert chunked_head.plan_for(64, tiny_model("llama").config, "ddp")[0].chunk == 64


# --- the training step: every loss mode, and accumulation ------------------------------------------------------


@pytest.fixture(scope="module")
def rows(llama_base, tmp_path_factory):
    from mft_data.api import load_tokenized

    data = load_tokenized(tokenized_folder(tmp_path_factory.mktemp("chunk"), llama_base, seq_len=128, split=None))
    return Rows(data.train), data.tasks


def lora_model(base, chunk: int | None):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    if chunk:
        chunked_head.install(model, chunked_head.HeadPlan(chunk, None), log=pytest.fail)
    lora = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, init_lora_weights=False, target_modules=["q_proj", "v_proj"])
    return get_peft_model(model, lora)


def step_grads(model, rows, tasks, mode, mbs, accum):
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
    return train_step(parts, 0), engine.grads


@pytest.mark.parametrize("mode", MODES)
def test_train_step_chunked_equals_unchunked_and_accumulates_exactly(llama_base, rows, mode):
    rows, tasks = rows
    plain_r, plain_g = step_grads(lora_model(llama_base, None), rows, tasks, mode, 8, 1)
    model = lora_model(llama_base, chunk=13)
    r1, g1 = step_grads(model, rows, tasks, mode, 8, 1)
    r2, g2 = step_grads(model, rows, tasks, mode, 2, 4)
    assert r1.loss == pytest.approx(plain_r.loss, rel=1e-6) and r2.loss == pytest.approx(r1.loss, rel=1e-6)
    assert r1.task_loss == pytest.approx(plain_r.task_loss, rel=1e-5)
    assert plain_g.keys() == g1.keys() == g2.keys() and plain_g
    for name in plain_g:
        assert torch.allclose(g1[name], plain_g[name], atol=1e-6, rtol=1e-5), name
        assert torch.allclose(g2[name], g1[name], atol=1e-6, rtol=0), name


def test_forward_losses_chunked_equal_logits_path(llama_base, rows):
    from mft_train.batches import collate

    rows, _ = rows
    mb = collate(rows, [0, 1, 2], pad_id=0)
    plain = lora_model(llama_base, None)
    with torch.no_grad():
        expected = per_target_loss(forward_logits(plain, mb, False, supervised_only=True), mb.targets)
        got, _ = forward_losses(lora_model(llama_base, chunk=7), mb, False)
    assert torch.allclose(got, expected, atol=1e-5)
