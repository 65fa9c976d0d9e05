"""Exported configs spell out what the family implies and vLLM reads from config.json (no vllm import)."""

from __future__ import annotations

import json

import pytest

from raymoe.checkpoint import apply_plan
from raymoe.moe.variable import stock_config_dict


@pytest.mark.parametrize("kind", ["uniform", "mixed"])
def test_deepseek_v3_export_names_noaux_tc_and_sigmoid(tiny_model, pruning_plan, tmp_path, kind):
    """Without `topk_method: noaux_tc` vLLM creates no e_score_correction_bias (KeyError on load), and
    without `scoring_func: sigmoid` it would route by softmax; transformers' DeepSeek-V3 implies both."""
    src = tiny_model("deepseek_v3")
    assert "scoring_func" not in json.loads((src / "config.json").read_text())  # transformers writes neither
    out = apply_plan(src, pruning_plan(src, kind), tmp_path / kind, progress=False)
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["topk_method"] == "noaux_tc" and cfg["scoring_func"] == "sigmoid"
    assert cfg["architectures"] == [("Raymoe" if kind == "mixed" else "") + "DeepseekV3ForCausalLM"]


def test_deepseek_v2_groups_only_where_routing_uses_them():
    """vLLM's DeepSeek-V2 routes by n_group whenever it is set; plain greedy top-k must say n_group 1."""
    base = {"model_type": "deepseek_v2", "architectures": ["DeepseekV2ForCausalLM"], "num_hidden_layers": 2,
            "n_routed_experts": 8, "n_group": 4, "topk_group": 2}
    greedy = stock_config_dict(base | {"topk_method": "greedy"})
    assert (greedy["n_group"], greedy["topk_group"]) == (1, 1)
    grouped = stock_config_dict(base | {"topk_method": "group_limited_greedy"})
    assert (grouped["n_group"], grouped["topk_group"]) == (4, 2)


def test_other_families_keep_their_config():
    cfg = {"model_type": "qwen2_moe", "architectures": ["Qwen2MoeForCausalLM"], "num_experts": 8, "x": 1}
    assert stock_config_dict(cfg) == cfg
