"""Qwen2-MoE with a routed-expert count per decoder layer, in vLLM.

vLLM's `Qwen2MoeDecoderLayer` builds `Qwen2MoeSparseMoeBlock(config)`, which reads
`config.num_experts` for the router rows and the fused experts; the shared
expert and its sigmoid gate (`shared_expert_gate`, one row) do not depend on
the count. Each layer gets a config copy with its own count. `Qwen2MoeModel`
hard-codes its layer class inside `make_layers`, so the backbone's constructor
is written here again (and compiled like the stock one, `@support_torch_compile`
wraps only the `__init__` of the class it decorates), as is the ForCausalLM
constructor, which names the stock backbone. Forward, weight loading (each
layer's expert mapping follows its own count) and logits are the stock ones.
"""

from __future__ import annotations

from torch import nn
from vllm.compilation.decorators import support_torch_compile
from vllm.config import VllmConfig
from vllm.model_executor.layers.layernorm import RMSNorm
from vllm.model_executor.layers.vocab_parallel_embedding import VocabParallelEmbedding
from vllm.model_executor.models.qwen2_moe import Qwen2MoeDecoderLayer, Qwen2MoeForCausalLM, Qwen2MoeModel
from vllm.model_executor.models.utils import make_empty_intermediate_tensors_factory, make_layers

from raymoe.vllm_plugin.common import init_causal_lm, layer_config

__all__ = ["RaymoeQwen2MoeDecoderLayer", "RaymoeQwen2MoeModel", "RaymoeQwen2MoeForCausalLM"]

COUNT_KEY = "num_experts"


class RaymoeQwen2MoeDecoderLayer(Qwen2MoeDecoderLayer):
    """The stock decoder layer, built from a config copy carrying this layer's expert count."""

    def __init__(self, config, cache_config=None, quant_config=None, prefix: str = "") -> None:
        super().__init__(layer_config(config, COUNT_KEY, prefix), cache_config, quant_config=quant_config,
                         prefix=prefix)


@support_torch_compile
class RaymoeQwen2MoeModel(Qwen2MoeModel):
    """`Qwen2MoeModel` whose layers are `RaymoeQwen2MoeDecoderLayer`s (same attributes, same prefixes)."""

    def __init__(self, *, vllm_config: VllmConfig, prefix: str = "") -> None:
        nn.Module.__init__(self)
        config = vllm_config.model_config.hf_config
        quant_config = vllm_config.quant_config
        self.vocab_size = config.vocab_size
        self.config = config
        self.embed_tokens = VocabParallelEmbedding(config.vocab_size, config.hidden_size, quant_config=quant_config,
                                                   prefix=f"{prefix}.embed_tokens")
        self.start_layer, self.end_layer, self.layers = make_layers(
            config.num_hidden_layers,
            lambda prefix: RaymoeQwen2MoeDecoderLayer(config, vllm_config.cache_config, quant_config=quant_config,
                                                      prefix=prefix),
            prefix=f"{prefix}.layers",
        )
        self.norm = RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.make_empty_intermediate_tensors = make_empty_intermediate_tensors_factory(
            ["hidden_states", "residual"], config.hidden_size)


class RaymoeQwen2MoeForCausalLM(Qwen2MoeForCausalLM):
    """vLLM model class of `RaymoeQwen2MoeForCausalLM` checkpoints (config key `raymoe_experts_per_layer`)."""

    def __init__(self, *, vllm_config: VllmConfig, prefix: str = "") -> None:
        nn.Module.__init__(self)
        config = vllm_config.model_config.hf_config
        if getattr(config, "mlp_only_layers", []) or config.shared_expert_intermediate_size > 0:
            # the shared expert (and dense layers) hold a fused gate_up_proj; a copy, not the class's dict
            self.packed_modules_mapping = {**self.packed_modules_mapping, "gate_up_proj": ["gate_proj", "up_proj"]}
        init_causal_lm(self, vllm_config, prefix, RaymoeQwen2MoeModel)
