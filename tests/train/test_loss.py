"""Loss maths against a naive loop-over-tasks reference, hand-computed cases and properties."""

import pytest
import torch
from mft_train.loss import (
    IGNORE,
    MODES,
    StepCounts,
    Targets,
    count_targets,
    micro_batch_loss,
    target_weights,
)

pytestmark = pytest.mark.fast  # unit/contract tier: `make test-fast`


def make_targets(samples, width):
    """samples: list of rows; each row a list of (task, n_targets). Returns Targets with sequential sample ids."""
    labels = torch.full((len(samples), width), IGNORE)
    tasks = torch.zeros((len(samples), width), dtype=torch.long)
    sids = torch.zeros((len(samples), width), dtype=torch.long)
    sid = 0
    for b, row in enumerate(samples):
        pos = 0
        for task, n in row:
            labels[b, pos : pos + n + 1] = 1  # n supervised targets + one unsupervised (first token of next record)
            labels[b, pos] = IGNORE
            tasks[b, pos : pos + n + 1] = task
            sids[b, pos : pos + n + 1] = sid
            sid += 1
            pos += n + 1
        sids[b, pos:] = sid
        sid += 1
    return Targets(labels, tasks, sids)


def reference_loss(mode, records, weights):
    """records: list of (task, tensor of per-target losses) over the whole step. Plain definitions."""
    tasks = sorted({t for t, _ in records})
    if mode == "token":
        return torch.cat([l for _, l in records]).mean()
    if mode == "sample":
        return torch.stack([l.mean() for _, l in records]).mean()
    per_task = {}
    for t in tasks:
        mine = [l for task, l in records if task == t]
        per_task[t] = torch.cat(mine).mean() if mode == "task" else torch.stack([l.mean() for l in mine]).mean()
    total_w = sum(weights[t] for t in tasks)
    return sum(weights[t] * per_task[t] for t in tasks) / total_w


def our_loss(mode, micro_batches, losses_per_mb, weights, n_tasks):
    counts = StepCounts(torch.zeros(n_tasks, dtype=torch.float64), torch.zeros(n_tasks, dtype=torch.float64))
    for t in micro_batches:
        counts = counts + count_targets(t, n_tasks)
    return sum(
        micro_batch_loss(l, target_weights(mode, t, counts, weights)) for t, l in zip(micro_batches, losses_per_mb)
    )


ROWS = [[(0, 3), (1, 2)], [(1, 5)], [(2, 1), (0, 2), (0, 1)], [(0, 4)]]  # 4 rows, tasks unevenly spread


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("split", [[4], [2, 2], [1, 1, 1, 1], [3, 1]])
def test_matches_reference_for_any_micro_batching(mode, split):
    torch.manual_seed(0)
    weights = torch.tensor([1.0, 2.0, 0.5], dtype=torch.float64)
    full = make_targets(ROWS, 12)
    flat_losses = torch.rand(int(full.mask.sum()), dtype=torch.float64)
    # per-record losses in the order records appear
    records, k = [], 0
    for row in ROWS:
        for task, n in row:
            records.append((task, flat_losses[k : k + n]))
            k += n
    expected = reference_loss(mode, records, {i: w for i, w in enumerate(weights.tolist())})
    mbs, losses, start, k = [], [], 0, 0
    for size in split:
        t = make_targets(ROWS[start : start + size], 12)
        n = int(t.mask.sum())
        mbs.append(t)
        losses.append(flat_losses[k : k + n])
        start, k = start + size, k + n
    assert torch.allclose(our_loss(mode, mbs, losses, weights, 3), expected, atol=1e-12)


def test_two_token_hand_cases():
    # sample A (task 0): one target, loss 1.0; sample B (task 1): one target with loss 3.0, in separate micro-batches
    a, b = make_targets([[(0, 1)]], 4), make_targets([[(1, 1)]], 4)
    la, lb = torch.tensor([1.0], dtype=torch.float64), torch.tensor([3.0], dtype=torch.float64)
    w = torch.tensor([1.0, 3.0], dtype=torch.float64)
    assert our_loss("token", [a, b], [la, lb], w, 2).item() == pytest.approx(2.0)
    assert our_loss("task", [a, b], [la, lb], w, 2).item() == pytest.approx((1 * 1.0 + 3 * 3.0) / 4)
    # sample C (task 0): two targets with losses 1 and 5 -> token mean 3 over A+C = (1+1+5)/3, sample mean (1+3)/2
    c = make_targets([[(0, 2)]], 4)
    lc = torch.tensor([1.0, 5.0], dtype=torch.float64)
    assert our_loss("token", [a, c], [la, lc], w, 2).item() == pytest.approx(7 / 3)
    assert our_loss("sample", [a, c], [la, lc], w, 2).item() == pytest.approx(2.0)
    assert our_loss("task-sample", [a, b, c], [la, lb, lc], w, 2).item() == pytest.approx((1 * 2.0 + 3 * 3.0) / 4)


def test_properties():
    torch.manual_seed(1)
    one_task = make_targets([[(0, 3), (0, 2)], [(0, 4)]], 12)
    losses = torch.rand(9, dtype=torch.float64)
    w = torch.ones(3, dtype=torch.float64)
    # one task: task == token and task-sample == sample
    assert torch.allclose(our_loss("task", [one_task], [losses], w, 3), our_loss("token", [one_task], [losses], w, 3))
    assert torch.allclose(
        our_loss("task-sample", [one_task], [losses], w, 3), our_loss("sample", [one_task], [losses], w, 3)
    )
    # equal weights: the plain mean of task means; scaling all weights changes nothing
    multi = make_targets(ROWS, 12)
    l = torch.rand(int(multi.mask.sum()), dtype=torch.float64)
    eq = our_loss("task", [multi], [l], w, 3)
    assert torch.allclose(eq, our_loss("task", [multi], [l], 7 * w, 3))
    # a task absent from the step does not dilute the others
    two = make_targets([[(0, 2)], [(1, 2)]], 6)
    l2 = torch.tensor([1.0, 1.0, 3.0, 3.0], dtype=torch.float64)
    assert our_loss("task", [two], [l2], w, 3).item() == pytest.approx(2.0)


def test_counts():
    t = make_targets(ROWS, 12)
    c = count_targets(t, 3)
    assert c.tokens.tolist() == [10.0, 7.0, 1.0]
    assert c.samples.tolist() == [4.0, 2.0, 1.0]
