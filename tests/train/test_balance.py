"""CoBa and self-paced weights: against values computed by hand for small cases, and against an independent
reference written from the paper's definitions; the valid rows the slopes are measured on stay fixed."""

import math

import numpy as np
import pytest
from mft_train.balance import (
    BalanceState,
    coba_step,
    fixed_valid_rows,
    floor_weights,
    selfpaced_step,
    slope,
    update_weights,
)


def sm(xs):
    e = [math.exp(x) for x in xs]
    return [v / sum(e) for v in e]


@pytest.mark.fast  # pure function: in `make test-fast`; the two training tests here are not
def test_slope_is_least_squares():
    assert slope([3.0, 2.0, 1.0]) == pytest.approx(-1.0)
    assert slope([1.0, 1.0]) == 0.0 and slope([5.0]) == 0.0
    ys = [0.3, 0.1, 0.4, 0.1, 0.5]
    assert slope(ys) == pytest.approx(np.polyfit(range(5), ys, 1)[0])


@pytest.mark.fast
def test_equal_slopes_give_equal_weights():
    hist = np.array([[-1.0, -1.0], [-1.0, -1.0], [-1.0, -1.0]])  # 3 tasks, 2 updates
    w, scores = coba_step(np.array([-1.0, -1.0, -1.0]), hist, np.array([-1.0, -1.0]), tau=5)
    assert w == pytest.approx([1 / 3] * 3)
    assert scores["rcs"] == pytest.approx([1 / 3] * 3) and scores["acs"] == pytest.approx([1 / 3] * 3)


@pytest.mark.fast
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


@pytest.mark.fast
def test_slower_task_gains_weight_while_all_converge():
    # both converging, task 1 more slowly: the DF is 1 at the first update, so RCS decides
    w, scores = coba_step(np.array([-1.0, -0.2]), np.array([[-1.0], [-0.2]]), np.array([-0.2]), tau=5)
    assert scores["df"] == 1.0
    assert w == pytest.approx(sm([2 * r for r in sm([2 * -1.0 / 1.2, 2 * -0.2 / 1.2])]))
    assert w[1] > w[0]


@pytest.mark.fast
def test_floor_holds():
    w = floor_weights(np.array([0.97, 0.02, 0.01]), 1 / 30)
    assert w.sum() == pytest.approx(1.0) and w.min() >= 1 / 30 - 1e-12
    assert floor_weights(np.array([0.5, 0.5]), 0.05).tolist() == [0.5, 0.5]
    # an extreme case through the whole CoBa step: never below 1/(10K)
    w, _ = coba_step(np.array([-50.0, 0.0, 0.0]), np.array([[-50.0], [0.0], [0.0]]), np.array([0.0]), tau=5)
    assert w.min() >= 1 / 30 - 1e-12


@pytest.mark.fast
def test_selfpaced_by_hand():
    alphas = np.array([-0.3, -0.1])
    s = [2 * -0.3 / 0.4, 2 * -0.1 / 0.4]
    p = sm(s)
    assert selfpaced_step(alphas, 50) == pytest.approx(sm([50 * p[0] * -s[0], 50 * p[1] * -s[1]]))
    assert selfpaced_step(np.zeros(3), 50) == pytest.approx([1 / 3] * 3)


@pytest.mark.fast
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
        task_weighting="coba",
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
    assert result.summary["loss"] == "task" and result.summary["task_weighting"] == "coba"
    assert result.summary["loss_mode"] == "coba"  # the old single word, still written for older readers
    assert (straight / "loss_per_task.png").stat().st_size > 5000
    state = json.loads((straight / "checkpoint-8" / "state.json").read_text())["state"]["balance"]
    assert len(state["losses"]) == 8 and len(state["task_slopes"]) == 8 - 3 + 1
    earlier = json.loads((straight / "checkpoint-4" / "state.json").read_text())["state"]["balance"]
    assert state["valid_rows"] and earlier["valid_rows"] == state["valid_rows"]  # one fixed valid set, saved

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


# ---- an independent reference: CoBa from the paper's definitions, in plain Python ------------------------------
# Gong et al. 2024, "CoBa: Convergence Balancer for Multitask Finetuning of LLMs", Sec. 3, for K tasks:
#   L~_i(t) = L_i(t) / L_i(0)                          valid loss normalised by the task's loss before training
#   alpha_i(t) = least-squares slope of L~_i over the last N samples (x = sample index)
#   RCS_i(t) = softmax_i( K alpha_i(t) / sum_j |alpha_j(t)| )
#   ACS_i(t) = softmax_i( -N alpha_i(t) / sum_{s = t-N+1..t} |alpha_i(s)| )        (N: the slopes in that window)
#   alpha_max(t) = max_i alpha_i(t)
#   DF(t) = min( t softmax_s( -tau t alpha_max(s) / sum_{s'=1..t} |alpha_max(s')| )[s = t], 1 )  (t: slopes so far)
#   omega_i(t) = DF(t) RCS_i(t) + (1 - DF(t)) ACS_i(t)
# then, as MFTCoder's code does and the implementation adopts: w = softmax(K omega), lifted to at least 1/(10K).
# Written from these definitions, not from mft_train.balance (no helper of it is used here).


def _ls_slope(ys):
    n = len(ys)
    x_mean = (n - 1) / 2
    y_mean = sum(ys) / n
    num = sum((x - x_mean) * (y - y_mean) for x, y in enumerate(ys))
    den = sum((x - x_mean) ** 2 for x in range(n))
    return num / den


def _reference_coba(initial, losses, n_window, warmup, tau):
    """Per sample: (weights, slopes or None, rcs, acs, df) from the definitions above."""
    k = len(initial)
    ratios = [[sample[i] / initial[i] for i in range(k)] for sample in losses]
    slopes, out = [], []
    for t in range(1, len(ratios) + 1):
        if t < warmup:
            out.append(([1 / k] * k, None, None, None, None))
            continue
        window = ratios[max(0, t - n_window) : t]
        alpha = [_ls_slope([r[i] for r in window]) for i in range(k)]
        slopes.append(alpha)
        rcs = sm([k * a / sum(abs(b) for b in alpha) for a in alpha])
        recent = slopes[-n_window:]
        acs = sm([-len(recent) * alpha[i] / sum(abs(s[i]) for s in recent) for i in range(k)])
        steps = len(slopes)
        a_max = [max(s) for s in slopes]
        df = min(steps * sm([-tau * steps * a / sum(abs(b) for b in a_max) for a in a_max])[-1], 1.0)
        omega = [df * r + (1 - df) * a for r, a in zip(rcs, acs)]
        w = sm([k * o for o in omega])
        floor = 1 / (10 * k)
        if min(w) < floor:
            w = [v * (1 - k * floor) + floor for v in w]
        out.append((w, alpha, rcs, acs, df))
    return out


# normalised losses of three tasks over six samples: A falls 0.1 per sample, B slowly, C falls, flattens and rises
RATIOS = [
    [1.00, 1.00, 1.00],
    [0.90, 0.98, 0.90],
    [0.80, 0.96, 0.85],
    [0.70, 0.90, 0.85],
    [0.60, 0.88, 0.90],
    [0.50, 0.86, 1.00],
]
INITIAL = [2.0, 4.0, 1.0]  # L_i(0): the losses fed in are RATIOS * INITIAL


@pytest.mark.fast
def test_coba_matches_the_papers_definitions_on_a_fixed_history():
    losses = [[r * l0 for r, l0 in zip(row, INITIAL)] for row in RATIOS]
    state = BalanceState(initial=list(INITIAL))
    got = []
    for sample in losses:
        state.losses.append(sample)
        w = update_weights(state, "coba", history_length=4, warmup=3, tau=5.0, scale=50)
        got.append((list(w), dict(state.scores)))
    want = _reference_coba(INITIAL, losses, n_window=4, warmup=3, tau=5.0)

    # the numbers, worked out by hand from the table (windows: samples 1-3, 1-4, 2-5, 3-6)
    slopes = [[-0.1, -0.02, -0.075], [-0.1, -0.032, -0.05], [-0.1, -0.036, 0.0], [-0.1, -0.032, 0.05]]
    assert np.asarray(state.task_slopes) == pytest.approx(np.asarray(slopes))
    assert np.asarray([s for _, s, _, _, _ in want[2:]]) == pytest.approx(np.asarray(slopes))  # the reference too
    # DF: alpha_max = -0.02, -0.032, 0, 0.05 (sums of |.| 0.052 then 0.102); update 1: 1 * softmax([z])[0] = 1;
    # update 2: 2 * softmax([50/13, 80/13])[1] = 1.82, clipped to 1; update 3: 3 * softmax([75/13, 120/13, 0])[2];
    # update 4: 4 * softmax([200/51, 320/51, 0, -500/51])[3]
    e = math.exp
    assert 2 * e(80 / 13) / (e(50 / 13) + e(80 / 13)) > 1.8
    df3 = 3 / (e(75 / 13) + e(120 / 13) + 1)
    df4 = 4 * e(-500 / 51) / (e(200 / 51) + e(320 / 51) + 1 + e(-500 / 51))
    df = [1.0, 1.0, df3, df4]
    assert [s["df"] for _, s in got[2:]] == pytest.approx(df, rel=1e-9)
    assert [d for *_, d in want[2:]] == pytest.approx(df, rel=1e-9)
    # update 4: RCS = softmax(3 * [-0.1, -0.032, 0.05] / 0.182); ACS = softmax(-4 * alpha_i / sum of |alpha_i| over
    # the 4 updates) = softmax([0.4 / 0.4, 0.128 / 0.12, -0.2 / 0.175]) = softmax([1, 16/15, -8/7])
    rcs4, acs4 = sm([-150 / 91, -48 / 91, 75 / 91]), sm([1.0, 16 / 15, -8 / 7])
    assert got[-1][1]["rcs"] == pytest.approx(rcs4) and want[-1][2] == pytest.approx(rcs4)
    assert got[-1][1]["acs"] == pytest.approx(acs4) and want[-1][3] == pytest.approx(acs4)
    # update 1: one slope per task in the ACS window, so ACS is uniform, and DF = 1 lets RCS decide
    assert got[2][1]["acs"] == pytest.approx([1 / 3] * 3)
    assert got[2][1]["rcs"] == pytest.approx(sm([3 * -0.1 / 0.195, 3 * -0.02 / 0.195, 3 * -0.075 / 0.195]))

    # every update's weights, warm-up included, equal the reference's
    for (w, scores), (w_ref, _, rcs, acs, df_ref) in zip(got, want):
        assert w == pytest.approx(w_ref, rel=1e-9)
        if rcs is not None:
            assert scores["rcs"] == pytest.approx(rcs) and scores["acs"] == pytest.approx(acs)
            assert scores["df"] == pytest.approx(df_ref, rel=1e-9)
    # the diverging task C loses weight once DF hands over to ACS; while all converge the slowest (B) gains
    assert got[-1][0][2] < min(got[-1][0][:2])
    assert got[2][0][1] == max(got[2][0])


@pytest.mark.fast
def test_fixed_valid_rows_are_seeded_and_cover_every_task():
    tasks = [{0}] * 8 + [{1}] + [{0, 2}]  # tasks 1 and 2 are in one row each
    rows = fixed_valid_rows(10, 3, 7, lambda i: tasks[i], 3)
    assert rows == sorted(rows) and rows == fixed_valid_rows(10, 3, 7, lambda i: tasks[i], 3)
    assert {8, 9} <= set(rows) and 3 <= len(rows) <= 5  # 3 drawn, plus the rows that bring a missing task
    assert set().union(*(tasks[i] for i in rows)) == {0, 1, 2}
    assert fixed_valid_rows(10, 10, 7, lambda i: tasks[i], 3) == list(range(10))
    one = lambda i: {0}  # noqa: E731
    assert len(fixed_valid_rows(100, 5, 1, one, 1)) == 5
    assert fixed_valid_rows(100, 5, 1, one, 1) != fixed_valid_rows(100, 5, 2, one, 1)


def test_coba_measures_the_rows_of_its_initial_loss_every_time(llama_base, llama_tok, tmp_path):
    """L(0) and every later sample come from the same valid rows: with the model unchanged every sample equals
    L(0) bit for bit, every ratio is exactly 1 and every slope 0 (a different subset per update breaks this)."""
    from types import SimpleNamespace

    from helpers import train_config
    from mft_train.balancer import Balancer, BalanceSettings, row_tasks
    from mft_train.checkpoint import TrainState
    from mft_train.data import load_data
    from mft_train.evaluation import ValidSet
    from transformers import AutoModelForCausalLM, AutoTokenizer

    data = load_data(llama_tok, llama_base, 96)
    kw = dict(task_weighting="coba", micro_batch_size=2, coba_warmup_steps=2, coba_history_length=3)
    cfg = train_config(llama_base, llama_tok, tmp_path, **kw)
    assert len(data.valid) > cfg.micro_batch_size * cfg.coba_sample_valid_num  # so a subset is drawn
    model = AutoModelForCausalLM.from_pretrained(llama_base)
    pad_id = AutoTokenizer.from_pretrained(llama_base).pad_token_id
    parts = SimpleNamespace(task_weights=None)
    valid = ValidSet(
        rows=data.valid, tasks=data.tasks, micro_batch_size=cfg.micro_batch_size, pad_id=pad_id, bf16=False
    )
    logged = []
    state = TrainState()
    balancer = Balancer(
        settings=BalanceSettings.of(cfg),
        valid=valid,
        model=model,
        parts=parts,
        state=state,
        log=SimpleNamespace(log=logged.append),
    )
    rows = balancer.state.valid_rows
    assert state.balance["valid_rows"] == rows  # saved with the checkpoints
    assert set().union(*(row_tasks(data.valid, i) for i in rows)) == set(range(len(data.tasks)))
    for step in range(1, 6):
        state.step = step
        balancer.after_step(state)
    assert balancer.state.losses == [balancer.state.initial] * 5
    assert balancer.state.task_slopes == [[0.0] * 3] * 4
    assert all(r["valid_sample_loss"] == dict(zip(data.tasks, balancer.state.initial)) for r in logged)
