"""DeepSeek-V2 and DeepSeek-V3 with a routed-expert count per decoder layer, in vLLM.

vLLM's `DeepseekV2DecoderLayer` takes an optional `config` and builds
`DeepseekV2MoE(config)` on MoE layers (index >= first_k_dense_replace), which
reads `config.n_routed_experts` for the router rows, the correction bias
(`topk_method: noaux_tc`, DeepSeek-V3) and the fused experts; the shared
experts, group-limited routing (`n_group`, `topk_group`: the plan keeps an equal
count in each group, so a layer's E_l experts still form n_group groups of
E_l / n_group) and the dense first layers come from the same config. Each MoE
layer gets a config copy with its own count (dense layers, count 0, keep the
global one and take the stock dense rule). `DeepseekV2Model` hard-codes its
layer class inside `make_layers`, so its constructor is written here again
(compiled like the stock one); the ForCausalLM names its backbone through the
class attribute `model_cls`. Weight loading builds its expert mapping for the
largest count, and a layer reads only the experts its checkpoint holds.

vLLM decides on multi-head latent attention by `model_type` (`deepseek_v2`,
`deepseek_v3`, ...); `register_mla()` gives raymoe's model types the same answer.
The routers get raymoe's expert-mask buffers (`raymoe.vllm_plugin.masking`;
for DeepSeek-V3 the correction bias is masked too, the original groups kept).
DeepSeek-V3.2's sparse-attention indexer (`index_topk`) is not supported.
"""

from __future__ import annotations

from torch import nn
from vllm.compilation.decorators import support_torch_compile
from vllm.config import VllmConfig
from vllm.distributed import get_pp_group
from vllm.model_executor.layers.fused_moe.utils import is_model_fused_shared_expert_compatible
from vllm.model_executor.layers.layernorm import RMSNorm
from vllm.model_executor.layers.vocab_parallel_embedding import VocabParallelEmbedding
from vllm.model_executor.models.deepseek_v2 import (DeepseekV2DecoderLayer, DeepseekV2ForCausalLM,
                                                    DeepseekV2Model, DeepseekV2MoE)
from vllm.model_executor.models.utils import PPMissingLayer, make_empty_intermediate_tensors_factory, make_layers
from vllm.platforms import current_platform

from raymoe.vllm_plugin.common import layer_config, set_moe_metadata
from raymoe.vllm_plugin.masking import install_router_masks

__all__ = ["RaymoeDeepseekV2DecoderLayer", "RaymoeDeepseekV2Model", "RaymoeDeepseekV2ForCausalLM",
           "RaymoeDeepseekV3ForCausalLM"]

COUNT_KEY = "n_routed_experts"


class RaymoeDeepseekV2DecoderLayer(DeepseekV2DecoderLayer):
    """The stock decoder layer, built from a config copy carrying this layer's expert count."""

    def __init__(self, vllm_config: VllmConfig, prefix: str, config=None, **kwargs) -> None:
        config = layer_config(config or vllm_config.model_config.hf_config, COUNT_KEY, prefix)
        super().__init__(vllm_config, prefix, config=config, **kwargs)


@support_torch_compile
class RaymoeDeepseekV2Model(DeepseekV2Model):
    """`DeepseekV2Model` whose layers are `RaymoeDeepseekV2DecoderLayer`s (same attributes, same prefixes)."""

    def __init__(self, *, vllm_config: VllmConfig, prefix: str = "") -> None:
        nn.Module.__init__(self)
        config = vllm_config.model_config.hf_config
        if hasattr(config, "index_topk"):
            raise ValueError("raymoe's variable-expert DeepSeek has no sparse-attention indexer (index_topk); "
                             "serve this checkpoint with --backend hf")
        self.config = config
        self.device = current_platform.device_type
        self.hidden_size = config.hidden_size
        self.vocab_size = config.vocab_size
        self.is_v32 = False
        first, last = get_pp_group().is_first_rank, get_pp_group().is_last_rank
        self.embed_tokens = (VocabParallelEmbedding(config.vocab_size, self.hidden_size,
                                                    quant_config=vllm_config.quant_config,
                                                    prefix=f"{prefix}.embed_tokens") if first else PPMissingLayer())
        self.start_layer, self.end_layer, self.layers = make_layers(
            config.num_hidden_layers,
            lambda prefix: RaymoeDeepseekV2DecoderLayer(vllm_config=vllm_config, prefix=prefix),
            prefix=f"{prefix}.layers",
        )
        self.is_fused_shared_expert_enabled = is_model_fused_shared_expert_compatible(self.layers, DeepseekV2MoE,
                                                                                      "mlp")
        self.norm = RMSNorm(self.hidden_size, eps=config.rms_norm_eps) if last else PPMissingLayer()
        self.make_empty_intermediate_tensors = make_empty_intermediate_tensors_factory(
            ["hidden_states", "residual"], self.hidden_size)
        self.aux_hidden_state_layers = tuple[int, ...]()
        self.use_mha = config.model_type == "deepseek" or all(
            getattr(config, dim, 0) == 0 for dim in ("qk_nope_head_dim", "qk_rope_head_dim"))
        self.num_redundant_experts = vllm_config.parallel_config.eplb_config.num_redundant_experts


class RaymoeDeepseekV2ForCausalLM(DeepseekV2ForCausalLM):
    """vLLM model class of `RaymoeDeepseekV2ForCausalLM` checkpoints (config key `raymoe_experts_per_layer`)."""

    model_cls = RaymoeDeepseekV2Model

    def __init__(self, *, vllm_config: VllmConfig, prefix: str = "") -> None:
        super().__init__(vllm_config=vllm_config, prefix=prefix)
        install_router_masks(self, self.config.num_experts_per_tok)

    def set_moe_parameters(self) -> None:
        """The stock lists of MoE layers; expert counts from the largest layer, EPLB refused on mixed counts."""
        super().set_moe_parameters()
        set_moe_metadata(self, self.moe_mlp_layers, any(b.enable_eplb for b in self.moe_mlp_layers),
                         expert_groups=getattr(self.config, "n_group", 1) or 1,
                         shared_experts=self.config.n_shared_experts or 0)
        self.moe_layers = [b.experts for b in self.moe_mlp_layers]


class RaymoeDeepseekV3ForCausalLM(RaymoeDeepseekV2ForCausalLM):
    """vLLM model class of `RaymoeDeepseekV3ForCausalLM` checkpoints (sigmoid scoring, correction bias)."""
