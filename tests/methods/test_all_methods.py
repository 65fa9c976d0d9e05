"""Every method, every ratio, both allocations: counts meet the budget, plans validate, checkpoints load."""

from __future__ import annotations

import math

import pytest
import torch

from raymoe.methods import METHODS, make_plan
from raymoe.moe import MoeModelSpec
from raymoe.plan import PrunePlan

FAST = {"c-gnn-prune": {"epochs": 20}}


def expected_total(ratio, experts, uniform, g):
    rnd = lambda x: g * math.floor(x / g + 0.5)  # noqa: E731  half-up, to a multiple of n_group
    return sum(rnd((1 - ratio) * e) for e in experts.values()) if uniform else rnd((1 - ratio) * sum(experts.values()))


@pytest.mark.parametrize("family,kw", [("mixtral", {}), ("deepseek_v3", {"experts": 16})], ids=["mixtral", "dsv3"])
@pytest.mark.parametrize("method", list(METHODS))
def test_every_ratio_meets_the_budget(traced, tmp_path, family, kw, method):
    stats, weights, path = traced(family, **kw)
    spec = MoeModelSpec.from_pretrained(path)
    for uniform in (True, False):
        for ratio in (0.25, 0.5, 0.75):
            plan = make_plan(stats, method, ratio, uniform=uniform, options=FAST.get(method), weights=weights)
            counts = plan.counts()
            assert set(counts) == set(spec.moe_layers)
            assert sum(counts.values()) == expected_total(ratio, spec.experts, uniform, spec.n_group)
            assert all(n >= spec.top_k and n >= spec.min_kept and n % spec.n_group == 0 for n in counts.values())
            if uniform:
                assert len(set(counts.values())) == 1
            plan.validate_for(spec)
            for lp in plan.layers:
                assert lp.scores and all(len(v) == lp.num_experts for v in lp.scores.values())
            assert (plan.method, plan.ratio, plan.uniform, plan.model) == (method, ratio, uniform, str(path))
            again = PrunePlan.load(plan.save(tmp_path / f"{method}-{ratio}-{uniform}.json"))
            assert again.layers == plan.layers


@pytest.mark.parametrize("family,kw,method,uniform", [
    ("mixtral", {}, "c-prune-merge", False),
    ("mixtral", {}, "pathfinder", True),
    ("deepseek_v3", {"experts": 16}, "c-gnn-prune", False),
    ("deepseek_v3", {"experts": 16}, "naee", True),
], ids=["mixtral-merge-global", "mixtral-pathfinder-uniform", "dsv3-cgnn-global", "dsv3-naee-uniform"])
def test_pruned_checkpoint_loads_with_transformers(traced, tmp_path, family, kw, method, uniform):
    from transformers import AutoModelForCausalLM

    import raymoe
    from raymoe.checkpoint import apply_plan

    raymoe.ensure_registered()  # the variable-expert architectures load with the Auto classes

    stats, weights, path = traced(family, **kw)
    plan = make_plan(stats, method, 0.5, uniform=uniform, options=FAST.get(method), weights=weights)
    out = apply_plan(path, plan, tmp_path / "variant", progress=False)
    model = AutoModelForCausalLM.from_pretrained(out).eval()
    for lp in plan.layers:
        assert model.model.layers[lp.layer].mlp.experts.gate_up_proj.shape[0] == len(lp.keep)
    with torch.no_grad():
        logits = model(torch.tensor([[1, 5, 9, 13, 17, 21]])).logits
    assert logits.shape[-1] == model.config.vocab_size and torch.isfinite(logits).all()
