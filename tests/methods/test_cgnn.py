"""C-GNN-PRUNE: entropy-guided allocation, communities near the target count, seeded determinism.

The graph (positive PMI, functional features), the selection rule, the ablation switches and group
balance: tests/methods/test_cgnn_modules.py."""

from __future__ import annotations

import numpy as np
import pytest

from raymoe.methods import budget_for, make_plan
from raymoe.methods.cgnn import entropy_targets
from raymoe.store.calib_stats import CalibStats, LayerStats

E, K, H, T = 16, 2, 8, 4000


def constructed_stats(usages: list[np.ndarray], blocks: int = 4, seed: int = 0) -> CalibStats:
    """Layers with given usage distributions; experts in `blocks` functional groups (similar outputs,
    co-activated together)."""
    from raymoe.testing.tiny import tiny_config

    g = np.random.default_rng(seed)
    block = np.arange(E) % blocks
    same = (block[:, None] == block[None, :]).astype(float)
    layers = {}
    for l, u in enumerate(usages):
        s = LayerStats(l, E, K, tokens=T, probe_tokens=10.0)
        s.counts = u / u.sum() * T * K
        s.prob_mass = u / u.sum() * T
        s.act_norm_sum = s.counts * (1 + 0.1 * g.random(E))
        s.reap_sum = s.act_norm_sum * 0.5
        s.gate_mass = s.counts * 0.5
        s.loo_err_sum = g.random(E)
        s.coact = np.outer(s.counts, s.counts) / (T * K) * (0.2 + 1.6 * same)
        np.fill_diagonal(s.coact, s.counts)
        s.probe_cos_sum = 10.0 * (0.9 * same + 0.05 * g.random((E, E)))
        s.probe_cos_sum = (s.probe_cos_sum + s.probe_cos_sum.T) / 2
        np.fill_diagonal(s.probe_cos_sum, 10.0)
        centers = g.standard_normal((blocks, H))
        s.mean_output_sum = 10.0 * (centers[block] + 0.1 * g.standard_normal((E, H)))
        layers[l] = s
    cfg = tiny_config("mixtral", layers=len(usages), experts=E, top_k=K).to_dict()
    return CalibStats(manifest={"model": {"path": "", "config": cfg}}, layers=layers, num_clusters=1)


def test_lower_entropy_layers_lose_more():
    g = np.random.default_rng(1)
    usages = [np.ones(E), g.random(E) + 0.5, np.exp(2 * g.standard_normal(E)), np.exp(4 * g.standard_normal(E))]
    stats = constructed_stats(usages)
    H_l = np.array([stats.layers[l].entropy for l in stats.moe_layers])
    assert H_l[0] == pytest.approx(1.0) and np.all(np.diff(H_l) < 0)  # entropy falls layer by layer
    for ratio in (0.25, 0.5, 0.75):
        budget = budget_for(stats, ratio)
        targets = entropy_targets(stats, budget, alpha=1.0, eps=0.05)
        assert sum(targets.values()) == pytest.approx(budget.total)
        # removal share proportional to (1 - H + eps) where not clipped at the floor
        removal = np.array([E - targets[l] for l in stats.moe_layers]) / E
        free = np.array([targets[l] > budget.floor + 1e-9 for l in stats.moe_layers])
        w = 1 - H_l + 0.05
        if free.sum() >= 2:
            np.testing.assert_allclose(removal[free] / w[free], (removal[free] / w[free])[0], rtol=1e-6)
        plan = make_plan(stats, "c-gnn-prune", ratio, options={"epochs": 20})
        removed = np.array([E - len(lp.keep) for lp in plan.layers])
        assert sum(plan.counts().values()) == budget.total
        assert np.all(np.diff(removed) >= 0), (ratio, removed)  # lower entropy -> at least as many removed
        assert removed[-1] > removed[0]


def test_communities_match_blocks_and_keep_best_of_each():
    g = np.random.default_rng(2)
    stats = constructed_stats([g.random(E) + 0.5 for _ in range(3)], blocks=4)
    plan = make_plan(stats, "c-gnn-prune", 0.5, uniform=True, options={"epochs": 50})  # keep 8 of 16
    block = np.arange(E) % 4
    for lp in plan.layers:
        labels = np.asarray(lp.scores["community"]).astype(int)
        assert len(set(labels)) == 4  # the target ceil(0.5 * 8)
        for c in set(labels):  # communities are the constructed blocks
            assert len(set(block[labels == c])) == 1
        imp = np.asarray(lp.scores["importance"])
        s = stats.layers[lp.layer]
        np.testing.assert_allclose(imp, s.reap * s.counts / s.counts.sum())
        reps = {int(max(np.flatnonzero(block == b), key=lambda e: imp[e])) for b in range(4)}
        rest = sorted(set(range(E)) - reps, key=lambda e: -imp[e])[:4]  # the fill: most important of the rest
        assert lp.keep == sorted(reps | set(rest))


def test_community_count_close_to_target_and_deterministic(traced):
    from raymoe.methods.cgnn_select import community_target

    stats, _, _ = traced("mixtral", experts=16, layers=3)
    a = make_plan(stats, "c-gnn-prune", 0.5, options={"seed": 5, "epochs": 30})
    b = make_plan(stats, "c-gnn-prune", 0.5, options={"seed": 5, "epochs": 30})
    assert [lp.model_dump() for lp in a.layers] == [lp.model_dump() for lp in b.layers]
    for lp in a.layers:
        target = community_target(len(lp.keep), 0.5)
        count = len(set(lp.scores["community"]))
        assert abs(count - target) <= max(1, round(0.25 * target)), (lp.layer, count, target)
