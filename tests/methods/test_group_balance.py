"""Group-limited routers: every method keeps the same count in every ORIGINAL group, and the pruned
checkpoint routes like the original model with the removed experts masked (issue 11, "Group balance").

DeepSeek-V3 routes each token to its top `topk_group` groups (scored by their top-2 choice scores)
and picks top_k experts inside them; DeepSeek-V2 with `group_limited_greedy` does the same with the
group's max probability. A pruned layer keeping n experts re-forms n_group groups as contiguous runs
of n / n_group kept experts, so it matches the masked original only when each original group
contributes exactly n / n_group. The reference is `raymoe.testing.masking.mask_experts` under the
original groups (after `merge_experts` for a merging plan).
"""

from __future__ import annotations

import math

import pytest
import torch

from raymoe.methods import METHODS, make_plan
from raymoe.moe import MoeModelSpec

ATOL = 1e-5
FAST = {"c-gnn-prune": {"epochs": 20}}

# name -> (family, tiny_model overrides, ratio): ratios leave room above the per-group floor in both modes
MODELS = {
    # 3 MoE layers x 16 experts, top-2 over the top-1 of 2 groups (top-2-sum score): floor 2 per group
    "dsv3": ("deepseek_v3", {"experts": 16}, 0.5),
    # 3 MoE layers x 16 experts, top-3 over the top-2 of 4 groups (max score): floor ceil(3/2) = 2 per group
    "dsv2-grouped": ("deepseek_v2", dict(topk_method="group_limited_greedy", n_group=4, topk_group=2, top_k=3,
                                         experts=16), 0.25),
}

# Methods whose selection does not yet honour group balance: name -> reason (xfail, strict, so a
# fixed method fails the mark and it gets removed). Every registered method is balanced today.
PENDING: dict[str, str] = {}


def per_group(keep: list[int], experts: int, n_group: int) -> list[int]:
    size = experts // n_group
    return [sum(1 for e in keep if e // size == j) for j in range(n_group)]


def cases():
    for model in MODELS:
        for method in METHODS:
            for uniform in (True, False):
                marks = [pytest.mark.xfail(strict=True, reason=PENDING[method])] if method in PENDING else []
                yield pytest.param(model, method, uniform, marks=marks,
                                   id=f"{model}-{method}-{'uniform' if uniform else 'global'}")


@pytest.fixture(scope="module")
def variants(traced):
    """(stats, weights, path, spec, ratio) per model."""
    out = {}

    def get(model):
        if model not in out:
            family, kw, ratio = MODELS[model]
            stats, weights, path = traced(family, **kw)
            spec = MoeModelSpec.from_pretrained(path)
            assert spec.n_group > 1, f"{model} is not group-limited: the test would be vacuous"
            out[model] = (stats, weights, path, spec, ratio)
        return out[model]

    return get


def logits(model, ids):
    with torch.no_grad():
        return model(ids).logits


@pytest.mark.parametrize("model,method,uniform", list(cases()))
def test_every_method_keeps_groups_balanced(variants, tmp_path, model, method, uniform):
    from transformers import AutoModelForCausalLM

    import raymoe
    from raymoe.checkpoint import apply_plan
    from raymoe.testing.masking import mask_experts, merge_experts

    raymoe.ensure_registered()  # the variable-expert architectures load with the Auto classes

    stats, weights, path, spec, ratio = variants(model)
    plan = make_plan(stats, method, ratio, uniform=uniform, options=FAST.get(method), weights=weights)
    g = spec.n_group
    for lp in plan.layers:
        counts = per_group(lp.keep, lp.num_experts, g)
        assert len(set(counts)) == 1, f"{method} layer {lp.layer} keeps {counts} per original group"
        assert counts[0] >= spec.min_kept_per_group
    if not uniform:  # the global total, rounded half-up to a multiple of n_group
        assert sum(plan.counts().values()) == g * math.floor((1 - ratio) * sum(spec.experts.values()) / g + 0.5)
    plan.validate_for(spec)

    out = apply_plan(path, plan, tmp_path / "pruned", progress=False)
    pruned = AutoModelForCausalLM.from_pretrained(out).eval()
    ref = AutoModelForCausalLM.from_pretrained(path).eval()
    ids = torch.randint(4, 300, (2, 24), generator=torch.Generator().manual_seed(1))
    unmasked = logits(ref, ids)
    merges = {lp.layer: lp.merges for lp in plan.layers if lp.merges}
    merge_experts(ref, merges, plan.permutations())
    mask_experts(ref, spec, {lp.layer: lp.keep for lp in plan.layers})
    expected = logits(ref, ids)
    assert (expected - unmasked).abs().max() > 1e-3, "masking changed nothing: the check would be vacuous"
    torch.testing.assert_close(logits(pruned, ids), expected, atol=ATOL, rtol=0)


def test_merge_reference_is_not_vacuous(variants, tmp_path):
    """The merge-aware reference: merging without masking changes the model, and a hand-written balanced
    merge plan's checkpoint equals it (so merge methods are held to the same 1e-5)."""
    from transformers import AutoModelForCausalLM

    import raymoe
    from raymoe.checkpoint import apply_plan
    from raymoe.plan import LayerPlan, MergeGroup, PrunePlan
    from raymoe.testing.masking import mask_experts, merge_experts

    raymoe.ensure_registered()  # the variable-expert architectures load with the Auto classes

    _, _, path, spec, _ = variants("dsv3")
    keep = [0, 1, 2, 3, 8, 9, 10, 11]
    groups = [MergeGroup(target=1, members=[1, 5, 6], weights=[0.5, 0.3, 0.2]),
              MergeGroup(target=9, members=[9, 13], weights=[0.6, 0.4])]
    plan = PrunePlan(method="manual", model=str(path), model_type=spec.arch.family,
                     layers=[LayerPlan(layer=l, num_experts=16, keep=keep, merges=groups) for l in spec.moe_layers])
    out = apply_plan(path, plan, tmp_path / "merged", progress=False)
    ids = torch.randint(4, 300, (2, 24), generator=torch.Generator().manual_seed(2))
    masked = AutoModelForCausalLM.from_pretrained(path).eval()
    mask_experts(masked, spec, {l: keep for l in spec.moe_layers})
    ref = AutoModelForCausalLM.from_pretrained(path).eval()
    merge_experts(ref, {l: groups for l in spec.moe_layers})
    mask_experts(ref, spec, {l: keep for l in spec.moe_layers})
    expected = logits(ref, ids)
    assert (expected - logits(masked, ids)).abs().max() > 1e-3, "merging changed nothing"
    got = logits(AutoModelForCausalLM.from_pretrained(out).eval(), ids)
    torch.testing.assert_close(got, expected, atol=ATOL, rtol=0)


def test_unbalanced_selection_breaks_the_reference(variants, tmp_path, monkeypatch):
    """Why balance matters: an unbalanced keep of the right size, applied without validation, routes
    differently from the masked original (the check above would catch a method that ignores groups)."""
    from transformers import AutoModelForCausalLM

    import raymoe
    from raymoe.checkpoint import apply_plan
    from raymoe.plan import LayerPlan, PrunePlan
    from raymoe.testing.masking import mask_experts

    raymoe.ensure_registered()  # the variable-expert architectures load with the Auto classes

    _, _, path, spec, _ = variants("dsv3")
    keep = [0, 1, 2, 3, 4, 5, 8, 9]  # 6 from group 0, 2 from group 1
    plan = PrunePlan(method="manual", model=str(path), model_type=spec.arch.family,
                     layers=[LayerPlan(layer=l, num_experts=16, keep=keep) for l in spec.moe_layers])
    monkeypatch.setattr(PrunePlan, "validate_for", lambda self, spec: None)  # build it despite the refusal
    out = apply_plan(path, plan, tmp_path / "unbalanced", progress=False)
    ids = torch.randint(4, 300, (2, 24), generator=torch.Generator().manual_seed(3))
    ref = AutoModelForCausalLM.from_pretrained(path).eval()
    mask_experts(ref, spec, {l: keep for l in spec.moe_layers})
    got = logits(AutoModelForCausalLM.from_pretrained(out).eval(), ids)
    assert (got - logits(ref, ids)).abs().max() > 1e-3


def test_build_plan_refuses_an_unbalanced_selection(variants):
    """A method whose selection ignores groups fails at planning time, naming the layer and counts."""
    from raymoe.methods import Budget, BudgetError
    from raymoe.methods.baselines import NoOptions
    from raymoe.methods.common import build_plan

    stats, _, _, spec, _ = variants("dsv3")
    budget = Budget.for_spec(spec, 0.5, uniform=True)
    keep = {l: [0, 1, 2, 3, 8, 9, 10, 11] for l in spec.moe_layers}
    build_plan("manual", NoOptions(), stats, budget, keep, {})
    keep[spec.moe_layers[-1]] = [0, 1, 2, 3, 4, 5, 8, 9]
    with pytest.raises(BudgetError, match=r"manual: layer 3 keeps \[6, 2\] experts per original group \(n_group=2\)"):
        build_plan("manual", NoOptions(), stats, budget, keep, {})
