"""Expert masks on raymoe's vLLM model classes: removed experts can never be chosen, updated in place.

Every MoE router of a raymoe plugin model (a `GateLinear` named `gate` beside
the block's fused `experts`) gets, at construction, a non-persistent bool
buffer `raymoe_available` [E] (weight loading ignores it) and a forward that
sets the router logits of unavailable experts to the dtype's lowest value:
softmax routers then give them probability 0 and renormalise over the others,
as a pruned checkpoint's router does; grouped softmax (DeepSeek-V2) scores
groups by the masked probabilities. DeepSeek-V3 chooses by sigmoid(logit) +
e_score_correction_bias, so there the bias of unavailable experts is set to the
lowest value too (the loaded bias is kept in `raymoe_bias_source` [E], taken at
the first mask change), and the ORIGINAL groups stay (n_group groups of E /
n_group), as `raymoe.moe.routing.route` computes. With every expert available
the logits and the bias are the stock ones, bit for bit.

The buffers are written in place, never replaced, so a mask change needs no
re-tracing: torch.compile and CUDA graphs read the same tensors. The worker
extension `ExpertMaskExtension` (vLLM's `worker_extension_cls`) exposes
`raymoe_set_expert_mask(wire)`, called with `LLM.collective_rpc`; it takes
`raymoe.plan.mask.ExpertMask.to_wire()` or None (every expert available).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

__all__ = ["EXTENSION", "SET_MASK", "install_router_masks", "masked_routers", "set_expert_mask",
           "ExpertMaskExtension"]

#: vLLM's `worker_extension_cls` (a dotted qualified name)
EXTENSION = "raymoe.vllm_plugin.masking.ExpertMaskExtension"
#: the extension method `LLM.collective_rpc` calls
SET_MASK = "raymoe_set_expert_mask"

_AVAILABLE = "raymoe_available"
_BIAS_SOURCE = "raymoe_bias_source"
_CLASSES: dict[type, type] = {}


class _MaskedRouter:
    """Mixin over a gate class: the stock router logits, unavailable experts' set to the dtype's minimum."""

    def forward(self, x: torch.Tensor):
        out = super().forward(x)
        logits = out[0] if isinstance(out, tuple) else out  # [T, E]
        logits = logits.masked_fill(~getattr(self, _AVAILABLE), torch.finfo(logits.dtype).min)  # [T, E]
        return (logits, *out[1:]) if isinstance(out, tuple) else logits


def _masked_class(base: type) -> type:
    if base not in _CLASSES:
        _CLASSES[base] = type(f"RaymoeMasked{base.__name__}", (_MaskedRouter, base), {})
    return _CLASSES[base]


def install_router_masks(lm: nn.Module, top_k: int) -> int:
    """Give every MoE router of `lm` its mask buffer and masked forward (before weights load); returns the count."""
    from vllm.model_executor.layers.fused_moe.router.gate_linear import GateLinear
    from vllm.model_executor.models.utils import extract_layer_index

    modules = dict(lm.named_modules())
    count = 0
    for name, gate in modules.items():
        parent = modules.get(name.rpartition(".")[0])
        if not (name.endswith(".gate") and isinstance(gate, GateLinear) and hasattr(parent, "experts")):
            continue
        device = gate.weight.device
        gate.register_buffer(_AVAILABLE, torch.ones(gate.output_size, dtype=torch.bool, device=device),
                             persistent=False)  # [E]
        bias = getattr(gate, "e_score_correction_bias", None)
        if isinstance(bias, torch.Tensor):
            gate.register_buffer(_BIAS_SOURCE, torch.empty_like(bias), persistent=False)  # [E]
            gate.raymoe_bias_taken = False
        gate.raymoe_layer = extract_layer_index(name)
        gate.raymoe_top_k = top_k
        gate.__class__ = _masked_class(type(gate))
        count += 1
    return count


def masked_routers(model: nn.Module) -> dict[int, nn.Module]:
    """decoder layer index -> masked router of `model`."""
    return {m.raymoe_layer: m for m in model.modules() if isinstance(m, _MaskedRouter)}


def set_expert_mask(model: nn.Module, wire: dict | None) -> dict[str, Any]:
    """Write an ExpertMask (wire form; None: every expert available) into `model`'s routers, in place.

    Every layer is checked (layers known, widths equal, at least top_k kept)
    before any buffer changes. Returns {"mask", "layers", "masked"}: the mask id,
    the routers written and the experts masked over all layers.
    """
    from raymoe.plan.mask import ExpertMask, router_flags

    mask = ExpertMask.from_wire(wire)
    routers = masked_routers(model)
    if not routers:
        raise RuntimeError(f"{type(model).__name__} has no masked routers: serve it through raymoe's plugin class")
    top_k = min(g.raymoe_top_k for g in routers.values())  # one top_k per model (install_router_masks)
    flags = router_flags(mask, {l: getattr(g, _AVAILABLE).numel() for l, g in routers.items()}, top_k)
    for layer, gate in routers.items():
        avail = getattr(gate, _AVAILABLE)  # [E]
        avail.copy_(torch.tensor(flags[layer], dtype=torch.bool))
        bias = getattr(gate, "e_score_correction_bias", None)
        if isinstance(bias, torch.Tensor) and hasattr(gate, _BIAS_SOURCE):
            source = getattr(gate, _BIAS_SOURCE)  # [E]
            if not gate.raymoe_bias_taken:  # weights are loaded by now; nothing was masked before
                source.copy_(bias.data)
                gate.raymoe_bias_taken = True
            bias.data.copy_(torch.where(avail, source, torch.finfo(source.dtype).min))  # [E]
    masked = sum(len(f) - sum(f) for f in flags.values())
    return {"mask": None if mask is None else mask.id, "layers": len(routers), "masked": masked}


class ExpertMaskExtension:
    """vLLM worker extension: `raymoe_set_expert_mask(wire)` on this worker's model (see the module docstring)."""

    def raymoe_set_expert_mask(self, wire: dict | None) -> dict[str, Any]:
        return set_expert_mask(self.model_runner.get_model(), wire)
