"""Turn the dense model plus its fitted `MoeLayer`s into a stock transformers MoE model.

- layout `mixtral`: `MixtralForCausalLM`; expert e = (W_g[G_e], W_u[G_e], D[:, G_e]) with D the
  layer's fitted down projection (`MoeLayer.down`),
  router `mlp.gate.weight` = the fitted W (top-k softmax renormalised, as fitted).
- layout `shared`: `Qwen2MoeForCausalLM` with `norm_topk_prob=True` (same routed
  semantics); shared expert = (W_g[S], W_u[S], 2 D[:, S]) with `shared_expert_gate`
  zero, so its sigmoid gate is 0.5 and the shared part is exact; attention q/k/v
  biases written as zeros (`qkv_bias=True`): Llama has none, but vLLM's Qwen2-MoE
  always allocates them and would otherwise run on uninitialised memory (NaN).
Attention, norms and embeddings are copied; the output embedding is untied
(`lm_head.weight` written) so every stage can load it by name.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from raymoe.testbed.config import TestbedConfig
from raymoe.testbed.moefy import MoeLayer

__all__ = ["moe_config", "build_moe_model"]


def moe_config(dense_cfg, cfg: TestbedConfig):
    """The stock MoE config matching the dense Llama config and the layout."""
    from transformers import MixtralConfig, Qwen2MoeConfig

    common: dict[str, Any] = dict(
        vocab_size=dense_cfg.vocab_size, hidden_size=dense_cfg.hidden_size,
        num_hidden_layers=dense_cfg.num_hidden_layers, num_attention_heads=dense_cfg.num_attention_heads,
        num_key_value_heads=dense_cfg.num_key_value_heads, hidden_act=dense_cfg.hidden_act,
        max_position_embeddings=dense_cfg.max_position_embeddings, rms_norm_eps=dense_cfg.rms_norm_eps,
        rope_parameters=dict(dense_cfg.rope_parameters), tie_word_embeddings=False,
        bos_token_id=dense_cfg.bos_token_id, eos_token_id=dense_cfg.eos_token_id,
        pad_token_id=dense_cfg.pad_token_id, num_experts_per_tok=cfg.top_k, dtype="float32",
    )
    if cfg.layout == "mixtral":
        return MixtralConfig(**common, num_local_experts=cfg.experts, intermediate_size=cfg.expert_width,
                             head_dim=dense_cfg.head_dim, sliding_window=None)
    return Qwen2MoeConfig(**common, num_experts=cfg.experts, moe_intermediate_size=cfg.expert_width,
                          shared_expert_intermediate_size=cfg.shared, intermediate_size=cfg.shared,
                          norm_topk_prob=True, qkv_bias=True, use_sliding_window=False, decoder_sparse_step=1,
                          mlp_only_layers=[])


def _moe_tensors(prefix: str, mlp, layer: MoeLayer, layout: str) -> dict[str, torch.Tensor]:
    g, u, d = mlp.gate_proj.weight, mlp.up_proj.weight, layer.down  # [I, H], [I, H], [H, I]
    ids = torch.as_tensor(np.stack(layer.groups))  # [E, m]
    out = {
        prefix + "gate.weight": layer.router.clone(),  # [E, H]
        prefix + "experts.gate_up_proj": torch.cat([g[ids], u[ids]], dim=1),  # [E, 2m, H]
        prefix + "experts.down_proj": d[:, ids].permute(1, 0, 2).contiguous(),  # [E, H, m]
    }
    if layout == "shared":
        s = torch.as_tensor(layer.shared, dtype=torch.long)
        out |= {
            prefix + "shared_expert.gate_proj.weight": g[s].clone(),  # [S, H]
            prefix + "shared_expert.up_proj.weight": u[s].clone(),  # [S, H]
            prefix + "shared_expert.down_proj.weight": 2.0 * d[:, s],  # [H, S]; sigmoid(0) = 1/2 undone
            prefix + "shared_expert_gate.weight": torch.zeros(1, g.shape[1]),  # [1, H]
        }
    return out


def build_moe_model(dense, layers: list[MoeLayer], cfg: TestbedConfig):
    """The stock MoE `PreTrainedModel` (float32, eval mode) carrying the fitted layers."""
    from transformers import AutoModelForCausalLM

    config = moe_config(dense.config, cfg)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    src = dense.state_dict()
    state: dict[str, torch.Tensor] = {}
    for name, tensor in src.items():
        if ".mlp." in name:
            continue
        state[name] = tensor.clone()
    state["lm_head.weight"] = src["model.embed_tokens.weight"].clone()
    if cfg.layout == "shared":  # zero q/k/v biases (see the module docstring)
        for i in range(config.num_hidden_layers):
            for proj in ("q_proj", "k_proj", "v_proj"):
                w = src[f"model.layers.{i}.self_attn.{proj}.weight"]  # [out, H]
                state[f"model.layers.{i}.self_attn.{proj}.bias"] = torch.zeros(w.shape[0])
    for i, (block, layer) in enumerate(zip(dense.model.layers, layers)):
        mlp = getattr(block.mlp, "mlp", block.mlp)  # unwrap a MoefyMLP
        state |= _moe_tensors(f"model.layers.{i}.mlp.", mlp, layer, cfg.layout)
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [m for m in missing if not m.endswith("rotary_emb.inv_freq")]
    if missing or unexpected:
        raise RuntimeError(f"testbed export mismatch: missing {missing[:4]}, unexpected {unexpected[:4]}")
    return model.eval()
