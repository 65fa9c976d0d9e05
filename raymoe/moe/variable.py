"""raymoe's variable-expert architectures: one per family, a different routed-expert count per layer.

A non-uniform checkpoint's config names `Raymoe<Family>ForCausalLM` with
`model_type = "raymoe_<family>"`, the maximum count in the stock count key, and
the per-layer counts under `raymoe_experts_per_layer` (0 for dense layers).
The model class is the stock one whose MoE decoder layers are rebuilt from a
per-layer config copy; weights load through the family's stock conversion
mapping (per-expert names on disk -> fused tensors). `ensure_registered()`
(idempotent, imports transformers) runs where raymoe loads a checkpoint with
the Auto classes (`raymoe.eval.engine_host.load_transformers`, `raymoe.checkpoint.apply`,
`raymoe smoke`, the vLLM plugin); other code calls `raymoe.ensure_registered()`
before `AutoModelForCausalLM.from_pretrained`, so no `trust_remote_code` is needed.
"""

from __future__ import annotations

import copy
import importlib
from typing import Any

from raymoe.moe.arch import ARCHS, RAYMOE_COUNTS_KEY, MoeArch

__all__ = ["ensure_registered", "register", "stock_config_dict", "variable_config_dict", "VARIABLE_CLASSES"]

#: family -> (config class, causal LM class), filled by `ensure_registered()`.
VARIABLE_CLASSES: dict[str, tuple[type, type]] = {}


def stock_config_dict(cfg: dict[str, Any]) -> dict[str, Any]:
    """The stock family's config dict for a (possibly variable-expert) config dict.

    It also carries the keys the family implies and vLLM needs spelled out
    (`MoeArch.implied_config`, e.g. DeepSeek-V3's `topk_method: noaux_tc`), so
    every exported checkpoint, uniform or not, loads in vLLM.
    """
    from raymoe.moe.arch import arch_for_config

    arch = arch_for_config(cfg)
    out = {k: v for k, v in cfg.items() if k != RAYMOE_COUNTS_KEY}
    out.update(arch.implied_config(cfg))
    out["model_type"] = arch.family
    out["architectures"] = [arch.causal_lm]
    return out


def variable_config_dict(cfg: dict[str, Any], counts: dict[int, int]) -> dict[str, Any]:
    """A variable-expert config dict from a stock one and per-MoE-layer counts."""
    from raymoe.moe.arch import arch_for_config

    arch = arch_for_config(cfg)
    out = stock_config_dict(cfg)
    out["model_type"] = arch.variable_model_type
    out["architectures"] = [arch.variable_causal_lm]
    out[RAYMOE_COUNTS_KEY] = [counts.get(i, 0) for i in range(int(cfg["num_hidden_layers"]))]
    for key in arch.count_keys:
        if key in out or key == arch.count_keys[0]:
            out[key] = max(counts.values())
    return out


def _per_layer_config(config, arch: MoeArch, count: int):
    layer_cfg = copy.deepcopy(config)
    setattr(layer_cfg, arch.count_keys[0], count)
    return layer_cfg


def _make_classes(arch: MoeArch) -> tuple[type, type]:
    mod = importlib.import_module(arch.modeling_module)
    base_lm = getattr(mod, arch.causal_lm)
    decoder_layer = getattr(mod, arch.decoder_layer)
    base_cfg = base_lm.config_class

    cfg_cls = type(base_cfg.__name__.replace(base_cfg.__name__, "Raymoe" + base_cfg.__name__), (base_cfg,),
                   {"model_type": arch.variable_model_type, "__module__": __name__})

    def __init__(self, config):
        base_lm.__init__(self, config)
        counts = getattr(config, RAYMOE_COUNTS_KEY)
        assert counts is not None and len(counts) == config.num_hidden_layers, "per-layer counts missing"
        for i, layer in enumerate(self.model.layers):
            if counts[i] and counts[i] != getattr(config, arch.count_keys[0]):
                self.model.layers[i] = decoder_layer(_per_layer_config(config, arch, counts[i]), i)
        self.post_init()

    lm_cls = type(arch.variable_causal_lm, (base_lm,),
                  {"config_class": cfg_cls, "__init__": __init__, "__module__": __name__})
    return cfg_cls, lm_cls


def ensure_registered() -> None:
    """Register every family's variable-expert classes with transformers' Auto classes (idempotent)."""
    if len(VARIABLE_CLASSES) == len(ARCHS):
        return
    from transformers import AutoConfig, AutoModelForCausalLM
    from transformers.conversion_mapping import (get_checkpoint_conversion_mapping,
                                                 register_checkpoint_conversion_mapping)

    for family, arch in ARCHS.items():
        if family in VARIABLE_CLASSES:
            continue
        cfg_cls, lm_cls = _make_classes(arch)
        AutoConfig.register(arch.variable_model_type, cfg_cls, exist_ok=True)
        AutoModelForCausalLM.register(cfg_cls, lm_cls, exist_ok=True)
        mapping = get_checkpoint_conversion_mapping(family)
        if mapping is not None:
            register_checkpoint_conversion_mapping(arch.variable_model_type, mapping, overwrite=True)
        VARIABLE_CLASSES[family] = (cfg_cls, lm_cls)
        globals()[cfg_cls.__name__] = cfg_cls
        globals()[lm_cls.__name__] = lm_cls


register = ensure_registered  # the older name (the vLLM plugin's import)


def __getattr__(name: str):
    """`raymoe.moe.variable:RaymoeMixtralForCausalLM` style lookups register on first use."""
    if name.startswith("Raymoe"):
        ensure_registered()
        if name in globals():
            return globals()[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
