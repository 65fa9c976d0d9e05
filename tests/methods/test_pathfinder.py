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


def reference_frequencies(stats, m, eps=1e-9):
    """The method's formula re-computed directly: node and edge weights, brute-force top-m per cluster."""
    layers = stats.moe_layers
    nodes = []
    for l in layers:
        s = stats.layers[l]
        z = (s.loo_err - s.loo_err.mean()) / (s.loo_err.std() + 1e-12)
        soft = np.exp(z) / np.exp(z).sum()
        v = soft * (s.prob_mass / s.prob_mass.sum()) * (s.act_norm / s.act_norm.sum())
        nodes.append(np.log(v + eps))
    freq = {l: np.zeros(stats.layers[l].num_experts) for l in layers}
    for c in range(stats.num_clusters):
        edges = []
        for l in layers[:-1]:
            w = stats.layers[l].trans_intensity_by_cluster[c]
            edges.append(np.log(w / w.sum() + eps))
        for _, path in enumerate_paths(nodes, edges)[:m]:
            for l, e in zip(layers, path):
                freq[l][e] += 1
    return freq, nodes


def test_frequencies_equal_brute_force_and_heatmap_saved(traced, tmp_path):
    stats, _, _ = traced("mixtral")  # 4 MoE layers x 8 experts: 4096 paths per cluster
    plan = make_plan(stats, "pathfinder", 0.5, options={"top_m": 5})
    freq, nodes = reference_frequencies(stats, 5)
    for lp, l in zip(plan.layers, stats.moe_layers):
        np.testing.assert_array_equal(lp.scores["path_freq"], freq[l])
        assert sum(lp.scores["path_freq"]) == 5 * stats.num_clusters  # one expert per layer per path
        np.testing.assert_allclose(lp.scores["node_logw"], nodes[stats.moe_layers.index(l)], rtol=1e-9)
        tiebreak = 0.5 * per_layer_share(np.exp(np.asarray(lp.scores["node_logw"])))
        order = np.lexsort((np.arange(lp.num_experts), -(freq[l] + tiebreak)))
        assert lp.keep == sorted(order[:len(lp.keep)].tolist())
    npy, png = save_heatmap(plan, "path_freq", tmp_path / "pathfinder_heatmap")
    assert png.stat().st_size > 1000 and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    mat = np.load(npy)
    assert mat.shape == (4, 8)
    np.testing.assert_array_equal(mat, score_matrix(plan, "path_freq"))
    np.testing.assert_array_equal(mat[0], freq[stats.moe_layers[0]])


def test_auto_m_and_missing_transitions(traced):
    from raymoe.methods.common import StatsError
    from raymoe.store.schema import CalibStats

    stats, _, _ = traced("mixtral")
    plan = make_plan(stats, "pathfinder", 0.5)
    assert plan.config["top_m"] == int(np.ceil(4 / stats.num_clusters))  # ceil(max n_l / K)
    bare = {l: type(s)(s.layer, s.num_experts, s.top_k, counts=s.counts, prob_mass=s.prob_mass,
                       act_norm_sum=s.act_norm_sum, loo_err_sum=s.loo_err_sum, probe_tokens=s.probe_tokens)
            for l, s in stats.layers.items()}
    with pytest.raises(StatsError, match="transition intensities"):
        make_plan(CalibStats(stats.manifest, bare, stats.num_clusters), "pathfinder", 0.5)
