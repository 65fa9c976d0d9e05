"""Neuron grouping: balanced clusters, shared = most important neurons, strata, determinism."""

import numpy as np
import torch

from raymoe.testbed.neuron_groups import balanced_kmeans, coactivation_patterns, group_neurons, neuron_importance


def test_balanced_kmeans_recovers_planted_equal_clusters():
    rng = np.random.default_rng(0)
    k, size, d = 4, 16, 64
    centers = rng.normal(size=(k, d)) * 3
    truth = np.repeat(np.arange(k), size)
    feats = centers[truth] + rng.normal(size=(k * size, d)) * 0.3
    order = rng.permutation(k * size)
    labels = balanced_kmeans(feats[order], k, np.random.default_rng(1))
    assert np.bincount(labels, minlength=k).tolist() == [size] * k
    # every found cluster is exactly one planted cluster
    for j in range(k):
        assert len(set(truth[order][labels == j])) == 1


def test_balanced_kmeans_forces_equal_sizes_on_unequal_data():
    rng = np.random.default_rng(0)
    feats = np.concatenate([rng.normal(size=(30, 8)) + 5, rng.normal(size=(10, 8)) - 5])
    labels = balanced_kmeans(feats, 4, np.random.default_rng(0))
    assert np.bincount(labels, minlength=4).tolist() == [10, 10, 10, 10]


def test_coactivation_patterns_mark_each_tokens_top_fraction():
    contrib = torch.tensor([[5.0, -4.0, 0.1, 0.2], [0.0, 1.0, -3.0, 0.5]])
    pats = coactivation_patterns(contrib, 0.5)  # top 2 of 4 per token, by magnitude
    expected = np.array([[1, 0], [1, 1], [0, 1], [0, 0]], dtype=np.float32)  # [neuron, token]
    np.testing.assert_array_equal(pats, expected)


def _layer(seed=0, t=256, h=16, i=96):
    g = torch.Generator().manual_seed(seed)
    act = torch.randn(t, i, generator=g) * torch.linspace(0.1, 3.0, i)  # neuron magnitudes differ
    down = torch.randn(h, i, generator=g)
    return act, down


def test_group_neurons_partitions_with_shared_on_top_importance():
    act, down = _layer()
    shared, groups = group_neurons(act, down, experts=8, shared=32, strata=2, coact_tokens=128,
                                   rng=np.random.default_rng(0))
    all_ids = np.concatenate([shared, *groups])
    assert sorted(all_ids.tolist()) == list(range(96))  # a partition of the neurons
    assert [len(g) for g in groups] == [8] * 8
    imp = (act.abs().mean(0) * down.norm(dim=0)).numpy()  # independent recomputation
    np.testing.assert_allclose(neuron_importance(act, down).numpy(), imp, rtol=1e-6)
    assert set(shared.tolist()) == set(np.argsort(-imp)[:32].tolist())
    # strata: each expert lies entirely in the upper or the lower half of the routed neurons by importance
    routed = np.argsort(-imp)[32:]
    upper = set(routed[:32].tolist())
    sides = [len(upper & set(g.tolist())) for g in groups]
    assert sorted(sides) == [0, 0, 0, 0, 8, 8, 8, 8]


def test_group_neurons_deterministic_for_a_seed():
    act, down = _layer(1)
    kw = dict(experts=4, shared=0, strata=1, coact_tokens=200)
    a = group_neurons(act, down, rng=np.random.default_rng(5), **kw)
    b = group_neurons(act, down, rng=np.random.default_rng(5), **kw)
    assert all(np.array_equal(x, y) for x, y in zip(a[1], b[1]))
