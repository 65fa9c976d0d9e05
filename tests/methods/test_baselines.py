"""Baselines: scores equal a per-token re-computation of their formulas with transformers' own routers."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from raymoe.methods import make_plan
from raymoe.methods.common import per_layer_share

from methods_ref import brute_scores

FAMILIES = [("mixtral", {}), ("qwen2_moe", {}), ("deepseek_v3", {"experts": 16})]


@pytest.mark.parametrize("family,kw", FAMILIES, ids=[f for f, _ in FAMILIES])
def test_scores_equal_per_token_formulas(traced, hf_layer, family, kw):
    stats, _, path = traced(family, **kw)
    plans = {m: make_plan(stats, m, 0.5, uniform=True) for m in ("frequency", "soft-count", "ean", "reap")}
    for l in stats.moe_layers:
        x = torch.as_tensor(stats.extra["inputs"][l])  # [T, H] the states the stats were taken on
        ref = brute_scores(x, hf_layer(path, l), family)
        for m, plan in plans.items():
            got = np.asarray(plan.layer(l).scores["score"])
            np.testing.assert_allclose(got, ref[m], rtol=2e-4, atol=1e-6, err_msg=f"{m} layer {l}")
            n, e = len(plan.layer(l).keep), len(got)
            g = 2 if family == "deepseek_v3" else 1  # the tiny DeepSeek-V3 routes over 2 groups
            want = []  # the top n/g of each original group (one group: top-n), highest first, ties by index
            for j in range(g):
                part = ref[m][j * e // g:(j + 1) * e // g]
                order = np.lexsort((np.arange(len(part)), -part))
                want += [j * e // g + int(i) for i in order[:n // g]]
            assert plan.layer(l).keep == sorted(want), f"{m} layer {l} keeps the wrong experts"


def test_random_is_seeded_uniform_draws(traced):
    stats, _, _ = traced("mixtral")
    a = make_plan(stats, "random", 0.5, uniform=True, options={"seed": 3})
    b = make_plan(stats, "random", 0.5, uniform=True, options={"seed": 3})
    c = make_plan(stats, "random", 0.5, uniform=True, options={"seed": 4})
    assert [lp.keep for lp in a.layers] == [lp.keep for lp in b.layers]
    assert [lp.keep for lp in a.layers] != [lp.keep for lp in c.layers]
    for lp in a.layers:
        ref = np.random.default_rng([3, lp.layer]).random(lp.num_experts)
        np.testing.assert_allclose(lp.scores["score"], ref)


@pytest.mark.parametrize("method", ["frequency", "soft-count", "ean", "reap", "random"])
def test_global_allocation_ranks_normalised_scores_across_layers(traced, method):
    """Global mode: no swap of a kept and a dropped expert (in a layer above its floor) raises the
    total of per-layer normalised scores, and the kept total is the budget."""
    stats, _, _ = traced("mixtral")
    plan = make_plan(stats, method, 0.5)
    total = sum(s.num_experts for s in stats.layers.values())
    assert sum(plan.counts().values()) == round(0.5 * total)
    k = stats.layers[stats.moe_layers[0]].top_k
    kept_vals, dropped_vals = [], []
    for lp in plan.layers:
        share = per_layer_share(np.asarray(lp.scores["score"]))
        np.testing.assert_allclose(lp.scores["share"], share)
        dropped_vals += [share[e] for e in range(lp.num_experts) if e not in lp.keep]
        if len(lp.keep) > k:  # only layers above the floor could give one up
            kept_vals += [share[e] for e in lp.keep]
        assert len(lp.keep) >= k
    if kept_vals and dropped_vals:
        assert min(kept_vals) >= max(dropped_vals) - 1e-12
