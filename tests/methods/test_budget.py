"""Budget allocation shared by every method: counts, floors, group divisibility, clear errors."""

from __future__ import annotations

import math

import numpy as np
import pytest

from raymoe.methods.budget import Budget, BudgetError, integerize


def half_up(x):
    return math.floor(x + 0.5)


@pytest.mark.parametrize("ratio", [0.1, 0.25, 0.5, 0.6, 0.75])
def test_uniform_and_global_totals(ratio):
    experts = {1: 8, 2: 8, 3: 8, 5: 8}
    u = Budget.create(ratio, experts, 2, uniform=True)
    assert u.uniform_counts() == {l: half_up((1 - ratio) * 8) for l in experts}
    g = Budget.create(ratio, experts, 2)
    assert g.total == half_up((1 - ratio) * 32)


def test_deepseek_v3_counts_are_multiples_of_n_group():
    experts = {l: 256 for l in range(3, 61)}
    rng = np.random.default_rng(0)
    for ratio in (0.2, 0.37, 0.5, 0.81):
        b = Budget.create(ratio, experts, 8, n_group=8, min_kept=16)
        assert b.total % 8 == 0 and abs(b.total - (1 - ratio) * 256 * 58) <= 4
        counts = b.counts_from_scores({l: rng.random(256) for l in experts})
        b.check_counts(counts)
        assert all(n % 8 == 0 and 16 <= n <= 256 for n in counts.values())
        targets = {l: (1 - ratio) * 256 * (0.5 + rng.random()) for l in experts}
        b.check_counts(b.counts_from_targets(targets))


def test_counts_from_scores_is_the_best_global_choice():
    """Floors first, then the best remaining scores across layers: no exchange improves the kept total."""
    rng = np.random.default_rng(1)
    experts = {0: 6, 1: 9, 2: 12}
    scores = {l: rng.random(e) ** 3 for l, e in experts.items()}
    b = Budget.create(0.5, experts, 2)
    counts = b.counts_from_scores(scores)
    b.check_counts(counts)
    kept = [v for l in experts for v in np.sort(scores[l])[::-1][:counts[l]][2:]]  # above-floor kept values
    dropped = [v for l in experts for v in np.sort(scores[l])[::-1][counts[l]:]]
    assert min(kept) >= max(dropped)


def test_integerize_matches_targets():
    t = {0: 3.4, 1: 3.3, 2: 5.3}
    assert integerize(t, {0: 2, 1: 2, 2: 2}, {0: 8, 1: 8, 2: 8}, 12) == {0: 4, 1: 3, 2: 5}
    assert integerize({0: 1.0, 1: 7.0}, {0: 2, 1: 2}, {0: 8, 1: 8}, 8) == {0: 2, 1: 6}  # floors first


@pytest.mark.parametrize("ratio", [0.0, 1.0, -0.2, 1.5, float("nan"), "half"])
def test_ratio_outside_open_interval(ratio):
    with pytest.raises(BudgetError, match="ratio must be"):
        Budget.create(ratio, {0: 8}, 2)


def test_ratio_leaving_fewer_than_top_k():
    with pytest.raises(BudgetError, match=r"leaves 1 of 8 experts in layer 0, fewer than top_k=2"):
        Budget.create(0.9, {0: 8, 1: 8}, 2, uniform=True)
    with pytest.raises(BudgetError, match=r"fewer than top_k=2 per layer \(at least 4 needed"):
        Budget.create(0.9, {0: 8, 1: 8}, 2)
    with pytest.raises(BudgetError, match="group-limited routing needs 2 per group"):
        Budget.create(0.75, {1: 8, 2: 8}, 2, uniform=True, n_group=2, min_kept=4)
    Budget.create(0.75, {0: 8, 1: 8}, 2, uniform=True)  # exactly top_k is fine
