"""task_sampling in mft-train: each epoch's records drawn by task ratios, re-packed with copies apart; the step's
rows are a function of (seed, step), so resume and any number of ranks see the same rows."""

from collections import Counter

import numpy as np
import pytest
from helpers import train_config
from mft_core.errors import ConfigError
from mft_train.batches import Rows, rank_micro_batches
from mft_train.order import FixedOrder, RecordTable, SampledOrder, locate, step_rows, total_steps

pytestmark = pytest.mark.fast


@pytest.fixture(scope="module")
def data(llama_tok):
    from mft_data.api import load_tokenized

    tok = load_tokenized(llama_tok)
    return tok, Rows(tok.train)


def records_of(rows, ids=None):
    """Every record of a Rows-like view as (task, input_ids, labels) tuples, split at seq_lens."""
    out = []
    for i in range(len(rows)) if ids is None else ids:
        tokens, labels, tasks = (rows.get(c, i) for c in ("input_ids", "labels", "task_ids"))
        start = 0
        for n in rows.get("seq_lens", i):
            out.append((int(tasks[start]), tuple(tokens[start : start + n]), tuple(labels[start : start + n])))
            start += n
    return out


def order_for(data, sampling, by="records", seed=3):
    tok, rows = data
    return SampledOrder(rows=rows, tasks=tok.tasks, sampling=sampling, by=by, seed=seed, capacity=tok.seq_len,
                        packed=True)  # fmt: skip


def test_record_table_recovers_every_packed_record(data):
    tok, rows = data
    table = RecordTable.of(rows)
    assert len(table.lengths) == sum(len(rows.get("seq_lens", i)) for i in range(len(rows)))
    assert any(len(rows.get("seq_lens", i)) > 1 for i in range(len(rows)))  # the fixture is really packed
    # ratio 1 everywhere: the epoch holds exactly the tokenized records (re-packed), tokens, labels and tasks intact
    order = order_for(data, {t: 1.0 for t in tok.tasks})
    assert Counter(records_of(order.epoch_rows(0))) == Counter(records_of(rows))
    assert (order.epoch_rows(0).lengths <= tok.seq_len).all()


def test_ratios_give_requested_counts_and_copies_never_share_a_row(data):
    tok, rows = data
    a, b, c = tok.tasks
    before = Counter(t for t, *_ in records_of(rows))
    order = order_for(data, {a: 2.0, b: 0.5})
    for epoch in range(3):
        view = order.epoch_rows(epoch)
        got = Counter(t for t, *_ in records_of(view))
        assert got[0] == 2 * before[0] and abs(got[1] - 0.5 * before[1]) <= 1 and got[2] == before[2]
        assert {t: v["records"] for t, v in order.realised(epoch).items()} == {a: got[0], b: got[1], c: got[2]}
        for i in range(len(view)):
            ids = view.record_ids(i)
            assert len(set(ids.tolist())) == len(ids)  # never twice in one packed row
        twice = Counter(r for r in records_of(view) if r[0] == 0)
        assert set(twice.values()) == {2}
    # half of task b is drawn afresh each epoch
    first = {r for r in records_of(order.epoch_rows(0)) if r[0] == 1}
    assert first != {r for r in records_of(order.epoch_rows(1)) if r[0] == 1}


def test_by_tokens_within_one_record(data):
    tok, rows = data
    a = tok.tasks[0]
    table = RecordTable.of(rows)
    order = order_for(data, {a: 1.5}, by="tokens")
    got = order.realised(0)[a]["tokens"]
    target = 1.5 * table.lengths[table.tasks == 0].sum()
    assert abs(got - target) <= table.lengths[table.tasks == 0].max()


def test_step_rows_depend_on_seed_and_step_only(data):
    tok, _ = data
    a, b, _ = tok.tasks

    def global_rows(order, step):
        view, idx = step_rows(order, step, 4, 3)
        return [records_of(view, [i]) for i in idx]

    one, other = order_for(data, {a: 2.0, b: 0.5}), order_for(data, {a: 2.0, b: 0.5})
    steps = total_steps(one, 4, epochs=2, max_steps=0)
    assert steps == sum(-(-one.epoch_size(e) // 4) for e in range(2))
    # a fresh object (a resumed process) jumping straight to a late step sees the same rows
    for step in (steps - 1, 0, steps // 2):
        assert global_rows(one, step) == global_rows(other, step)
    assert locate(one, steps - 1, 4)[0] == 1
    # two ranks' micro-batches are exactly the one-rank global batch, split
    _, idx = step_rows(one, 1, 4, 3)
    ranks = [rank_micro_batches(idx, r, 2, 1, 2) for r in range(2)]
    assert sorted(i for r in ranks for mb in r for i in mb) == sorted(
        rank_micro_batches(idx, 0, 1, 2, 2)[0] + rank_micro_batches(idx, 0, 1, 2, 2)[1]
    )


def test_fixed_order_is_unchanged(data):
    _, rows = data
    order = FixedOrder(rows, 3)
    view, idx = step_rows(order, 0, 4, 3)
    assert view is rows and len(idx) == 4 and total_steps(order, 4, 2, 0) == 2 * -(-len(rows) // 4)


def test_config_and_unknown_task_errors(llama_base, llama_tok, tmp_path):
    from mft_train.api import train

    with pytest.raises(ConfigError, match="task_sampling ratios must be >= 0"):
        train_config(llama_base, llama_tok, tmp_path / "o", task_sampling={"x": -1})
    with pytest.raises(ConfigError, match="unknown tasks: nosuch"):
        train(train_config(llama_base, llama_tok, tmp_path / "o", task_sampling={"nosuch": 2.0}, max_steps=1))


def test_training_with_sampling_records_realised_counts(llama_base, llama_tok, data, tmp_path):
    from mft_core.manifest import read_manifest
    from mft_train.api import train

    tok, rows = data
    first = tok.tasks[0]
    n_first = sum(1 for t, *_ in records_of(rows) if t == 0)
    result = train(
        train_config(
            llama_base,
            llama_tok,
            tmp_path / "o",
            max_steps=0,
            epochs=2,
            eval_every=0,
            task_sampling={first: 2.0},
            task_sampling_by="records",
        )  # fmt: skip
    )
    record = read_manifest(result.out).summary["task_sampling"]
    assert record["ratios"][first] == 2.0 and len(record["per_epoch"]) == 2
    assert record["per_epoch"][0][first]["records"] == 2 * n_first
    assert result.summary["steps"] == sum(-(-n // 4) for n in record["rows_per_epoch"])


def test_numpy_view_matches_rows_interface(data):
    _, rows = data
    order = FixedOrder(rows, 0)
    assert isinstance(order.epoch_rows(0).lengths, np.ndarray)


def test_steps_of_a_late_epoch_do_not_repack_earlier_epochs(data, monkeypatch):
    import mft_data.api

    tok, _ = data
    order = order_for(data, {tok.tasks[0]: 2.0})
    calls = []
    real = mft_data.api.best_fit_decreasing
    monkeypatch.setattr(mft_data.api, "best_fit_decreasing", lambda *a, **k: calls.append(1) or real(*a, **k))
    steps = total_steps(order, 4, epochs=3, max_steps=0)  # packs epochs 0, 1, 2 once each
    for step in range(steps - 3, steps):  # three steps of the last epoch
        step_rows(order, step, 4, 3)
    assert len(calls) == 3
