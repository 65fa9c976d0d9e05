"""Expert masks: the routers' view of a pruning plan, for scoring a plan on the loaded source model.

A pruning plan without merges is, for evaluation, the source model whose routers
can no longer choose the removed experts: a pruned checkpoint's logits equal the
source's with those experts masked out of routing (tests/checkpoint). An
`ExpertMask` is that view: per MoE layer, the source experts still available.
It is plain data (no torch), so it crosses from the driver to workers of either
environment (`to_wire` / `from_wire`), and `id` keys everything cached per
variant (e.g. the vLLM prefix cache salt).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

from raymoe.errors import PlanError

__all__ = ["ExpertMask", "check_virtual", "router_flags"]


@dataclass(frozen=True)
class ExpertMask:
    """Per MoE layer (decoder index), the source experts that routing may choose; `id` names the mask."""

    id: str
    keep: dict[int, tuple[int, ...]]  # layer -> available source experts (sorted)
    num_experts: dict[int, int]  # layer -> source experts E_l

    @classmethod
    def from_plan(cls, plan) -> "ExpertMask":
        """The mask of a pruning plan (raymoe.plan.PrunePlan); PlanError for a plan that merges."""
        check_virtual(plan)
        keep = {lp.layer: tuple(sorted(lp.keep)) for lp in plan.layers}
        num = {lp.layer: lp.num_experts for lp in plan.layers}
        return cls(id=_digest(keep, num), keep=keep, num_experts=num)

    def to_wire(self) -> dict:
        """JSON-able form (string layer keys) for Ray calls and records."""
        return {"id": self.id, "keep": {str(k): list(v) for k, v in self.keep.items()},
                "num_experts": {str(k): v for k, v in self.num_experts.items()}}

    @classmethod
    def from_wire(cls, data: dict | None) -> "ExpertMask | None":
        if data is None:
            return None
        return cls(id=str(data["id"]), keep={int(k): tuple(v) for k, v in data["keep"].items()},
                   num_experts={int(k): int(v) for k, v in data["num_experts"].items()})

    def available(self, layer: int, num_experts: int) -> list[bool]:
        """[E] flags of one layer (all True for a layer the mask leaves alone); checks the layer's width."""
        if layer not in self.keep:
            return [True] * num_experts
        if self.num_experts[layer] != num_experts:
            raise PlanError(f"mask {self.id}: layer {layer} has {self.num_experts[layer]} experts in the plan, "
                            f"{num_experts} in the model")
        flags = [False] * num_experts
        for e in self.keep[layer]:
            flags[e] = True
        return flags

    @property
    def removes_any(self) -> bool:
        return any(len(k) < self.num_experts[l] for l, k in self.keep.items())


def _digest(keep: dict[int, tuple[int, ...]], num: dict[int, int]) -> str:
    blob = json.dumps({str(k): [num[k], list(v)] for k, v in sorted(keep.items())}, sort_keys=True).encode()
    return "mask-" + hashlib.sha256(blob).hexdigest()[:16]


def router_flags(mask: ExpertMask | None, widths: dict[int, int], top_k: int) -> dict[int, list[bool]]:
    """Per router (layer -> E), the [E] availability flags of `mask` (None: all True), every layer checked
    first: PlanError for a layer the model has no router for, another width, or fewer than top_k kept."""
    if mask is None:
        return {l: [True] * e for l, e in widths.items()}
    unknown = sorted(set(mask.keep) - set(widths))
    if unknown:
        raise PlanError(f"mask {mask.id} names layers {unknown}, which are not MoE layers of the model")
    flags = {l: mask.available(l, e) for l, e in widths.items()}
    for l, f in flags.items():
        if sum(f) < top_k:
            raise PlanError(f"mask {mask.id}: layer {l} keeps {sum(f)} experts, fewer than top_k={top_k}")
    return flags


def check_virtual(plan) -> None:
    """A plan that merges experts changes weights, so it cannot be scored by masking: one clear error."""
    merged = list(plan.merged_members())
    if merged:
        raise PlanError(f"plan {plan.method!r} merges experts (layers {merged[:4]}{'...' if len(merged) > 4 else ''})"
                        f": merged weights cannot be scored virtually on the source model; materialise it with "
                        f"`raymoe prune` (or `materialize: true` in a sweep)")
