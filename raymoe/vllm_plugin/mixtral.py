"""Mixtral with a routed-expert count per decoder layer, in vLLM.

vLLM's `MixtralDecoderLayer` builds `MixtralMoE(num_experts=config.num_local_experts)`,
so each layer gets a config copy with its own count. `MixtralModel.__init__`
hard-codes its layer class inside `make_layers`, hence the backbone's
constructor is written here again (and compiled like the stock one:
`@support_torch_compile` wraps only the `__init__` of the class it decorates).
Forward, weight loading (each layer's expert mapping follows its own count)
and logits come from the stock classes.
"""

from __future__ import annotations

from torch import nn
from vllm.compilation.decorators import support_torch_compile
from vllm.config import VllmConfig
from vllm.model_executor.layers.layernorm import RMSNorm
from vllm.model_executor.layers.vocab_parallel_embedding import VocabParallelEmbedding
from vllm.model_executor.models.mixtral import MixtralDecoderLayer, MixtralForCausalLM, MixtralMoE, MixtralModel
from vllm.model_executor.models.utils import make_empty_intermediate_tensors_factory, make_layers

from raymoe.vllm_plugin.common import init_causal_lm, layer_config

__all__ = ["RaymoeMixtralDecoderLayer", "RaymoeMixtralModel", "RaymoeMixtralForCausalLM"]

COUNT_KEY = "num_local_experts"


class RaymoeMixtralDecoderLayer(MixtralDecoderLayer):
    """The stock decoder layer, built from a config copy carrying this layer's expert count."""

    def __init__(self, config, cache_config=None, quant_config=None, prefix: str = "",
                 enable_eplb: bool = False) -> None:
        super().__init__(layer_config(config, COUNT_KEY, prefix), cache_config, quant_config=quant_config,
                         prefix=prefix, enable_eplb=enable_eplb)


@support_torch_compile
class RaymoeMixtralModel(MixtralModel):
    """`MixtralModel` whose layers are `RaymoeMixtralDecoderLayer`s (same attributes, same prefixes)."""

    def __init__(self, *, vllm_config: VllmConfig, prefix: str = "") -> None:
        nn.Module.__init__(self)
        config = vllm_config.model_config.hf_config
        self.config = config
        self.quant_config = vllm_config.quant_config
        self.vocab_size = self.org_vocab_size = config.vocab_size
        self.embed_tokens = VocabParallelEmbedding(config.vocab_size, config.hidden_size)
        self.enable_eplb = vllm_config.parallel_config.enable_eplb
        self.num_redundant_experts = vllm_config.parallel_config.eplb_config.num_redundant_experts
        self.start_layer, self.end_layer, self.layers = make_layers(
            config.num_hidden_layers,
            lambda prefix: RaymoeMixtralDecoderLayer(config, vllm_config.cache_config,
                                                     quant_config=self.quant_config, prefix=prefix,
                                                     enable_eplb=self.enable_eplb),
            prefix=f"{prefix}.layers",
        )
        self.norm = RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.make_empty_intermediate_tensors = make_empty_intermediate_tensors_factory(
            ["hidden_states", "residual"], config.hidden_size)


class RaymoeMixtralForCausalLM(MixtralForCausalLM):
    """vLLM model class of `RaymoeMixtralForCausalLM` checkpoints (config key `raymoe_experts_per_layer`)."""

    def __init__(self, *, vllm_config: VllmConfig, prefix: str = "") -> None:
        nn.Module.__init__(self)
        init_causal_lm(self, vllm_config, prefix, RaymoeMixtralModel, "block_sparse_moe", MixtralMoE)
