"""OLMoE with a routed-expert count per decoder layer, in vLLM.

vLLM's `OlmoeDecoderLayer` builds `OlmoeMoE(num_experts=config.num_experts)` from
`vllm_config.model_config.hf_config`, so each decoder layer is built from a
shallow VllmConfig copy whose config carries that layer's count. The stock
model and ForCausalLM take their decoder layer class as an argument
(`layer_type`), so nothing else is re-implemented: forward, weight loading
(each layer's expert mapping follows its own count) and logits are the stock ones;
the routers get raymoe's expert-mask buffers (`raymoe.vllm_plugin.masking`).
"""

from __future__ import annotations

from torch import nn
from vllm.config import VllmConfig
from vllm.model_executor.models.olmoe import OlmoeDecoderLayer, OlmoeForCausalLM

from raymoe.vllm_plugin.common import layer_vllm_config
from raymoe.vllm_plugin.masking import install_router_masks

__all__ = ["RaymoeOlmoeDecoderLayer", "RaymoeOlmoeForCausalLM"]

COUNT_KEY = "num_experts"


class RaymoeOlmoeDecoderLayer(OlmoeDecoderLayer):
    """The stock decoder layer, built from a VllmConfig copy carrying this layer's expert count."""

    def __init__(self, *, vllm_config: VllmConfig, prefix: str = "") -> None:
        super().__init__(vllm_config=layer_vllm_config(vllm_config, COUNT_KEY, prefix), prefix=prefix)


class RaymoeOlmoeForCausalLM(OlmoeForCausalLM):
    """vLLM model class of `RaymoeOlmoeForCausalLM` checkpoints (config key `raymoe_experts_per_layer`)."""

    def __init__(self, *, vllm_config: VllmConfig, prefix: str = "",
                 layer_type: type[nn.Module] = RaymoeOlmoeDecoderLayer) -> None:
        super().__init__(vllm_config=vllm_config, prefix=prefix, layer_type=layer_type)
        install_router_masks(self, vllm_config.model_config.hf_config.num_experts_per_tok)
