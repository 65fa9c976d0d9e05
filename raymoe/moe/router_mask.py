"""Router masks on a loaded transformers MoE: removed experts can never be chosen, updated in place.

`RouterMasks(model, spec)` gives every MoE router (`model.model.layers[l].mlp.gate`)
a non-persistent bool buffer `raymoe_available` [E_l] and a forward hook. While a
layer's buffer is all True the hook returns the router's own output untouched (the
unpruned model, bit for bit); otherwise it re-routes from the router logits with
`raymoe.moe.routing.route` under the mask: softmax over the available experts'
logits (top-k, renormalised as the family does), and for DeepSeek-V3 the biased
choice score s + b set to -inf for masked experts, with the ORIGINAL groups
(n_group groups of E / n_group) kept for group-limited routing. That is the model a
pruned checkpoint of the same plan computes (tests/eval/test_virtual.py).

`set(mask)` rewrites the buffers in place (None: every expert available), so one
loaded model scores many pruning plans without a reload, and nothing of a previous
mask is left behind.
"""

from __future__ import annotations

import torch

from raymoe.moe.routing import RoutingRule, route
from raymoe.moe.model_spec import MoeModelSpec
from raymoe.plan.mask import router_flags

__all__ = ["RouterMasks"]

_BUFFER = "raymoe_available"


def _masked_route(rule: RoutingRule):
    def hook(module, args, output):
        avail = getattr(module, _BUFFER)  # [E] bool
        if bool(avail.all()):
            return output
        x = args[0].reshape(-1, module.weight.shape[1])  # [T, H]
        logits = torch.nn.functional.linear(x.float(), module.weight.float())  # [T, E]
        bias = getattr(module, "e_score_correction_bias", None)
        _, weights, idx = route(rule, logits, bias, avail)  # [T, k], [T, k]
        return output[0], weights.to(output[1].dtype), idx

    return hook


class RouterMasks:
    """Masking hooks with in-place buffers on every MoE router of `model` (see the module docstring)."""

    def __init__(self, model: torch.nn.Module, spec: MoeModelSpec) -> None:
        self.spec = spec
        self.mask_id: str | None = None
        self.gates: dict[int, torch.nn.Module] = {}
        self._handles = []
        hook = _masked_route(RoutingRule.for_spec(spec))
        for layer in spec.moe_layers:
            gate = model.model.layers[layer].mlp.gate
            assert gate.weight.shape[0] == spec.experts[layer], f"layer {layer}: router rows != expert count"
            gate.register_buffer(_BUFFER, torch.ones(spec.experts[layer], dtype=torch.bool,
                                                     device=gate.weight.device), persistent=False)
            self.gates[layer] = gate
            self._handles.append(gate.register_forward_hook(hook))

    def set(self, mask) -> None:
        """Apply a `raymoe.plan.mask.ExpertMask` (or None: no expert masked) to every router, in place."""
        flags = router_flags(mask, {l: g.weight.shape[0] for l, g in self.gates.items()}, self.spec.top_k)
        for layer, gate in self.gates.items():
            getattr(gate, _BUFFER).copy_(torch.tensor(flags[layer], dtype=torch.bool))
        self.mask_id = None if mask is None else mask.id

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()
