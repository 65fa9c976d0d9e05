"""The reference a pruned checkpoint is checked against: the original model with experts masked.

`mask_experts(model, spec, keep)` hooks every MoE router so that experts not in
`keep[layer]` can never be chosen (router logits -inf; for sigmoid routers the
choice score -inf), re-routing with `raymoe.moe.routing.route`. Routing stays that of
the ORIGINAL model (its n_group groups of E / n_group), so a pruned group-limited
model matches this reference only when every original group keeps the same count.
`merge_experts(model, merges)` first writes a plan's merge groups into the model
(target = sum_i w_i member_i for expert weights, router row and correction bias,
as raymoe.checkpoint.apply_plan does), the reference for merging plans.
"""

from __future__ import annotations

import torch

from raymoe.moe.routing import RoutingRule, route
from raymoe.moe.spec import MoeModelSpec

__all__ = ["mask_experts", "merge_experts"]


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


def merge_experts(model: torch.nn.Module, merges: dict[int, list]) -> None:
    """Fold each layer's merge groups (raymoe.plan.MergeGroup) into their targets, in place."""
    with torch.no_grad():
        for layer, groups in merges.items():
            mlp = model.model.layers[layer].mlp
            tensors = [mlp.experts.gate_up_proj, mlp.experts.down_proj, mlp.gate.weight]  # [E, ...] each
            bias = getattr(mlp.gate, "e_score_correction_bias", None)
            if bias is not None:
                tensors.append(bias)
            for g in groups:
                w = torch.tensor(g.weights, dtype=torch.float32)  # [m]
                for t in tensors:
                    src = t[list(g.members)].float()  # [m, ...]
                    t[g.target] = torch.einsum("m,m...->...", w, src).to(t.dtype)
