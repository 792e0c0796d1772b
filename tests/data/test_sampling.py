"""Task sampling ratios (mft_data.sampling) and packing that keeps copies of a record apart."""

import numpy as np
import pytest
from mft_data.api import StatsConfig, best_fit_decreasing, realised, sample_epoch, stats, task_ratios
from mft_data.cli import app
from typer.testing import CliRunner

pytestmark = pytest.mark.fast


def _records(seed=0, sizes=(30, 50, 7)):
    rng = np.random.default_rng(seed)
    tasks = np.concatenate([np.full(n, t) for t, n in enumerate(sizes)])
    lengths = rng.integers(5, 200, size=len(tasks))
    return tasks, lengths


def test_by_records_gives_requested_counts_and_copies():
    tasks, lengths = _records()
    ratios = np.array([2.0, 0.5, 1.3])
    chosen = sample_epoch(tasks, lengths, ratios, "records", seed=1, epoch=0)
    got = realised(chosen, tasks, lengths, ("a", "b", "c"))
    assert got["a"]["records"] == 60 and got["b"]["records"] == 25 and got["c"]["records"] == round(1.3 * 7)
    counts = np.bincount(chosen, minlength=len(tasks))
    assert (counts[tasks == 0] == 2).all()  # ratio 2: every record exactly twice
    assert set(counts[tasks == 1].tolist()) == {0, 1}  # ratio 0.5: distinct records, half of them
    assert (counts[tasks == 2] >= 1).all() and (counts[tasks == 2] <= 2).all()


def test_by_tokens_within_one_record_of_target():
    tasks, lengths = _records(3)
    ratios = np.array([0.4, 2.7, 1.0])
    for epoch in range(5):
        chosen = sample_epoch(tasks, lengths, ratios, "tokens", seed=7, epoch=epoch)
        for t, r in enumerate(ratios):
            got = lengths[chosen[tasks[chosen] == t]].sum()
            target = r * lengths[tasks == t].sum()
            assert abs(got - target) <= lengths[tasks == t].max() / 2 + 1e-9, (epoch, t, got, target)


def test_deterministic_per_seed_epoch_and_fresh_each_epoch():
    tasks, lengths = _records()
    ratios = np.array([0.5, 0.5, 1.0])
    a = sample_epoch(tasks, lengths, ratios, "records", seed=5, epoch=2)
    assert np.array_equal(a, sample_epoch(tasks, lengths, ratios, "records", seed=5, epoch=2))
    assert not np.array_equal(a, sample_epoch(tasks, lengths, ratios, "records", seed=5, epoch=3))
    assert not np.array_equal(a, sample_epoch(tasks, lengths, ratios, "records", seed=6, epoch=2))
    # one task's ratio does not move another task's draw
    b = sample_epoch(tasks, lengths, np.array([0.5, 0.9, 1.0]), "records", seed=5, epoch=2)
    assert np.array_equal(a[tasks[a] == 0], b[tasks[b] == 0])


def test_ratio_one_keeps_every_record_once_and_zero_drops_the_task():
    tasks, lengths = _records()
    chosen = sample_epoch(tasks, lengths, np.array([1.0, 0.0, 1.0]), "tokens", seed=0, epoch=0)
    assert np.array_equal(chosen, np.flatnonzero(tasks != 1))


def test_task_ratios_errors_and_defaults():
    assert task_ratios(("a", "b"), {"b": 2}).tolist() == [1.0, 2.0]
    with pytest.raises(ValueError, match="unknown tasks: zz"):
        task_ratios(("a",), {"zz": 1})
    with pytest.raises(ValueError, match=">= 0"):
        task_ratios(("a",), {"a": -1})
    with pytest.raises(ValueError, match="empty"):
        task_ratios(("a", "b"), {"a": 0, "b": 0})


def test_packing_never_puts_two_copies_in_one_row():
    rng = np.random.default_rng(0)
    base = rng.integers(1, 60, size=40)
    ids = np.repeat(np.arange(40), 3)  # every record three times, adjacent in the length order
    lengths = base[ids]
    bins = best_fit_decreasing(lengths.tolist(), 128, keys=ids.tolist())
    assert sorted(i for b in bins for i in b) == list(range(len(ids)))
    for b in bins:
        assert sum(lengths[i] for i in b) <= 128
        assert len({ids[i] for i in b}) == len(b)
    # without keys the packer does put copies together (so the constraint is what keeps them apart)
    plain = best_fit_decreasing(lengths.tolist(), 128)
    assert any(len({ids[i] for i in b}) < len(b) for b in plain)


def test_stats_shows_sampled_share(formatted):
    out = stats(StatsConfig(folder=str(formatted), task_sampling=("gen=2", "explain=0.5")))
    s = out["sampling"]["tasks"]
    assert s["gen"]["sampled_records"] == 2 * s["gen"]["records"]
    assert s["explain"]["sampled_records"] == round(0.5 * s["explain"]["records"])
    assert abs(s["gen"]["share"] + s["explain"]["share"] - 1) < 1e-9
    assert s["gen"]["sampled_share"] > s["gen"]["share"]
    res = CliRunner().invoke(app, ["stats", str(formatted), "--sample", "gen=2", "--sample-by", "tokens"])
    assert res.exit_code == 0 and "sampled by tokens" in " ".join(res.output.split()), res.output
    res = CliRunner().invoke(app, ["stats", str(formatted), "--sample", "nosuch=2"])
    assert res.exit_code != 0 and "unknown tasks: nosuch" in res.output
    res = CliRunner().invoke(app, ["stats", str(formatted), "--sample", "gen"])
    assert res.exit_code != 0 and "TASK=RATIO" in res.output
