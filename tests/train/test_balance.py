"""CoBa and self-paced weights, against values computed by hand for small cases."""

import math

import numpy as np
import pytest
from mft_train.balance import BalanceState, coba_step, floor_weights, selfpaced_step, slope, update_weights


def sm(xs):
    e = [math.exp(x) for x in xs]
    return [v / sum(e) for v in e]


def test_slope_is_least_squares():
    assert slope([3.0, 2.0, 1.0]) == pytest.approx(-1.0)
    assert slope([1.0, 1.0]) == 0.0 and slope([5.0]) == 0.0
    ys = [0.3, 0.1, 0.4, 0.1, 0.5]
    assert slope(ys) == pytest.approx(np.polyfit(range(5), ys, 1)[0])


def test_equal_slopes_give_equal_weights():
    hist = np.array([[-1.0, -1.0], [-1.0, -1.0], [-1.0, -1.0]])  # 3 tasks, 2 updates
    w, scores = coba_step(np.array([-1.0, -1.0, -1.0]), hist, np.array([-1.0, -1.0]), tau=5)
    assert w == pytest.approx([1 / 3] * 3)
    assert scores["rcs"] == pytest.approx([1 / 3] * 3) and scores["acs"] == pytest.approx([1 / 3] * 3)


def test_diverging_task_loses_weight():
    # task 0 keeps converging; task 1 converged then started to diverge; the largest slope turned positive
    alphas = np.array([-1.0, 0.5])
    hist = np.array([[-1.0, -1.0, -1.0], [-1.0, -1.0, 0.5]])
    w, scores = coba_step(alphas, hist, np.array([-1.0, -1.0, 0.5]), tau=5)
    # by hand: DF = min(3 * softmax(-5 * 3 * [-1, -1, .5] / 2.5)[-1], 1) = min(3 * softmax([6, 6, -3])[-1], 1)
    df = min(3 * sm([6, 6, -3])[-1], 1)
    assert scores["df"] == pytest.approx(df) and df < 1e-3
    acs = sm([-3 * -1.0 / 3, -3 * 0.5 / 2.5])  # = softmax([1, -0.6])
    rcs = sm([2 * -1.0 / 1.5, 2 * 0.5 / 1.5])
    mix = [df * r + (1 - df) * a for r, a in zip(rcs, acs)]
    assert w == pytest.approx(sm([2 * m for m in mix]))
    assert w[1] < w[0]


def test_slower_task_gains_weight_while_all_converge():
    # both converging, task 1 more slowly: the DF is 1 at the first update, so RCS decides
    w, scores = coba_step(np.array([-1.0, -0.2]), np.array([[-1.0], [-0.2]]), np.array([-0.2]), tau=5)
    assert scores["df"] == 1.0
    assert w == pytest.approx(sm([2 * r for r in sm([2 * -1.0 / 1.2, 2 * -0.2 / 1.2])]))
    assert w[1] > w[0]


def test_floor_holds():
    w = floor_weights(np.array([0.97, 0.02, 0.01]), 1 / 30)
    assert w.sum() == pytest.approx(1.0) and w.min() >= 1 / 30 - 1e-12
    assert floor_weights(np.array([0.5, 0.5]), 0.05).tolist() == [0.5, 0.5]
    # an extreme case through the whole CoBa step: never below 1/(10K)
    w, _ = coba_step(np.array([-50.0, 0.0, 0.0]), np.array([[-50.0], [0.0], [0.0]]), np.array([0.0]), tau=5)
    assert w.min() >= 1 / 30 - 1e-12


def test_selfpaced_by_hand():
    alphas = np.array([-0.3, -0.1])
    s = [2 * -0.3 / 0.4, 2 * -0.1 / 0.4]
    p = sm(s)
    assert selfpaced_step(alphas, 50) == pytest.approx(sm([50 * p[0] * -s[0], 50 * p[1] * -s[1]]))
    assert selfpaced_step(np.zeros(3), 50) == pytest.approx([1 / 3] * 3)


def test_update_weights_warmup_normalisation_and_missing_values():
    state = BalanceState(initial=[2.0, 4.0])
    for losses in ([2.0, 4.0], [1.8, 4.0], [1.6, float("nan")]):
        state.losses.append(losses)
        w = update_weights(state, "coba", history_length=10, warmup=4, tau=5, scale=50)
    assert w == [0.5, 0.5] and not state.task_slopes  # still warming up
    state.losses.append([1.4, 3.8])
    w = update_weights(state, "coba", history_length=10, warmup=4, tau=5, scale=50)
    # normalised: task0 1, .9, .8, .7 (slope -.1); task1 1, 1, -, .95 (fit on the known points at x = 0, 1, 3)
    assert state.task_slopes[-1][0] == pytest.approx(-0.1)
    assert state.task_slopes[-1][1] == pytest.approx(np.polyfit([0, 1, 3], [1.0, 1.0, 0.95], 1)[0])
    assert w[1] > w[0] and sum(w) == pytest.approx(1.0)


def test_coba_training_logs_weights_and_resumes_exactly(llama_base, llama_tok, tmp_path):
    import json
    import shutil

    import torch
    from helpers import train_config
    from mft_train.api import train
    from mft_train.metrics import read_metrics
    from safetensors.torch import load_file

    kw = dict(
        loss_mode="coba",
        max_steps=10,
        save_every=4,
        eval_every=0,
        coba_warmup_steps=3,
        coba_history_length=4,
        lora_dropout=0.0,
        save_limit=5,
        log_every=5,  # weights are logged at every update all the same
    )
    straight = tmp_path / "straight"
    result = train(train_config(llama_base, llama_tok, straight, **kw))
    rows = [r for r in read_metrics(straight / "metrics.jsonl") if r["kind"] == "balance"]
    weights = [r["task_weights"] for r in rows]
    assert [r["step"] for r in rows] == list(range(1, 11))
    assert all(sum(w.values()) == pytest.approx(1.0) for w in weights)
    assert weights[0] == pytest.approx({t: 1 / 3 for t in weights[0]})  # warm-up: equal
    assert weights[-1] != pytest.approx(weights[0])  # then they move
    assert min(min(w.values()) for w in weights) >= 1 / 30 - 1e-9
    assert result.summary["loss_mode"] == "coba"
    assert (straight / "loss_per_task.png").stat().st_size > 5000
    state = json.loads((straight / "checkpoint-8" / "state.json").read_text())["state"]["balance"]
    assert len(state["losses"]) == 8 and len(state["task_slopes"]) == 8 - 3 + 1

    resumed = tmp_path / "resumed"
    shutil.copytree(straight / "checkpoint-4", resumed / "checkpoint-4")
    shutil.copy2(straight / "metrics.jsonl", resumed / "metrics.jsonl")
    train(train_config(llama_base, llama_tok, resumed, resume="auto", **kw))
    a = load_file(str(straight / "adapter" / "adapter_model.safetensors"))
    b = load_file(str(resumed / "adapter" / "adapter_model.safetensors"))
    for name in a:
        assert torch.allclose(a[name], b[name], atol=1e-6), name
    again = [r["task_weights"] for r in read_metrics(resumed / "metrics.jsonl") if r["kind"] == "balance"]
    assert len(again) == len(weights)
    for w1, w2 in zip(weights, again):
        assert w1 == pytest.approx(w2, abs=1e-9)
