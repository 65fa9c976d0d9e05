"""raymoe's variable-expert architectures in vLLM (the `vllm.general_plugins` entry point).

vLLM serves non-uniform checkpoints (a routed-expert count per layer) of every
family raymoe prunes: Mixtral, Qwen2-MoE, Qwen3-MoE, OLMoE, DeepSeek-V2 and
DeepSeek-V3. Uniform pruned checkpoints are stock architectures that stock vLLM
loads (`raymoe.moe.variable.stock_config_dict` writes the config keys vLLM needs);
raymoe's eval workers serve them, and stock source models, through the plugin
class of their family all the same (`hf_overrides`, see `raymoe.eval.vllm_worker`):
its routers carry expert-mask buffers (`masking.py`), so one loaded source scores
many pruning plans ("virtual variants") without a reload.

vLLM calls `register()` in every process it starts (engine core, workers), so
it must be idempotent and cheap: it registers the config classes of model types
`raymoe_<family>` with transformers' AutoConfig (vLLM reads `config.json`
through it), tells vLLM that raymoe's DeepSeek model types use multi-head latent
attention (vLLM decides that by model type), and names the model classes lazily
("module:Class"), so vLLM's model modules are imported only when such a
checkpoint is loaded.

Only vllm, torch and transformers are imported here and in the model modules,
plus raymoe's config-level facts (`raymoe.moe.arch`, `raymoe.moe.variable`);
the vLLM environment pins transformers < 5.20.
"""

from __future__ import annotations

__all__ = ["register", "VLLM_ARCHITECTURES", "MLA_MODEL_TYPES", "supports"]

_PKG = "raymoe.vllm_plugin"

#: variable-expert architecture name -> "module:Class" of its vLLM implementation
VLLM_ARCHITECTURES: dict[str, str] = {
    "RaymoeMixtralForCausalLM": f"{_PKG}.mixtral:RaymoeMixtralForCausalLM",
    "RaymoeQwen2MoeForCausalLM": f"{_PKG}.qwen2_moe:RaymoeQwen2MoeForCausalLM",
    "RaymoeQwen3MoeForCausalLM": f"{_PKG}.qwen3_moe:RaymoeQwen3MoeForCausalLM",
    "RaymoeOlmoeForCausalLM": f"{_PKG}.olmoe:RaymoeOlmoeForCausalLM",
    "RaymoeDeepseekV2ForCausalLM": f"{_PKG}.deepseek:RaymoeDeepseekV2ForCausalLM",
    "RaymoeDeepseekV3ForCausalLM": f"{_PKG}.deepseek:RaymoeDeepseekV3ForCausalLM",
}

#: raymoe model types that vLLM must treat as multi-head latent attention when kv_lora_rank is set
MLA_MODEL_TYPES = ("raymoe_deepseek_v2", "raymoe_deepseek_v3")


def supports(architecture: str) -> bool:
    """Whether vLLM can serve `architecture`: stock names always, raymoe's only when listed above."""
    return not architecture.startswith("Raymoe") or architecture in VLLM_ARCHITECTURES


def _register_mla() -> None:
    """vLLM's `is_deepseek_mla` lists model types; raymoe's DeepSeek types get a convertor that says yes."""
    from vllm.transformers_utils import model_arch_config_convertor as conv

    class RaymoeDeepseekConvertor(conv.ModelArchConfigConvertorBase):
        def is_deepseek_mla(self) -> bool:
            return getattr(self.hf_text_config, "kv_lora_rank", None) is not None

    for model_type in MLA_MODEL_TYPES:
        conv.MODEL_ARCH_CONFIG_CONVERTORS.setdefault(model_type, RaymoeDeepseekConvertor)


def register() -> None:
    """Register the config classes with AutoConfig and the model classes with vLLM's ModelRegistry."""
    from vllm import ModelRegistry

    from raymoe.moe.variable import register as register_configs

    register_configs()  # AutoConfig knows model_type raymoe_<family> (idempotent)
    _register_mla()
    known = set(ModelRegistry.get_supported_archs())
    for arch, target in VLLM_ARCHITECTURES.items():
        if arch not in known:
            ModelRegistry.register_model(arch, target)
