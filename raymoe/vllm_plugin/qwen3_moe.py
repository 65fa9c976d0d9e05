"""Qwen3-MoE with a routed-expert count per decoder layer, in vLLM.

vLLM's `Qwen3MoeSparseMoeBlock` reads `vllm_config.model_config.hf_text_config.num_experts`,
so each decoder layer is built from a shallow VllmConfig copy whose text config
carries that layer's count. `Qwen3MoeModel` takes its decoder layer class as
an argument, so the backbone is the stock one (its own `__init__`, already
compiled by `@support_torch_compile`); the ForCausalLM constructor is written
again because it names the stock backbone.
"""

from __future__ import annotations

from torch import nn
from vllm.config import VllmConfig
from vllm.model_executor.models.qwen3_moe import (Qwen3MoeDecoderLayer, Qwen3MoeForCausalLM, Qwen3MoeModel,
                                                  Qwen3MoeSparseMoeBlock)

from raymoe.vllm_plugin.common import init_causal_lm, layer_vllm_config

__all__ = ["RaymoeQwen3MoeDecoderLayer", "RaymoeQwen3MoeModel", "RaymoeQwen3MoeForCausalLM"]

COUNT_KEY = "num_experts"


class RaymoeQwen3MoeDecoderLayer(Qwen3MoeDecoderLayer):
    """The stock decoder layer, built from a VllmConfig copy carrying this layer's expert count."""

    def __init__(self, vllm_config: VllmConfig, prefix: str = "", **kwargs) -> None:
        super().__init__(layer_vllm_config(vllm_config, COUNT_KEY, prefix), prefix=prefix, **kwargs)


class RaymoeQwen3MoeModel(Qwen3MoeModel):
    """`Qwen3MoeModel` with `RaymoeQwen3MoeDecoderLayer` layers."""

    def __init__(self, *, vllm_config: VllmConfig, prefix: str = "") -> None:
        super().__init__(vllm_config=vllm_config, prefix=prefix, decoder_layer_type=RaymoeQwen3MoeDecoderLayer)


class RaymoeQwen3MoeForCausalLM(Qwen3MoeForCausalLM):
    """vLLM model class of `RaymoeQwen3MoeForCausalLM` checkpoints (config key `raymoe_experts_per_layer`)."""

    def __init__(self, *, vllm_config: VllmConfig, prefix: str = "") -> None:
        nn.Module.__init__(self)
        if getattr(vllm_config.model_config.hf_text_config, "mlp_only_layers", []):
            self.packed_modules_mapping = {**self.packed_modules_mapping, "gate_up_proj": ["gate_proj", "up_proj"]}
        init_causal_lm(self, vllm_config, prefix, RaymoeQwen3MoeModel, "mlp", Qwen3MoeSparseMoeBlock)
