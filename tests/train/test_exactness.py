"""The accumulated gradient equals the full-batch gradient for every loss mode; packed records are isolated."""

import pytest
import torch
from helpers import tokenized_folder

from mft_train.batches import Rows, collate
from mft_train.engine import LocalEngine
from mft_train.loop import LoopParts, forward_logits, train_step
from mft_train.loss import MODES, per_target_loss


class GradCapture(LocalEngine):
    """Records the accumulated gradient instead of stepping."""

    def step(self, max_grad_norm):
        self.grads = {n: p.grad.detach().clone() for n, p in self.model.named_parameters() if p.grad is not None}
        self.optimizer.zero_grad(set_to_none=True)
        return 0.0


@pytest.fixture(scope="module")
def setup(llama_base, tmp_path_factory):
    from mft_data.api import load_tokenized

    tok = tokenized_folder(tmp_path_factory.mktemp("exact"), llama_base, seq_len=96, split=None)
    data = load_tokenized(tok)
    return llama_base, Rows(data.train), data.tasks


def fresh_model(base):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, init_lora_weights=False,
                                             target_modules=["q_proj", "v_proj", "down_proj"]))
    return model


@pytest.mark.parametrize("mode", MODES)
def test_one_batch_of_8_equals_4_micro_batches_of_2(setup, mode):
    base, rows, tasks = setup
    assert len(rows) >= 8
    model = fresh_model(base)
    results = {}
    for mbs, accum in ((8, 1), (2, 4)):
        engine = GradCapture(model, torch.optim.SGD(model.parameters(), lr=0.0), None)
        parts = LoopParts(engine, rows, tasks, torch.tensor([1.0, 2.0, 0.5], dtype=torch.float64), mode, mbs, accum,
                          seed=3, pad_id=0, bf16=False, max_grad_norm=0.0, total_steps=1)
        result = train_step(parts, step=0)
        results[(mbs, accum)] = (result, engine.grads)
    (r1, g1), (r2, g2) = results[(8, 1)], results[(2, 4)]
    assert r1.loss == pytest.approx(r2.loss, abs=1e-6)
    assert g1.keys() == g2.keys() and len(g1) > 0
    for name in g1:
        assert torch.allclose(g1[name], g2[name], atol=1e-6, rtol=0), name
    assert sum(r1.task_tokens.values()) > 0


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_packed_records_equal_records_alone(setup, attn):
    from transformers import AutoModelForCausalLM

    base, rows, _ = setup
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32, attn_implementation=attn)
    assert model.config.use_cache  # the saved default: forward_logits must turn the cache off itself
    packed_row = max(range(len(rows)), key=lambda i: len(rows.get("seq_lens", i)))
    seq_lens = rows.get("seq_lens", packed_row).tolist()
    assert len(seq_lens) >= 3
    packed = collate(rows, [packed_row], pad_id=0)
    with torch.no_grad():
        packed_logits = forward_logits(model, packed, bf16=False)[0]
        start = 0
        for n in seq_lens:
            ids = packed.input_ids[:, start:start + n]
            alone = model(input_ids=ids, use_cache=False).logits[0]
            assert torch.allclose(packed_logits[start:start + n], alone, atol=1e-5), f"record at {start} leaks"
            start += n
        # with the cache on, transformers skips packed-sequence detection: records see each other
        leaky = model(input_ids=packed.input_ids, position_ids=packed.position_ids, use_cache=True).logits[0]
        assert not torch.allclose(leaky, packed_logits, atol=1e-3)


def test_per_record_losses_from_packed_batch(setup):
    from transformers import AutoModelForCausalLM

    base, rows, _ = setup
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    batch = collate(rows, [0, 1], pad_id=0)
    with torch.no_grad():
        losses = per_target_loss(forward_logits(model, batch, False), batch.targets)
    singles = []
    for i in (0, 1):
        mb = collate(rows, [i], pad_id=0)
        with torch.no_grad():
            singles.append(per_target_loss(forward_logits(model, mb, False), mb.targets))
    assert torch.allclose(losses, torch.cat(singles), atol=1e-5)
