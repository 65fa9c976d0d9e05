"""Per-layer configs and MoE metadata shared by raymoe's vLLM model classes.

A non-uniform checkpoint's config carries the maximum routed-expert count in the
stock key and the per-layer counts under `raymoe_experts_per_layer` (0 marks a
dense layer). vLLM's decoder layers read the count from the config they are
given, so each MoE decoder layer gets a shallow config copy with its own count;
the layer index comes from the module prefix (`model.layers.<i>`), which stays
unchanged because vLLM registers attention and MoE layers by that name.
"""

from __future__ import annotations

import copy
from typing import Any

from raymoe.moe.arch import RAYMOE_COUNTS_KEY
from raymoe.vllm_plugin.masking import install_router_masks

__all__ = ["layer_count", "layer_config", "layer_vllm_config", "set_moe_metadata", "init_causal_lm"]


def layer_count(config: Any, prefix: str) -> int | None:
    """Routed-expert count of the decoder layer named `prefix`, or None to keep the config's own."""
    from vllm.model_executor.models.utils import extract_layer_index

    counts = getattr(config, RAYMOE_COUNTS_KEY, None)
    if counts is None:
        return None
    count = int(counts[extract_layer_index(prefix)])
    return count or None  # 0: a dense layer, built by the stock rule


def layer_config(config: Any, count_key: str, prefix: str) -> Any:
    """`config` itself, or a shallow copy whose `count_key` is this layer's count."""
    count = layer_count(config, prefix)
    if count is None or count == getattr(config, count_key):
        return config
    out = copy.copy(config)
    setattr(out, count_key, count)  # through the config's attribute_map (num_experts <-> num_local_experts)
    return out


def layer_vllm_config(vllm_config: Any, count_key: str, prefix: str) -> Any:
    """A shallow VllmConfig copy whose model config's hf (text) config is this layer's config."""
    model_config = vllm_config.model_config
    cfg = layer_config(model_config.hf_text_config, count_key, prefix)
    if cfg is model_config.hf_text_config:
        return vllm_config
    mc = copy.copy(model_config)
    object.__setattr__(mc, "hf_text_config", cfg)
    if model_config.hf_config is model_config.hf_text_config:
        object.__setattr__(mc, "hf_config", cfg)
    out = copy.copy(vllm_config)
    object.__setattr__(out, "model_config", mc)
    return out


def set_moe_metadata(model: Any, blocks: list[Any], enable_eplb: bool, *, expert_groups: int = 1,
                     shared_experts: int = 0) -> None:
    """Fill vLLM's MixtureOfExperts attributes from the model's MoE blocks.

    The model reports the largest block as its expert count (what sizing code
    expects); expert-parallel load balancing (EPLB) assumes one count for all
    layers and is refused when the counts differ.
    """
    if not blocks:
        raise RuntimeError("no MoE layer found in model.layers")
    counts = sorted({b.n_routed_experts for b in blocks})
    if len(counts) > 1 and enable_eplb:
        raise ValueError(f"EPLB is not supported on checkpoints with per-layer expert counts {counts}; "
                         "start vLLM without enable_eplb")
    largest = max(blocks, key=lambda b: b.n_routed_experts)
    model.moe_layers = [b.experts for b in blocks]
    model.num_moe_layers = len(blocks)
    model.num_expert_groups = expert_groups
    model.num_shared_experts = shared_experts
    model.num_logical_experts = largest.n_logical_experts
    model.num_physical_experts = largest.n_physical_experts
    model.num_local_physical_experts = largest.n_local_physical_experts
    model.num_routed_experts = largest.n_routed_experts
    model.num_redundant_experts = largest.n_redundant_experts


def init_causal_lm(lm: Any, vllm_config: Any, prefix: str, model_cls: type, moe_block: str | None = None,
                   moe_cls: type | None = None) -> None:
    """The ForCausalLM body around `model_cls`: backbone, LM head, logits processor, router masks, MoE metadata.

    `moe_block` is the decoder layer's attribute holding the sparse MoE block
    (an instance of `moe_cls` on MoE layers); without it no MoE metadata is set
    (families whose stock vLLM class is no `MixtureOfExperts`: Qwen2-MoE, OLMoE).
    """
    from vllm.model_executor.layers.logits_processor import LogitsProcessor
    from vllm.model_executor.layers.vocab_parallel_embedding import ParallelLMHead
    from vllm.model_executor.models.utils import PPMissingLayer, maybe_prefix

    config = vllm_config.model_config.hf_text_config
    lm.config = config
    lm.quant_config = vllm_config.quant_config
    lm.model = model_cls(vllm_config=vllm_config, prefix=maybe_prefix(prefix, "model"))
    lm.lm_head = ParallelLMHead(config.vocab_size, config.hidden_size, quant_config=lm.quant_config,
                                prefix=maybe_prefix(prefix, "lm_head"))
    if config.tie_word_embeddings:
        lm.lm_head = lm.lm_head.tie_weights(lm.model.embed_tokens)
    lm.logits_processor = LogitsProcessor(config.vocab_size)
    lm.make_empty_intermediate_tensors = lm.model.make_empty_intermediate_tensors
    install_router_masks(lm, config.num_experts_per_tok)
    if moe_cls is None:
        return
    blocks = [getattr(layer, moe_block) for layer in lm.model.layers
              if not isinstance(layer, PPMissingLayer) and isinstance(getattr(layer, moe_block, None), moe_cls)]
    set_moe_metadata(lm, blocks, vllm_config.parallel_config.enable_eplb)
