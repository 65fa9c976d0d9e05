"""The reference a pruned checkpoint is checked against: the original model with experts masked.

`mask_experts(model, spec, keep)` masks every MoE router (raymoe.moe.router_mask, the
same masks virtual variants are scored with) so that experts not in `keep[layer]` can
never be chosen (router logits -inf; for sigmoid routers the choice score -inf),
re-routing with `raymoe.moe.routing.route`. Routing stays that of
the ORIGINAL model (its n_group groups of E / n_group), so a pruned group-limited
model matches this reference only when every original group keeps the same count.
`merge_experts(model, merges, perms)` first writes a plan's merge groups into the model
(target = sum_i w_i P_i(member_i) for expert weights, P_i the member's neuron
permutation from `plan.permutations()` applied to the fused in-memory tensors, and
sum_i w_i member_i for the router row and correction bias, as
raymoe.checkpoint.apply_plan does), the reference for merging plans.
"""

from __future__ import annotations

import torch

from raymoe.moe.router_mask import RouterMasks
from raymoe.moe.model_spec import MoeModelSpec
from raymoe.plan.mask import ExpertMask

__all__ = ["mask_experts", "merge_experts"]


def mask_experts(model: torch.nn.Module, spec: MoeModelSpec, keep: dict[int, list[int]]) -> RouterMasks:
    """Mask `model`'s routers to `keep` (raymoe.moe.router_mask); `.remove()` on the result undoes it."""
    masks = RouterMasks(model, spec)
    masks.set(ExpertMask(id="reference", keep={l: tuple(sorted(k)) for l, k in keep.items()},
                         num_experts={l: spec.experts[l] for l in keep}))
    return masks


def _permuted(experts: torch.nn.Module, e: int, perm) -> tuple[torch.Tensor, torch.Tensor]:
    """Expert e's fused (gate_up, down) with its neurons permuted: neuron i <- neuron perm[i]."""
    gu, d = experts.gate_up_proj[e].float(), experts.down_proj[e].float()  # [2I, H], [H, I] (or transposed)
    if perm is None:
        return gu, d
    p = torch.as_tensor(perm, dtype=torch.long)
    both = torch.cat([p, p + len(p)])  # gate rows, then up rows
    if getattr(experts, "is_transposed", False):  # [H, 2I], [I, H]
        return gu[:, both], d[p]
    return gu[both], d[:, p]


def merge_experts(model: torch.nn.Module, merges: dict[int, list], perms: dict | None = None) -> None:
    """Fold each layer's merge groups (raymoe.plan.MergeGroup) into their targets, in place, aligning
    members by perms (layer -> expert -> permutation, `PrunePlan.permutations()`) when given."""
    with torch.no_grad():
        for layer, groups in merges.items():
            mlp = model.model.layers[layer].mlp
            ex = mlp.experts
            tensors = [mlp.gate.weight]  # [E, H]
            bias = getattr(mlp.gate, "e_score_correction_bias", None)
            if bias is not None:
                tensors.append(bias)
            lperm = (perms or {}).get(layer, {})
            for g in groups:
                w = torch.tensor(g.weights, dtype=torch.float32)  # [m]
                for t in tensors:
                    src = t[list(g.members)].float()  # [m, ...]
                    t[g.target] = torch.einsum("m,m...->...", w, src).to(t.dtype)
                parts = [_permuted(ex, m, lperm.get(m)) for m in g.members]
                ex.gate_up_proj[g.target] = sum(wi * gu for wi, (gu, _) in zip(g.weights, parts)).to(
                    ex.gate_up_proj.dtype)
                ex.down_proj[g.target] = sum(wi * d for wi, (_, d) in zip(g.weights, parts)).to(ex.down_proj.dtype)
