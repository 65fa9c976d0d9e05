"""The adapter table and expert view against transformers' own modules, for every family."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

from raymoe.errors import NotMoEError
from raymoe.moe import MoeModelSpec, SafetensorsCheckpoint, build_decoder_layer, load_layer_state
from raymoe.moe.routing import RoutingRule, route
from raymoe.testing import FAMILIES


@pytest.mark.parametrize("family", FAMILIES)
def test_spec_matches_loaded_model(family, tiny_model):
    src = tiny_model(family)
    spec = MoeModelSpec.from_pretrained(src)
    model = AutoModelForCausalLM.from_pretrained(src)
    moe = [i for i, layer in enumerate(model.model.layers) if hasattr(layer.mlp, "experts")]
    assert spec.moe_layers == moe
    assert spec.top_k == 2 and set(spec.experts.values()) == {8}
    shared = [n for n, _ in model.named_parameters() if any(f".{p}." in n for p in spec.arch.shared_prefixes)]
    assert bool(shared) == bool(spec.arch.shared_prefixes)
    assert spec.n_group == (2 if family == "deepseek_v3" else 1)


@pytest.mark.parametrize("family", FAMILIES)
def test_roles_cover_every_expert_tensor(family, tiny_model):
    src = tiny_model(family)
    spec = MoeModelSpec.from_pretrained(src)
    roles = [spec.role(n) for n in SafetensorsCheckpoint(src).names]
    for l in spec.moe_layers:
        got = {(r.expert, r.proj) for r in roles if r.kind == "expert" and r.layer == l}
        assert got == {(e, p) for e in range(8) for p in ("gate", "up", "down")}
        assert sum(r.kind == "router" and r.layer == l for r in roles) == 1
    assert sum(r.kind == "router_bias" for r in roles) == (len(spec.moe_layers) if family == "deepseek_v3" else 0)
    # shared experts and dense MLPs are never classified as routed experts
    assert all(r.kind == "other" for n, r in zip(SafetensorsCheckpoint(src).names, roles) if "shared" in n)


@pytest.mark.parametrize("family", FAMILIES)
def test_layer_loading_reads_only_that_layer(family, tiny_model, monkeypatch):
    src = tiny_model(family)
    spec = MoeModelSpec.from_pretrained(src)
    ckpt = SafetensorsCheckpoint(src)
    read: list[str] = []
    orig = ckpt.get
    monkeypatch.setattr(ckpt, "get", lambda name: read.append(name) or orig(name))
    layer_idx = spec.moe_layers[-1]
    layer = build_decoder_layer(spec, layer_idx)
    layer.load_state_dict(load_layer_state(ckpt, spec, layer_idx), assign=True)
    assert read and all(n.startswith(f"model.layers.{layer_idx}.") for n in read)
    ref = AutoModelForCausalLM.from_pretrained(src).model.layers[layer_idx].state_dict()
    for k, v in ref.items():
        assert torch.equal(layer.state_dict()[k], v), k


@pytest.mark.parametrize("family", FAMILIES)
def test_routing_reimplementation_equals_transformers(family, tiny_model):
    src = tiny_model(family)
    spec = MoeModelSpec.from_pretrained(src)
    gate = AutoModelForCausalLM.from_pretrained(src).model.layers[spec.moe_layers[-1]].mlp.gate
    x = torch.randn(64, spec.hidden_size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        _, w_ref, idx_ref = gate(x)
        _, w, idx = route(RoutingRule.for_spec(spec), x @ gate.weight.T, getattr(gate, "e_score_correction_bias", None))
    a, b = idx_ref.sort(-1), idx.sort(-1)
    assert torch.equal(a.values, b.values)
    torch.testing.assert_close(w_ref.gather(1, a.indices).float(), w.gather(1, b.indices), atol=1e-6, rtol=0)


def test_routing_mask_excludes_experts(tiny_model):
    spec = MoeModelSpec.from_pretrained(tiny_model("mixtral"))
    mask = torch.tensor([True, False, True, False, True, True, False, True])
    probs, w, idx = route(RoutingRule.for_spec(spec), torch.randn(100, 8), mask=mask)
    assert not torch.isin(idx, torch.tensor([1, 3, 6])).any()
    assert torch.all(probs[:, ~mask] == 0)
    torch.testing.assert_close(w.sum(-1), torch.ones(100))


def test_non_moe_config_rejected():
    with pytest.raises(NotMoEError, match="'llama' is not a supported MoE"):
        MoeModelSpec.from_config({"model_type": "llama", "num_hidden_layers": 2})


def test_qwen_sparse_step_and_mlp_only_layers():
    cfg = {"model_type": "qwen2_moe", "num_hidden_layers": 6, "num_experts": 4, "num_experts_per_tok": 2,
           "decoder_sparse_step": 2, "mlp_only_layers": [3], "hidden_size": 8, "moe_intermediate_size": 4}
    assert MoeModelSpec.from_config(cfg).moe_layers == [1, 5]


def _deepseek(model_type, **kw):
    return {"model_type": model_type, "num_hidden_layers": 3, "first_k_dense_replace": 1, "hidden_size": 8,
            "moe_intermediate_size": 4, "n_routed_experts": 64, **kw}


# (config, n_group, topk_group, floor per group, layer floor)
FLOORS = [
    # DeepSeek-V2 (236B): top-6 over the top-3 of 8 groups: 2 per group so that 2 x 3 >= 6
    (_deepseek("deepseek_v2", num_experts_per_tok=6, n_group=8, topk_group=3, topk_method="group_limited_greedy"),
     8, 3, 2, 16),
    # the same config with greedy routing: groups play no part, the floor is top_k
    (_deepseek("deepseek_v2", num_experts_per_tok=6, n_group=8, topk_group=3, topk_method="greedy"), 1, 1, 0, 6),
    # DeepSeek-V2-Lite style: top-6 over the top-1 of 8 groups: every group must hold 6
    (_deepseek("deepseek_v2", num_experts_per_tok=6, n_group=8, topk_group=1, topk_method="group_limited_greedy"),
     8, 1, 6, 48),
    # DeepSeek-V3: top-8 over the top-4 of 8 groups, group score = sum of its top 2: 2 per group
    (_deepseek("deepseek_v3", n_routed_experts=256, num_experts_per_tok=8, n_group=8, topk_group=4), 8, 4, 2, 16),
    # DeepSeek-V3 with top-8 over 2 groups: 4 per group
    (_deepseek("deepseek_v3", n_routed_experts=256, num_experts_per_tok=8, n_group=8, topk_group=2), 8, 2, 4, 32),
    # DeepSeek-V3 with top-2 over 1 of 4 groups: ceil(2/1) = 2, also the top-2 floor
    (_deepseek("deepseek_v3", num_experts_per_tok=2, n_group=4, topk_group=1), 4, 1, 2, 8),
    # DeepSeek-V3 with top-1 over 2 of 4 groups: ceil(1/2) = 1, but the top-2 group score needs 2
    (_deepseek("deepseek_v3", num_experts_per_tok=1, n_group=4, topk_group=2), 4, 2, 2, 8),
    # DeepSeek-V3 without groups
    (_deepseek("deepseek_v3", num_experts_per_tok=8, n_group=1, topk_group=1), 1, 1, 0, 8),
]


@pytest.mark.parametrize("cfg,n_group,topk_group,per_group,floor", FLOORS)
def test_group_limited_floors(cfg, n_group, topk_group, per_group, floor):
    spec = MoeModelSpec.from_config(cfg)
    assert (spec.n_group, spec.topk_group, spec.min_kept_per_group, spec.min_kept) == (
        n_group, topk_group, per_group, floor)


@pytest.mark.parametrize("family,kw", [("deepseek_v2", dict(topk_method="group_limited_greedy", n_group=4,
                                                             topk_group=2, top_k=3, experts=16)),
                                       ("deepseek_v3", dict(top_k=2, experts=16, n_group=4, topk_group=1))])
def test_routing_at_the_floor_is_well_defined(family, kw, tiny_model):
    """Masked down to min_kept_per_group per group, every token still gets top_k finite, distinct choices."""
    spec = MoeModelSpec.from_pretrained(tiny_model(family, **kw))
    rule = RoutingRule.for_spec(spec)
    E, g, c = 16, spec.n_group, spec.min_kept_per_group
    mask = torch.zeros(E, dtype=torch.bool)
    for j in range(g):
        mask[j * E // g: j * E // g + c] = True
    logits = torch.randn(64, E, generator=torch.Generator().manual_seed(0))
    bias = torch.zeros(E) if spec.arch.correction_bias else None
    _, w, idx = route(rule, logits, bias, mask)
    assert bool(mask[idx].all()) and torch.isfinite(w).all() and bool((w > 0).all())
    if c > 1:  # one fewer per group and some token is routed to a masked expert or a -inf group
        mask[[j * E // g + c - 1 for j in range(g)]] = False
        _, w, idx = route(rule, logits, bias, mask)
        assert not bool(mask[idx].all()) or not bool((w > 0).all())
