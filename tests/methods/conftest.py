"""Fixtures for the methods' tests: statistics traced through real tiny checkpoints, and a
straightforward re-implementation of each family's MoE block from transformers (the reference)."""

from __future__ import annotations

import pytest

from methods_ref import HfLayer


@pytest.fixture(scope="session")
def traced(tiny_model):
    """traced(family, **model_kwargs) -> (stats, weights view, checkpoint path), cached per session.

    The statistics come from synthetic hidden states routed through the checkpoint's own routers and
    experts (raymoe.methods.synthetic.simulate_stats); stats.extra["inputs"][layer] holds those states.
    """
    from raymoe.methods.synthetic import simulate_stats
    from raymoe.moe import ExpertWeights

    cache: dict = {}

    def make(family: str, **kwargs):
        key = (family, tuple(sorted(kwargs.items())))
        if key not in cache:
            path = tiny_model(family, **kwargs)
            weights = ExpertWeights(path)
            stats = simulate_stats(weights, sequences=8, seq_len=16, clusters=3, probe_tokens=24, seed=1,
                                   model_path=str(path), keep_inputs=True)
            cache[key] = (stats, weights, path)
        return cache[key]

    return make


@pytest.fixture(scope="session")
def hf_layer():
    cache: dict = {}

    def make(path, layer: int) -> HfLayer:
        key = (str(path), layer)
        if key not in cache:
            cache[key] = HfLayer(path, layer)
        return cache[key]

    return make
