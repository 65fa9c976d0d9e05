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


def _balanced_ref(scores: np.ndarray, n: int, g: int) -> list[int]:
    """Top n/g of each of the g contiguous groups by score (ties: lower index), written out directly."""
    size, out = len(scores) // g, []
    for j in range(g):
        ranked = sorted(range(j * size, (j + 1) * size), key=lambda i: (-scores[i], i))
        out += ranked[: n // g]
    return sorted(out)


def test_keep_balanced_keeps_the_top_of_every_group():
    from raymoe.methods.common import keep_balanced, top_n

    rng = np.random.default_rng(2)
    for e, g, n in [(8, 2, 4), (16, 4, 12), (256, 8, 16), (256, 8, 200), (12, 3, 3)]:
        s = rng.random(e) ** 4
        s[: e // 2] *= 3  # the first groups dominate: plain top-n would be unbalanced
        assert keep_balanced(s, n, g) == _balanced_ref(s, n, g)
    s = np.array([1.0, 1.0, 0.5, 0.5, 2.0, 0.1])
    assert keep_balanced(s, 2, 2) == [0, 4] and keep_balanced(s, 4, 1) == top_n(s, 4) == [0, 1, 2, 4]
    with pytest.raises(AssertionError):
        keep_balanced(s, 3, 2)


@pytest.mark.parametrize("uniform", [True, False])
def test_group_limited_allocation_is_balanced_and_best(uniform):
    """Global mode with groups: counts are multiples of g at or above the per-group floor, and the
    balanced kept sets are the best choice in units of one expert per group (no unit exchange helps)."""
    from raymoe.methods.common import keep_balanced

    rng = np.random.default_rng(3)
    g, floor = 4, 8  # DeepSeek-V2-like: top-3 over 2 of 4 groups -> 2 per group
    experts = {1: 16, 2: 16, 3: 16, 4: 16}
    scores = {l: rng.random(16) ** (1 + l) for l in experts}
    b = Budget.create(0.3, experts, 3, uniform=uniform, n_group=g, min_kept=floor)
    counts = b.counts_from_scores(scores)
    b.check_counts(counts)
    assert all(n % g == 0 and n >= floor for n in counts.values())
    if uniform:
        assert set(counts.values()) == {12}  # 0.7 * 16 = 11.2 -> 12, the nearest multiple of 4
        return
    kept_units, dropped_units = [], []
    for l, n in counts.items():
        s = -np.sort(-scores[l].reshape(g, 4), axis=1)  # [g, 4] per group, descending
        units = s.mean(axis=0)  # unit i: the i-th best of every group
        kept_units += list(units[floor // g:n // g])
        dropped_units += list(units[n // g:])
        keep = keep_balanced(scores[l], n, g)
        assert [sum(1 for e in keep if e // 4 == j) for j in range(g)] == [n // g] * g
    assert min(kept_units) >= max(dropped_units)


def test_group_floor_message_names_the_per_group_need():
    with pytest.raises(BudgetError, match=r"fewer than 8 \(top_k=3; group-limited routing needs 2 per group, "
                                          r"n_group=4\)"):
        Budget.create(0.7, {1: 16, 2: 16}, 3, uniform=True, n_group=4, min_kept=8)


def test_deepseek_v2_group_limited_budget_from_spec():
    """DeepSeek-V2 (160 experts, top-6 over the top-3 of 8 groups): floor 2 per group = 16 per layer."""
    from raymoe.moe import MoeModelSpec

    cfg = {"model_type": "deepseek_v2", "num_hidden_layers": 4, "first_k_dense_replace": 1, "hidden_size": 8,
           "moe_intermediate_size": 4, "n_routed_experts": 160, "num_experts_per_tok": 6, "n_group": 8,
           "topk_group": 3, "topk_method": "group_limited_greedy"}
    spec = MoeModelSpec.from_config(cfg)
    b = Budget.for_spec(spec, 0.9, uniform=True)  # 16 of 160: exactly the floor
    assert b.floor == 16 and b.uniform_counts() == {1: 16, 2: 16, 3: 16}
    g = Budget.for_spec(spec, 0.8)
    counts = g.counts_from_scores({l: np.random.default_rng(l).random(160) for l in spec.moe_layers})
    g.check_counts(counts)
    assert all(n % 8 == 0 and n >= 16 for n in counts.values())
    with pytest.raises(BudgetError, match=r"leaves 8 of 160 experts in layer 1, fewer than 16 \(top_k=6; "
                                          r"group-limited routing needs 2 per group, n_group=8\)"):
        Budget.for_spec(spec, 0.95, uniform=True)
    greedy = MoeModelSpec.from_config(cfg | {"topk_method": "greedy"})
    assert Budget.for_spec(greedy, 0.95, uniform=True).uniform_counts() == {1: 8, 2: 8, 3: 8}
