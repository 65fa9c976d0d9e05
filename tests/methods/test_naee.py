"""NAEE equals brute force over all expert subsets, with transformers' own MoE blocks as the reference."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from raymoe.methods import make_plan
from raymoe.methods.common import probe_subset

CASES = [("mixtral", {}, 5), ("qwen2_moe", {}, 6), ("deepseek_v3", {}, 6)]


def brute_losses(hf, x, n):
    """loss(K) = mean_t ||block_K(x_t) - block(x_t)||^2 for every subset K of size n (under group-limited
    routing: every K keeping the same count in each original group, the only ones that route alike)."""
    full = hf.block(x)
    E, g = hf.spec.experts[hf.layer], hf.spec.n_group
    subsets = [K for K in itertools.combinations(range(E), n)
               if len({sum(1 for e in K if e * g // E == j) for j in range(g)}) == 1]
    return {K: float(((hf.block(x, list(K)) - full) ** 2).sum(-1).mean()) for K in subsets}


@pytest.mark.parametrize("family,kw,n", CASES, ids=[c[0] for c in CASES])
def test_exhaustive_equals_brute_force(traced, hf_layer, family, kw, n):
    stats, weights, path = traced(family, **kw)
    l = stats.moe_layers[-1]
    E = stats.layers[l].num_experts
    ratio = 1 - n / E
    plan = make_plan(stats, "naee", ratio, uniform=True, options={"max_tokens": 16}, weights=weights)
    x = probe_subset(stats, l, 16, 0)  # the same probe tokens the method used
    losses = brute_losses(hf_layer(path, l), x, n)
    ranked = sorted(losses.items(), key=lambda kv: kv[1])
    (best, best_loss), (_, second) = ranked[0], ranked[1]
    lp = plan.layer(l)
    assert lp.scores["subset_loss"][0] == pytest.approx(best_loss, rel=1e-4, abs=1e-7)
    if second - best_loss > 1e-6 * max(best_loss, 1e-9):
        assert lp.keep == list(best)
    if family != "deepseek_v3":  # single removals (size E-1) are exact without group-limited routing
        hf = hf_layer(path, l)
        for e in range(E):
            rest = [i for i in range(E) if i != e]
            ref = float(((hf.block(x, rest) - hf.block(x)) ** 2).sum(-1).mean())
            assert lp.scores["loss_without"][e] == pytest.approx(ref, rel=1e-4, abs=1e-7)


def test_greedy_backward_elimination(traced, hf_layer):
    """With exhaustive search off, each greedy step drops the expert whose removal hurts least."""
    stats, weights, path = traced("mixtral")
    l = stats.moe_layers[0]
    plan = make_plan(stats, "naee", 0.5, uniform=True, weights=weights,
                     options={"max_tokens": 16, "max_subsets": 1, "eliminate_frac": 0.0})
    hf = hf_layer(path, l)
    x = probe_subset(stats, l, 16, 0)
    full = hf.block(x)
    rank = np.asarray(plan.layer(l).scores["elimination_rank"])
    keep = list(range(8))
    for step in range(1, 5):
        losses = {e: float(((hf.block(x, [i for i in keep if i != e]) - full) ** 2).sum(-1).mean()) for e in keep}
        drop = min(losses, key=lambda e: (losses[e], e))
        assert rank[drop] == step
        keep.remove(drop)
    assert plan.layer(l).keep == keep
    ref = float(((hf.block(x, keep) - full) ** 2).sum(-1).mean())
    assert plan.layer(l).scores["subset_loss"][0] == pytest.approx(ref, rel=1e-4, abs=1e-7)


def test_naee_without_weights_fails_clearly(traced):
    from raymoe.methods.common import StatsError

    stats, _, _ = traced("mixtral")
    model = stats.manifest.model.model_copy(update={"path": "/nonexistent"})
    broken = type(stats)(manifest=stats.manifest.model_copy(update={"model": model}),
                         layers=stats.layers, num_clusters=stats.num_clusters)
    with pytest.raises(StatsError, match="needs the expert weights"):
        make_plan(broken, "naee", 0.5)


def test_greedy_keeps_groups_balanced(traced, hf_layer):
    """Group-limited greedy: every round drops the same number from each original group, the lowest
    single-removal losses within it; the result is balanced and its loss is the block's."""
    stats, weights, path = traced("deepseek_v3", experts=16)
    plan = make_plan(stats, "naee", 0.5, weights=weights,
                     options={"max_tokens": 16, "max_subsets": 1, "eliminate_frac": 0.0})
    for lp in plan.layers:
        per = [sum(1 for e in lp.keep if e // 8 == j) for j in range(2)]
        assert per[0] == per[1], (lp.layer, lp.keep)
        rank = np.asarray(lp.scores["elimination_rank"])
        if len(lp.keep) < 16:  # rounds drop one per group: the two groups alternate in elimination steps
            steps = sorted((r, e // 8) for e, r in enumerate(rank) if r > 0)
            for a, b in zip(steps[::2], steps[1::2]):
                assert {a[1], b[1]} == {0, 1}
    l = stats.moe_layers[-1]
    x = probe_subset(stats, l, 16, 0)
    hf = hf_layer(path, l)
    ref = float(((hf.block(x, plan.layer(l).keep) - hf.block(x)) ** 2).sum(-1).mean())
    assert plan.layer(l).scores["subset_loss"][0] == pytest.approx(ref, rel=1e-4, abs=1e-7)
