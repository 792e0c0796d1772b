"""Convergence balancing: task weights from how fast each task's validation loss falls. Pure functions.

Two schemes, both fed by per-task validation losses measured every ``update_interval`` optimizer steps on one
fixed set of valid rows (:func:`fixed_valid_rows`, chosen once with the run's seed): ``L_i(0)`` and every later
sample come from the same records, so the ratios and slopes compare like with like (a ratio moves only when the
model does, not because another subset was drawn).

``coba`` (CoBa, Gong et al., EMNLP 2024). With ``L̃_i(t) = L_i(t) / L_i(0)`` the validation loss of task i
normalised by its initial value and ``α_i(t)`` the least-squares slope of ``L̃_i`` over the last
``history_length`` samples, for K tasks:

    RCS_i(t) = softmax_i( K · α_i(t) / Σ_j |α_j(t)| )                 relative convergence: slower tasks up
    ACS_i(t) = softmax_i( -n · α_i(t) / Σ_{s in last n} |α_i(s)| )     absolute convergence: diverging tasks down
    DF(t)    = min( T · softmax_s( -τ · T · α_max(s) / Σ_s |α_max(s)| )[t], 1 ),  α_max(s) = max_i α_i(s)
    w(t)     = softmax( K · (DF · RCS + (1 - DF) · ACS) ),  floored at 1/(10K)

where n is the number of slopes in the ACS window (at most ``history_length``) and T the number of slopes so far.
Equal weights are used until ``warmup`` samples exist.

Where MFTCoder's implementation (utils/loss_utils.py, CoBaStatus) departs from the paper we follow the paper:
- its ACS window slices the slope list with a start index counted from step 0 although the list starts at the
  warm-up step, so it keeps H - W + 1 slopes instead of H: we keep the last ``history_length`` slopes;
- its DF has no ``min(·, 1)``, so DF can exceed 1 and make ``1 - DF`` negative: we clip as the paper does;
- its DF fits the slope of the per-step maximum loss; the paper takes the maximum of the task slopes: we do.

``selfpaced`` (MFTCoder's earlier self-paced loss, on raw, unnormalised validation losses):

    s_i = K · α_i / Σ_j |α_j|,   score_i = softmax(s)_i · (-s_i),   w = softmax(λ · score)
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np


def slope(values: list[float], xs: list[float] | None = None) -> float:
    """Least-squares slope of ``values`` against ``xs`` (default 0, 1, 2, ...); 0.0 for fewer than two points."""
    if len(values) < 2:
        return 0.0
    x = np.asarray(xs if xs is not None else range(len(values)), dtype=np.float64)
    y = np.asarray(values, dtype=np.float64)
    x = x - x.mean()
    return float((x * (y - y.mean())).sum() / (x * x).sum())


def softmax(z: np.ndarray) -> np.ndarray:
    z = np.asarray(z, dtype=np.float64)
    e = np.exp(z - z.max())
    return e / e.sum()


def _normalised(alphas: np.ndarray, scale: float) -> np.ndarray:
    total = np.abs(alphas).sum()
    return np.zeros_like(alphas) if total == 0 else scale * alphas / total


def floor_weights(w: np.ndarray, floor: float) -> np.ndarray:
    """Lift every weight to at least ``floor`` keeping the sum 1: ``w (1 - K·floor) + floor`` when one is below."""
    if (w < floor).any():
        w = w * (1 - len(w) * floor) + floor
    return w


def coba_step(
    alphas: np.ndarray, task_slope_history: np.ndarray, max_slope_history: np.ndarray, tau: float
) -> tuple[np.ndarray, dict]:
    """CoBa weights from the current slopes and the slope histories (both ending with the current slopes).

    Args:
        alphas: [K] current slopes ``α_i(t)``.
        task_slope_history: [K, n] each task's last n slopes (the ACS window), the last column is ``alphas``.
        max_slope_history: [T] ``α_max(s)`` for every update so far, the last entry is ``max(alphas)``.
        tau: DF temperature.

    Returns:
        weights [K] and the intermediate scores (RCS, ACS, DF) for logging.
    """
    k = len(alphas)
    rcs = softmax(_normalised(alphas, k))
    n = task_slope_history.shape[1]
    denom = np.abs(task_slope_history).sum(axis=1)
    acs = softmax(np.where(denom > 0, -n * alphas / np.where(denom > 0, denom, 1.0), 0.0))
    t = len(max_slope_history)
    df = min(t * softmax(-tau * _normalised(max_slope_history, t))[-1], 1.0)
    weights = floor_weights(softmax(k * (df * rcs + (1 - df) * acs)), 1 / (10 * k))
    return weights, {"rcs": rcs.tolist(), "acs": acs.tolist(), "df": float(df)}


def selfpaced_step(alphas: np.ndarray, scale: float) -> np.ndarray:
    """MFTCoder's self-paced weights from the current slopes."""
    k = len(alphas)
    if np.abs(alphas).sum() == 0:
        return np.full(k, 1.0 / k)
    s = _normalised(alphas, k)
    return softmax(scale * softmax(s) * (-s))


def fixed_valid_rows(n_rows: int, size: int, seed: int, tasks_of: Callable[[int], set[int]], n_tasks: int) -> list[int]:
    """The valid rows every balancing sample is measured on, chosen once (sorted).

    The first ``size`` rows of a permutation drawn with ``seed`` (numpy's own generator: the global RNG streams the
    training relies on are left alone), plus, while some task is in none of them, the next rows of the
    permutation that bring a missing task (``tasks_of(i)``: the tasks with supervised targets in row i), so each
    task with valid records is measured.
    """
    order = np.random.default_rng(seed).permutation(n_rows).tolist()
    chosen = order[:size]
    covered: set[int] = set()
    for i in chosen:
        covered |= tasks_of(i)
    for i in order[size:]:
        if len(covered) >= n_tasks:
            break
        new = tasks_of(i) - covered
        if new:
            chosen.append(i)
            covered |= new
    return sorted(chosen)


@dataclass
class BalanceState:
    """Everything the weights depend on; saved in checkpoints so a resumed run continues identically."""

    valid_rows: list[int] | None = None  # the fixed valid rows of L_i(0) and of every sample (fixed_valid_rows)
    initial: list[float] | None = None  # L_i(0), for CoBa's normalisation
    losses: list[list[float]] = field(default_factory=list)  # per sample: [K] validation losses
    task_slopes: list[list[float]] = field(default_factory=list)  # per update after warm-up: [K] slopes
    weights: list[float] | None = None
    scores: dict = field(default_factory=dict)


def _fit(column: np.ndarray) -> float:
    """Slope over the known points at their own positions (a task missing from a sample leaves a gap)."""
    known = [(x, v) for x, v in enumerate(column) if not math.isnan(v)]
    return slope([v for _, v in known], [x for x, _ in known])


def update_weights(
    state: BalanceState, scheme: str, history_length: int, warmup: int, tau: float, scale: float
) -> list[float]:
    """Append the slopes of the latest sample's window and return the new weights (equal during warm-up).

    ``scheme`` is ``coba`` or ``selfpaced``; ``state.losses`` must already hold the newest sample. Missing values
    (a task absent from the sampled valid batches) are NaN and are skipped in that task's fit.
    """
    k = len(state.losses[-1])
    if len(state.losses) < max(warmup, 2):
        state.weights = [1.0 / k] * k
        return state.weights
    window = np.asarray(state.losses[-history_length:], dtype=np.float64)  # [n, K]
    if scheme == "coba":
        window = window / np.asarray(state.initial, dtype=np.float64)
    alphas = np.asarray([_fit(window[:, i]) for i in range(k)])
    state.task_slopes.append(alphas.tolist())
    if scheme == "selfpaced":
        weights = selfpaced_step(alphas, scale)
        state.scores = {}
    else:
        slopes = np.asarray(state.task_slopes, dtype=np.float64)  # [T, K]
        weights, state.scores = coba_step(alphas, slopes[-history_length:].T, slopes.max(axis=1), tau)
    state.weights = weights.tolist()
    return state.weights
