"""The reference a pruned checkpoint is checked against: the original model with experts masked.

`mask_experts(model, spec, keep)` hooks every MoE router so that experts not in
`keep[layer]` can never be chosen (router logits -inf; for sigmoid routers the
choice score -inf), re-routing with `raymoe.moe.routing.route`.
"""

from __future__ import annotations

import torch

from raymoe.moe.routing import RoutingRule, route
from raymoe.moe.spec import MoeModelSpec

__all__ = ["mask_experts"]


def mask_experts(model: torch.nn.Module, spec: MoeModelSpec, keep: dict[int, list[int]]) -> list:
    """Install masking hooks; returns the hook handles (call `.remove()` to undo)."""
    rule = RoutingRule.for_spec(spec)
    handles = []
    for layer, kept in keep.items():
        gate = model.model.layers[layer].mlp.gate
        mask = torch.zeros(spec.experts[layer], dtype=torch.bool)
        mask[list(kept)] = True

        def hook(module, args, output, mask=mask):
            x = args[0].reshape(-1, module.weight.shape[1])  # [T, H]
            logits = torch.nn.functional.linear(x.float(), module.weight.float())  # [T, E]
            bias = getattr(module, "e_score_correction_bias", None)
            _, weights, idx = route(rule, logits, bias, mask)
            return output[0], weights.to(output[1].dtype), idx

        handles.append(gate.register_forward_hook(hook))
    return handles
