"""plan.json schema and validation."""

from __future__ import annotations

import pytest

from raymoe.errors import PlanError
from raymoe.moe import MoeModelSpec
from raymoe.plan import LayerPlan, MergeGroup, PrunePlan


def plan(layers, model_type="mixtral"):
    return PrunePlan(method="m", model="x", model_type=model_type, layers=layers)


def test_roundtrip(tmp_path):
    p = plan([LayerPlan(layer=0, num_experts=8, keep=[3, 1, 2],
                        merges=[MergeGroup(target=3, members=[3, 5], weights=[0.75, 0.25])],
                        scores={"s": [0.0] * 8})])
    p.save(tmp_path / "plan.json")
    q = PrunePlan.load(tmp_path / "plan.json")
    assert q == p and q.counts() == {0: 3}


@pytest.mark.parametrize("kwargs, msg", [
    (dict(keep=[0, 0, 1]), "duplicate kept experts"),
    (dict(keep=[0, 8]), "experts [8] do not exist"),
    (dict(keep=[0, 1], merges=[MergeGroup(target=2, members=[2, 3], weights=[0.5, 0.5])]), "not kept"),
    (dict(keep=[0, 1], merges=[MergeGroup(target=0, members=[0, 1], weights=[0.5, 0.5])]), "also kept"),
    (dict(keep=[0, 1], scores={"s": [1.0]}), "has 1 values"),
])
def test_layer_plan_rejects(kwargs, msg):
    with pytest.raises(ValueError, match=msg.replace("[", r"\[").replace("]", r"\]")):
        LayerPlan(layer=0, num_experts=8, **kwargs)


def test_merge_weights_must_sum_to_one():
    with pytest.raises(ValueError, match="sum to 1"):
        MergeGroup(target=0, members=[0, 1], weights=[0.5, 0.6])


def test_validate_for_spec(tiny_model):
    spec = MoeModelSpec.from_pretrained(tiny_model("deepseek_v3"))
    assert spec.min_kept == 4
    with pytest.raises(PlanError, match="not an MoE layer"):
        plan([LayerPlan(layer=0, num_experts=8, keep=[0, 1, 2, 3])], "deepseek_v3").validate_for(spec)
    with pytest.raises(PlanError, match=r"per original group of 4 \(n_group=2\): \[1, 1\]; .* at least 2 per"):
        plan([LayerPlan(layer=1, num_experts=8, keep=[0, 4])], "deepseek_v3").validate_for(spec)
    with pytest.raises(PlanError, match=r"layer 1 keeps 5 experts, per original group of 4 \(n_group=2\): "
                                        r"\[2, 3\]; group-limited routing needs the same count in every group"):
        plan([LayerPlan(layer=1, num_experts=8, keep=[0, 1, 4, 5, 6])], "deepseek_v3").validate_for(spec)
    with pytest.raises(PlanError, match="plan is for 'mixtral'"):
        plan([LayerPlan(layer=1, num_experts=8, keep=[0, 1, 4, 5])], "mixtral").validate_for(spec)
    plan([LayerPlan(layer=1, num_experts=8, keep=[0, 1, 4, 5])], "deepseek_v3").validate_for(spec)


# (keep of 8 experts in 2 original groups of 4, error or None)
BALANCE = [
    ([0, 1, 2, 3], r"\[4, 0\]; group-limited routing needs the same count"),  # divisible, but all from group 0
    ([0, 1, 2, 4, 5, 6], None),
    ([1, 2, 3, 4, 5, 7], None),
    ([0, 1, 2, 3, 4, 5], r"\[4, 2\]"),
    ([4, 5, 0, 1], None),  # groups in another order: routing is the same
    ([0, 4, 1, 5], r"kept experts \[0, 4\] form one group of the pruned layer but come from different"),
    (list(range(8)), None),
]


@pytest.mark.parametrize("keep,err", BALANCE)
def test_group_limited_plans_must_be_balanced(tiny_model, keep, err):
    spec = MoeModelSpec.from_pretrained(tiny_model("deepseek_v3"))
    p = plan([LayerPlan(layer=l, num_experts=8, keep=keep) for l in spec.moe_layers], "deepseek_v3")
    if err is None:
        p.validate_for(spec)
    else:
        with pytest.raises(PlanError, match=err):
            p.validate_for(spec)


def test_group_limited_deepseek_v2_floor_and_balance(tiny_model):
    """DeepSeek-V2 with group_limited_greedy: top-3 over the top-2 of 4 groups needs 2 per group."""
    spec = MoeModelSpec.from_pretrained(tiny_model("deepseek_v2", topk_method="group_limited_greedy", n_group=4,
                                                   topk_group=2, top_k=3, experts=16))
    assert (spec.n_group, spec.min_kept_per_group, spec.min_kept) == (4, 2, 8)
    l = spec.moe_layers[0]
    ok = [0, 1, 4, 5, 8, 9, 12, 13]
    plan([LayerPlan(layer=l, num_experts=16, keep=ok)], "deepseek_v2").validate_for(spec)
    with pytest.raises(PlanError, match=r"layer 1 keeps 4 experts, per original group of 4 \(n_group=4\): "
                                        r"\[1, 1, 1, 1\]; group-limited routing \(top_k=3, topk_group=2\) "
                                        r"needs at least 2 per group"):
        plan([LayerPlan(layer=l, num_experts=16, keep=[0, 4, 8, 12])], "deepseek_v2").validate_for(spec)
    with pytest.raises(PlanError, match=r"\[3, 1, 2, 2\]"):
        plan([LayerPlan(layer=l, num_experts=16, keep=[0, 1, 2, 4, 8, 9, 12, 13])], "deepseek_v2").validate_for(spec)
    greedy = MoeModelSpec.from_pretrained(tiny_model("deepseek_v2"))  # greedy routing: no groups
    plan([LayerPlan(layer=l, num_experts=8, keep=[0, 1, 2])], "deepseek_v2").validate_for(greedy)


def test_load_reports_invalid_json(tmp_path):
    (tmp_path / "p.json").write_text("{not json")
    with pytest.raises(PlanError, match="invalid JSON"):
        PrunePlan.load(tmp_path / "p.json")


# ---- neuron permutations (issue 14): a sidecar safetensors file named in plan.json ---------------------
def aligned_plan(width=16, seed=0):
    import numpy as np

    from raymoe.plan.alignment import Alignment

    perm = np.random.default_rng(seed).permutation(width)
    a = Alignment.from_permutations({0: {5: perm}}, width, "weights")
    return plan([LayerPlan(layer=0, num_experts=8, keep=[3, 1, 2],
                           merges=[MergeGroup(target=3, members=[3, 5], weights=[0.75, 0.25])])]), a, perm


def test_alignment_roundtrip_through_a_sidecar(tmp_path):
    import json

    import numpy as np

    p, a, perm = aligned_plan()
    p.alignment = a
    p.save(tmp_path / "plan.json")
    raw = json.loads((tmp_path / "plan.json").read_text())
    assert raw["alignment"]["file"] == "plan.align.safetensors" and "data" not in raw["alignment"]
    assert (tmp_path / "plan.align.safetensors").is_file()
    q = PrunePlan.load(tmp_path / "plan.json")
    assert q == p and np.array_equal(q.permutations()[0][5], perm)
    again = PrunePlan.model_validate(p.model_dump(mode="json"))  # what the planner actor sends through Ray
    assert np.array_equal(again.permutations()[0][5], perm)


def test_alignment_sidecar_missing_or_changed(tmp_path):
    p, a, _ = aligned_plan()
    p.alignment = a
    p.save(tmp_path / "plan.json")
    other = aligned_plan(seed=1)[1]
    (tmp_path / "plan.align.safetensors").write_bytes(__import__("base64").b64decode(other.data))
    with pytest.raises(PlanError, match="SHA-256 does not match"):
        PrunePlan.load(tmp_path / "plan.json")
    (tmp_path / "plan.align.safetensors").unlink()
    with pytest.raises(PlanError, match="names the permutation file plan.align.safetensors, which does not exist"):
        PrunePlan.load(tmp_path / "plan.json")


def test_alignment_must_match_width_and_merges(tiny_model):
    from raymoe.plan.alignment import Alignment

    spec = MoeModelSpec.from_pretrained(tiny_model("mixtral"))
    p, a, _ = aligned_plan(width=spec.expert_intermediate + 1)
    p.alignment = a
    with pytest.raises(PlanError, match=rf"over {spec.expert_intermediate + 1} neurons, but the model's routed "
                                        rf"experts have {spec.expert_intermediate}"):
        p.validate_for(spec)
    import numpy as np

    p.alignment = Alignment.from_permutations({0: {6: np.arange(spec.expert_intermediate)}},
                                              spec.expert_intermediate, "weights")
    with pytest.raises(PlanError, match=r"layer 0: plan.align.safetensors permutes experts \[6\], but the plan "
                                        r"merges away \[5\]"):
        p.validate_for(spec)
    with pytest.raises(ValueError, match="not a permutation"):
        Alignment.from_permutations({0: {5: np.zeros(4, dtype=int)}}, 4, "weights")


def test_merge_groups_may_not_cross_original_groups(tiny_model):
    spec = MoeModelSpec.from_pretrained(tiny_model("deepseek_v3"))
    ok = MergeGroup(target=1, members=[1, 2], weights=[0.5, 0.5])
    plan([LayerPlan(layer=l, num_experts=8, keep=[0, 1, 4, 5], merges=[ok]) for l in spec.moe_layers],
         "deepseek_v3").validate_for(spec)
    bad = MergeGroup(target=1, members=[1, 6], weights=[0.5, 0.5])
    p = plan([LayerPlan(layer=l, num_experts=8, keep=[0, 1, 4, 5], merges=[bad]) for l in spec.moe_layers],
             "deepseek_v3")
    with pytest.raises(PlanError, match=r"merge group of target 1 has members \[1, 6\] from original groups "
                                        r"\[0, 1\] \(n_group=2\)"):
        p.validate_for(spec)
