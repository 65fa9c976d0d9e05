"""Export: the stock Mixtral / Qwen2-MoE checkpoint computes exactly the fitted reference MoE."""

import numpy as np
import pytest
import torch

from raymoe.moe import MoeModelSpec
from raymoe.testbed.build import moefy_model
from raymoe.testbed.config import DENSE_MLP_WIDTH, TestbedConfig
from raymoe.testbed.export import build_moe_model
from raymoe.testbed.moefy import MoefyMLP


@pytest.fixture(scope="module")
def dense():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=96, hidden_size=32, intermediate_size=DENSE_MLP_WIDTH, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                      tie_word_embeddings=True, bos_token_id=1, eos_token_id=2, pad_token_id=2)
    return LlamaForCausalLM(cfg).eval()


def _reference_logits(dense, layers, ids):
    """The dense model with every MLP replaced by the fitted reference MoE forward."""
    blocks = dense.model.layers
    saved = [b.mlp for b in blocks]
    try:
        for b, layer in zip(blocks, layers):
            w = MoefyMLP(b.mlp, None, emit_moe=True)
            w.layer = layer
            b.mlp = w
        with torch.no_grad():
            return dense(input_ids=ids).logits
    finally:
        for b, m in zip(blocks, saved):
            b.mlp = m


@pytest.mark.parametrize("opts, arch", [
    (dict(layout="shared", experts=8, top_k=2, shared=512), "Qwen2MoeForCausalLM"),
    (dict(layout="mixtral", experts=8, top_k=3), "MixtralForCausalLM"),
])
def test_export_matches_reference_and_reloads(dense, tmp_path, opts, arch):
    from transformers import AutoModelForCausalLM

    cfg = TestbedConfig.parse(**opts, calib_tokens=512, seq_len=64, coact_tokens=256, router_steps=20)
    ids = torch.randint(3, 96, (8, 64), generator=torch.Generator().manual_seed(1))
    layers = moefy_model(dense, ids, cfg, progress=False)
    assert all(isinstance(b.mlp, type(dense.model.layers[0].mlp)) for b in dense.model.layers)  # dense restored
    moe = build_moe_model(dense, layers, cfg)
    assert type(moe).__name__ == arch
    test_ids = torch.randint(3, 96, (2, 48), generator=torch.Generator().manual_seed(2))
    ref = _reference_logits(dense, layers, test_ids)
    with torch.no_grad():
        got = moe(input_ids=test_ids).logits
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-4)

    moe.save_pretrained(tmp_path)
    spec = MoeModelSpec.from_pretrained(tmp_path)
    assert spec.arch.causal_lm == arch and spec.top_k == cfg.top_k
    assert spec.experts == {0: cfg.experts, 1: cfg.experts} and spec.expert_intermediate == cfg.expert_width
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    routed = []
    hook = loaded.model.layers[1].mlp.gate.register_forward_hook(lambda m, i, o: routed.append(o[2]))
    with torch.no_grad():
        again = loaded(input_ids=test_ids).logits
    hook.remove()
    torch.testing.assert_close(again, ref, rtol=1e-4, atol=1e-4)
    idx = routed[0]  # [T, K] experts chosen per token
    assert idx.shape == (test_ids.numel(), cfg.top_k)
    assert all(len(set(row.tolist())) == cfg.top_k for row in idx)


def test_untouched_weights_are_copied(dense):
    cfg = TestbedConfig.parse(experts=8, top_k=2, calib_tokens=256, seq_len=64, coact_tokens=128, router_steps=5)
    ids = torch.randint(3, 96, (4, 64), generator=torch.Generator().manual_seed(3))
    moe = build_moe_model(dense, moefy_model(dense, ids, cfg, progress=False), cfg)
    sd, src = moe.state_dict(), dense.state_dict()
    for name in ("model.embed_tokens.weight", "model.layers.1.self_attn.k_proj.weight", "model.norm.weight",
                 "model.layers.0.post_attention_layernorm.weight"):
        torch.testing.assert_close(sd[name], src[name], rtol=0, atol=0)
    torch.testing.assert_close(sd["lm_head.weight"], src["model.embed_tokens.weight"], rtol=0, atol=0)
    for proj in ("q_proj", "k_proj", "v_proj"):  # zero biases, written for vLLM (which always allocates them)
        assert moe.config.qkv_bias and not sd[f"model.layers.0.self_attn.{proj}.bias"].any()
    assert not moe.config.tie_word_embeddings
    np.testing.assert_array_equal(sd["model.layers.0.mlp.shared_expert_gate.weight"].numpy(), 0.0)

