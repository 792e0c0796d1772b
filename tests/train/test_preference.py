"""Preference losses: the maths against hand-computed values and TRL, exact under accumulation, trained end to end."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import pytest
import torch
from helpers import grad_capture_engine, pair_folder, train_config
from mft_core.errors import ConfigError
from mft_train.batches import MicroBatch, Rows
from mft_train.loop import LoopParts, forward_losses
from mft_train.loss import IGNORE, MODES, StepCounts, count_targets, shift_targets
from mft_train.objective import Objective
from mft_train.preference import (
    chosen_only,
    dpo_losses,
    find_pairs,
    orpo_losses,
    pair_losses,
    pair_weights,
    sequence_logps,
)
from mft_train.preference_step import preference_step, reference_losses

pytestmark = pytest.mark.fast


def targets_of(rows: list[list[tuple[int, int]]]):
    """Shifted targets from rows of (sample, task) per position; every position but a sample's first supervised."""
    width = max(len(r) for r in rows)
    labels = torch.full((len(rows), width), IGNORE)
    tasks = torch.zeros((len(rows), width), dtype=torch.long)
    samples = torch.full((len(rows), width), 99)
    for b, row in enumerate(rows):
        for j, (s, t) in enumerate(row):
            first = j == 0 or row[j - 1][0] != s
            labels[b, j] = IGNORE if first or s == 99 else 5  # 99: padding, never supervised
            tasks[b, j], samples[b, j] = t, s
    return shift_targets(labels, tasks, samples)


def test_pairs_are_found_in_order_and_chosen_only_masks_the_rejected():
    # row 0: pair (0, 1) of task 0 then pair (2, 3) of task 1; row 1: pair (4, 5) of task 1, then padding (99)
    rows = [[(0, 0)] * 3 + [(1, 0)] * 4 + [(2, 1)] * 2 + [(3, 1)] * 3, [(4, 1)] * 4 + [(5, 1)] * 2 + [(99, 0)] * 6]
    t = targets_of(rows)
    pairs = find_pairs(t)
    assert pairs.n_pairs == 3 and pairs.task.tolist() == [0, 1, 1]
    assert pairs.sequence.tolist() == [0, 0, 1, 1, 1, 2, 3, 3, 4, 4, 4, 5]
    losses = torch.arange(1.0, 13.0)
    c, r = sequence_logps(losses, pairs)
    assert c.tolist() == [-3.0, -6.0, -(9 + 10 + 11)] and r.tolist() == [-(3 + 4 + 5), -(7 + 8), -12.0]
    ca, _ = sequence_logps(losses, pairs, average=True)
    assert ca.tolist() == [-1.5, -6.0, -10.0]
    only = chosen_only(t, pairs)
    assert int(only.mask.sum()) == int(pairs.chosen.sum()) == 6
    counts = count_targets(only, 2)
    assert counts.samples.tolist() == [1.0, 2.0] and counts.tokens.tolist() == [2.0, 4.0]
    with pytest.raises(ValueError, match="pairs come in twos"):
        find_pairs(targets_of([[(0, 0)] * 3 + [(1, 0)] * 2 + [(2, 0)] * 2]))


def test_dpo_and_orpo_equal_hand_computed_values():
    c, r, rc, rr = (torch.tensor([v], dtype=torch.float64) for v in (-1.0, -2.0, -1.5, -1.5))
    loss, cr, rej = dpo_losses(c, r, rc, rr, beta=0.1)
    assert cr.item() == pytest.approx(0.05) and rej.item() == pytest.approx(-0.05)
    assert loss.item() == pytest.approx(math.log1p(math.exp(-0.1)), abs=1e-12)  # -log sigmoid(0.1)
    a_c, a_r = -0.5, -1.0
    log_odds = (a_c - a_r) - (math.log(1 - math.exp(a_c)) - math.log(1 - math.exp(a_r)))
    loss, cr, _ = orpo_losses(torch.tensor([a_c], dtype=torch.float64), torch.tensor([a_r], dtype=torch.float64), 0.2)
    assert loss.item() == pytest.approx(0.2 * math.log1p(math.exp(-log_odds)), abs=1e-12) and cr.item() == -0.1
    tiny = torch.tensor([-1e-9, -50.0], dtype=torch.float64)  # log(1 - e^x) finite at both ends
    loss, _, _ = orpo_losses(tiny, tiny.flip(0), 1.0)
    assert torch.isfinite(loss).all()


def test_pair_weights_balance_tasks_over_the_step():
    counts = StepCounts(torch.tensor([10.0, 30.0, 0.0]), torch.tensor([1.0, 3.0, 0.0]))  # pairs: 1 and 3
    w = torch.tensor([1.0, 3.0, 5.0])  # task 2 absent from the step: not in W
    task = torch.tensor([0, 1, 1])
    assert pair_weights("token", task, counts, w).tolist() == pytest.approx([0.25] * 3)
    assert pair_weights("task", task, counts, w).tolist() == pytest.approx([1 / 4, 3 / 12, 3 / 12])
    # a whole step's coefficients: each task's pairs sum to w_t / W
    full = pair_weights("task-sample", torch.tensor([0, 1, 1, 1]), counts, w)
    assert full[:1].sum().item() == pytest.approx(0.25) and full[1:].sum().item() == pytest.approx(0.75)


# ---- agreement with TRL on the same tiny model and batch --------------------------------------------------------
TRL_ROWS = [
    {
        "prompt": [{"role": "user", "content": f"Write solve(x) returning x plus {i}."}],
        "chosen": [{"role": "assistant", "content": f"def solve(x):\n    return x + {i}"}],
        "rejected": [{"role": "assistant", "content": f"def solve(x):\n    return x - {i} * {i + 1}"}],
    }
    for i in range(4)
]


def micro_batch_from_trl(batch) -> MicroBatch:
    """TRL's collated batch (chosen rows, then rejected rows) as MFT rows c0, r0, c1, r1, ... (padding its own
    sample, as mft_train.batches.collate makes it)."""
    ids, mask, comp = batch["input_ids"], batch["attention_mask"], batch["completion_mask"]
    p = ids.shape[0] // 2
    order = [i for k in range(p) for i in (k, p + k)]
    ids, mask, comp = ids[order], mask[order], comp[order]
    assert (mask.cumsum(1) == torch.arange(1, mask.shape[1] + 1)).logical_or(mask == 0).all()  # right padded
    labels = torch.where(comp.bool(), ids, torch.full_like(ids, IGNORE))
    n = mask.sum(1)
    positions = torch.stack([torch.cat([torch.arange(k), torch.arange(ids.shape[1] - k)]) for k in n.tolist()])
    samples = torch.stack([torch.where(mask[b].bool(), 2 * b, 2 * b + 1) for b in range(ids.shape[0])])
    tasks = torch.zeros_like(ids)
    return MicroBatch(ids, positions, shift_targets(labels, tasks, samples), int(n.sum()))


def trl_trainer(base, loss_type, loss_weights=None):
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    args = DPOConfig(output_dir="/tmp/unused-trl", beta=0.1, report_to=[], per_device_train_batch_size=4,
                     use_cpu=True, max_length=None, loss_type=loss_type, loss_weights=loss_weights)  # fmt: skip
    lora = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, init_lora_weights=False, target_modules=["q_proj", "v_proj"])
    trainer = DPOTrainer(model=model, ref_model=None, args=args, train_dataset=Dataset.from_list(TRL_ROWS),
                         processing_class=AutoTokenizer.from_pretrained(base), peft_config=lora)  # fmt: skip
    return trainer, trainer.data_collator([trainer.train_dataset[i] for i in range(4)])


def mft_loss(model, mb, preference, beta=0.1, rpo_alpha=1.0, mode="token"):
    """The loss preference_step minimises on one micro-batch (one task, one micro-batch: the whole step)."""
    from mft_train.loss import micro_batch_loss, target_weights
    from mft_train.preference import nll_weight

    pairs = find_pairs(mb.targets)
    ref = reference_losses(model, mb, False) if preference != "orpo" else None
    losses, _ = forward_losses(model, mb, False)
    per_pair, stats = pair_losses(preference, losses, ref, pairs, beta)
    only = chosen_only(mb.targets, pairs)
    counts = count_targets(only, 1)
    w = torch.ones(1, dtype=torch.float64)
    loss = (per_pair * pair_weights(mode, pairs.task, counts, w)).sum()
    nll = nll_weight(preference, rpo_alpha)
    if nll:
        loss = loss + nll * micro_batch_loss(losses[pairs.chosen], target_weights(mode, only, counts, w))
    return loss, stats


@pytest.mark.parametrize("loss_type, weights, preference, alpha", [
    (["sigmoid"], None, "dpo", 0.0),
    (["sigmoid", "sft"], [1.0, 0.7], "rpo", 0.7),
])  # fmt: skip
def test_dpo_and_rpo_equal_trl_dpo_trainer(llama_base, loss_type, weights, preference, alpha):
    trainer, batch = trl_trainer(str(llama_base), loss_type, weights)
    model = trainer.model
    model.train()
    expected = trainer.compute_loss(model, batch).item()
    margin = trainer._metrics["train"]["rewards/margins"][-1]
    mb = micro_batch_from_trl(batch)
    for mode in MODES:  # one task, equal weights: every balancing mode is TRL's loss
        loss, stats = mft_loss(model, mb, preference, rpo_alpha=alpha, mode=mode)
        assert loss.item() == pytest.approx(expected, abs=1e-5), mode
    assert stats.margin.mean().item() == pytest.approx(margin, abs=1e-5)
    assert abs(margin) > 1e-4  # the adapter moved the policy away from the reference: a real comparison


def test_orpo_equals_trl_odds_ratio_loss(llama_base):
    from trl.experimental.orpo import ORPOTrainer

    trainer, batch = trl_trainer(str(llama_base), ["sigmoid"])
    model = trainer.model
    mb = micro_batch_from_trl(batch)
    with torch.no_grad():
        losses, _ = forward_losses(model, mb, False)
        pairs = find_pairs(mb.targets)
        c, r = sequence_logps(losses, pairs, average=True)
        ratio_losses, *_ = ORPOTrainer.odds_ratio_loss(
            SimpleNamespace(beta=0.1, accelerator=SimpleNamespace(device="cpu")), c, r
        )
        nll = losses[pairs.chosen].mean()  # TRL ORPO: cross-entropy of the chosen answers, token mean
        expected = nll - ratio_losses.mean()
        loss, _ = mft_loss(model, mb, "orpo")
    assert loss.item() == pytest.approx(expected.item(), abs=1e-6)


# ---- exact under accumulation ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def prefs(llama_base, tmp_path_factory):
    from mft_data.api import load_tokenized

    tok = pair_folder(tmp_path_factory.mktemp("prefs"), llama_base, seq_len=160, split=None)
    data = load_tokenized(tok)
    return tok, Rows(data.train), data.tasks


def lora_model(base):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    lora = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, init_lora_weights=False,
                      target_modules=["q_proj", "v_proj", "down_proj"])  # fmt: skip
    return get_peft_model(model, lora)


@pytest.mark.parametrize("preference", ["dpo", "orpo", "rpo"])
@pytest.mark.parametrize("mode", ["token", "task", "task-sample"])
def test_one_batch_of_8_rows_equals_4_micro_batches_of_2(llama_base, prefs, preference, mode):
    _, rows, tasks = prefs
    assert len(rows) >= 8
    model = lora_model(llama_base)
    objective = Objective(mode, "static", (1.0, 3.0), preference, 0.1, 0.5)
    results = {}
    for mbs, accum in ((8, 1), (2, 4)):
        engine = grad_capture_engine(model)
        parts = LoopParts(engine=engine, rows=rows, tasks=tasks, objective=objective, micro_batch_size=mbs,
                          grad_accum=accum, seed=1, pad_id=0, bf16=False, max_grad_norm=0.0, total_steps=1)  # fmt: skip
        results[(mbs, accum)] = (preference_step(parts, 0), engine.grads)
    (r1, g1), (r2, g2) = results[(8, 1)], results[(2, 4)]
    assert r1.loss == pytest.approx(r2.loss, rel=1e-6)
    assert set(r1.rewards) == set(tasks) == set(r2.rewards)
    for task in tasks:
        assert r1.rewards[task] == pytest.approx(r2.rewards[task])
    assert g1.keys() == g2.keys() and g1
    for name in g1:
        assert torch.allclose(g1[name], g2[name], atol=1e-6, rtol=0), name
    assert max(g.abs().max().item() for g in g1.values()) > 1e-4  # a real gradient


# ---- end to end: mft-train run on a preference folder ------------------------------------------------------------
def test_dpo_run_trains_logs_rewards_and_saves_a_stock_peft_adapter(llama_base, tmp_path):
    from mft_train.api import train as run_training
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    tok = pair_folder(tmp_path, llama_base, seq_len=160, split=0.25)
    out = tmp_path / "run"
    cfg = train_config(llama_base, tok, out, preference="dpo", seq_len=160, max_steps=6, eval_every=3, lr=5e-3,
                       lora_dropout=0.0)  # fmt: skip
    run_training(cfg)
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in lines if r["kind"] == "train"]
    evals = [r for r in lines if r["kind"] == "eval"]
    assert set(train[-1]["rewards"]) == {"gen", "fix"} and all("rewards" in r for r in train)
    assert train[0]["loss"] == pytest.approx(math.log(2), abs=1e-3)  # the adapter starts as the reference
    assert evals and set(evals[-1]["rewards"]) <= {"gen", "fix"} and evals[-1]["rewards"]
    assert evals[-1]["rewards"][next(iter(evals[-1]["rewards"]))]["accuracy"] >= 0.0
    assert train[-1]["loss"] < train[0]["loss"]  # learning to prefer the right answers
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(llama_base), out / "adapter")
    assert model.peft_config["default"].r == cfg.lora_r


def test_preference_config_and_data_mismatches_are_refused(llama_base, qwen2_base, tmp_path):
    from helpers import tokenized_folder
    from mft_train.api import train as run_training

    with pytest.raises(ConfigError, match="needs a reference model"):
        train_config(llama_base, tmp_path, tmp_path / "o", preference="dpo", peft="none")
    with pytest.raises(ConfigError, match="not none, dpo"):
        train_config(llama_base, tmp_path, tmp_path / "o", preference="kto")
    pairs = pair_folder(tmp_path / "p", llama_base, seq_len=160, split=None)
    chats = tokenized_folder(tmp_path / "c", llama_base, split=None)
    with pytest.raises(ConfigError, match="holds preference pairs"):
        run_training(train_config(llama_base, pairs, tmp_path / "o1", seq_len=160, max_steps=1))
    with pytest.raises(ConfigError, match="needs a preference folder"):
        run_training(train_config(llama_base, chats, tmp_path / "o2", preference="orpo", max_steps=1))
    with pytest.raises(ConfigError, match="another tokenizer"):
        run_training(train_config(qwen2_base, pairs, tmp_path / "o3", preference="orpo", seq_len=160, max_steps=1))
