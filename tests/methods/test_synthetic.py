"""Synthetic statistics follow the store schema's definitions (sums that agree with each other)."""

from __future__ import annotations

import numpy as np

from raymoe.methods.synthetic import SyntheticWeights, scale_config, simulate_stats


def test_sums_are_consistent(traced):
    stats, _, _ = traced("mixtral")
    layers = stats.moe_layers
    T = stats.layers[layers[0]].tokens
    for a, b in zip(layers, layers[1:] + [None]):
        s = stats.layers[a]
        assert s.counts.sum() == T * s.top_k  # k selections per token
        np.testing.assert_allclose(np.diag(s.coact), s.counts)
        np.testing.assert_allclose(s.prob_mass.sum(), T, rtol=1e-6)  # softmax rows sum to 1
        np.testing.assert_allclose(np.diag(s.funcsim), 1.0, rtol=1e-5)
        assert s.probe_inputs.shape == (s.probe_tokens, 32) and s.mean_output.shape == (8, 32)
        assert np.all(s.loo_err >= 0) and np.all(s.reap <= s.act_norm + 1e-9)  # Mixtral gates are <= 1
        if b is None:
            assert s.trans is None
            continue
        np.testing.assert_allclose(s.trans.sum(1), s.counts * stats.layers[b].top_k)
        np.testing.assert_allclose(s.trans_intensity_by_cluster.sum(0), s.trans_intensity, rtol=1e-9)
        np.testing.assert_allclose(s.trans_intensity.sum(1), s.act_norm_sum, rtol=1e-6)  # next-layer probs sum to 1
        np.testing.assert_allclose(s.trans_routed_by_cluster.sum(0), s.trans_routed, rtol=1e-9)
        assert np.all(s.trans_routed <= s.trans_intensity + 1e-9)  # the routed part of the full intensity
        np.testing.assert_array_equal(s.trans_routed > 0, s.trans > 0)  # nonzero exactly on co-routed pairs
        x = stats.extra["inputs"][a]  # [T, H]
        np.testing.assert_allclose(s.pooled_inputs, x.reshape(len(stats.seq_cluster), -1, x.shape[1]).mean(1),
                                   rtol=1e-5, atol=1e-6)
    assert len(stats.seq_cluster) == 8 and stats.seq_pooled.shape == (8, 32)


def test_every_schema_field_is_produced(traced):
    from dataclasses import fields

    stats, _, _ = traced("mixtral")
    for l in stats.moe_layers[:-1]:
        missing = [f.name for f in fields(stats.layers[l]) if getattr(stats.layers[l], f.name) is None]
        assert missing == [], missing


def test_seeded_and_skewed():
    cfg = scale_config("qwen3_235b", hidden=64) | {"num_hidden_layers": 3, "num_experts": 32}
    a = simulate_stats(SyntheticWeights(cfg, seed=2), sequences=8, seq_len=16, clusters=3, probe_tokens=8, seed=2)
    b = simulate_stats(SyntheticWeights(cfg, seed=2), sequences=8, seq_len=16, clusters=3, probe_tokens=8, seed=2)
    for l in a.moe_layers:
        np.testing.assert_array_equal(a.layers[l].counts, b.layers[l].counts)
        np.testing.assert_array_equal(a.layers[l].trans_intensity_by_cluster, b.layers[l].trans_intensity_by_cluster)
    ent = [a.layers[l].entropy for l in a.moe_layers]
    assert max(ent) < 0.99 and max(ent) - min(ent) > 0.01  # skewed usage, varied across layers
