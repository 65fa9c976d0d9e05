"""raymoe's variable-expert architectures in vLLM (the `vllm.general_plugins` entry point).

vLLM calls `register()` in every process it starts (engine core, workers), so
it must be idempotent and cheap: it registers the config classes of model types
`raymoe_<family>` with transformers' AutoConfig (vLLM reads `config.json`
through it) and names the model classes lazily ("module:Class"), so vLLM's
model modules are imported only when such a checkpoint is loaded.

Only vllm, torch and transformers are imported here and in the model modules,
plus raymoe's config-level facts (`raymoe.moe.arch`, `raymoe.moe.variable`);
the vLLM environment pins transformers < 5.20.
"""

from __future__ import annotations

__all__ = ["register", "VLLM_ARCHITECTURES", "supports"]

#: variable-expert architecture name -> "module:Class" of its vLLM implementation
VLLM_ARCHITECTURES: dict[str, str] = {
    "RaymoeMixtralForCausalLM": "raymoe.vllm_plugin.mixtral:RaymoeMixtralForCausalLM",
    "RaymoeQwen3MoeForCausalLM": "raymoe.vllm_plugin.qwen3_moe:RaymoeQwen3MoeForCausalLM",
}


def supports(architecture: str) -> bool:
    """Whether vLLM can serve `architecture`: stock names always, raymoe's only when listed above."""
    return not architecture.startswith("Raymoe") or architecture in VLLM_ARCHITECTURES


def register() -> None:
    """Register the config classes with AutoConfig and the model classes with vLLM's ModelRegistry."""
    from vllm import ModelRegistry

    from raymoe.moe.variable import register as register_configs

    register_configs()  # AutoConfig knows model_type raymoe_<family> (idempotent)
    known = set(ModelRegistry.get_supported_archs())
    for arch, target in VLLM_ARCHITECTURES.items():
        if arch not in known:
            ModelRegistry.register_model(arch, target)
