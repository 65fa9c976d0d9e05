"""Shard plan: contiguous stages, balanced by bytes, or packed under a per-stage budget."""

from __future__ import annotations

import pytest

from raymoe.calib.shard import EMBED_NAME, NORM_NAME, CalibrationError, layer_bytes, plan_stages
from raymoe.moe import MoeModelSpec, SafetensorsCheckpoint

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    from raymoe.testing.tiny import build_tiny_model

    path = build_tiny_model("deepseek_v2", tmp_path_factory.mktemp("shard") / "m", layers=6)
    return MoeModelSpec.from_pretrained(path), SafetensorsCheckpoint(path)


def brute_force_best(weights, parts):
    """Smallest possible largest stage over all contiguous partitions (exhaustive)."""
    from itertools import combinations

    n = len(weights)
    best = None
    for cuts in combinations(range(1, n), parts - 1):
        edges = (0, *cuts, n)
        worst = max(sum(weights[a:b]) for a, b in zip(edges, edges[1:]))
        best = worst if best is None else min(best, worst)
    return best


@pytest.mark.parametrize("stages", [1, 2, 3, 4, 6])
def test_given_stage_count(model, stages):
    spec, ckpt = model
    plan = plan_stages(spec, ckpt, stages)
    assert len(plan) == stages
    assert plan[0].first == 0 and plan[-1].last == spec.num_layers
    assert all(a.last == b.first for a, b in zip(plan, plan[1:]))
    assert all(st.last > st.first for st in plan)
    assert [st.embed for st in plan] == [True] + [False] * (stages - 1)
    assert [st.norm for st in plan] == [False] * (stages - 1) + [True]
    weights = layer_bytes(ckpt, spec.num_layers)
    weights[0] += ckpt.infos[EMBED_NAME].nbytes
    weights[-1] += ckpt.infos[NORM_NAME].nbytes
    assert sum(st.nbytes for st in plan) == sum(weights)
    assert max(st.nbytes for st in plan) == brute_force_best(weights, stages)


def test_budget_packs_layers(model):
    spec, ckpt = model
    sizes = layer_bytes(ckpt, spec.num_layers)
    budget = 2 * max(sizes) + ckpt.infos[EMBED_NAME].nbytes
    plan = plan_stages(spec, ckpt, budget_bytes=budget)
    assert all(st.nbytes <= budget for st in plan)
    assert 1 < len(plan) < spec.num_layers
    # greedy packing: no stage could take the next stage's first layer
    for a, b in zip(plan, plan[1:]):
        assert a.nbytes + sizes[b.first] > budget


def test_errors(model):
    spec, ckpt = model
    with pytest.raises(CalibrationError, match="7 stages asked but the model has only 6 decoder layers"):
        plan_stages(spec, ckpt, 7)
    with pytest.raises(CalibrationError, match="below one layer"):
        plan_stages(spec, ckpt, budget_bytes=10)
