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
    with pytest.raises(PlanError, match="at least 4"):
        plan([LayerPlan(layer=1, num_experts=8, keep=[0, 4])], "deepseek_v3").validate_for(spec)
    with pytest.raises(PlanError, match="not divisible by n_group=2"):
        plan([LayerPlan(layer=1, num_experts=8, keep=[0, 1, 4, 5, 6])], "deepseek_v3").validate_for(spec)
    with pytest.raises(PlanError, match="plan is for 'mixtral'"):
        plan([LayerPlan(layer=1, num_experts=8, keep=[0, 1, 4, 5])], "mixtral").validate_for(spec)
    plan([LayerPlan(layer=1, num_experts=8, keep=[0, 1, 4, 5])], "deepseek_v3").validate_for(spec)


def test_load_reports_invalid_json(tmp_path):
    (tmp_path / "p.json").write_text("{not json")
    with pytest.raises(PlanError, match="invalid JSON"):
        PrunePlan.load(tmp_path / "p.json")
