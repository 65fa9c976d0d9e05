"""Pathfinder: top-m dynamic programming equals brute-force path enumeration; frequencies and heatmap."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from raymoe.methods import make_plan
from raymoe.methods.common import per_layer_share
from raymoe.methods.heatmap import save_heatmap, score_matrix
from raymoe.methods.pathfinder import top_paths


def enumerate_paths(nodes, edges):
    """Every path's score, best first: [(score, path)]."""
    out = []
    for path in itertools.product(*[range(len(n)) for n in nodes]):
        s = sum(nodes[l][e] for l, e in enumerate(path)) + sum(edges[l][path[l], path[l + 1]]
                                                              for l in range(len(path) - 1))
        out.append((s, path))
    return sorted(out, key=lambda sp: -sp[0])


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("m", [1, 3, 10, 1000])
def test_top_m_paths_equal_brute_force(seed, m):
    g = np.random.default_rng(seed)
    sizes = g.integers(2, 6, size=g.integers(2, 6))  # 2..5 layers of 2..5 experts
    nodes = [np.log(g.random(n)) for n in sizes]
    edges = [np.log(g.random((a, b))) for a, b in zip(sizes[:-1], sizes[1:])]
    scores, paths = top_paths(nodes, edges, m)
    ref = enumerate_paths(nodes, edges)[:m]
    assert len(scores) == len(ref) == min(m, int(np.prod(sizes)))
    np.testing.assert_allclose(scores, [s for s, _ in ref], rtol=1e-12)
    assert [tuple(p) for p in paths] == [p for _, p in ref]


def test_batched_best_paths_equal_brute_force():
    import torch

    from raymoe.methods.pathfinder import best_paths

    g = np.random.default_rng(0)
    sizes, K = [3, 5, 4, 2], 6
    nodes = [np.log(g.random((K, n))) for n in sizes]
    edges = [np.log(g.random((K, a, b))) for a, b in zip(sizes[:-1], sizes[1:])]
    scores, paths = best_paths([torch.as_tensor(n) for n in nodes],
                               [torch.as_tensor(e.transpose(0, 2, 1).copy()) for e in edges])
    for c in range(K):
        s, p = enumerate_paths([n[c] for n in nodes], [e[c] for e in edges])[0]
        assert tuple(paths[c]) == p and abs(scores[c] - s) < 1e-9


def reference_search(stats, budget, diversity=1.0, eps=1e-9):
    """The diversified search written out: node and edge weights from the stats, every path enumerated."""
    from raymoe.methods.common import keep_balanced

    layers = stats.moe_layers
    nodes = []
    for l in layers:
        s = stats.layers[l]
        z = (s.loo_err - s.loo_err.mean()) / (s.loo_err.std() + 1e-12)
        soft = np.exp(z) / np.exp(z).sum()
        nodes.append(np.log(soft * (s.prob_mass / s.prob_mass.sum()) * (s.act_norm / s.act_norm.sum()) + eps))
    K = stats.num_clusters
    edges = [[np.log(stats.layers[l].trans_routed_by_cluster[c] / stats.layers[l].trans_routed_by_cluster[c].sum()
                     + eps) for l in layers[:-1]] for c in range(K)]
    freq = [np.zeros(len(n)) for n in nodes]
    used = [[np.zeros(len(n)) for n in nodes] for _ in range(K)]
    for rounds in range(1, 10000):
        for c in range(K):
            _, path = enumerate_paths([n - diversity * u for n, u in zip(nodes, used[c])], edges[c])[0]
            for j, e in enumerate(path):
                freq[j][e] += 1
                used[c][j][e] += 1
        prio = {l: freq[j] + 0.5 * np.exp(nodes[j]) / np.exp(nodes[j]).sum() for j, l in enumerate(layers)}
        counts = budget.counts_from_scores(prio)
        keep = {l: keep_balanced(prio[l], counts[l], budget.n_group) for l in layers}
        if all(freq[j][keep[l]].min() > 0 for j, l in enumerate(layers)):
            return freq, keep, rounds


@pytest.mark.parametrize("uniform", [True, False])
def test_search_equals_brute_force_and_heatmap_saved(traced, tmp_path, uniform):
    from raymoe.methods import budget_for

    stats, _, _ = traced("mixtral")  # 4 MoE layers x 8 experts: 4096 paths per cluster
    plan = make_plan(stats, "pathfinder", 0.5, uniform=uniform)
    freq, keep, rounds = reference_search(stats, budget_for(stats, 0.5, uniform))
    for j, lp in enumerate(plan.layers):
        np.testing.assert_array_equal(lp.scores["path_freq"], freq[j])
        assert lp.keep == keep[lp.layer]
        assert lp.scores["search_rounds"][0] == rounds
        assert sum(lp.scores["path_freq"]) == rounds * stats.num_clusters  # one expert per layer per path
    npy, png = save_heatmap(plan, "path_freq", tmp_path / "pathfinder_heatmap")
    assert png.stat().st_size > 1000 and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    mat = np.load(npy)
    assert mat.shape == (4, 8)
    np.testing.assert_array_equal(mat, score_matrix(plan, "path_freq"))


def node_weight_plan(stats, ratio, uniform):
    """Keep by node weight alone (what the path search must not reduce to)."""
    from raymoe.methods import budget_for
    from raymoe.methods.common import keep_balanced
    from raymoe.methods.pathfinder import node_log_weights

    budget = budget_for(stats, ratio, uniform)
    nodes = node_log_weights(stats, 1.0, 1e-9)
    share = {l: per_layer_share(np.exp(v - v.max())) for l, v in nodes.items()}
    counts = budget.counts_from_scores(share)
    return {l: keep_balanced(share[l], counts[l], budget.n_group) for l in nodes}


def frequency_decided(plan, n_group: int = 1) -> float:
    """Share of kept slots whose path frequency is above every removed expert's of the same layer
    (of the same original group, for group-limited routers, where the selection is per group)."""
    decided = kept = 0
    for lp in plan.layers:
        f = np.asarray(lp.scores["path_freq"])
        size = lp.num_experts // n_group
        for g in range(n_group):
            members = np.arange(g * size, (g + 1) * size)
            kept_g = np.intersect1d(members, lp.keep)
            removed = np.setdiff1d(members, lp.keep)
            top_removed = f[removed].max() if len(removed) else -1
            decided += int((f[kept_g] > top_removed).sum())
        kept += len(lp.keep)
    return decided / kept


_TESTBED_LIKE: dict = {}


def tb_like(family, tiny_model):
    """Statistics of a tiny real checkpoint (16 experts, 32 for DeepSeek-V3's 8 groups of 4, 6 layers),
    1024 tokens routed through its own routers and experts."""
    from raymoe.methods.synthetic import simulate_stats
    from raymoe.moe import ExpertWeights

    if family not in _TESTBED_LIKE:
        path = tiny_model(family, experts=32 if family == "deepseek_v3" else 16, layers=6)
        _TESTBED_LIKE[family] = simulate_stats(ExpertWeights(path), sequences=32, seq_len=32, clusters=4,
                                               probe_tokens=64, seed=1, model_path=str(path))
    return _TESTBED_LIKE[family]


@pytest.fixture(scope="module")
def synthetic64():
    from raymoe.methods.synthetic import scale_config, synthetic_stats

    cfg = scale_config("qwen3_235b", hidden=64) | {"num_hidden_layers": 8, "num_experts": 64}
    return synthetic_stats(cfg, sequences=32, seq_len=32, clusters=4, probe_tokens=64, seed=0)


@pytest.mark.parametrize("source", ["synthetic64", "qwen2_moe", "deepseek_v3"])
@pytest.mark.parametrize("uniform", [True, False])
@pytest.mark.parametrize("ratio", [0.25, 0.5])
def test_paths_decide(source, uniform, ratio, tiny_model, synthetic64):
    """The plan differs from the node-weight-only plan; path frequency (not the tie-break) fills >= 90%
    of the kept slots; global counts follow the cross-layer frequency ranking (floored)."""
    from raymoe.methods import budget_for
    from raymoe.methods.common import group_counts

    stats = synthetic64 if source == "synthetic64" else tb_like(source, tiny_model)
    plan = make_plan(stats, "pathfinder", ratio, uniform=uniform)
    base = node_weight_plan(stats, ratio, uniform)
    differ = sum(len(set(lp.keep) ^ set(base[lp.layer])) for lp in plan.layers)
    # the one exception measured: tiny DeepSeek-V3 at 25% global keeps 3 of every 4-expert group, and
    # there frequency and node weight pick the same 3
    assert differ > 0 or (source, ratio, uniform) == ("deepseek_v3", 0.25, False)
    budget = budget_for(stats, ratio, uniform)
    assert frequency_decided(plan, budget.n_group) >= 0.9
    prio = {lp.layer: np.asarray(lp.scores["priority"]) for lp in plan.layers}
    assert plan.counts() == budget.counts_from_scores(prio)
    for lp in plan.layers:
        assert len(lp.keep) >= budget.floor
        assert len(set(group_counts(lp.keep, lp.num_experts, budget.n_group))) == 1  # balanced groups


def test_edge_modes_and_row_column_share(synthetic64):
    """`full` edges are nearly separable into row + column effects; the routed ones are not."""
    from raymoe.methods.pathfinder import edge_log_weights, row_column_share

    share = {m: np.mean([row_column_share(w) for e in edge_log_weights(synthetic64, m, 1e-9) for w in e])
             for m in ("full", "routed", "corrected")}
    assert share["full"] > 0.95 and share["routed"] < 0.8 and share["corrected"] < share["routed"]
    plans = {m: make_plan(synthetic64, "pathfinder", 0.5, options={"edges": m}) for m in share}
    assert plans["routed"].counts() != plans["full"].counts() or any(
        a.keep != b.keep for a, b in zip(plans["routed"].layers, plans["full"].layers))


def test_bad_option_and_missing_transitions(traced):
    from raymoe.methods import OptionError
    from raymoe.methods.common import StatsError
    from raymoe.store.calib_stats import CalibStats

    stats, _, _ = traced("mixtral")
    with pytest.raises(OptionError, match="edges"):
        make_plan(stats, "pathfinder", 0.5, options={"edges": "nope"})
    bare = {l: type(s)(s.layer, s.num_experts, s.top_k, counts=s.counts, prob_mass=s.prob_mass,
                       act_norm_sum=s.act_norm_sum, loo_err_sum=s.loo_err_sum, probe_tokens=s.probe_tokens)
            for l, s in stats.layers.items()}
    with pytest.raises(StatsError, match="transition intensities"):
        make_plan(CalibStats(stats.manifest, bare, stats.num_clusters), "pathfinder", 0.5)


@pytest.mark.parametrize("uniform", [True, False])
def test_ablation_switches(synthetic64, uniform):
    """paths=false is exactly the node-weight-only plan; clusters=false pools the clusters into one graph."""
    plan = make_plan(synthetic64, "pathfinder", 0.5, uniform=uniform, options={"paths": False})
    want = node_weight_plan(synthetic64, 0.5, uniform)
    assert {lp.layer: lp.keep for lp in plan.layers} == want
    full = make_plan(synthetic64, "pathfinder", 0.5, uniform=uniform)
    pooled = make_plan(synthetic64, "pathfinder", 0.5, uniform=uniform, options={"clusters": False})
    assert sum(len(lp.keep) for lp in pooled.layers) == sum(len(lp.keep) for lp in full.layers)
    assert {lp.layer: lp.keep for lp in pooled.layers} != {lp.layer: lp.keep for lp in full.layers}
