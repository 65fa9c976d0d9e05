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
